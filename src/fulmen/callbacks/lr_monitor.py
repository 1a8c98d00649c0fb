"""``LearningRateMonitor``: send each optimizer's learning rate (and momentum, weight decay) to the loggers."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.errors import warn_once

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_INTERVALS = (None, "step", "epoch")


class _Entry:
    """What to log for one optimizer: its metric names per parameter group and its interval."""

    __slots__ = ("interval", "names", "optimizer")

    def __init__(self, optimizer: Optimizer, names: list[str], interval: str) -> None:
        self.optimizer = optimizer
        self.names = names
        self.interval = interval


class LearningRateMonitor(Callback):
    """Log learning rates to every logger of the trainer.

    Names: ``lr-{OptimizerClass}``; a scheduler configured with ``"name": ...`` in
    ``configure_optimizers`` uses that name instead. An optimizer with several parameter groups
    logs ``lr-{OptimizerClass}/pg1``, ``/pg2``, ... (or ``/{group["name"]}`` when the group has a
    ``"name"`` key). Two optimizers of the same class are told apart by ``-0``, ``-1``, ...
    ``log_momentum`` adds ``{name}-momentum`` (SGD's ``momentum``, Adam's ``betas[0]``);
    ``log_weight_decay`` adds ``{name}-weight_decay``.

    When: ``logging_interval="step"`` logs after optimizer steps (only batches that stepped count,
    so gradient accumulation logs once per step), every ``log_every_n_steps`` steps, like the
    trainer's own metrics; the value is the rate that step used, logged at its step index (the
    same row as the trainer's step metrics).
    ``"epoch"`` logs at the start of each training epoch. ``None`` follows each optimizer's
    scheduler (its ``interval``); an optimizer without a scheduler is logged per step.

    Values are read from the optimizers' ``param_groups`` (Python numbers), so logging never
    waits for the device. A trainer without loggers is an error when fitting starts (except under
    ``fast_dev_run``, which turns the loggers off: then nothing is logged).

    Differences from PyTorch Lightning: same-class optimizers are suffixed ``-0``, ``-1`` (Lightning
    leaves the first unsuffixed and names the second ``-1``); an optimizer without momentum is
    not logged under ``-momentum`` (Lightning logs 0).
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in _INTERVALS:
            raise ValueError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): expected 'step', 'epoch' or None "
                f"(None follows each scheduler's interval)."
            )
        for flag, value in (("log_momentum", log_momentum), ("log_weight_decay", log_weight_decay)):
            if not isinstance(value, bool):
                raise ValueError(f"LearningRateMonitor({flag}={value!r}): expected True or False.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        #: The last values logged, by name (what was sent to the loggers).
        self.last_values: dict[str, float] = {}
        self._entries: list[_Entry] = []
        self._signature: tuple[int, ...] = ()
        self._has_step = False
        self._pending: dict[str, float] | None = None  # values read before the step that logs them
        self._pending_step = -1

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        # fast_dev_run turns the loggers off on purpose: then there is nothing to do, quietly.
        if stage == "fit" and not trainer.loggers and not trainer.fast_dev_run:
            raise ValueError(
                "LearningRateMonitor needs a logger to send learning rates to, but the Trainer has none "
                "(logger=False). Pass Trainer(logger=True) or a logger, or remove the callback."
            )

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._pending = None
        self._refresh(trainer)
        if self.log_momentum:
            without = sorted(
                {type(e.optimizer).__name__ for e in self._entries if not _has_momentum(e.optimizer)}
            )
            if without:
                warn_once(
                    f"LearningRateMonitor(log_momentum=True): {', '.join(without)} has no momentum or betas, so no "
                    f"momentum is logged for it.",
                    key="lr-monitor-no-momentum",
                )

    def _refresh(self, trainer: Trainer) -> None:
        """Rebuild the names when the optimizers or schedulers changed (e.g. SWA swapped one in)."""
        configs = trainer.lr_scheduler_configs
        signature = tuple(id(o) for o in trainer.optimizers) + tuple(id(c.scheduler) for c in configs)
        if signature == self._signature and self._entries:
            return
        self._signature = signature
        sched_of: dict[int, Any] = {}
        for config in configs:
            owner = getattr(config.scheduler, "optimizer", None)
            if owner is not None and id(owner) not in sched_of:
                sched_of[id(owner)] = config
        counts = Counter(type(o).__name__ for o in trainer.optimizers)
        seen: Counter[str] = Counter()
        entries: list[_Entry] = []
        for opt in trainer.optimizers:
            cls = type(opt).__name__
            cfg = sched_of.get(id(opt))
            if cfg is not None and cfg.name:
                base = cfg.name
            else:
                base = f"lr-{cls}"
                if counts[cls] > 1:
                    base = f"{base}-{seen[cls]}"
            seen[cls] += 1
            groups = opt.param_groups
            if len(groups) == 1:
                names = [base]
            else:
                names = [
                    f"{base}/{g['name']}" if "name" in g else f"{base}/pg{i + 1}"
                    for i, g in enumerate(groups)
                ]
            if self.logging_interval is not None:
                interval = self.logging_interval
            else:
                interval = cfg.interval if cfg is not None else "step"
            entries.append(_Entry(opt, names, interval))
        self._entries = entries
        self._has_step = any(e.interval == "step" for e in entries)

    # -- reading ---------------------------------------------------------------------------------
    def _values(self, interval: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for entry in self._entries:
            if entry.interval != interval:
                continue
            for name, group in zip(entry.names, entry.optimizer.param_groups):
                out[name] = _number(group["lr"])
                if self.log_momentum:
                    momentum = _momentum(group)
                    if momentum is not None:
                        out[f"{name}-momentum"] = momentum
                if self.log_weight_decay and "weight_decay" in group:
                    out[f"{name}-weight_decay"] = _number(group["weight_decay"])
        return out

    def _send(self, trainer: Trainer, values: dict[str, float], step: int) -> None:
        if not values or not trainer.loggers or not trainer.is_global_zero:
            return
        self.last_values.update(values)
        row = {**values, "epoch": float(trainer.current_epoch)}  # as the trainer's own rows have
        for lg in trainer.loggers:
            lg.log_metrics(row, step)

    # -- per step --------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        # Read the rates this batch's step will use when the step is one that logs (with manual
        # optimization a batch may take several steps: read every batch). A batch that only
        # accumulates gradients reads again, harmlessly; the stepping batch's read is logged.
        step = trainer.global_step
        if self._has_step and (
            (step + 1) % trainer.log_every_n_steps == 0 or not system.automatic_optimization
        ):
            self._refresh(trainer)
            self._pending = self._values("step")
            self._pending_step = step

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._pending is None or step == self._pending_step:
            return  # no optimizer step yet since the values were read
        values, before = self._pending, self._pending_step
        self._pending = None
        n = trainer.log_every_n_steps
        if step // n > before // n:  # a multiple of log_every_n_steps was reached, as the trainer logs
            self._send(trainer, values, step - 1)

    # -- per epoch -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._refresh(trainer)
        self._send(trainer, self._values("epoch"), trainer.global_step)


def _number(value: Any) -> float:
    # A tensor learning rate (e.g. for capturable optimizers) is read on the host when logged.
    return float(value)


def _momentum(group: dict[str, Any]) -> float | None:
    if "betas" in group:
        return _number(group["betas"][0])
    if "momentum" in group:
        return _number(group["momentum"])
    return None


def _has_momentum(optimizer: Optimizer) -> bool:
    return any("betas" in g or "momentum" in g for g in optimizer.param_groups)
