"""``Timer``: measure how long each stage runs, and stop training after a time budget."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError
from fulmen.trainer._validate import _TIME_RE

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_INTERVALS = ("step", "epoch")
_STAGES = ("train", "validate", "test", "predict")
#: Where the Timer reports under ``fulmen.lightning`` (Lightning logs it); fulmen's Trainer prints.
log = logging.getLogger("fulmen.lightning")


class Timer(Callback):
    """Time the ``train``, ``validate``, ``test`` and ``predict`` stages; stop training after ``duration``.

    ``duration`` is a string ``"DD:HH:MM:SS"``, a dict of ``datetime.timedelta`` arguments
    (``{"hours": 12}``) or a ``timedelta``; None only measures; zero stops at the first check
    (after ``min_epochs``/``min_steps``). Training time runs from
    ``on_train_start`` to ``on_train_end`` (validation inside ``fit`` included). The budget is
    checked after every training batch (``interval="step"``) or at the end of every training
    epoch (``interval="epoch"``), and once when fitting starts, so a run resumed with a spent
    budget stops at once. When it is spent the callback sets ``trainer.should_stop`` (which the
    trainer honours once ``min_epochs``/``min_steps`` are met) and, with ``verbose``, says so on
    rank zero (printed; logged at INFO under ``fulmen.lightning``, as Lightning does).
    ``fulmen.lightning.Trainer(max_time=...)`` adds a ``Timer(duration=max_time)`` to its callbacks
    (as Lightning does); fulmen's own ``max_time`` is a hard limit kept by the loop.

    ``time_elapsed(stage)`` and ``time_remaining(stage)`` are in seconds. ``state_dict`` keeps the
    time spent per stage; after ``load_state_dict`` the training time spent before counts
    towards ``duration``.

    Validation time inside ``fit`` is measured per validation run under ``"validate"`` (the
    latest run), as in PyTorch Lightning.
    """

    limits_time = True  # (fit without max_epochs/max_steps: no 1000-epoch warning; subclasses too)

    def __init__(
        self,
        duration: str | datetime.timedelta | dict[str, int] | None = None,
        interval: str = "step",
        verbose: bool = True,
    ) -> None:
        if interval not in _INTERVALS:
            raise ArgumentError(
                f"Timer(interval={interval!r}): expected 'step' or 'epoch' (Unsupported parameter value "
                f"`Timer(interval={interval})`)."
            )
        self._duration: float | None = _seconds(duration)
        self.interval = interval
        self.verbose = verbose
        self._start: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._end: dict[str, float | None] = dict.fromkeys(_STAGES)
        self._offset = 0.0  # training seconds spent before a restore

    @property
    def duration(self) -> float | None:
        """The training-time budget in seconds (None: measure only)."""
        return self._duration

    @duration.setter
    def duration(self, seconds: float | None) -> None:
        self._duration = seconds

    # -- queries -----------------------------------------------------------------------------------
    @staticmethod
    def _stage(stage: str) -> str:
        if stage not in _STAGES:
            raise ValueError(f"Timer: unknown stage {stage!r}; expected one of {', '.join(_STAGES)}.")
        return stage

    def start_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last started (``time.monotonic()`` seconds), or None."""
        return self._start[self._stage(stage)]

    def end_time(self, stage: str = "train") -> float | None:
        """When ``stage`` last ended (``time.monotonic()`` seconds), or None while it runs."""
        return self._end[self._stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds ``stage`` has run (for ``"train"``, plus what a restored state had spent)."""
        start, end = self._start[self._stage(stage)], self._end[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return offset + ((end if end is not None else time.monotonic()) - start)

    def time_remaining(self, stage: str = "train") -> float | None:
        """Seconds left of ``duration``, or None without a duration."""
        if self.duration is None:
            return None
        return self.duration - self.time_elapsed(stage)

    # -- hooks -------------------------------------------------------------------------------------
    def _begin(self, stage: str) -> None:
        self._start[stage] = time.monotonic()
        self._end[stage] = None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._begin("train")

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        self._begin("validate")

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        self._finish("validate")

    def on_test_start(self, trainer: Trainer, system: System) -> None:
        self._begin("test")

    def on_test_end(self, trainer: Trainer, system: System) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: Trainer, system: System) -> None:
        self._begin("predict")

    def on_predict_end(self, trainer: Trainer, system: System) -> None:
        self._finish("predict")

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        # A restored budget may already be spent: stop before the first step.
        if self.duration is not None:
            self._check(trainer)

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step" and self.duration is not None:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if self.interval == "epoch" and self.duration is not None:
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        assert self.duration is not None
        elapsed = self.time_elapsed("train")
        spent = bool(trainer.strategy.broadcast(elapsed >= self.duration))  # rank zero's clock decides
        if not spent or trainer.should_stop:
            trainer.should_stop = trainer.should_stop or spent
            return
        trainer.should_stop = True
        if self.verbose and trainer.is_global_zero:
            message = (
                f"Time limit reached. The time budget of {datetime.timedelta(seconds=self.duration)} is spent "
                f"(elapsed {datetime.timedelta(seconds=round(elapsed))}). Signaling Trainer to stop."
            )
            if trainer.rules.lightning:
                log.info(message)
            else:
                print(f"Timer: {message}")

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in _STAGES}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))


def _seconds(duration: Any) -> float | None:
    """``Timer(duration=...)`` in seconds (zero allowed: stop at the first check)."""
    if duration is None:
        return None
    seconds: float | None = None
    if isinstance(duration, datetime.timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, Mapping):
        try:
            seconds = datetime.timedelta(**duration).total_seconds()
        except TypeError as err:
            raise ArgumentError(
                f"Timer(duration={dict(duration)!r}): the dict's keys must be datetime.timedelta arguments "
                f"(days, hours, minutes, seconds, ...): {err}."
            ) from err
    elif isinstance(duration, str) and (m := _TIME_RE.match(duration.strip())):
        d, h, mi, sec = map(int, m.groups())
        seconds = datetime.timedelta(days=d, hours=h, minutes=mi, seconds=sec).total_seconds()
    if seconds is None or seconds < 0:
        raise ArgumentError(
            f"Timer(duration={duration!r}): expected a duration (>= 0): a string in the format DD:HH:MM:SS "
            f"(e.g. '00:12:00:00' for 12 hours), a dict such as {{'hours': 12}}, or a datetime.timedelta."
        )
    return seconds
