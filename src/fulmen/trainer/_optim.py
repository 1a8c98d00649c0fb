"""Reading what ``configure_optimizers`` returned, and stepping learning-rate schedulers."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.optim import Optimizer

from fulmen.errors import HookReturnError, MisconfigurationError, warn_once
from fulmen.trainer._hooks import call_hooks

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
        f"configure_optimizers returned {type(got).__name__}{f' ({why})' if why else ''}; expected {_FORMS}. "
        f"Unknown configuration for model optimizers: return one of those forms."
    )


#: Keys of an "lr_scheduler" dict that only automatic optimization reads (fulmen.lightning warns
#: and drops them under manual optimization, where the user steps the scheduler).
_AUTOMATIC_ONLY_KEYS = ("reduce_on_plateau", "monitor", "strict")


def _lenient_warning(message: str, scope: str) -> None:
    """A RuntimeWarning (Lightning's category) where fulmen.lightning accepts what fulmen refuses;
    once per ``scope`` (a Trainer) and message, each time when there is no Trainer."""
    if scope:
        warn_once(message, RuntimeWarning, key=f"{scope}:{message}")
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _scheduler_config(value: Any, *, lenient: bool = False, manual: bool = False, scope: str = "") -> SchedulerConfig:
    """One scheduler (or ``"lr_scheduler"`` dict) as a ``SchedulerConfig``. ``lenient``
    (fulmen.lightning): unknown keys are dropped with a warning, as Lightning does, instead of
    refused. ``manual`` (manual optimization): the user steps the scheduler, so a plateau
    scheduler needs no ``monitor`` (under ``lenient`` the keys only automatic optimization reads
    are dropped with a warning)."""
    from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

    if isinstance(value, Mapping):
        if "scheduler" not in value:
            raise HookReturnError(
                f'configure_optimizers: an "lr_scheduler" dict needs a "scheduler" key, got keys {sorted(value)} (The '
                f'lr scheduler dict must have the key "scheduler": the scheduler to step). Return '
                f'{{"scheduler": sched, "interval": "epoch"}} or the scheduler itself.'
            )
        unknown = set(value) - set(_SCHEDULER_KEYS)
        if unknown and not lenient:
            raise HookReturnError(
                f"configure_optimizers: unknown lr_scheduler keys {sorted(map(str, unknown))}; allowed: "
                f"{', '.join(_SCHEDULER_KEYS)}."
            )
        if unknown:
            _lenient_warning(
                f"Found unsupported keys in the lr scheduler dict: {set(map(str, unknown))}. They are ignored (as "
                f"in Lightning), so a misspelt key (e.g. 'intervall') silently keeps its default; remove them from "
                f"the output of `configure_optimizers` (allowed: {', '.join(_SCHEDULER_KEYS)}).",
                scope,
            )
            value = {k: v for k, v in value.items() if k not in unknown}
        ignored = [k for k in value if k in _AUTOMATIC_ONLY_KEYS] if manual and lenient else []
        if ignored:
            _lenient_warning(
                f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You need to "
                f"call `lr_scheduler.step()` manually in manual optimization (self.lr_schedulers().step(...)).",
                scope,
            )
            value = {k: v for k, v in value.items() if k not in ignored}
        cfg = SchedulerConfig(**value)
        plateau = value.get("reduce_on_plateau")
    else:
        cfg = SchedulerConfig(value)
        plateau = None
    if cfg.interval not in ("epoch", "step"):
        raise HookReturnError(
            f'configure_optimizers: lr_scheduler "interval" must be "epoch" or "step", got {cfg.interval!r} '
            f'(The "interval" key in lr scheduler dict must be "step" or "epoch": the unit its "frequency" counts).'
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise HookReturnError(f'configure_optimizers: lr_scheduler "frequency" must be an int >= 1, got {cfg.frequency!r}.')
    if cfg.monitor is not None and not isinstance(cfg.monitor, str):
        raise HookReturnError(
            f'configure_optimizers: lr_scheduler "monitor" must be the name of a logged metric (a str), got '
            f"{cfg.monitor!r}."
        )
    # (manual optimization: the user steps it; fulmen.lightning: a scheduler of the user's own may be
    # stepped by a lr_scheduler_step override, which setup_optimizers checks)
    if not hasattr(cfg.scheduler, "step") and not manual and not lenient:
        raise HookReturnError(
            f"configure_optimizers: the lr scheduler must have a step() method, got {type(cfg.scheduler).__name__}."
        )
    if cfg.interval == "epoch" and isinstance(cfg.scheduler, OneCycleLR):
        _lenient_warning(
            "A `OneCycleLR` scheduler is using 'interval': 'epoch'. Are you sure you didn't mean 'interval': 'step'? "
            "OneCycleLR's total_steps usually counts optimizer steps (trainer.estimated_stepping_batches); stepped "
            "once per epoch, its schedule would hardly start.",
            scope,
        )
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, ReduceLROnPlateau) if plateau is None else bool(plateau)
    cfg.takes_metric = cfg.monitor is not None and (
        cfg.reduce_on_plateau or not isinstance(cfg.scheduler, LRScheduler)
    )
    if cfg.reduce_on_plateau and cfg.monitor is None and not manual:
        raise HookReturnError(
            'configure_optimizers: ReduceLROnPlateau needs a metric: return {"optimizer": opt, "lr_scheduler": '
            '{"scheduler": sched, "monitor": "val_loss"}} with the name of a logged metric (`configure_optimizers` '
            "must include a monitor when a `ReduceLROnPlateau` scheduler is used)."
        )
    return cfg


def parse_optimizers(
    result: Any, *, lenient: bool = False, manual: bool = False, scope: str = ""
) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """The optimizers and scheduler configs in any of the forms users return (``lenient``,
    ``manual``: see ``_scheduler_config``; ``lenient`` also drops unknown keys of an optimizer dict
    with a warning)."""
    opts: dict[str, Any] = {"lenient": lenient, "manual": manual, "scope": scope}
    if result is None:
        raise HookReturnError(
            f"configure_optimizers returned None; expected {_FORMS}. Return e.g. "
            f"`torch.optim.Adam(self.parameters(), lr=1e-3)`."
        )
    if isinstance(result, Optimizer):
        return [result], []
    if isinstance(result, Mapping):
        return _from_dicts([result], **opts)
    if isinstance(result, (list, tuple)):
        items = list(result)
        if not items:
            raise _bad(result, "empty")
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            # (optimizers, schedulers); as in Lightning the second may be one scheduler or dict
            optimizers = list(items[0])
            if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
                raise _bad(result, "the first list must hold optimizers")
            scheds = list(items[1]) if isinstance(items[1], (list, tuple)) else [items[1]]
            return optimizers, [_scheduler_config(s, **opts) for s in scheds]
        if all(isinstance(x, Mapping) for x in items):
            return _from_dicts(items, **opts)
        if all(isinstance(x, Optimizer) for x in items):
            return items, []
        raise _bad(result, f"holding {', '.join(sorted({type(x).__name__ for x in items}))}")
    raise _bad(result)


def _from_dicts(
    dicts: Sequence[Mapping[str, Any]], *, lenient: bool = False, manual: bool = False, scope: str = ""
) -> tuple[list[Optimizer], list[SchedulerConfig]]:
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
        if unknown and not lenient:
            raise HookReturnError(
                f"configure_optimizers returned a dict with unknown keys {sorted(unknown)}; allowed: optimizer, "
                f"lr_scheduler, monitor."
            )
        if unknown:
            _lenient_warning(
                f"Found unsupported keys in the optimizer configuration: {set(map(str, unknown))}. They are ignored "
                f"(as in Lightning); the keys of an optimizer dict are optimizer, lr_scheduler and monitor.",
                scope,
            )
        opts.append(opt)
        if d.get("lr_scheduler") is not None:
            sched = d["lr_scheduler"]
            if not isinstance(sched, Mapping) and d.get("monitor") is not None:
                sched = {"scheduler": sched, "monitor": d["monitor"]}
            scheds.append(_scheduler_config(sched, lenient=lenient, manual=manual, scope=scope))
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
                        f'same "frequency". (ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not '
                        f"available. Available metrics are: {sorted(logged)}.)"
                    )
                trainer = getattr(system, "_trainer", None)
                if trainer is not None and trainer.rules.lightning:  # (Lightning warns; fulmen skips quietly)
                    _lenient_warning(
                        f"ReduceLROnPlateau conditioned on metric {cfg.monitor} which is not available but strict is "
                        f"set to `False`. Skipping learning rate update (the lr scheduler "
                        f"{type(cfg.scheduler).__name__} monitors {cfg.monitor!r}, which was not logged; logged "
                        f"metrics: {sorted(logged) or 'none'}).",
                        str(id(trainer)),
                    )
                continue
        system.lr_scheduler_step(cfg.scheduler, value)


class LightningSchedules:
    """Lightning's timing of the learning-rate schedulers, for one training epoch
    (``LoopRules.lightning_scheduler_timing``; automatic optimization only).

    The training loop steps ``step_now`` (step-interval schedulers other than ReduceLROnPlateau)
    right after each optimizer step, as fulmen does; ``after_batch`` goes first in the epoch's
    ``on_train_batch_end`` dispatch and steps the epoch-interval schedulers at the last batch;
    ``before_batch`` goes first in ``on_train_batch_start`` and, like ``flush`` after the loop,
    steps the step-interval ReduceLROnPlateau schedulers once per optimizer step taken since,
    so after that step's validation. The epoch-interval ReduceLROnPlateau (``epoch_late``) steps
    after ``on_train_epoch_end``. Built once per epoch: nothing of it runs in a loop without
    schedulers, and a plain fulmen run never builds it.
    """

    def __init__(self, trainer: Any, system: Any, configs: Sequence[SchedulerConfig], last_batch: int) -> None:
        self.trainer, self.system = trainer, system
        self.step_now = [c for c in configs if c.interval == "step" and not c.reduce_on_plateau]
        self.late_steps = [c for c in configs if c.interval == "step" and c.reduce_on_plateau]
        self.epoch_now = [c for c in configs if c.interval == "epoch" and not c.reduce_on_plateau]
        self.epoch_late = [c for c in configs if c.interval == "epoch" and c.reduce_on_plateau]
        self.last_batch = last_batch  # -1: the epoch's length is unknown (stepped after the loop)
        self.at_last_batch = bool(self.epoch_now) and last_batch >= 0
        self.epoch_stepped = False
        self._seen_step = trainer.global_step

    def _metrics(self) -> Mapping[str, Any]:
        return self.trainer.callback_metrics

    def _step_epoch(self) -> None:
        self.epoch_stepped = True
        step_schedulers(self.system, self.epoch_now, "epoch", self.trainer.current_epoch + 1, self._metrics)

    def after_batch(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.last_batch:
            self._step_epoch()

    def before_batch(self, batch: Any, batch_idx: int) -> None:
        self.flush()

    def flush(self) -> None:
        """Step the step-interval ReduceLROnPlateau schedulers for an optimizer step taken since
        the last call (after the validation that followed it)."""
        step = self.trainer.global_step
        if step != self._seen_step:
            self._seen_step = step
            step_schedulers(self.system, self.late_steps, "step", step, self._metrics)

    def after_loop(self, completed: bool, ran: bool) -> None:
        """The epoch's batches are done: the epoch-interval schedulers step now when the last
        batch could not be known (a loader without a length, ``on_train_batch_start`` returning
        -1), if the epoch completed and trained here."""
        if completed and ran and not self.epoch_stepped and self.epoch_now:
            self._step_epoch()


def setup_optimizers(trainer: Any, system: Any) -> None:
    """Call ``configure_optimizers``, check what it returned against the system, and store the
    optimizers and schedulers on the trainer."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    from fulmen.system import System
    from fulmen.trainer._hooks import overrides

    lightning = bool(getattr(getattr(trainer, "rules", None), "lightning", False))
    manual = not system.automatic_optimization
    result = system.configure_optimizers()
    name = type(system).__name__
    if result is None and lightning:  # Lightning trains with a stand-in optimizer that changes nothing
        warn_once(
            f"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer: "
            f"{name}'s training_step and backward run, but no parameter is updated. Return an optimizer "
            f"(e.g. `torch.optim.Adam(self.parameters(), lr=1e-3)`) to train.",
            UserWarning,
            key=f"{id(trainer)}:no-optimizer-{name}",
        )
        trainer.optimizers, trainer.lr_scheduler_configs = [NoOptimizer()], []
        return
    optimizers, schedulers = parse_optimizers(result, lenient=lightning, manual=manual, scope=str(id(trainer)))
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
                f"({type(bound).__name__}) that configure_optimizers did not return (it is attached with an "
                f"optimizer that wasn't returned, so stepping it would change a learning rate nothing trains "
                f"with). Create the scheduler from the optimizer you return."
            )
        sched_name = type(cfg.scheduler).__name__
        missing = [m for m in ("state_dict", "load_state_dict") if not callable(getattr(cfg.scheduler, m, None))]
        if missing:  # checkpoints save every scheduler's state
            raise HookReturnError(
                f"configure_optimizers: the lr scheduler {sched_name} has no "
                f"{' or '.join(m + '()' for m in missing)}; checkpoints save and restore each scheduler's state. "
                f"Define state_dict(self) -> dict and load_state_dict(self, state) on it (The provided lr scheduler "
                f"`{sched_name}` is invalid without them)."
            )
        # (under manual optimization the user steps the schedulers: any object will do)
        if not isinstance(cfg.scheduler, (LRScheduler, ReduceLROnPlateau)) and not custom_step and not manual:
            raise HookReturnError(
                f"configure_optimizers: {sched_name} is not a torch lr scheduler, so fulmen does not know how to "
                f"step it. Define {name}.lr_scheduler_step(self, scheduler, metric) to step it (the lr scheduler "
                f"`{sched_name}` doesn't follow PyTorch's LRScheduler API)."
            )
    trainer.optimizers, trainer.lr_scheduler_configs = optimizers, schedulers


