"""``BaseFinetuning``: freeze modules before training, unfreeze them later (Lightning's contract).

Subclass it and implement::

    def freeze_before_training(self, pl_module):      # at setup, every stage
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):   # each train epoch start, per optimizer
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=1e-3)

The parameter groups added are recorded (by parameter name) in the callback's checkpoint state.

``BackboneFinetuning`` is the ready-made one: it freezes ``pl_module.backbone``, adds it to the
optimizer at ``unfreeze_backbone_at_epoch`` and raises its learning rate each epoch after.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

Modules = Module | Iterable[Module | Iterable[Any]]


class BaseFinetuning(Callback):
    """Freeze with ``freeze_before_training``, unfreeze in ``finetune_function`` (see the module docstring)."""

    def __init__(self) -> None:
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._restarting = False

    # -- the contract ------------------------------------------------------------------------------
    def freeze_before_training(self, pl_module: System) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(pl_module)")

    def finetune_function(self, pl_module: System, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement finetune_function(pl_module, epoch, optimizer)"
        )

    # -- hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        self.freeze_before_training(system)

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if not self._restarting:
            return
        # A resumed run: rebuild the parameter groups the previous run added.
        named = dict(system.named_parameters())
        for idx, optimizer in enumerate(trainer.optimizers):
            groups = self._internal_optimizer_metadata.get(idx)
            if groups:
                built = len(optimizer.param_groups)  # what configure_optimizers made
                optimizer.param_groups = _map_params(groups, named)
                # The groups the previous run added were unfrozen then; freeze_before_training froze
                # them again at setup, so they train again only when made trainable here.
                for group in optimizer.param_groups[built:]:
                    for param in group["params"]:
                        param.requires_grad = True
        self._restarting = False

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        names = {p: n for n, p in system.named_parameters()}
        for idx, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self.finetune_function(system, trainer.current_epoch, optimizer)
            groups = optimizer.param_groups
            if idx not in self._internal_optimizer_metadata:
                self._internal_optimizer_metadata[idx] = _map_params(groups, names)
            elif len(groups) != before:
                self._internal_optimizer_metadata[idx].extend(_map_params(groups[before:], names))

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restarting = True
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", state_dict)

    # -- helpers (static, as in Lightning) ----------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Modules) -> list[Module]:
        """The leaf modules (and modules holding parameters of their own) in ``modules``."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found: list[Module] = []
            for m in modules:
                found.extend(BaseFinetuning.flatten_modules(m))
            candidates: Iterable[Module] = found
        else:
            candidates = modules.modules()
        return [m for m in candidates if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(
        modules: Modules, train_bn: bool = True, requires_grad: bool = True
    ) -> Generator[torch.nn.Parameter, None, None]:
        """Parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad`` (batch-norm
        layers skipped when ``train_bn`` is False)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            for param in mod.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Turn gradients on for every parameter of ``modules`` (batch norms track statistics again)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm):
                mod.track_running_stats = True
            for param in mod.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Turn gradients off for ``modules``; batch-norm layers stay trainable when ``train_bn``."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(
        optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]
    ) -> list[Any]:
        """``params`` that are not in any of ``optimizer``'s groups yet (compared by identity); warns
        when some are."""
        params = list(params)
        out = _not_in(optimizer, params)
        if len(out) != len(params):
            _warn_already_in(optimizer)
        return out

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: Modules,
        optimizer: torch.optim.Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new group, with learning
        rate ``lr`` (default: the first group's divided by ``initial_denom_lr``).

        Parameters already in the optimizer are skipped, with a warning (as in Lightning), except
        those of batch-norm layers that were training already (``freeze(train_bn=True)`` keeps them
        training, so a backbone's batch norms are usually in the optimizer from the start).
        """
        quiet = {
            id(p)
            for mod in BaseFinetuning.flatten_modules(modules)
            if isinstance(mod, _BatchNorm)
            for p in mod.parameters(recurse=False)
            if p.requires_grad
        }
        BaseFinetuning.make_trainable(modules)
        params_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denom = initial_denom_lr if lr is None else 1.0
        candidates = list(BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True))
        params = _not_in(optimizer, candidates)
        kept = {id(p) for p in params}
        if any(id(p) not in kept and id(p) not in quiet for p in candidates):
            _warn_already_in(optimizer)
        if params:
            optimizer.add_param_group({"params": params, "lr": params_lr / denom})


def multiplicative(epoch: int) -> float:
    """``BackboneFinetuning``'s default ``lambda_func``: double the backbone's learning rate each epoch."""
    return 2.0


