"""Reading what ``configure_optimizers`` returned, and stepping learning-rate schedulers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.optim import Optimizer

from fulmen.errors import HookReturnError

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
    reduce_on_plateau: bool = False


def _bad(got: Any, why: str = "") -> HookReturnError:
    return HookReturnError(
        f"configure_optimizers returned {type(got).__name__}{f' ({why})' if why else ''}; expected {_FORMS}."
    )


def _scheduler_config(value: Any) -> SchedulerConfig:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    if isinstance(value, Mapping):
        if "scheduler" not in value:
            raise HookReturnError(
                f'configure_optimizers: an "lr_scheduler" dict needs a "scheduler" key, got keys {sorted(value)}.'
            )
        unknown = set(value) - {f.name for f in dataclasses.fields(SchedulerConfig)}
        if unknown:
            raise HookReturnError(
                f"configure_optimizers: unknown lr_scheduler keys {sorted(unknown)}; allowed: scheduler, interval, "
                f"frequency, monitor, strict, name."
            )
        cfg = SchedulerConfig(**value)
    else:
        cfg = SchedulerConfig(value)
    if cfg.interval not in ("epoch", "step"):
        raise HookReturnError(
            f'configure_optimizers: lr_scheduler "interval" must be "epoch" or "step", got {cfg.interval!r}.'
        )
    if not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise HookReturnError(f'configure_optimizers: lr_scheduler "frequency" must be an int >= 1, got {cfg.frequency!r}.')
    if not hasattr(cfg.scheduler, "step"):
        raise HookReturnError(
            f"configure_optimizers: the lr scheduler must have a step() method, got {type(cfg.scheduler).__name__}."
        )
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, ReduceLROnPlateau)
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
        if len(items) == 2 and all(isinstance(x, (list, tuple)) for x in items):
            opts = list(items[0])
            if not opts or not all(isinstance(o, Optimizer) for o in opts):
                raise _bad(result, "the first list must hold optimizers")
            return opts, [_scheduler_config(s) for s in items[1]]
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
    configs: Sequence[SchedulerConfig],
    interval: str,
    count: int,
    metrics: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
) -> None:
    """Step the schedulers of ``interval`` whose ``frequency`` divides ``count`` (epochs or steps done).

    ``metrics`` (or a function returning them, called only when a ReduceLROnPlateau steps) are
    the values plateau schedulers monitor."""
    for cfg in configs:
        if cfg.interval != interval or count % cfg.frequency:
            continue
        if cfg.reduce_on_plateau:
            assert cfg.monitor is not None
            if callable(metrics):
                metrics = metrics()
            value = metrics.get(cfg.monitor)
            if value is None:
                if cfg.strict:
                    raise KeyError(
                        f"ReduceLROnPlateau monitors {cfg.monitor!r}, which was not logged. Logged metrics: "
                        f"{sorted(metrics) or 'none'}. Log it with self.log({cfg.monitor!r}, ...) or set "
                        f'"strict": False in the lr_scheduler dict to skip the step when it is missing. If validation '
                        f'does not run every epoch (check_val_every_n_epoch), give the scheduler the same "frequency".'
                    )
                continue
            cfg.scheduler.step(value)
        else:
            cfg.scheduler.step()