class NoOptimizer(Optimizer):
    """What fulmen.lightning trains with when ``configure_optimizers`` returns None (as Lightning
    does, with a warning): ``step(closure)`` runs the closure and changes nothing, ``zero_grad``
    does nothing. It holds one placeholder tensor (torch refuses an optimizer without parameters)."""

    def __init__(self) -> None:
        import torch

        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


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
        before_step = hooks.on_before_optimizer_step if hooks is not None else ()
        if before_step and not before_optimizer_step(trainer, before_step, opt):
            precision.discard_step(opt)
            trainer.loop.global_step += 1  # (counted, as a step skipped by loss scaling is)
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
        trainer.loop.global_step += 1
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        hooks = self._trainer._hooks
        if hooks is not None and hooks.on_before_zero_grad:
            call_hooks(hooks.on_before_zero_grad, self._optimizer)
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"ManualOptimizer({self._optimizer!r})"


def before_optimizer_step(trainer: Any, hooks: Sequence[Callable[..., Any]], optimizer: Optimizer) -> bool:
    """Run ``on_before_optimizer_step`` (``hooks``: its dispatch tuple, not empty) and say whether
    the step goes ahead: False when a hook asked to skip it (``Trainer.skip_optimizer_step``; the
    request is cleared here, so it covers this one step). Every optimizer step the run takes (each
    variant of the training step, ``ManualOptimizer.step``) reads the request here, and only here."""
    call_hooks(hooks, optimizer)
    if trainer.loop.skip_step:
        trainer.loop.skip_step = False
        return False
    return True


def needs_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` requires a closure (``LBFGS.step(closure)``): checked once per
    epoch, from the signature."""
    import inspect

    try:
        param = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


class Reevaluation:
    """The closure an optimizer that needs one (LBFGS) receives in automatic optimization: the
    first call returns the loss the training loop already computed (with its gradients); each later
    call evaluates the batch again (zero the gradients, ``training_step``, backward), as Lightning's
    closure does on every call."""

    __slots__ = ("batch", "batch_idx", "first", "loss", "reevaluate")

    def __init__(self, loss: Any, reevaluate: Callable[[Any, int], Any], batch: Any, batch_idx: int) -> None:
        self.loss, self.reevaluate, self.batch, self.batch_idx = loss, reevaluate, batch, batch_idx
        self.first = True

    def __call__(self) -> Any:
        if self.first:
            self.first = False
            return self.loss
        return self.reevaluate(self.batch, self.batch_idx)
