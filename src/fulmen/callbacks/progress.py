"""``ProgressBar``: tqdm bars on a terminal, plain log lines everywhere else.

The training hook runs once per step, so it only counts the batch and compares the clock to a
deadline. Everything costly (formatting, writing, and reading ``trainer.progress_bar_metrics``,
which waits for the device) happens at most once per ``refresh_rate`` seconds on a terminal, or
once per printed line in a log file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

# An int rather than ``math.inf``: the hot path compares it with an int count.
_NEVER = sys.maxsize


class _Phase:
    """Counters of one training epoch, or of one validation/test/predict run."""

    __slots__ = (
        "bar",
        "count",
        "deadline",
        "label",
        "last_count",
        "last_time",
        "next_count",
        "start_time",
        "stream",
        "total",
    )

    def __init__(self) -> None:
        # An inactive phase never reaches a deadline, so its batch hooks only count.
        self.bar: tqdm[Any] | None = None
        self.stream: TextIO | None = None
        self.label = ""
        self.total: int | None = None
        self.count = 0
        self.next_count = _NEVER
        self.deadline = math.inf
        self.start_time = self.last_time = 0.0
        self.last_count = 0

    @property
    def active(self) -> bool:
        return self.stream is not None


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _finite_total(total: float | Sequence[int | float]) -> int | None:
    value = sum(total) if isinstance(total, Sequence) else total
    return int(value) if math.isfinite(value) else None


def _format_metrics(metrics: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.4g}" if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()}


def _join(metrics: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in metrics.items())


def _rate(n: int, seconds: float) -> str:
    if seconds <= 0:
        return "? it/s"
    rate = n / seconds
    return f"{rate:.0f} it/s" if rate >= 100 else f"{rate:.3g} it/s"  # 8245, 41.2, 0.0412


class ProgressBar(Callback):
    """Show progress on the rank-zero process.

    Args:
        refresh_rate: seconds between bar refreshes on a terminal (and between reads of
            ``trainer.progress_bar_metrics``).
        print_every_n_steps: when writing to a file that is not a terminal, print a line every
            this many training batches of an epoch; ``None`` prints by time instead.
        print_every_n_seconds: when writing to a file that is not a terminal, and
            ``print_every_n_steps`` is ``None``, print a line at most this often.
        file: where to write; ``None`` means ``sys.stderr`` as it is when a stage starts (so
            redirections made after constructing the callback are honoured).

    On a terminal the bars are tqdm bars (``print_every_n_*`` do not apply); otherwise (batch
    jobs, log files) plain lines are written, without carriage returns, and the file is flushed
    after each line. Lines and bars show what ``get_metrics`` returns: all of
    ``trainer.progress_bar_metrics`` (the validation line too, so it includes the latest training
    values); override it to show other values. Nothing is shown during the sanity check.
    """

    def __init__(
        self,
        refresh_rate: float = 0.2,
        print_every_n_steps: int | None = None,
        print_every_n_seconds: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        if refresh_rate < 0:
            raise ValueError(f"ProgressBar(refresh_rate={refresh_rate!r}): expected seconds >= 0.")
        if print_every_n_steps is not None and print_every_n_steps < 1:
            raise ValueError(
                f"ProgressBar(print_every_n_steps={print_every_n_steps!r}): expected an int >= 1, "
                "or None to print by time."
            )
        if print_every_n_seconds <= 0:
            raise ValueError(
                f"ProgressBar(print_every_n_seconds={print_every_n_seconds!r}): expected seconds > 0."
            )
        self.refresh_rate = refresh_rate
        self.print_every_n_steps = print_every_n_steps
        self.print_every_n_seconds = print_every_n_seconds
        self.file = file
        self._train = _Phase()
        self._eval = _Phase()  # validation, test or predict; validation may run inside an epoch
        self._trainer: Trainer | None = None

    # -- what subclasses read and override (Lightning's ProgressBar API) ---------------------------
    @property
    def trainer(self) -> Trainer:
        """The Trainer running this callback (from ``setup`` on)."""
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}.trainer is set when a run starts (in setup); it has not.")
        return self._trainer

    @property
    def total_train_batches(self) -> int | float:
        """Training batches per epoch (``inf`` for a dataloader without a length)."""
        return self.trainer.num_training_batches

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches the current epoch of a fit runs (all dataloaders together): 0 in an
        epoch that ``check_val_every_n_epoch`` skips."""
        trainer = self.trainer
        every = trainer.config.check_val_every_n_epoch
        if every is not None and (trainer.current_epoch + 1) % every:
            return 0
        return sum(trainer.num_val_batches)

    def _shown(self, trainer: Trainer) -> dict[str, Any]:
        return self.get_metrics(trainer, getattr(trainer, "system", None))  # type: ignore[arg-type]

    def get_metrics(self, trainer: Trainer, system: System) -> dict[str, Any]:
        """The values the bar shows next to the progress: ``trainer.progress_bar_metrics``.
        Override it to add, rename or drop values (called when the bar is redrawn)."""
        return dict(trainer.progress_bar_metrics)

    # -- starting and ending a phase ---------------------------------------------------------
    def _start(self, trainer: Trainer, label: str, total: int | None, *, train: bool, leave: bool) -> _Phase:
        phase = _Phase()
        if not trainer.is_global_zero:
            return phase
        stream = self.file if self.file is not None else sys.stderr
        phase.stream, phase.label, phase.total = stream, label, total
        phase.start_time = phase.last_time = now = monotonic()
        if _is_tty(stream):
            # miniters=1: without it tqdm learns a minimum batch count per redraw from our
            # (irregular) updates and then skips some of the redraws we ask for.
            phase.bar = tqdm(
                desc=label,
                total=total,
                file=stream,
                leave=leave,
                dynamic_ncols=True,
                mininterval=0,
                miniters=1,
                # The bar is updated in bursts (every refresh_rate seconds), so tqdm's moving
                # average of the rate between updates is meaningless: show the average instead.
                smoothing=0,
            )
            phase.deadline = now + self.refresh_rate
        elif train and self.print_every_n_steps is not None:
            phase.next_count = self.print_every_n_steps
        else:
            phase.deadline = now + self.print_every_n_seconds
        return phase

    def _write(self, phase: _Phase, line: str) -> None:
        assert phase.stream is not None
        phase.stream.write(line + "\n")
        phase.stream.flush()

    def _close(self, phase: _Phase, metrics: dict[str, float] | None) -> None:
        """Bring the bar to its final count, show ``metrics`` and close it."""
        if phase.bar is not None:
            if metrics is not None:
                phase.bar.set_postfix(_format_metrics(metrics), refresh=False)
            phase.bar.update(phase.count - phase.bar.n)
            phase.bar.close()
            phase.bar = None

    def _abandon(self) -> None:
        """Close any open bar as it stands (after an error, or at teardown)."""
        for phase in (self._eval, self._train):
            if phase.bar is not None:
                phase.bar.close()
                phase.bar = None
        self._train, self._eval = _Phase(), _Phase()

    # -- periodic refresh (the only place that reads metrics during a phase) -----------------
    def _refresh(self, trainer: Trainer, phase: _Phase, *, train: bool) -> None:
        now = monotonic()
        if phase.bar is not None:
            if train:
                phase.bar.set_postfix(_format_metrics(self._shown(trainer)), refresh=False)
            phase.bar.update(phase.count - phase.bar.n)  # redraws, postfix included
            phase.deadline = now + self.refresh_rate
            return
        rate = _rate(phase.count - phase.last_count, now - phase.last_time)
        of = f"/{phase.total}" if phase.total is not None else ""
        if train:
            metrics = _join(_format_metrics(self._shown(trainer)))
            step = f"step {phase.count}{of} (global step {trainer.global_step})"
            line = f"{phase.label} {step} {rate} {metrics}"
        else:
            line = f"{phase.label} batch {phase.count}{of} {rate}"
        self._write(phase, line.rstrip())
        phase.last_count, phase.last_time = phase.count, now
        if phase.next_count != _NEVER:
            phase.next_count = phase.count + (self.print_every_n_steps or 1)
        else:
            phase.deadline = now + self.print_every_n_seconds

    def _end_line(self, phase: _Phase, head: str, metrics: dict[str, float] | None) -> None:
        seconds = monotonic() - phase.start_time
        text = f"{head}: {phase.count} batches in {seconds:.2f}s ({_rate(phase.count, seconds)})"
        if metrics:
            text += " " + _join(_format_metrics(metrics))
        self._write(phase, text)

    # -- training ----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._close(self._train, None)
        epoch, max_epochs = trainer.current_epoch, trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            label = f"Epoch {epoch}/{max_epochs - 1}"
        else:
            label = f"Epoch {epoch}"  # no epoch limit
        total = _finite_total(trainer.num_training_batches)
        self._train = self._start(trainer, label, total, train=True, leave=True)

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        phase = self._train
        phase.count += 1
        if phase.count >= phase.next_count or monotonic() >= phase.deadline:
            self._refresh(trainer, phase, train=True)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        self._end_train(trainer)

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        self._end_train(trainer)  # an epoch cut short (max_steps, a stop request) still ends cleanly

    def _end_train(self, trainer: Trainer) -> None:
        phase = self._train
        if not phase.active:
            return
        metrics = self._shown(trainer)
        if phase.bar is not None:
            self._close(phase, metrics)
        else:
            head = f"{phase.label} finished (global step {trainer.global_step})"
            self._end_line(phase, head, metrics)
        self._train = _Phase()

    # -- validation, test, predict -----------------------------------------------------------
    def _start_eval(self, trainer: Trainer, label: str, totals: Sequence[int | float], *, leave: bool) -> None:
        self._close(self._eval, None)
        self._eval = self._start(trainer, label, _finite_total(totals), train=False, leave=leave)

    def _eval_batch_end(self, trainer: Trainer) -> None:
        phase = self._eval
        phase.count += 1
        if monotonic() >= phase.deadline:
            self._refresh(trainer, phase, train=False)

    def _end_eval(self, trainer: Trainer, head: str, *, with_metrics: bool) -> None:
        phase = self._eval
        if not phase.active:
            return
        metrics = self._shown(trainer) if with_metrics else None
        if phase.bar is not None:
            self._close(phase, metrics)
            if metrics is not None and self._train.bar is not None:
                # Show the new validation metrics on the training bar right away.
                self._train.bar.set_postfix(_format_metrics(metrics))
        else:
            self._end_line(phase, head, metrics)
        self._eval = _Phase()

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        if not trainer.sanity_checking:
            self._start_eval(trainer, "Validation", trainer.num_val_batches, leave=False)

    def on_validation_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_end(trainer)

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        train, val = self._train, self._eval
        if train.active and val.active:
            # Leave the time spent validating out of the training speed.
            paused = monotonic() - val.start_time
            train.start_time += paused
            train.last_time += paused
            if train.bar is not None:
                # Not tqdm's unpause(): it discounts everything since the last redraw, which
                # here (redraws every refresh_rate seconds) includes training time too.
                train.bar.start_t += paused
        head = f"Validation (epoch {trainer.current_epoch}, global step {trainer.global_step})"
        self._end_eval(trainer, head, with_metrics=True)

    def on_test_start(self, trainer: Trainer, system: System) -> None:
        self._start_eval(trainer, "Test", trainer.num_test_batches, leave=True)

    def on_test_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_end(trainer)

    def on_test_end(self, trainer: Trainer, system: System) -> None:
        self._end_eval(trainer, "Test", with_metrics=True)

    def on_predict_start(self, trainer: Trainer, system: System) -> None:
        self._start_eval(trainer, "Predict", trainer.num_predict_batches, leave=True)

    def on_predict_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_end(trainer)

    def on_predict_end(self, trainer: Trainer, system: System) -> None:
        self._end_eval(trainer, "Predict", with_metrics=False)

    # -- errors and cleanup ------------------------------------------------------------------
    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        self._abandon()

    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        self._trainer = trainer

    def teardown(self, trainer: Trainer, system: System, stage: str) -> None:
        self._abandon()
