"""``EarlyStopping``: stop training when a logged metric stops improving."""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks._monitor import no_metric_message
from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError, warn_once

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_MODES = ("min", "max")

#: Where ``EarlyStopping`` reports under ``fulmen.lightning`` (Lightning reports through logging);
#: fulmen's own Trainer prints its reports.
log = logging.getLogger("fulmen.lightning")


class EarlyStoppingReason(enum.Enum):
    """Why ``EarlyStopping`` asked the trainer to stop (``EarlyStopping.stopping_reason``).

    The values are the numbers stored in the callback's checkpoint state (the same numbers as
    PyTorch Lightning's ``EarlyStoppingReason``, so states move between the two).
    """

    NOT_STOPPED = 0
    """No stop was requested (yet)."""
    STOPPING_THRESHOLD = 1
    """The metric reached ``stopping_threshold``."""
    DIVERGENCE_THRESHOLD = 2
    """The metric went past ``divergence_threshold``."""
    PATIENCE_EXHAUSTED = 3
    """``patience`` checks in a row without improvement."""
    NON_FINITE_METRIC = 4
    """The metric was NaN or infinite (``check_finite=True``)."""


class EarlyStopping(Callback):
    """Ask the trainer to stop when ``monitor`` has not improved for ``patience`` checks.

    A *check* reads ``trainer.callback_metrics[monitor]`` once (one host read per check, never
    per step). It happens at the end of every validation run during ``fit`` (not during the
    sanity check), or at the end of every training epoch when ``check_on_train_epoch_end=True``.
    With ``check_on_train_epoch_end=None`` the callback checks after validation when this fit
    validates at all, and at the end of each training epoch otherwise.

    The first check sets the baseline. A later value *improves* when it is better than the best
    so far by more than ``min_delta`` (lower for ``mode="min"``, higher for ``mode="max"``);
    otherwise ``wait_count`` grows by one, and once it reaches ``patience`` the callback sets
    ``trainer.should_stop``. With a metric that never improves, training therefore stops after
    ``patience + 1`` checks. The trainer honours the request at the next step or epoch boundary
    once ``min_epochs``/``min_steps`` are met; until then the callback keeps checking.

    It also stops at once when the value is NaN or infinite (``check_finite``), when it reaches
    ``stopping_threshold`` (good enough), or when it goes past ``divergence_threshold`` (hopeless).
    Why it stopped is kept in ``stopping_reason`` (an ``EarlyStoppingReason``) and
    ``stopping_reason_message`` (a sentence), the epoch in ``stopped_epoch``. With ``verbose`` the
    callback reports each improvement and the stop: fulmen's Trainer prints the report,
    ``fulmen.lightning``'s Trainer logs it (INFO, logger ``"fulmen.lightning"``) as Lightning does.
    With several processes each reports, prefixed ``[rank: N]``, unless ``log_rank_zero_only``.

    A missing metric raises ``RuntimeError`` naming the metrics that exist (``strict=True``), or
    skips the check (``strict=False``; with ``verbose`` it warns once).

    The state is kept in checkpoints under ``state_key``, which names ``monitor`` and ``mode`` (as
    in Lightning), so several ``EarlyStopping`` callbacks keep their own states; a checkpoint that
    stored it under the class name alone (older fulmen) is read too.

    Differences from PyTorch Lightning: with ``check_on_train_epoch_end=None``, Lightning decides
    from ``val_check_interval``/``check_val_every_n_epoch``; fulmen checks after validation
    whenever this fit validates, so a mid-epoch validation counts as a check.
    """

    monitors = True  # runs after the system's hook, so it sees what the system logged there

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ArgumentError(
                f"EarlyStopping(monitor={monitor!r}): expected the name of a logged metric, such as 'val_loss'."
            )
        if mode not in _MODES:
            raise ArgumentError(
                f"EarlyStopping(mode={mode!r}): expected 'min' or 'max' (`mode` can be min or max, got {mode}): "
                f"'min' when lower values of {monitor!r} are better (a loss), 'max' when higher ones are (an accuracy)."
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ArgumentError(f"EarlyStopping(patience={patience!r}): expected an int >= 0.")
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, (int, float))
            or not math.isfinite(min_delta)
            or min_delta < 0
        ):
            raise ArgumentError(
                f"EarlyStopping(min_delta={min_delta!r}): expected a finite number >= 0 (the smallest change that "
                f"counts as an improvement, in the direction of mode)."
            )
        for name, value in (
            ("stopping_threshold", stopping_threshold),
            ("divergence_threshold", divergence_threshold),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ArgumentError(f"EarlyStopping({name}={value!r}): expected a number or None.")
        if check_on_train_epoch_end not in (None, True, False):
            raise ArgumentError(
                f"EarlyStopping(check_on_train_epoch_end={check_on_train_epoch_end!r}): expected True, False or None."
            )
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.divergence_threshold = None if divergence_threshold is None else float(divergence_threshold)
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = bool(log_rank_zero_only)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None
        self._on_train_epoch_end = bool(check_on_train_epoch_end)

    @property
    def state_key(self) -> str:
        """The class name with ``monitor`` and ``mode`` (Lightning's key), so that two instances
        watching different metrics keep separate states in one checkpoint."""
        key = {"monitor": self.monitor, "mode": self.mode}
        return f"{type(self).__qualname__}{key!r}"

    # -- when to check -------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if self.check_on_train_epoch_end is None:
            # run_fit has counted the validation batches by now; no batches means no validation.
            validates = sum(getattr(trainer, "num_val_batches", None) or []) > 0
            self._on_train_epoch_end = not validates
        else:
            self._on_train_epoch_end = self.check_on_train_epoch_end

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        if self._on_train_epoch_end or trainer.sanity_checking or trainer.state.stage != "fit":
            return
        self._run_early_stopping_check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if not self._on_train_epoch_end:
            return
        self._run_early_stopping_check(trainer)

    def on_load_checkpoint(self, trainer: Trainer, system: System, checkpoint: dict[str, Any]) -> None:
        # Older fulmen checkpoints keep the state under the class name ("EarlyStopping", a second
        # instance "EarlyStopping#1", ...): take it from there when the current key is absent.
        states = checkpoint.get("callbacks") or {}
        if trainer.state.stage != "fit" or self.state_key in states:
            return
        legacy = type(self).__qualname__
        n = 0
        for cb in trainer.callbacks:
            if cb is self:
                break
            if isinstance(cb, EarlyStopping) and type(cb).__qualname__ == legacy:
                n += 1
        key = legacy if n == 0 else f"{legacy}#{n}"
        if key in states and {"wait_count", "best_score"} <= set(states[key]):
            self.load_state_dict(states[key])

    # -- the check -------------------------------------------------------------------------------
    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _current(self, trainer: Trainer) -> float | None:
        metrics = trainer.callback_metrics
        value = metrics.get(self.monitor)
        if value is None:
            message = no_metric_message(
                f"EarlyStopping(monitor={self.monitor!r})",
                self.monitor,
                metrics,
                " (in validation_step for a validation metric), or pass strict=False to skip checks while it is missing.",
            )
            if self.strict:
                raise RuntimeError(message)
            if self.verbose:
                warn_once(message, key=f"early-stopping-missing-{self.monitor}")
            return None
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise RuntimeError(
                    f"EarlyStopping(monitor={self.monitor!r}): the metric has shape {tuple(value.shape)}; expected "
                    f"a single number. Log a scalar, e.g. its mean."
                )
            return float(value.item())  # host sync, once per check
        return float(value)

    def _run_early_stopping_check(self, trainer: Trainer) -> None:
        """One check: read the metric, decide, and ask the trainer to stop when it must."""
        if trainer.fast_dev_run:
            return
        current = self._current(trainer)
        if current is None:
            return
        should_stop, reason = self._evaluate_stopping_criteria(current)
        # Every process takes rank zero's decision, so all of them stop at the same step.
        should_stop = bool(trainer.strategy.broadcast(should_stop))
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason
        if reason and self.verbose:
            self._log_info(trainer, reason, self.log_rank_zero_only)

    @staticmethod
    def _log_info(trainer: Any, message: str, log_rank_zero_only: bool) -> None:
        """Report ``message``: from every process (``[rank: N]`` first when there are several)
        unless ``log_rank_zero_only``; printed by fulmen's Trainer, logged by fulmen.lightning's."""
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is not None:
            message = f"[rank: {rank}] {message}"
        if rank is not None and log_rank_zero_only and rank != 0:
            return
        rules = getattr(trainer, "rules", None)
        if rules is None or rules.lightning:
            log.info(message)
        else:
            print(f"EarlyStopping: {message}")

    def _evaluate_stopping_criteria(self, current: float) -> tuple[bool, str | None]:
        """``(stop, report)`` for one value; updates ``best_score``, ``wait_count`` and
        ``stopping_reason``. The report is None for a check that neither improved nor stopped."""
        name, best = self.monitor, self.best_score
        if self.check_finite and not math.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, f"{name} = {current} is not finite; the best value was {best:.6g}. Signaling Trainer to stop."
        if self.stopping_threshold is not None and not self._better(self.stopping_threshold, current):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            threshold = self.stopping_threshold
            return True, (
                f"Stopping threshold reached: {name} = {current:.6g} reached stopping_threshold={threshold:.6g}. "
                f"Signaling Trainer to stop."
            )
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, current):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            side = "above" if self.mode == "min" else "below"
            threshold = self.divergence_threshold
            return True, (
                f"Divergence threshold reached: {name} = {current:.6g} is {side} "
                f"divergence_threshold={threshold:.6g}. Signaling Trainer to stop."
            )
        delta = -self.min_delta if self.mode == "min" else self.min_delta
        if self._better(current, best + delta):
            self.best_score = current
            self.wait_count = 0
            if math.isfinite(best):
                return False, f"{name} improved by {abs(current - best):.6g} to {current:.6g}."
            return False, f"{name} = {current:.6g} is the first value; it is the best so far."
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (
                f"{name} did not improve by more than min_delta={self.min_delta:g} in the last {self.wait_count} "
                f"checks; the best value was {best:.6g}. Signaling Trainer to stop."
            )
        return False, None

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Lightning's layout: best_score as a tensor (float64 keeps the value exactly), the reason
        # as its number, so the state loads in either framework.
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": torch.tensor(self.best_score, dtype=torch.float64),
            "patience": self.patience,
            "stopping_reason": self.stopping_reason.value,
            "stopping_reason_message": self.stopping_reason_message,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        best = state_dict["best_score"]
        self.best_score = float(best.item() if isinstance(best, torch.Tensor) else best)
        self.patience = int(state_dict["patience"])
        # States written before the reason was kept (older fulmen or Lightning) have none.
        self.stopping_reason = EarlyStoppingReason(state_dict.get("stopping_reason", 0))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
