"""``lightning.pytorch.trainer.states``: the string enums of ``trainer.state`` (fulmen's own,
``fulmen.trainer.state``). ``trainer.state.fn`` and ``trainer.state.stage`` are both the entry
point (a ``TrainerFn``); the loop running inside it is ``trainer.training`` /
``trainer.sanity_checking`` / ``trainer.validating``."""

from __future__ import annotations

from fulmen.trainer.state import RunningStage, TrainerFn, TrainerState, TrainerStatus

__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
