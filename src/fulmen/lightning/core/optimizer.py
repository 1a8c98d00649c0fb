"""``lightning.pytorch.core.optimizer``: ``LightningOptimizer`` (what ``self.optimizers()`` returns in a
``fulmen.lightning.LightningModule``) and Lightning's helpers that read ``configure_optimizers``.

``LightningOptimizer(optimizer)`` is an instance of a class made for the optimizer's own class
(``LightningSGD`` for an ``SGD``, a subclass of both), so ``isinstance(opt, torch.optim.SGD)``
holds and ``str(opt)`` is ``"Lightning" + str(optimizer)``. ``param_groups``, ``state`` and
``defaults`` are the wrapped optimizer's own objects (reading, assigning and mutating them is
reading, assigning and mutating the optimizer's); ``state_dict``, ``load_state_dict`` and
``add_param_group`` are the optimizer's. ``step`` and ``zero_grad`` of one handed out by
``self.optimizers()`` go through fulmen's manual-optimization bookkeeping (the run's precision,
``on_before_optimizer_step`` / ``on_before_zero_grad``, ``trainer.global_step``); one built by
hand steps the optimizer directly.

The ``_configure_*`` / ``_init_optimizers_and_lr_schedulers`` helpers are Lightning internals that
its tests call; here they run fulmen's own parsing of what ``configure_optimizers`` returns
(``fulmen.trainer._optim``), and give fulmen's ``SchedulerConfig`` (``LRSchedulerConfig``).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch.optim import Optimizer

from fulmen.trainer._optim import (
    ManualOptimizer,
    SchedulerConfig,
    _scheduler_config,
    parse_optimizers,
    setup_optimizers,
)

__all__ = ["LightningOptimizer"]

_CLASSES: dict[tuple[type, type], type] = {}


class LightningOptimizer:
    """An optimizer seen through Lightning's wrapper (see the module docstring)."""

    _optimizer: Optimizer
    _stepper: ManualOptimizer | None
    _system: Any

    def __new__(cls, optimizer: Optimizer, *args: Any, **kwargs: Any) -> LightningOptimizer:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"LightningOptimizer(optimizer): expected a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        base = type(optimizer)
        made = _CLASSES.get((cls, base))
        if made is None:  # e.g. LightningSGD(LightningOptimizer, SGD): the wrapper's methods come first
            made = _CLASSES[(cls, base)] = type(f"Lightning{base.__name__}", (cls, base), {"__module__": cls.__module__})
        return object.__new__(made)

    def __init__(self, optimizer: Optimizer, _stepper: ManualOptimizer | None = None, _system: Any = None) -> None:
        # (the wrapped optimizer's own __init__ is not run: its state is the wrapped one's)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        object.__setattr__(self, "_optimizer", optimizer)
        object.__setattr__(self, "_stepper", _stepper)
        object.__setattr__(self, "_system", _system)

    @classmethod
    def _for_run(cls, optimizer: Optimizer, trainer: Any, system: Any) -> LightningOptimizer:
        """The wrapper ``self.optimizers()`` hands out: steps go through fulmen's manual optimization."""
        return cls(optimizer, ManualOptimizer(optimizer, trainer, system), system)

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped torch optimizer."""
        return self._optimizer

    # -- the optimizer's own state, shared ----------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._optimizer.defaults = value

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        # Anything else the optimizer holds (its hooks, attributes of a custom optimizer).
        if name == "_optimizer":
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        return self._optimizer.__getstate__()

    def __reduce__(self) -> Any:
        # A copy or pickle is of the optimizer itself (the wrapper belongs to a run).
        return (_plain, (self._optimizer,))

    # -- stepping ----------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Step the optimizer (``kwargs`` go to its ``step``); returns what its ``step`` returns (the
        closure's loss with one).

        Handed out by ``self.optimizers()``: through the run's precision (unscaling under
        16-mixed), ``on_before_optimizer_step`` and ``trainer.global_step``, as fulmen's manual
        optimization steps."""
        if self._stepper is None:
            return self._optimizer.step(closure=closure, **kwargs) if closure is not None else self._optimizer.step(**kwargs)
        return self._stepper.step(closure, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._stepper is None:
            self._optimizer.zero_grad(set_to_none=set_to_none)
        else:
            self._stepper.zero_grad(set_to_none=set_to_none)

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Iterator[None]:
        """Only this optimizer's parameters require grad inside the block (the module's
        ``toggle_optimizer`` / ``untoggle_optimizer``). ``sync_grad`` is accepted for Lightning's
        signature; gradients are synchronised as fulmen's DDP does for every backward."""
        if self._system is None:
            yield
            return
        self._system.toggle_optimizer(self)
        try:
            yield
        finally:
            self._system.untoggle_optimizer(self)


def _plain(optimizer: Optimizer) -> Optimizer:
    return optimizer


# -- reading configure_optimizers (Lightning's internal helpers, on fulmen's parser) ------------------
def _configure_optimizers(optim_conf: Any) -> tuple[list[Optimizer], list[SchedulerConfig], str | None]:
    """``(optimizers, scheduler configs, monitor)`` from what ``configure_optimizers`` returned, in
    any form fulmen accepts; ``monitor`` is the one a single ``{"optimizer", "lr_scheduler",
    "monitor"}`` dict names (the configs carry their own)."""
    optimizers, configs = parse_optimizers(optim_conf, lenient=True)
    monitor = optim_conf.get("monitor") if isinstance(optim_conf, Mapping) else None
    return optimizers, configs, monitor


def _configure_schedulers_automatic_opt(
    schedulers: Sequence[Any], monitor: str | None, *, manual: bool = False
) -> list[SchedulerConfig]:
    """Scheduler configs from schedulers or ``lr_scheduler`` dicts (fulmen's checks, with
    fulmen.lightning's leniency: unknown keys warned and dropped; ``monitor`` applies to a
    scheduler given without a dict)."""
    out = []
    for scheduler in schedulers:
        if isinstance(scheduler, SchedulerConfig):
            out.append(scheduler)
        elif isinstance(scheduler, Mapping) or monitor is None:
            out.append(_scheduler_config(scheduler, lenient=True, manual=manual))
        else:
            out.append(_scheduler_config({"scheduler": scheduler, "monitor": monitor}, lenient=True, manual=manual))
    return out


def _configure_schedulers_manual_opt(schedulers: Sequence[Any]) -> list[SchedulerConfig]:
    """Scheduler configs under manual optimization: the keys only automatic optimization reads
    (monitor, strict, reduce_on_plateau) are warned about and dropped."""
    return _configure_schedulers_automatic_opt(schedulers, None, manual=True)


def _init_optimizers_and_lr_schedulers(model: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Call ``model.configure_optimizers()`` and check what it returned as ``trainer.fit`` does:
    ``(optimizers, scheduler configs)``; nothing is stored on the trainer."""
    from fulmen.lightning._rules import LIGHTNING_RULES

    found = types.SimpleNamespace(optimizers=[], lr_scheduler_configs=[], rules=LIGHTNING_RULES)
    setup_optimizers(found, model)
    return found.optimizers, found.lr_scheduler_configs
