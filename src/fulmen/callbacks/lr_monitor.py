"""``LearningRateMonitor``: send each optimizer's learning rate (and momentum, weight decay) to the loggers."""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_INTERVALS = (None, "step", "epoch")


class _Entry:
    """What to log for one optimizer: its metric names per parameter group and when."""

    __slots__ = ("intervals", "names", "optimizer")

    def __init__(self, optimizer: Optimizer, names: list[str], intervals: frozenset[str]) -> None:
        self.optimizer = optimizer
        self.names = names
        self.intervals = intervals


class LearningRateMonitor(Callback):
    """Log learning rates to every logger of the trainer (PyTorch Lightning's names and timing).

    Names: ``lr-{OptimizerClass}``, or the ``"name"`` given to the optimizer's scheduler in
    ``configure_optimizers``. A second optimizer of the same class is ``lr-{Class}-1``, a third
    ``-2`` (optimizers with a scheduler are counted first, in the schedulers' order, then the
    others). An optimizer with several parameter groups logs ``{name}/pg1``, ``/pg2``, ... or
    ``{name}/{group["name"]}`` for a group with a ``"name"`` key (also when it is the only
    group); two groups of one optimizer with the same ``"name"`` are refused. ``log_momentum``
    adds ``{name}-momentum`` (``betas[0]`` for Adam-like optimizers, else ``momentum``, and 0 for
    an optimizer with neither, with a ``RuntimeWarning`` when fitting starts);
    ``log_weight_decay`` adds ``{name}-weight_decay``.

    When: an optimizer with a scheduler is logged at its scheduler's ``interval`` (``"step"`` or
    ``"epoch"``), one without a scheduler at both; ``logging_interval="step"`` or ``"epoch"``
    logs every optimizer at that interval only. ``"step"`` logs every ``log_every_n_steps``
    optimizer steps, like the trainer's own metrics, with the rate that step used, at its step
    index (the same row as the trainer's step metrics); only batches that stepped count.
    ``"epoch"`` logs at the start of each training epoch.

    Every value logged also goes into ``trainer.callback_metrics`` (so ``EarlyStopping`` or
    ``ModelCheckpoint`` can monitor ``"lr-SGD"``), and is kept on the callback: ``lrs`` (each
    name's learning rates, in logging order), ``last_momentum_values``,
    ``last_weight_decay_values`` and ``last_values`` (the latest of each, by name). When an
    optimizer gains parameter groups (fine-tuning), the history of its single-group name goes on
    under ``{name}/pg1``.

    Values are read from the optimizers' ``param_groups`` (Python numbers), so logging never
    waits for the device. A trainer without loggers is an error when fitting starts (except under
    ``fast_dev_run``, which turns the loggers off: then nothing is logged).
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        if logging_interval not in _INTERVALS:
            raise ArgumentError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}): expected 'step', 'epoch' or None "
                f"(None follows each scheduler's interval)."
            )
        for flag, value in (("log_momentum", log_momentum), ("log_weight_decay", log_weight_decay)):
            if not isinstance(value, bool):
                raise ArgumentError(f"LearningRateMonitor({flag}={value!r}): expected True or False.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        #: The last values logged, by name (what was sent to the loggers).
        self.last_values: dict[str, float] = {}
        #: Every learning rate logged, by name, in order.
        self.lrs: dict[str, list[float]] = {}
        #: The last momentum logged, by ``{name}-momentum`` (None before the first, or without ``log_momentum``).
        self.last_momentum_values: dict[str, float | None] = {}
        #: The last weight decay logged, by ``{name}-weight_decay`` (None as for momentum).
        self.last_weight_decay_values: dict[str, float | None] = {}
        self._entries: list[_Entry] = []
        self._signature: tuple[Any, ...] = ()
        self._has_step = False
        self._pending: dict[str, float] | None = None  # values read before the step that logs them
        self._pending_step = -1

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        # fast_dev_run turns the loggers off on purpose: then there is nothing to do, quietly.
        if stage == "fit" and not trainer.loggers and not trainer.fast_dev_run:
            raise ArgumentError(
                "LearningRateMonitor needs a logger to send learning rates to (it cannot be used with a `Trainer` "
                "that has no logger), but this Trainer has none (logger=False). Pass Trainer(logger=True) or a "
                "logger, or remove the callback."
            )

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._pending = None
        self._entries, self._signature = [], ()
        self._refresh(trainer)
        names = [name for entry in self._entries for name in entry.names]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}
        if self.log_momentum:
            without = sorted(
                {type(e.optimizer).__name__ for e in self._entries if not _has_momentum(e.optimizer)}
            )
            if without:
                warnings.warn(
                    f"LearningRateMonitor(log_momentum=True), but some optimizers do not have momentum. "
                    f"{', '.join(without)} has neither `momentum` nor `betas`, so 0 is logged as its momentum.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _refresh(self, trainer: Any) -> None:
        """Name every optimizer and parameter group as they are now (an optimizer may have gained
        groups, a callback may have swapped optimizers); carry ``lrs`` over to the new names."""
        configs = trainer.lr_scheduler_configs
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        signature = (
            tuple((id(o), len(o.param_groups)) for o in optimizers),
            tuple((id(c.scheduler), c.name) for c in configs),
        )
        if signature == self._signature and self._entries:
            return  # nothing changed since the names were made (group names are set when a group is added)
        self._signature = signature
        seen: Counter[type] = Counter()
        entries: list[_Entry] = []
        done: set[int] = set()
        for config in configs:  # optimizers with a scheduler first, as Lightning names them
            opt = getattr(config.scheduler, "optimizer", None)
            if opt is None or id(opt) in done:
                continue
            done.add(id(opt))
            if config.name is None:
                seen[type(opt)] += 1
            when = self.logging_interval if self.logging_interval is not None else str(config.interval)
            base = config.name if config.name is not None else f"lr-{type(opt).__name__}"
            entries.append(_Entry(opt, _group_names(opt, base, seen), frozenset((when,))))
        for opt in optimizers:
            if id(opt) in done:
                continue
            done.add(id(opt))
            seen[type(opt)] += 1
            every = self.logging_interval
            intervals = frozenset(("step", "epoch")) if every is None else frozenset((every,))
            entries.append(_Entry(opt, _group_names(opt, f"lr-{type(opt).__name__}", seen), intervals))
        old = [e.names for e in self._entries]
        self._entries = entries
        self._has_step = any("step" in e.intervals for e in entries)
        if old != [e.names for e in entries]:
            for entry in entries:
                for name in entry.names:
                    single = name.replace("/pg1", "")
                    if "/pg1" in name and single in self.lrs:  # the optimizer gained groups
                        self.lrs[name] = self.lrs.pop(single)
                    else:
                        self.lrs.setdefault(name, [])

    # -- reading ---------------------------------------------------------------------------------
    def _values(self, interval: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for entry in self._entries:
            if interval not in entry.intervals:
                continue
            betas = "betas" in entry.optimizer.defaults
            for name, group in zip(entry.names, entry.optimizer.param_groups):
                out[name] = _number(group["lr"])
                if self.log_momentum:
                    out[f"{name}-momentum"] = _number(group["betas"][0] if betas else group.get("momentum", 0.0))
                if self.log_weight_decay and "weight_decay" in group:
                    out[f"{name}-weight_decay"] = _number(group["weight_decay"])
        return out

    def _send(self, trainer: Trainer, values: dict[str, float], step: int) -> None:
        if not values or not trainer.loggers:
            return
        lr_names = {name for entry in self._entries for name in entry.names}
        for name, value in values.items():
            if name in lr_names:
                self.lrs.setdefault(name, []).append(value)
            elif name.endswith("-momentum"):
                self.last_momentum_values[name] = value
            else:
                self.last_weight_decay_values[name] = value
        self.last_values.update(values)
        # Also where callbacks read metrics (EarlyStopping(monitor="lr-SGD")), as in Lightning.
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in values.items()})
        if not trainer.is_global_zero:
            return
        # fulmen's rows carry the epoch, as the trainer's own rows do; Lightning's carry the values only.
        row = dict(values) if trainer.rules.lightning else {**values, "epoch": float(trainer.current_epoch)}
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


def _group_names(optimizer: Optimizer, base: str, seen: Counter[type]) -> list[str]:
    """Lightning's metric names for ``optimizer``'s parameter groups under ``base``."""
    groups = optimizer.param_groups
    labels = [g.get("name", f"pg{i}") for i, g in enumerate(groups, start=1)]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ArgumentError(
            f"LearningRateMonitor: {type(optimizer).__name__} has several parameter groups named "
            f"{', '.join(map(repr, repeated))}, so their learning rates would be logged under one name {base!r}. "
            f"A single `Optimizer` cannot have multiple parameter groups with identical `name` values: give each "
            f"group its own \"name\"."
        )
    count = seen[type(optimizer)]
    if count > 1:  # the second optimizer of a class is "-1", the third "-2", ...
        base = f"{base}-{count - 1}"
    if len(groups) > 1:
        return [f"{base}/{label}" for label in labels]
    return [f"{base}/{groups[0]['name']}" if groups[0].get("name") else base]


def _number(value: Any) -> float:
    # A tensor learning rate (e.g. for capturable optimizers) is read on the host when logged.
    return float(value)


def _has_momentum(optimizer: Optimizer) -> bool:
    return "betas" in optimizer.defaults or "momentum" in optimizer.defaults
