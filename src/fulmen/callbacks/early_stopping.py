"""``EarlyStopping``: stop training when a logged metric stops improving."""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.base import Callback
from fulmen.errors import warn_once

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_MODES = ("min", "max")


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
    Why it stopped is kept in ``stopping_reason`` (printed on rank zero when ``verbose``), the
    epoch in ``stopped_epoch``.

    A missing metric raises ``RuntimeError`` naming the metrics that exist (``strict=True``), or
    skips the check (``strict=False``; with ``verbose`` it warns once).

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
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"EarlyStopping(monitor={monitor!r}): expected the name of a logged metric, such as 'val_loss'."
            )
        if mode not in _MODES:
            raise ValueError(f"EarlyStopping(mode={mode!r}): expected 'min' or 'max'.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}): expected an int >= 0.")
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, (int, float))
            or not math.isfinite(min_delta)
            or min_delta < 0
        ):
            raise ValueError(
                f"EarlyStopping(min_delta={min_delta!r}): expected a finite number >= 0 (the smallest change that "
                f"counts as an improvement, in the direction of mode)."
            )
        for name, value in (
            ("stopping_threshold", stopping_threshold),
            ("divergence_threshold", divergence_threshold),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"EarlyStopping({name}={value!r}): expected a number or None.")
        if check_on_train_epoch_end not in (None, True, False):
            raise ValueError(
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
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason: str | None = None
        self._on_train_epoch_end = bool(check_on_train_epoch_end)

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
        self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if not self._on_train_epoch_end:
            return
        self._check(trainer)

    # -- the check -------------------------------------------------------------------------------
    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _current(self, trainer: Trainer) -> float | None:
        metrics = trainer.callback_metrics
        value = metrics.get(self.monitor)
        if value is None:
            names = sorted(metrics)
            close = difflib.get_close_matches(self.monitor, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            message = (
                f"EarlyStopping(monitor={self.monitor!r}) found no metric {self.monitor!r} in "
                f"trainer.callback_metrics; available metrics: {names or 'none'}.{hint} Log it in the system with "
                f"self.log({self.monitor!r}, value) (in validation_step for a validation metric), or pass "
                f"strict=False to skip checks while it is missing."
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

    def _check(self, trainer: Trainer) -> None:
        if trainer.fast_dev_run:
            return
        current = self._current(trainer)
        if current is None:
            return
        should_stop, reason, improved = self._evaluate(current)
        # Every process takes rank zero's decision, so all of them stop at the same step.
        should_stop = bool(trainer.strategy.broadcast(should_stop))
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
        if reason and self.verbose and trainer.is_global_zero and (should_stop or improved):
            print(f"EarlyStopping: {reason}")

    def _evaluate(self, current: float) -> tuple[bool, str | None, bool]:
        """``(stop, reason, improved)`` for one value; updates ``best_score`` and ``wait_count``."""
        name, best = self.monitor, self.best_score
        if self.check_finite and not math.isfinite(current):
            reason = f"{name} = {current} is not finite; the best value was {best:.6g}. Stopping training."
            return True, reason, False
        if self.stopping_threshold is not None and not self._better(self.stopping_threshold, current):
            threshold = self.stopping_threshold
            reason = f"{name} = {current:.6g} reached stopping_threshold={threshold:.6g}. Stopping training."
            return True, reason, False
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, current):
            side = "above" if self.mode == "min" else "below"
            threshold = self.divergence_threshold
            reason = (
                f"{name} = {current:.6g} is {side} divergence_threshold={threshold:.6g}. Stopping training."
            )
            return True, reason, False
        delta = -self.min_delta if self.mode == "min" else self.min_delta
        if self._better(current, best + delta):
            self.best_score = current
            self.wait_count = 0
            if math.isfinite(best):
                return False, f"{name} improved by {abs(current - best):.6g} to {current:.6g}.", True
            return False, f"{name} = {current:.6g} is the first value; it is the best so far.", True
        self.wait_count += 1
        if self.wait_count >= self.patience:
            reason = (
                f"{name} did not improve by more than min_delta={self.min_delta:g} in the last {self.wait_count} "
                f"checks; the best value was {best:.6g}. Stopping training."
            )
            return True, reason, False
        return False, None, False

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        best = state_dict["best_score"]
        self.best_score = float(best.item() if isinstance(best, torch.Tensor) else best)
        self.patience = int(state_dict["patience"])
