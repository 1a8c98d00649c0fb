"""``BaseFinetuning``: freeze modules before training, unfreeze them later (Lightning's contract).

Subclass it and implement::

    def freeze_before_training(self, pl_module):      # at setup, every stage
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):   # each train epoch start, per optimizer
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=1e-3)

The parameter groups added are recorded (by parameter name) in the callback's checkpoint state.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
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

        Parameters already in the optimizer are skipped; a warning says so only for parameters that
        were frozen (batch-norm layers kept training by ``freeze(train_bn=True)`` are skipped quietly).
        """
        frozen = {
            id(p) for p in BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=False)
        }
        BaseFinetuning.make_trainable(modules)
        params_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denom = initial_denom_lr if lr is None else 1.0
        candidates = list(BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True))
        params = _not_in(optimizer, candidates)
        kept = {id(p) for p in params}
        if any(id(p) in frozen and id(p) not in kept for p in candidates):
            _warn_already_in(optimizer)
        if params:
            optimizer.add_param_group({"params": params, "lr": params_lr / denom})


def _not_in(optimizer: torch.optim.Optimizer, params: list[Any]) -> list[Any]:
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in params if id(p) not in present]


def _warn_already_in(optimizer: torch.optim.Optimizer) -> None:
    from fulmen.lightning.utilities.rank_zero import rank_zero_warn

    rank_zero_warn(
        "BaseFinetuning: some parameters to unfreeze are already in the optimizer and are skipped. Did "
        f"configure_optimizers build {type(optimizer).__name__}(filter(lambda p: p.requires_grad, "
        "self.parameters()), ...)?",
        stacklevel=4,
    )


def _map_params(groups: Iterable[dict[str, Any]], mapping: dict[Any, Any]) -> list[dict[str, Any]]:
    """Parameter groups with each parameter replaced through ``mapping`` (parameter <-> name)."""
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [mapping[p] for p in g["params"]]}
        for g in groups
    ]
