"""``fulmen.System``: the researcher's models, their steps, and their optimizers."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fulmen._hparams import AttributeDict, collect_init_args, hparams_for_init
from fulmen.errors import LoggingError, warn_once
from fulmen.trainer._hooks import SYSTEM_HOOKS, check_hook_names, check_lightning_only, overrides
from fulmen.utils.apply import move_to_device

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.logging._store import MetricStore
    from fulmen.trainer.trainer import Trainer


class System(nn.Module):
    """One or several models with their training, validation, test and predict steps.

    Override ``training_step`` and ``configure_optimizers`` at least; every other hook is optional
    and costs nothing unless overridden. See ``fulmen.trainer._hooks`` for where each hook fires.
    """

    #: False for manual optimization: ``training_step`` calls ``self.manual_backward(loss)`` and
    #: steps ``self.optimizers()`` itself (several optimizers, e.g. a GAN).
    automatic_optimization: bool = True
    #: An example input for ``forward``, for tools that need to run the model once (kept in the
    #: system; the model summary does not use it yet).
    example_input_array: Any = None

    #: False: ``load_from_checkpoint`` (when its ``strict`` is not given) and ``fit/validate/test(
    #: ckpt_path=...)`` load checkpoint weights with ``strict=False``, so keys missing from the
    #: checkpoint or from the system are skipped (e.g. a frozen backbone left out of the checkpoint).
    strict_loading: bool = True
    #: Whether the loggers get the hyperparameters when ``save_hyperparameters`` was never called
    #: (an empty set: e.g. an ``hparams.yaml`` of ``{}``). fulmen: yes; ``fulmen.lightning``: no,
    #: as Lightning sends them only after ``save_hyperparameters(logger=True)``.
    _logs_hyperparams_by_default = True

    #: True when the class steps its optimizer in an ``optimizer_step`` override
    #: (``fulmen.lightning.LightningModule`` only; the loop then calls it for each step).
    _optimizer_step_hook = False
    #: True when the class zeroes gradients in an ``optimizer_zero_grad(epoch, batch_idx,
    #: optimizer)`` override (``fulmen.lightning.LightningModule`` only): the loop then calls it
    #: before the backward of the first batch of each accumulation group, instead of zeroing
    #: after the step.
    _zero_grad_hook = False
    #: True when the class computes gradients in a ``backward(loss)`` override
    #: (``fulmen.lightning.LightningModule`` only): the loop calls it with the (scaled) loss.
    _backward_hook = False
    #: The ``on_{validation,test,predict}_model_{eval,train}`` hooks the class overrides
    #: (``fulmen.lightning.LightningModule`` only): called instead of fulmen's mode switching.
    _model_mode_hooks: frozenset[str] = frozenset()

    #: What TorchScript leaves out of a scripted system (``to_torchscript``): the training-time
    #: state, and the properties that read the Trainer.
    __jit_ignored_attributes__: list[str] = [
        "example_input_array",
        "automatic_optimization",
        "strict_loading",
        "_trainer",
        "_log_store",
        "_hparams",
        "_hparams_initial",
        "_log_hyperparams",
        "_toggled",
    ]
    __jit_unused_properties__: list[str] = [
        "trainer",
        "device",
        "dtype",
        "logger",
        "loggers",
        "current_epoch",
        "global_step",
        "global_rank",
        "local_rank",
        "hparams",
        "hparams_initial",
    ]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_hook_names(cls, SYSTEM_HOOKS, strict=False)
        check_lightning_only(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Trainer | None = None
        self._log_store: MetricStore | None = None
        self._hparams: AttributeDict = AttributeDict()
        self._hparams_initial: AttributeDict = AttributeDict()
        self._log_hyperparams = self._logs_hyperparams_by_default
        self._toggled: dict[Any, bool] | None = None

    def _on_run_setup(self) -> None:
        """Called once as each Trainer run is set up, before the hooks are looked up (a
        ``fulmen.lightning.LightningModule`` reads the hooks set on its instance here)."""

    def __getstate__(self) -> dict[str, Any]:
        # A copy (copy.deepcopy, pickle) of the system does not drag its Trainer along (loggers
        # with open files, dataloaders, metric stores).
        state = dict(self.__dict__)
        state["_trainer"] = None
        state["_log_store"] = None
        return state

    # -- properties ----------------------------------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            if self.__dict__.get("_exporting"):  # torch.jit and torch.onnx read every attribute
                return None  # type: ignore[return-value]
            raise RuntimeError(
                f"{type(self).__name__} is not attached to a Trainer: `self.trainer` is only available while "
                f"Trainer.fit/validate/test/predict runs this system."
            )
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer | None) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        """The device of the system's first parameter or buffer (CPU when it has none)."""
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the system's first floating-point parameter (or buffer); torch's default
        dtype when it has none. Mixed precision keeps float32 weights, so it stays float32 there."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def logger(self) -> Any:
        """The trainer's first logger (None without a trainer or a logger)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """The trainer's loggers (empty without a trainer)."""
        return list(self._trainer.loggers) if self._trainer is not None else []

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes of the run (0 for one process)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine."""
        return self._trainer.local_rank if self._trainer is not None else 0

    def all_gather(self, data: Any, sync_grads: bool = False) -> Any:
        """Gather ``data`` (a tensor, or a dict/list/tuple of them) from every process: each tensor
        gets a leading dimension of size ``world_size`` (one process: size 1).

        ``sync_grads=True`` keeps the result differentiable (torch's autograd-aware all_gather)."""
        from fulmen.utils.apply import apply_to_tensors

        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return apply_to_tensors(data, lambda t: t.unsqueeze(0))
        if sync_grads:
            from torch.distributed.nn.functional import all_gather as differentiable_all_gather

            return apply_to_tensors(data, lambda t: torch.stack(differentiable_all_gather(t)))
        return apply_to_tensors(data, trainer.strategy.all_gather)

    @property
    def hparams(self) -> AttributeDict:
        """Hyperparameters captured by ``save_hyperparameters`` (attribute and item access)."""
        return self._hparams

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of ``hparams`` as they were right after ``save_hyperparameters``."""
        return self._hparams_initial

    # -- hyperparameters ------------------------------------------------------------------------
    def save_hyperparameters(
        self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None, logger: bool = True
    ) -> None:
        """Record the constructor's arguments in ``self.hparams`` (and in checkpoints and loggers).

        Call it in ``__init__``. With no arguments every constructor argument is kept; pass names
        (``save_hyperparameters("lr", "width")``) to keep some, a dict to keep that dict, and
        ``ignore=[...]`` to leave some out (e.g. a model passed in as an argument).
        """
        if frame is None:
            frame = inspect.currentframe()
            frame = frame.f_back if frame is not None else None
        self._hparams = collect_init_args(self, args, ignore, frame)
        self._hparams_initial = AttributeDict(self._hparams)
        self._log_hyperparams = logger

    # -- logging --------------------------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
        metric_attribute: str | None = None,
    ) -> None:
        """Log a scalar under ``name``.

        Defaults: in ``training_step`` and the train batch hooks ``on_step=True, on_epoch=False``;
        everywhere else (validation/test steps, epoch hooks) ``on_step=False, on_epoch=True``. With
        both set, ``name_step`` and ``name_epoch`` are recorded; per-step values reach the loggers
        during training only (evaluation stages send their epoch values). The epoch value is ``reduce_fx``
        over the epoch's values; ``"mean"`` is weighted by ``batch_size`` (taken from the batch
        when not given). ``sync_dist`` reduces across processes (one process: nothing to do).
        The value stays a tensor until it is needed, so logging does not slow the step down.
        ``metric_attribute`` (Lightning's) names the attribute holding a logged torchmetrics
        ``Metric``; fulmen finds the metric by the object itself and does not need it.
        """
        store = self._log_store
        if store is None:
            if self._trainer is None:
                warn_once(
                    "self.log() was called on a system that is not attached to a Trainer; the value is "
                    "ignored. Run the system through Trainer.fit/validate/test to record metrics.",
                    key="log-without-trainer",
                )
                return
            raise LoggingError(
                f"self.log({name!r}, ...) was called outside the hooks that can log. Log from the *_step "
                f"methods or the on_train_*/on_validation_*/on_test_* batch and epoch hooks."
            )
        store.log(
            name,
            value,
            prog_bar,
            True if logger is None else logger,
            on_step,
            on_epoch,
            reduce_fx,
            enable_graph,
            batch_size,
            add_dataloader_idx,
            sync_dist,
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: bool | None = None,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: int | None = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``self.log`` for each key and value of ``dictionary``, with the same settings. A
        torchmetrics ``MetricCollection`` logs each of its metrics (names with the collection's
        prefix and postfix), each computed and reset like a single metric object."""
        if isinstance(dictionary, Mapping):
            items = dictionary.items()
        elif _is_metric_collection(dictionary):
            items = dictionary.items(keep_base=False, copy_state=False)
        else:
            raise LoggingError(
                f"self.log_dict(dictionary): expected a mapping of names to values or a torchmetrics "
                f"MetricCollection, got {type(dictionary).__name__}."
            )
        for name, value in items:
            self.log(
                name,
                value,
                prog_bar=prog_bar,
                logger=logger,
                on_step=on_step,
                on_epoch=on_epoch,
                reduce_fx=reduce_fx,
                enable_graph=enable_graph,
                sync_dist=sync_dist,
                sync_dist_group=sync_dist_group,
                add_dataloader_idx=add_dataloader_idx,
                batch_size=batch_size,
                rank_zero_only=rank_zero_only,
            )

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the main process only."""
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)

    # -- optimizers -----------------------------------------------------------------------------
    def optimizers(self, use_fulmen_optimizer: bool = True) -> Any:
        """The optimizer(s) from ``configure_optimizers`` (one, or a list when several).

        For manual optimization: each is wrapped so that ``opt.step()`` goes through the run's
        precision (loss scaling) and counts in ``global_step``; ``use_fulmen_optimizer=False``
        returns the torch optimizers themselves.
        """
        from fulmen.trainer._optim import ManualOptimizer

        opts: list[Any] = list(self.trainer.optimizers)
        if use_fulmen_optimizer:
            opts = [ManualOptimizer(o, self.trainer, self) for o in opts]
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self) -> Any:
        """The learning-rate scheduler(s) from ``configure_optimizers``, or None."""
        scheds = [cfg.scheduler for cfg in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` for manual optimization, with the run's loss scaling (16-mixed) and
        the ``on_before_backward`` / ``on_after_backward`` hooks."""
        from fulmen.trainer._hooks import call_hooks

        trainer = self.trainer
        if self.automatic_optimization:
            name = type(self).__name__
            raise RuntimeError(
                f"{name}.manual_backward(loss) is for manual optimization, but {name} uses automatic optimization: "
                f"fulmen calls backward on the loss training_step returns, so the gradients would be computed twice. "
                f"Return the loss instead, or set self.automatic_optimization = False in {name}.__init__ and step "
                f"self.optimizers() yourself."
            )
        hooks = trainer._hooks
        if hooks is not None and hooks.on_before_backward:
            call_hooks(hooks.on_before_backward, loss)
        precision = trainer.strategy.precision
        if self._backward_hook:  # a Lightning-style backward override computes the gradients
            scaled = precision.scaler.scale(loss) if precision.scales_loss else loss  # type: ignore[attr-defined]
            self.backward(scaled, *args, **kwargs)  # type: ignore[operator]
        else:
            trainer.strategy.backward(loss, *args, **kwargs)
        if hooks is not None and hooks.on_after_backward:
            call_hooks(hooks.on_after_backward)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Only ``optimizer``'s parameters require grad until ``untoggle_optimizer`` (so that a
        GAN's generator loss does not fill the discriminator's gradients)."""
        opt = getattr(optimizer, "optimizer", optimizer)
        mine = {id(p) for group in opt.param_groups for p in group["params"]}
        if self._toggled is None:
            self._toggled = {p: p.requires_grad for p in self.parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in mine and self._toggled[p])

    def untoggle_optimizer(self, optimizer: Any = None) -> None:
        """Give every parameter back the ``requires_grad`` it had before ``toggle_optimizer``."""
        if self._toggled is not None:
            for p, flag in self._toggled.items():
                p.requires_grad_(flag)
            self._toggled = None

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``with self.toggled_optimizer(opt):`` toggles ``opt`` for the block and untoggles it
        afterwards, also when the block raises."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters: by their total 2-norm (``"norm"``,
        the default) or each value to ``[-val, val]`` (``"value"``). Under 16-mixed the
        gradients are unscaled first."""
        from fulmen.trainer._validate import check_clip

        if gradient_clip_val is None:
            return
        algorithm = check_clip(
            gradient_clip_val, "norm" if gradient_clip_algorithm is None else gradient_clip_algorithm, "clip_gradients"
        )
        opt = getattr(optimizer, "optimizer", optimizer)
        self.trainer.strategy.precision.unscale(opt)
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not params or gradient_clip_val == 0:
            return
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)  # no host sync: scales on device
        else:
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Called before each optimizer step (automatic optimization) with the Trainer's
        ``gradient_clip_val`` / ``gradient_clip_algorithm``; override to clip per optimizer or
        your own way."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step ``scheduler`` (with ``metric`` for schedulers that monitor one); override for
        schedulers that are not torch's."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- freezing and export ---------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop training the whole system: every parameter ``requires_grad=False``, and eval mode
        (e.g. a pretrained feature extractor inside another system)."""
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Undo ``freeze``: every parameter ``requires_grad=True``, and train mode."""
        for p in self.parameters():
            p.requires_grad = True
        self.train()

    def to_torchscript(
        self,
        file_path: str | os.PathLike[str] | None = None,
        method: str = "script",
        example_inputs: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The system compiled by TorchScript, in eval mode: ``torch.jit.script`` (``method="script"``)
        or ``torch.jit.trace`` (``method="trace"``, on ``example_inputs``, by default
        ``example_input_array``, moved to the system's device). Saved with ``torch.jit.save`` when
        ``file_path`` is given; ``kwargs`` go to ``torch.jit.script`` / ``torch.jit.trace``.

        The export runs without gradients; every module's train/eval mode is restored afterwards.
        """
        if method not in ("script", "trace"):
            raise ValueError(f"to_torchscript(method={method!r}): expected 'script' or 'trace'.")
        if method == "trace":
            example_inputs = self._example_for_export("to_torchscript(method='trace')", example_inputs, "example_inputs")
        with _exporting(self):
            if method == "script":
                module = torch.jit.script(self, **kwargs)
            else:
                module = torch.jit.trace(self, example_inputs=example_inputs, **kwargs)
        if file_path is not None:
            torch.jit.save(module, os.fspath(file_path))
        return module

    def to_onnx(self, file_path: str | os.PathLike[str], input_sample: Any = None, **kwargs: Any) -> Any:
        """Export the system to an ONNX file with ``torch.onnx.export`` (``kwargs`` go to it, e.g.
        ``dynamo=False`` for the TorchScript-based exporter, ``input_names``, ``dynamic_axes``).

        ``input_sample`` (by default ``example_input_array``) is a tensor, a tuple of positional
        arguments or a dict of keyword arguments of ``forward``; it is moved to the system's device.
        The export runs in eval mode without gradients; every module's mode is restored afterwards.
        Needs the ``onnx`` package (and ``onnxscript`` for torch's default, dynamo-based exporter).
        Returns what ``torch.onnx.export`` returns (an ``ONNXProgram`` with the dynamo exporter).
        """
        sample = self._example_for_export("to_onnx", input_sample, "input_sample")
        _check_onnx_packages(kwargs.get("dynamo"))
        if isinstance(sample, Mapping):
            args: tuple[Any, ...] = ()
            kwargs["kwargs"] = {**dict(sample), **kwargs.get("kwargs", {})}
        else:
            args = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
        with _exporting(self):
            return torch.onnx.export(self, args, os.fspath(file_path), **kwargs)

    def export(self, file_path: str | os.PathLike[str], input: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Export to ``file_path`` (.onnx, .pt2 or .safetensors), checked in the file's own runtime
        against this system before it is kept, with a model card beside it; returns the card.
        ``input`` (default ``example_input_array``) and ``kwargs`` (``rtol``, ``atol``, ``force``,
        ``source``) as for ``fulmen.export.export`` (docs/deploy.md)."""
        from fulmen.export import export

        return export(self, file_path, input=input, **kwargs)

    def _example_for_export(self, entry: str, given: Any, argument: str) -> Any:
        """``given`` (or ``example_input_array``) through the batch transfer hooks, on the device."""
        sample = self.example_input_array if given is None else given
        if sample is None:
            raise ValueError(
                f"{type(self).__name__}.{entry} needs an example input: pass {argument}=... or set "
                f"self.example_input_array in __init__."
            )
        sample = self.on_before_batch_transfer(sample, 0)
        sample = self.transfer_batch_to_device(sample, self.device, 0)
        return self.on_after_batch_transfer(sample, 0)

    # -- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = None,
        strict: bool | None = None,
        verify: bool = True,
        *,
        weights_only: bool | None = None,
        trusted_keys: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Build the system from a checkpoint's hyperparameters and load its weights.

        ``verify`` checks the checkpoint's stored digest against its contents (turn it off to save
        time on large, trusted files). ``strict`` (passed to ``load_state_dict``) defaults to the
        system's ``strict_loading`` (True unless the class or its ``__init__`` sets it to False).

        The file is read with ``torch.load(weights_only=True)``: a checkpoint cannot run code when
        loaded. ``weights_only`` (as in Lightning) may be None or True; any other value raises
        ``ValueError``. ``kwargs`` override saved hyperparameters (or supply those that were not saved).
        ``configure_model`` (when overridden) runs before the weights are loaded, so layers it builds
        or compiles receive them. The system is returned in eval mode on ``map_location`` (CPU by
        default).

        ``trusted_keys`` (a public key or several: paths, PEM bytes or key objects; see
        ``docs/signing.md``): refuse the checkpoint (``UntrustedCheckpointError``) unless a signature
        by one of them (``fulmen sign``) covers its content digest. None: no signature is checked.
        """
        from fulmen.checkpoint.io import check_weights_only, load_checkpoint

        check_weights_only(f"{cls.__name__}.load_from_checkpoint", weights_only)
        ckpt = load_checkpoint(checkpoint_path, map_location=map_location or "cpu", verify=verify)
        if trusted_keys is not None:
            from fulmen.checkpoint.signing import require_trusted

            require_trusted(checkpoint_path, ckpt, trusted_keys, verified=verify)
        hparams = hparams_for_init(dict(ckpt.get("hyper_parameters") or {}), kwargs, cls, ckpt.get("hparams_name"))
        try:
            system = cls(**hparams)
        except TypeError as err:
            raise TypeError(
                f"{cls.__name__}.load_from_checkpoint({os.fspath(checkpoint_path)!r}): could not build "
                f"{cls.__name__}(**{sorted(hparams)}) from the saved hyperparameters: {err}. Call "
                f"self.save_hyperparameters() in __init__ when training, or pass the missing arguments "
                f"as keyword arguments here."
            ) from err
        system.on_load_checkpoint(ckpt)
        if overrides(system, "configure_model", System):
            # As in Lightning: layers built in configure_model exist before the weights load (and
            # a later Trainer run does not call it again).
            system.configure_model()
            system.__dict__["_model_configured"] = True
        strict = system.strict_loading if strict is None else strict
        system.load_state_dict(_own_keys(ckpt["state_dict"], system), strict=strict)
        if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
            system.to(map_location)
        return system.eval()

    # -- hooks: steps -----------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Compute and return the loss for one batch: a scalar tensor, a dict with ``"loss"``, or
        None to skip the batch."""
        raise NotImplementedError(
            f"{type(self).__name__} has no training_step. Define training_step(self, batch, batch_idx) "
            f"returning the loss to train with Trainer.fit."
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        """One validation batch; log metrics with ``self.log``."""

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        """One test batch; log metrics with ``self.log``."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """One prediction batch; the default calls ``self(batch)``."""
        return self(batch)

    def configure_optimizers(self) -> Any:
        """Return the optimizer (or a dict ``{"optimizer": ..., "lr_scheduler": ...}``)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no configure_optimizers. Define it and return an optimizer, e.g. "
            f"`return torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )

    def configure_model(self) -> None:
        """Create or transform layers once the Trainer runs (after ``setup``, before the model
        moves to its device): the place for ``torch.compile`` (``self.net = torch.compile(self.net)``)
        or layers too large to build in ``__init__``. Called once per system (``load_from_checkpoint``
        calls it too, before loading the weights)."""

    def configure_callbacks(self) -> Any:
        """Callbacks the system always wants (added to the Trainer's)."""
        return []

    # -- hooks: data ------------------------------------------------------------------------------
    def prepare_data(self) -> None: ...
    def train_dataloader(self) -> Any: ...
    def val_dataloader(self) -> Any: ...
    def test_dataloader(self) -> Any: ...
    def predict_dataloader(self) -> Any: ...

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``: tensors nested in lists, tuples, dicts, namedtuples and
        dataclasses, and objects with a ``.to(device)`` method."""
        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # -- hooks: lifecycle (same names as on Callback, without the trainer/system arguments) -------
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...


@contextlib.contextmanager
def _exporting(system: nn.Module) -> Iterator[None]:
    """Eval mode without gradients; every module's train/eval mode restored afterwards. While it
    lasts, ``system.trainer`` is None instead of raising (the exporters read every attribute)."""
    modes = [(m, m.training) for m in system.modules()]
    systems = [m for m, _ in modes if isinstance(m, System)]  # (a frozen System inside another, too)
    system.eval()
    for s in systems:
        s.__dict__["_exporting"] = True
    try:
        with torch.no_grad():
            yield
    finally:
        for s in systems:
            s.__dict__.pop("_exporting", None)
        for module, training in modes:
            module.training = training


def _check_onnx_packages(dynamo: bool | None) -> None:
    """A clear error, before exporting, when a package ``torch.onnx.export`` needs is missing."""
    import importlib.util

    if dynamo is None:  # torch's own default (the dynamo-based exporter from torch 2.9 on)
        param = inspect.signature(torch.onnx.export).parameters.get("dynamo")
        dynamo = param is not None and param.default is True
    needed = ["onnx", "onnxscript"] if dynamo else ["onnx"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        alternative = " (or pass dynamo=False for the TorchScript-based exporter, which needs onnx only)" if dynamo else ""
        raise ModuleNotFoundError(
            f"to_onnx needs {' and '.join(missing)}, not installed: pip install {' '.join(needed)}{alternative}."
        )


def _own_keys(state_dict: Mapping[str, Any], system: nn.Module) -> Mapping[str, Any]:
    """``state_dict`` with the system's own names for compiled submodules.

    Checkpoints keep plain names; a submodule that ``torch.compile`` wrapped has ``._orig_mod``
    in its keys, so ``net.0.weight`` is loaded as ``net._orig_mod.0.weight``.
    """
    own = {k.replace("._orig_mod", ""): k for k in system.state_dict() if "._orig_mod" in k}
    if not own:
        return state_dict
    return {own.get(k, k): v for k, v in state_dict.items()}


def _is_metric_collection(value: Any) -> bool:
    """A torchmetrics ``MetricCollection`` (without importing torchmetrics when nobody has)."""
    torchmetrics = sys.modules.get("torchmetrics")
    return torchmetrics is not None and isinstance(value, torchmetrics.MetricCollection)
