"""``lightning.pytorch.loops``: Lightning's loop objects, which fulmen does not have.

fulmen's trainer runs its loops as functions (``fulmen.trainer._fit``, ``._eval``), not as
objects a script can replace or inspect, so these names only import. The one piece with a public
meaning, ``_EvaluationLoop._print_results(results, stage)``, prints the results table that
``trainer.validate`` / ``trainer.test`` print.
"""

from __future__ import annotations

from fulmen.lightning._internal import unprovided_class
from fulmen.lightning.loops.evaluation_loop import _EvaluationLoop

__all__ = ["_EvaluationLoop", "_FitLoop", "_PredictionLoop", "_TrainingEpochLoop"]

_INSTEAD = (
    "Read the loop's state from the trainer (trainer.current_epoch, trainer.global_step, trainer.num_training_batches, "
    "trainer.should_stop) and change its behaviour with Trainer flags, hooks or callbacks."
)
_FitLoop = unprovided_class("lightning.pytorch.loops._FitLoop", _INSTEAD)
_TrainingEpochLoop = unprovided_class("lightning.pytorch.loops._TrainingEpochLoop", _INSTEAD)
_PredictionLoop = unprovided_class("lightning.pytorch.loops._PredictionLoop", _INSTEAD)
