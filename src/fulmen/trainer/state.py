"""What the trainer is doing right now.

The values are string enums: ``trainer.state.stage == "fit"`` and ``trainer.state.stage is
TrainerFn.FITTING`` both hold, and they print, format and serialise as their plain strings.
``TrainerFn``, ``TrainerStatus`` and ``RunningStage`` carry PyTorch Lightning's names and values
(``fulmen.lightning.trainer.states`` exports them).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


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
