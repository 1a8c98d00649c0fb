"""What the trainer is doing right now: the entry point and its status (``TrainerState``), and
where the training loop is (``LoopState``).

The values are string enums: ``trainer.state.stage == "fit"`` and ``trainer.state.stage is
TrainerFn.FITTING`` both hold, and they print, format and serialise as their plain strings.
``TrainerFn``, ``TrainerStatus`` and ``RunningStage`` carry PyTorch Lightning's names and values
(``fulmen.lightning.trainer.states`` exports them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import Iterator
from typing import Any

from fulmen.trainer._phase import Phase


class _StrEnum(str, enum.Enum):
    """A ``str`` that is also an enum member: compares, hashes, prints and formats as its value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class TrainerFn(_StrEnum):
    """The entry point that runs: ``trainer.fit`` / ``validate`` / ``test`` / ``predict``."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class TrainerStatus(_StrEnum):
    """Where the run is: being set up, running, or how it ended (``FAILED`` is fulmen's: an
    exception other than Ctrl-C / ``SystemExit`` ended it)."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED, TrainerStatus.FAILED)


class RunningStage(_StrEnum):
    """Which loop runs inside an entry point: ``fit`` runs the sanity check, training and
    validation; the other entry points run their own loop."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> str:
        """The prefix of the dataloader hook it reads: ``val`` for validation and the sanity check."""
        return "val" if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING) else self.value


@dataclasses.dataclass
class TrainerState:
    """``stage``: the entry point (a ``TrainerFn``: ``"fit"``, ``"validate"``, ``"test"``,
    ``"predict"``) or None between runs; ``fn`` is the same value under Lightning's name.
    ``status``: a ``TrainerStatus`` (``"initializing"``, ``"running"``, ``"finished"``,
    ``"interrupted"`` or ``"failed"``). Plain strings assigned to either are converted."""

    # Typed as str (what may be assigned); the values held are always the enums' members.
    stage: str | None = None
    status: str = TrainerStatus.INITIALIZING

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "stage" and value is not None:
            value = TrainerFn(value)
        elif name == "status":
            value = TrainerStatus(value)
        object.__setattr__(self, name, value)

    @property
    def fn(self) -> TrainerFn | None:
        """Lightning's name for ``stage``: the entry point that runs."""
        return None if self.stage is None else TrainerFn(self.stage)

    @fn.setter
    def fn(self, value: str | None) -> None:
        self.stage = value

    @property
    def finished(self) -> bool:
        return self.status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        return TrainerStatus(self.status).stopped