class BackboneFinetuning(BaseFinetuning):
    """Fine-tune ``pl_module.backbone`` on a learning-rate schedule of its own (Lightning's contract).

    - Before training (``setup``): ``pl_module.backbone`` (an ``nn.Module``) is frozen; its
      batch-norm layers keep training when ``train_bn`` (the default), else they stay frozen
      throughout.
    - At the start of epoch ``unfreeze_backbone_at_epoch``: it is unfrozen and added to each
      optimizer as a new parameter group, with learning rate ``backbone_initial_lr``, or, when that
      is None, the optimizer's first group's current learning rate times
      ``backbone_initial_ratio_lr``.
    - At the start of each later epoch ``e``: the backbone's learning rate is multiplied by
      ``lambda_func(e + 1)``; with ``should_align`` it never goes above the first group's current
      learning rate (it stays aligned with it once it gets there).

    ``initial_denom_lr`` is kept for Lightning's signature: it divides the learning rate only when
    none is given, and this callback always gives one. ``verbose`` logs both learning rates
    (rounded to ``rounding`` digits) at each epoch start from the unfreezing on. The backbone's
    learning rate is part of the callback's checkpoint state, so a resumed run goes on with the
    same schedule.
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 1e-1,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        if not isinstance(unfreeze_backbone_at_epoch, int) or unfreeze_backbone_at_epoch < 0:
            raise ValueError(
                f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): expected an epoch "
                "number (an int >= 0)."
            )
        if not callable(lambda_func):
            raise TypeError(
                f"BackboneFinetuning(lambda_func=...): expected a function of the epoch, got {type(lambda_func).__name__}."
            )
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        #: The backbone's learning rate set at the last epoch start (None until it is unfrozen).
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")
        super().load_state_dict(state_dict)

    def freeze_before_training(self, pl_module: System) -> None:
        self.freeze(_backbone(pl_module), train_bn=self.train_bn)

    def finetune_function(self, pl_module: System, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            lr = self.backbone_initial_lr if self.backbone_initial_lr is not None else current_lr * self.backbone_initial_ratio_lr
            self.previous_backbone_lr = lr
            backbone = _backbone(pl_module)
            self.unfreeze_and_add_param_group(
                backbone, optimizer, lr, initial_denom_lr=self.initial_denom_lr, train_bn=self.train_bn
            )
            if not self.train_bn:  # (unfreezing made every layer trainable: batch norms stay frozen)
                for mod in self.flatten_modules(backbone):
                    if isinstance(mod, _BatchNorm):
                        self.freeze_module(mod)
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and lr > current_lr:
                lr = current_lr
            optimizer.param_groups[-1]["lr"] = lr
            self.previous_backbone_lr = lr
        else:
            return
        if self.verbose:
            from fulmen.lightning.utilities.rank_zero import rank_zero_info

            rank_zero_info(
                f"BackboneFinetuning: epoch {epoch}, learning rate {round(current_lr, self.rounding)}, backbone "
                f"learning rate {round(lr, self.rounding)}"
            )


def _backbone(pl_module: System) -> Module:
    backbone = getattr(pl_module, "backbone", None)
    if not isinstance(backbone, Module):
        raise AttributeError(
            f"BackboneFinetuning: {type(pl_module).__name__} needs an nn.Module attribute `backbone` (the part to "
            f"freeze, then fine-tune); it has {'none' if backbone is None else type(backbone).__name__}. Name the "
            f"pretrained part self.backbone, or subclass BaseFinetuning to pick other modules."
        )
    return backbone


def _not_in(optimizer: torch.optim.Optimizer, params: list[Any]) -> list[Any]:
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in params if id(p) not in present]


def _warn_already_in(optimizer: torch.optim.Optimizer) -> None:
    from fulmen.lightning.utilities.rank_zero import rank_zero_warn

    rank_zero_warn(
        "BaseFinetuning: The provided params to be frozen already exist within another group of this optimizer: "
        "some parameters to unfreeze are already in the optimizer and are skipped (they keep that group's "
        "learning rate). HINT: Did you init your optimizer in `configure_optimizers` as such: "
        f"{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...)?",
        stacklevel=4,
    )


def _map_params(groups: Iterable[dict[str, Any]], mapping: dict[Any, Any]) -> list[dict[str, Any]]:
    """Parameter groups with each parameter replaced through ``mapping`` (parameter <-> name)."""
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [mapping[p] for p in g["params"]]}
        for g in groups
    ]
