"""The ``Callback`` base class: code that hooks into a run without living in the system."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulmen.trainer._hooks import CALLBACK_HOOKS, check_hook_names

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class Callback:
    """Override any hook below; each receives the trainer and the system first.

    Only hooks a subclass overrides are ever called (the trainer builds its dispatch tables once
    per run), so an unused hook costs nothing. A misspelt hook name (``on_train_batch_ned``)
    raises ``TypeError`` when the class is defined.

    A callback's role is said by class attributes, so a subclass keeps it:

    - ``monitors = True``: the callback acts on logged metrics (checkpointing, early stopping); it
      runs after the system's own hook, so it sees what the system logged in that same hook. Other
      callbacks run before the system, in list order.
    - ``saves_checkpoints = True`` (``ModelCheckpoint``): a monitoring callback that writes
      checkpoints from its hooks; it runs after the other monitoring callbacks, so the checkpoint
      it writes in a hook holds what they (e.g. ``EarlyStopping``) decided in that same hook.
    - ``limits_time = True`` (``Timer``): the callback ends training when a time budget is spent,
      so ``fit`` without ``max_epochs``/``max_steps`` does not warn that it stops after 1000 epochs.

    A stateful callback returns its state from ``state_dict`` and takes it back in
    ``load_state_dict``; the state is stored in checkpoints under ``state_key``.

    The hooks called at most a few times per epoch (``setup``, ``on_fit_start``,
    ``on_train_epoch_end``, ...; not the per-batch ones) take the system also under PyTorch
    Lightning's keyword, ``callback.setup(trainer=t, pl_module=m, stage="fit")``, and a callback
    written with Lightning's parameter name ``pl_module`` takes ``system=`` too.
    """

    monitors: bool = False
    saves_checkpoints: bool = False
    limits_time: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_hook_names(cls, CALLBACK_HOOKS, strict=True)
        _accept_both_keywords(cls)

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (the class name by default)."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    # -- logging from a hook (as in Lightning) -------------------------------------------------
    # When a run is set up, the Trainer gives each callback instance ``log`` and ``log_dict``: the
    # running system's own (so ``self.log(...)`` in a hook logs with the hook's defaults, e.g. per
    # step in ``on_train_batch_end``). They are instance attributes, as in Lightning, not methods
    # of the class: the class's public functions are exactly its hooks and its state methods.
    def __getattr__(self, name: str) -> Any:
        if name in ("log", "log_dict"):
            raise AttributeError(
                f"{type(self).__name__}.{name}(...) was called outside a run: a callback logs from its hooks, "
                f"through the system the Trainer is running (trainer.fit/validate/test sets it up)."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None: ...
    def teardown(self, trainer: Trainer, system: System, stage: str) -> None: ...
    def on_fit_start(self, trainer: Trainer, system: System) -> None: ...
    def on_fit_end(self, trainer: Trainer, system: System) -> None: ...
    def on_sanity_check_start(self, trainer: Trainer, system: System) -> None: ...
    def on_sanity_check_end(self, trainer: Trainer, system: System) -> None: ...
    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None: ...

    # -- training ----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, system: System) -> None: ...
    def on_train_end(self, trainer: Trainer, system: System) -> None: ...
    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None: ...
    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None: ...
    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...
    def on_before_backward(self, trainer: Trainer, system: System, loss: Tensor) -> None: ...
    def on_after_backward(self, trainer: Trainer, system: System) -> None: ...
    def on_before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Optimizer) -> None: ...
    def on_before_zero_grad(self, trainer: Trainer, system: System, optimizer: Optimizer) -> None: ...

    # -- validation --------------------------------------------------------------------------
    def on_validation_start(self, trainer: Trainer, system: System) -> None: ...
    def on_validation_end(self, trainer: Trainer, system: System) -> None: ...
    def on_validation_epoch_start(self, trainer: Trainer, system: System) -> None: ...
    def on_validation_epoch_end(self, trainer: Trainer, system: System) -> None: ...
    def on_validation_batch_start(
        self, trainer: Trainer, system: System, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_validation_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    # -- test --------------------------------------------------------------------------------
    def on_test_start(self, trainer: Trainer, system: System) -> None: ...
    def on_test_end(self, trainer: Trainer, system: System) -> None: ...
    def on_test_epoch_start(self, trainer: Trainer, system: System) -> None: ...
    def on_test_epoch_end(self, trainer: Trainer, system: System) -> None: ...
    def on_test_batch_start(
        self, trainer: Trainer, system: System, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_test_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    # -- predict -----------------------------------------------------------------------------
    def on_predict_start(self, trainer: Trainer, system: System) -> None: ...
    def on_predict_end(self, trainer: Trainer, system: System) -> None: ...
    def on_predict_epoch_start(self, trainer: Trainer, system: System) -> None: ...
    def on_predict_epoch_end(self, trainer: Trainer, system: System) -> None: ...
    def on_predict_batch_start(
        self, trainer: Trainer, system: System, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_predict_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, system: System, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, trainer: Trainer, system: System, checkpoint: dict[str, Any]) -> None: ...


#: Hooks whose system parameter also answers to the other name (``system`` / ``pl_module``):
#: those called at most a few times per epoch, so the keyword translation never runs per batch.
_KEYWORD_HOOKS = tuple(
    h
    for h in CALLBACK_HOOKS
    if "batch" not in h
    and h not in ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")
)
_OTHER_NAME = {"system": "pl_module", "pl_module": "system"}


def _accept_both_keywords(cls: type) -> None:
    for name in _KEYWORD_HOOKS:
        fn = cls.__dict__.get(name)
        if inspect.isfunction(fn):
            setattr(cls, name, _with_other_keyword(fn))


def _with_other_keyword(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a hook ``(self, trainer, system, ...)``) also taking its third parameter under the
    other name: ``pl_module=`` for ``system``, ``system=`` for ``pl_module``. ``fn`` itself when
    its parameters are named otherwise or it takes ``**kwargs``."""
    if getattr(fn, "_fulmen_both_keywords", False):
        return fn
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    if len(params) < 3 or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fn
    own = params[2].name
    other = _OTHER_NAME.get(own)
    if other is None or any(p.name == other for p in params):
        return fn

    @functools.wraps(fn)
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        if other in kwargs:
            kwargs[own] = kwargs.pop(other)
        return fn(self, *args, **kwargs)

    hook._fulmen_both_keywords = True  # type: ignore[attr-defined]
    return hook


_accept_both_keywords(Callback)