@dataclasses.dataclass(eq=False)
class LoopState:
    """Where the training loop is, and what has been asked of it: ``trainer.loop``.

    The loops in ``fulmen.trainer`` keep it up to date; everyone else reads it. A callback or the
    runtime changes the run through the Trainer's methods (``trainer.should_stop = True``,
    ``trainer.skip_optimizer_step()``, ``trainer.request_stop(reason)``), never by writing here.
    Its ``state_dict()`` is the checkpoint's ``"loops"`` entry, and ``from_checkpoint`` reads it
    back (``fulmen.trainer._resume`` turns that into the plan of how a resumed fit goes on).
    """

    #: The epoch running (``trainer.current_epoch``): epochs completed so far.
    epoch: int = 0
    #: Optimizer steps taken (``trainer.global_step``).
    global_step: int = 0
    #: Batches of the current epoch begun so far (the index of the latest batch plus one).
    batches_done: int = 0
    #: The part of the loop running (``fulmen.trainer._phase.Phase``); None before the first epoch.
    phase: Phase | None = None
    #: The random number generators as the epoch started (its data order): an ``RNGState``.
    epoch_start_rng: Any = None
    #: Batches whose gradients add up before each optimizer step (``trainer.accumulate_grad_batches``).
    accumulate_grad_batches: int = 1
    # The training data as the loop sees it, recorded so that a resume can compare (None where
    # unknown: no length, a custom batch sampler).
    train_batches: int | None = None
    train_batch_size: int | None = None
    train_dataset_len: int | None = None
    #: Whether the data facts above were recorded (checkpoints from before they were have none).
    has_data_facts: bool = True

    # -- requests, read by the loop between two batches ------------------------------------------
    #: A callback's request to stop (``trainer.should_stop``), honoured once min_epochs/min_steps are met.
    should_stop: bool = False
    #: A signal's request (``trainer.request_stop``): ``"SIGTERM"``, ``"SIGINT"`` or ``"requeue"``.
    stop_request: str | None = None
    #: A stop request arrived in this process ...
    signalled: bool = False
    #: ... and every process agreed to stop after the current batch.
    preempted: bool = False
    #: With several processes: whether the loop asks the others about a stop request at each log interval.
    watch_signal: bool = False
    #: ``trainer.skip_optimizer_step()`` was called for the step about to be taken.
    skip_step: bool = False

    # -- the loop's own timing (not in checkpoints) -----------------------------------------------
    #: When the last validation ended (or training started): a duration val_check_interval counts from it.
    last_val_time: float = 0.0
    #: The epoch's Lightning scheduler timing (``LoopRules.lightning_scheduler_timing``), else None.
    lightning_schedules: Any = None

    @property
    def batch_idx(self) -> int:
        """The index, in its epoch, of the training batch running or last run (-1 before the first)."""
        return self.batches_done - 1

    def begin_epoch(self, epoch_start_rng: Any) -> None:
        """A fresh epoch: no batch done yet, its data order's generators kept for checkpoints."""
        self.epoch_start_rng = epoch_start_rng
        self.phase, self.batches_done = Phase.EPOCH_START, 0

    def describe_data(self, n_train: int | float, facts: dict[str, int | None]) -> None:
        """The training data of this fit: its batches per epoch, batch size and dataset length."""
        self.train_batches = None if math.isinf(n_train) else int(n_train)
        self.train_batch_size = facts["train_batch_size"]
        self.train_dataset_len = facts["train_dataset_len"]

    def load_results(self, global_step: int, epoch: int) -> None:
        """Where a run that ran in other processes (``ddp_spawn``) ended: rank 0's position."""
        self.global_step, self.epoch = global_step, epoch

    def request_stop(self, reason: str, *, single_process: bool) -> None:
        """A signal asks the loop to stop after the current batch (see ``Trainer.request_stop``)."""
        self.stop_request = reason
        self.signalled = True
        if single_process:  # (with several processes they agree first, at the next log interval)
            self.preempted = True

    def clear_requests(self) -> None:
        """As a fit starts: no stop asked for yet."""
        self.stop_request, self.signalled, self.preempted, self.should_stop = None, False, False, False

    @contextlib.contextmanager
    def rewound_to(self, batches_done: int) -> Iterator[None]:
        """While a checkpoint is written: the position as if only ``batches_done`` batches of the
        epoch had run (a batch that failed before its optimizer step is trained again on resume)."""
        kept = self.batches_done
        self.batches_done = batches_done
        try:
            yield
        finally:
            self.batches_done = kept

    # -- the checkpoint's "loops" entry -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data (the phase as its string value), in the checkpoint's key order."""
        rng = self.epoch_start_rng
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batches_done": self.batches_done,
            "phase": str(self.phase) if self.phase is not None else None,
            "epoch_start_rng": rng.state_dict() if rng is not None else None,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "train_batches": self.train_batches,
            "train_batch_size": self.train_batch_size,
            "train_dataset_len": self.train_dataset_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a ``state_dict()`` (the position; the epoch's generators are restored into the
        new run's data loaders by the resume plan, not kept here). A phase it does not name counts
        as between epochs."""
        acc = state.get("accumulate_grad_batches")
        self.epoch = int(state.get("epoch", 0))
        self.global_step = int(state.get("global_step", 0))
        self.batches_done = int(state.get("batches_done", 0))
        self.phase = Phase.saved(state.get("phase", Phase.AFTER_EPOCH.value))
        self.accumulate_grad_batches = int(acc) if acc is not None else 0
        self.train_batches = state.get("train_batches")
        self.train_batch_size = state.get("train_batch_size")
        self.train_dataset_len = state.get("train_dataset_len")
        self.has_data_facts = "train_batch_size" in state

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> LoopState:
        """Where the loop was when ``ckpt`` was written: its ``"loops"`` entry loaded into a new
        ``LoopState`` (the top-level epoch and step where the entry has none: a file written
        without loop state, or by Lightning without fulmen's keys). The phase is never None here.
        ``accumulate_grad_batches`` is 0 where the file does not say."""
        loops = dict(ckpt.get("loops") or {})
        loops.setdefault("epoch", ckpt.get("epoch", 0))
        loops.setdefault("global_step", ckpt.get("global_step", 0))
        saved = cls()
        saved.load_state_dict(loops)
        return saved


def saved_epoch_start_rng(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The generators' states as the saved epoch started (``LoopState.state_dict``), or None."""
    return (ckpt.get("loops") or {}).get("epoch_start_rng")
