"""Reading what ``configure_optimizers`` returned, and stepping learning-rate schedulers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.optim import Optimizer

from fulmen.errors import HookReturnError, MisconfigurationError, warn_once

_FORMS = (
    "an optimizer; a list of optimizers; a tuple (list of optimizers, list of schedulers); a dict "
    '{"optimizer": optimizer, "lr_scheduler": scheduler or {"scheduler": ..., "interval": "epoch"|"step", '
    '"frequency": 1, "monitor": "val_loss"}}; or a list of such dicts'
)


@dataclasses.dataclass
class SchedulerConfig:
    """A scheduler and when to step it."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None
    #: True for ReduceLROnPlateau (or when the user says so, for a scheduler of their own that
    #: monitors a metric, as in Lightning).
    reduce_on_plateau: bool = False
    #: Whether ``lr_scheduler_step`` receives the monitored metric: plateau schedulers and custom
    #: (non-torch) schedulers with a ``monitor``. A torch ``LRScheduler`` never does: its
    #: ``step(x)`` would take the metric for an epoch number. Derived from the fields above, so
    #: left out of ``==`` (a config compares equal to one written with Lightning's fields only).
    takes_metric: bool = dataclasses.field(default=False, compare=False)


#: The keys of an ``"lr_scheduler"`` dict (Lightning's ``LRSchedulerConfig`` fields).
_SCHEDULER_KEYS = ("scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau")


