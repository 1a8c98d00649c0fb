"""``lightning.pytorch.callbacks``: fulmen's callbacks under Lightning's names (imported on first use).

``TQDMProgressBar`` and ``RichProgressBar`` are both fulmen's ``ProgressBar`` (see
``fulmen.lightning.callbacks.progress``), ``RichModelSummary`` is its ``ModelSummary``;
``BaseFinetuning`` and ``BackboneFinetuning`` are in ``.finetuning``; ``LambdaCallback``,
``OnExceptionCheckpoint``, ``LearningRateFinder`` and ``BatchSizeFinder`` are written for
``fulmen.lightning`` (``.lambda_hooks``, ``.exception_checkpoint``, ``.tuning``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Callback": ("fulmen.callbacks.base", "Callback"),
    "ModelCheckpoint": ("fulmen.callbacks.checkpoint", "ModelCheckpoint"),
    "EarlyStopping": ("fulmen.callbacks.early_stopping", "EarlyStopping"),
    "LearningRateMonitor": ("fulmen.callbacks.lr_monitor", "LearningRateMonitor"),
    "Timer": ("fulmen.callbacks.timer", "Timer"),
    "StochasticWeightAveraging": ("fulmen.callbacks.swa", "StochasticWeightAveraging"),
    "GradientAccumulationScheduler": ("fulmen.callbacks.accumulation", "GradientAccumulationScheduler"),
    "ModelSummary": ("fulmen.callbacks.summary", "ModelSummary"),
    "DeviceStatsMonitor": ("fulmen.callbacks.device_stats", "DeviceStatsMonitor"),
    "ProgressBar": ("fulmen.callbacks.progress", "ProgressBar"),
    "TQDMProgressBar": ("fulmen.lightning.callbacks.progress", "TQDMProgressBar"),
    "RichProgressBar": ("fulmen.lightning.callbacks.progress", "RichProgressBar"),
    "RichModelSummary": ("fulmen.lightning.callbacks.rich_summary", "RichModelSummary"),
    "BaseFinetuning": ("fulmen.lightning.callbacks.finetuning", "BaseFinetuning"),
    "BackboneFinetuning": ("fulmen.lightning.callbacks.finetuning", "BackboneFinetuning"),
    "LambdaCallback": ("fulmen.lightning.callbacks.lambda_hooks", "LambdaCallback"),
    "OnExceptionCheckpoint": ("fulmen.lightning.callbacks.exception_checkpoint", "OnExceptionCheckpoint"),
    "LearningRateFinder": ("fulmen.lightning.callbacks.tuning", "LearningRateFinder"),
    "BatchSizeFinder": ("fulmen.lightning.callbacks.tuning", "BatchSizeFinder"),
    "BasePredictionWriter": ("fulmen.lightning.callbacks.prediction_writer", "BasePredictionWriter"),
}
__all__ = [
    "BackboneFinetuning",
    "BaseFinetuning",
    "BasePredictionWriter",
    "BatchSizeFinder",
    "Callback",
    "DeviceStatsMonitor",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateFinder",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "RichModelSummary",
    "RichProgressBar",
    "StochasticWeightAveraging",
    "TQDMProgressBar",
    "Timer",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)


if TYPE_CHECKING:
    from fulmen.callbacks.accumulation import GradientAccumulationScheduler
    from fulmen.callbacks.base import Callback
    from fulmen.callbacks.checkpoint import ModelCheckpoint
    from fulmen.callbacks.device_stats import DeviceStatsMonitor
    from fulmen.callbacks.early_stopping import EarlyStopping
    from fulmen.callbacks.lr_monitor import LearningRateMonitor
    from fulmen.callbacks.progress import ProgressBar
    from fulmen.callbacks.summary import ModelSummary
    from fulmen.callbacks.swa import StochasticWeightAveraging
    from fulmen.callbacks.timer import Timer
    from fulmen.lightning.callbacks.exception_checkpoint import OnExceptionCheckpoint
    from fulmen.lightning.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
    from fulmen.lightning.callbacks.lambda_hooks import LambdaCallback
    from fulmen.lightning.callbacks.prediction_writer import BasePredictionWriter
    from fulmen.lightning.callbacks.progress import RichProgressBar, TQDMProgressBar
    from fulmen.lightning.callbacks.rich_summary import RichModelSummary
    from fulmen.lightning.callbacks.tuning import BatchSizeFinder, LearningRateFinder