class MissingMetricError(MisconfigurationError, KeyError):
    """A scheduler's monitored metric was not logged (a ``KeyError`` whose message reads as
    written: ``KeyError`` itself would print the repr of its message, escaping every quote)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _bad(got: Any, why: str = "") -> HookReturnError:
    return HookReturnError(
        f"configure_optimizers returned {type(got).__name__}{f' ({why})' if why else ''}; expected {_FORMS}."
    )


def _scheduler_config(value: Any) -> SchedulerConfig:
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    if isinstance(value, Mapping):
        if "scheduler" not in value:
            raise HookReturnError(
                f'configure_optimizers: an "lr_scheduler" dict needs a "scheduler" key, got keys {sorted(value)}.'
            )
        unknown = set(value) - set(_SCHEDULER_KEYS)
        if unknown:
            raise HookReturnError(
                f"configure_optimizers: unknown lr_scheduler keys {sorted(map(str, unknown))}; allowed: "
                f"{', '.join(_SCHEDULER_KEYS)}."
            )
        cfg = SchedulerConfig(**value)
        plateau = value.get("reduce_on_plateau")
    else:
        cfg = SchedulerConfig(value)
        plateau = None
    if cfg.interval not in ("epoch", "step"):
        raise HookReturnError(
            f'configure_optimizers: lr_scheduler "interval" must be "epoch" or "step", got {cfg.interval!r}.'
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise HookReturnError(f'configure_optimizers: lr_scheduler "frequency" must be an int >= 1, got {cfg.frequency!r}.')
    if cfg.monitor is not None and not isinstance(cfg.monitor, str):
        raise HookReturnError(
            f'configure_optimizers: lr_scheduler "monitor" must be the name of a logged metric (a str), got '
            f"{cfg.monitor!r}."
        )
    if not hasattr(cfg.scheduler, "step"):
        raise HookReturnError(
            f"configure_optimizers: the lr scheduler must have a step() method, got {type(cfg.scheduler).__name__}."
        )
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, ReduceLROnPlateau) if plateau is None else bool(plateau)
    cfg.takes_metric = cfg.monitor is not None and (
        cfg.reduce_on_plateau or not isinstance(cfg.scheduler, LRScheduler)
    )
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise HookReturnError(
            'configure_optimizers: ReduceLROnPlateau needs a metric: return {"optimizer": opt, "lr_scheduler": '
            '{"scheduler": sched, "monitor": "val_loss"}} with the name of a logged metric.'
        )
    return cfg


def parse_optimizers(result: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """The optimizers and scheduler configs in any of the forms users return."""
    if result is None:
        raise HookReturnError(
            f"configure_optimizers returned None; expected {_FORMS}. Return e.g. "
            f"`torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )
    if isinstance(result, Optimizer):
        return [result], []
    if isinstance(result, Mapping):
        return _from_dicts([result])
    if isinstance(result, (list, tuple)):
        items = list(result)
        if not items:
            raise _bad(result, "empty")
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            # (optimizers, schedulers); as in Lightning the second may be one scheduler or dict
            opts = list(items[0])
            if not opts or not all(isinstance(o, Optimizer) for o in opts):
                raise _bad(result, "the first list must hold optimizers")
            scheds = list(items[1]) if isinstance(items[1], (list, tuple)) else [items[1]]
            return opts, [_scheduler_config(s) for s in scheds]
        if all(isinstance(x, Mapping) for x in items):
            return _from_dicts(items)
        if all(isinstance(x, Optimizer) for x in items):
            return items, []
        raise _bad(result, f"holding {', '.join(sorted({type(x).__name__ for x in items}))}")
    raise _bad(result)


def _from_dicts(dicts: Sequence[Mapping[str, Any]]) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    opts: list[Optimizer] = []
    scheds: list[SchedulerConfig] = []
    for d in dicts:
        opt = d.get("optimizer")
        if not isinstance(opt, Optimizer):
            raise HookReturnError(
                f'configure_optimizers returned a dict whose "optimizer" is {type(opt).__name__}; it must be a '
                f"torch.optim.Optimizer (keys given: {sorted(d)})."
            )
        unknown = set(d) - {"optimizer", "lr_scheduler", "monitor"}
        if unknown:
            raise HookReturnError(
                f"configure_optimizers returned a dict with unknown keys {sorted(unknown)}; allowed: optimizer, "
                f"lr_scheduler, monitor."
            )
        opts.append(opt)
        if d.get("lr_scheduler") is not None:
            sched = d["lr_scheduler"]
            if not isinstance(sched, Mapping) and d.get("monitor") is not None:
                sched = {"scheduler": sched, "monitor": d["monitor"]}
            scheds.append(_scheduler_config(sched))
    return opts, scheds


def step_schedulers(
    system: Any,
    configs: Sequence[SchedulerConfig],
    interval: str,
    count: int,
    metrics: Callable[[], Mapping[str, Any]],
) -> None:
    """Step the schedulers of ``interval`` whose ``frequency`` divides ``count`` (epochs or steps
    done), through the system's ``lr_scheduler_step`` hook.

    ``metrics`` returns the values plateau schedulers monitor; it is called only when one steps.
    """
    for cfg in configs:
        if cfg.interval != interval or count % cfg.frequency:
            continue
        value = None
        if cfg.takes_metric:
            logged = metrics()
            value = logged.get(cfg.monitor)  # type: ignore[arg-type]
            if value is None:
                if cfg.strict:
                    raise MissingMetricError(
                        f"The lr scheduler {type(cfg.scheduler).__name__} monitors {cfg.monitor!r}, which was not "
                        f"logged. Logged metrics: {sorted(logged) or 'none'}. Log it with self.log({cfg.monitor!r}, "
                        f'...) or set "strict": False in the lr_scheduler dict to skip the step when it is missing. '
                        f"If validation does not run every epoch (check_val_every_n_epoch), give the scheduler the "
                        f'same "frequency".'
                    )
                continue
        system.lr_scheduler_step(cfg.scheduler, value)


def setup_optimizers(trainer: Any, system: Any) -> None:
    """Call ``configure_optimizers``, check what it returned against the system, and store the
    optimizers and schedulers on the trainer."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    from fulmen.system import System
    from fulmen.trainer._hooks import overrides

    optimizers, schedulers = parse_optimizers(system.configure_optimizers())
    name = type(system).__name__
    if len(optimizers) > 1 and system.automatic_optimization:
        raise HookReturnError(
            f"configure_optimizers returned {len(optimizers)} optimizers; automatic optimization steps one. For "
            f"several (a GAN's generator and discriminator), set self.automatic_optimization = False in "
            f"{name}.__init__ and step them in training_step (see docs/optimization.md)."
        )
    own = {id(p) for p in system.parameters()}
    for i, opt in enumerate(optimizers):
        params = [p for group in opt.param_groups for p in group["params"]]
        foreign = [p for p in params if id(p) not in own]
        if foreign and len(foreign) == len(params):
            raise HookReturnError(
                f"configure_optimizers: optimizer {i} ({type(opt).__name__}) holds none of {name}'s parameters "
                f"({len(params)} others). Build it from self.parameters() (or a submodule's), after the layers are "
                f"created."
            )
        if foreign:
            warn_once(
                f"configure_optimizers: optimizer {i} ({type(opt).__name__}) holds {len(foreign)} of its "
                f"{len(params)} parameters that are not {name}'s (of another module, or of layers kept in a plain "
                f"list or dict attribute). They are trained but not moved to the device with the system, nor saved "
                f"in checkpoints. Register them: make the layers attributes of the system, or use nn.ModuleList / "
                f"nn.ModuleDict / nn.Parameter.",
                key=f"foreign-params-{name}-{i}",
            )
    ids = {id(o) for o in optimizers}
    custom_step = overrides(system, "lr_scheduler_step", System)
    for cfg in schedulers:
        bound = getattr(cfg.scheduler, "optimizer", None)
        if bound is not None and id(bound) not in ids:
            raise HookReturnError(
                f"configure_optimizers: the scheduler {type(cfg.scheduler).__name__} is bound to an optimizer "
                f"({type(bound).__name__}) that configure_optimizers did not return. Create the scheduler from "
                f"the optimizer you return."
            )
        if not isinstance(cfg.scheduler, (LRScheduler, ReduceLROnPlateau)) and not custom_step:
            raise HookReturnError(
                f"configure_optimizers: {type(cfg.scheduler).__name__} is not a torch lr scheduler, so fulmen does "
                f"not know how to step it. Define {name}.lr_scheduler_step(self, scheduler, metric) to step it."
            )
        missing = [m for m in ("state_dict", "load_state_dict") if not callable(getattr(cfg.scheduler, m, None))]
        if missing:  # checkpoints save every scheduler's state
            raise HookReturnError(
                f"configure_optimizers: the lr scheduler {type(cfg.scheduler).__name__} has no "
                f"{' or '.join(m + '()' for m in missing)}; checkpoints save and restore each scheduler's state. "
                f"Define state_dict(self) -> dict and load_state_dict(self, state) on it."
            )
    trainer.optimizers, trainer.lr_scheduler_configs = optimizers, schedulers


class ManualOptimizer:
    """What ``self.optimizers()`` returns: the optimizer, stepped through the run's precision.

    ``step()`` unscales and steps through the precision (loss scaling under 16-mixed), fires
    ``on_before_optimizer_step`` and counts the step in ``trainer.global_step`` (each optimizer's
    step counts, as in Lightning); ``zero_grad()`` fires ``on_before_zero_grad``. Everything else
    (``param_groups``, ``state``, ``state_dict``) is the wrapped optimizer's.
    """

    def __init__(self, optimizer: Optimizer, trainer: Any, system: Any = None) -> None:
        self._optimizer = optimizer
        self._trainer = trainer
        #: The system that asked for it, when it uses automatic optimization: step() is refused.
        self._automatic = system if system is not None and system.automatic_optimization else None

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """Step the optimizer (see the class docstring); ``kwargs`` go to the optimizer's own
        ``step``. Returns what that returns (None when the run's loss scaling takes the step)."""
        from fulmen.trainer._hooks import call_hooks

        trainer, opt = self._trainer, self._optimizer
        if self._automatic is not None and self._automatic.automatic_optimization:
            name = type(self._automatic).__name__
            raise RuntimeError(
                f"self.optimizers().step() was called, but {name} uses automatic optimization: fulmen already "
                f"steps {type(opt).__name__} after each backward, so every batch would step twice (and "
                f"global_step count double). Remove the call and return the loss from training_step, or set "
                f"self.automatic_optimization = False in {name}.__init__ to step the optimizers yourself."
            )
        precision = trainer.strategy.precision
        hooks = trainer._hooks
        if precision.scales_loss:
            precision.unscale(opt)
        if hooks is not None and hooks.on_before_optimizer_step:
            call_hooks(hooks.on_before_optimizer_step, opt)
            if trainer._skip_optimizer_step:  # a callback asked to skip this step (NonFiniteGuard)
                trainer._skip_optimizer_step = False
                precision.discard_step(opt)
                trainer.global_step += 1  # (counted, as a step skipped by loss scaling is)
                return None
        if closure is not None:
            if precision.scales_loss:
                raise RuntimeError(
                    f"{type(opt).__name__}.step(closure) under precision='16-mixed': loss scaling cannot re-run a "
                    f"closure. Use 'bf16-mixed' or '32-true' with closure-based optimizers such as LBFGS."
                )
            result = opt.step(closure=closure, **kwargs)
        elif precision.scales_loss:
            if kwargs:
                raise TypeError(
                    f"{type(opt).__name__}.step({', '.join(f'{k}=...' for k in kwargs)}) under precision='16-mixed': "
                    f"the loss scaler steps the optimizer and takes no extra step arguments."
                )
            precision.optimizer_step(opt, report_skipped=False)
            result = None
        else:  # (what the precision's step does without loss scaling; the optimizer's return value kept)
            result = opt.step(**kwargs)
        trainer.global_step += 1
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        from fulmen.trainer._hooks import call_hooks

        hooks = self._trainer._hooks
        if hooks is not None and hooks.on_before_zero_grad:
            call_hooks(hooks.on_before_zero_grad, self._optimizer)
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"ManualOptimizer({self._optimizer!r})"


class StepClosure:
    """The ``optimizer_closure`` a Lightning-style ``optimizer_step`` override receives: fulmen has
    already run ``training_step`` and ``backward``, so calling it returns that step's loss."""

    __slots__ = ("loss",)

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def __call__(self) -> Any:
        return self.loss


class ClosureStep:
    """The optimizer a Lightning-style ``optimizer_step(epoch, batch_idx, optimizer, closure)``
    override receives: ``step(closure)`` calls the closure (fulmen already ran the forward and
    backward, so it only returns the loss) and steps through the run's precision; everything else
    is the optimizer's."""

    def __init__(self, optimizer: Optimizer, precision: Any, report_skipped: bool) -> None:
        self._optimizer, self._precision, self._report = optimizer, precision, report_skipped
        self.stepped = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        result = closure() if closure is not None else None
        self.stepped = self._precision.optimizer_step(self._optimizer, self._report) or not self._report
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)
