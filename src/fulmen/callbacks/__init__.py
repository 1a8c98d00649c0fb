"""Built-in callbacks and the ``Callback`` base class (imported on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Callback": "fulmen.callbacks.base",
    "DeviceStatsMonitor": "fulmen.callbacks.device_stats",
    "EMA": "fulmen.callbacks.ema",
    "EarlyStopping": "fulmen.callbacks.early_stopping",
    "EarlyStoppingReason": "fulmen.callbacks.early_stopping",
    "GradientAccumulationScheduler": "fulmen.callbacks.accumulation",
    "GradientMonitor": "fulmen.callbacks.gradient_monitor",
    "LearningRateMonitor": "fulmen.callbacks.lr_monitor",
    "ModelCheckpoint": "fulmen.callbacks.checkpoint",
    "NonFiniteGuard": "fulmen.callbacks.nonfinite",
    "ProgressBar": "fulmen.callbacks.progress",
    "ModelSummary": "fulmen.callbacks.summary",
    "StochasticWeightAveraging": "fulmen.callbacks.swa",
    "Timer": "fulmen.callbacks.timer",
    "WeightDigests": "fulmen.callbacks.weight_digests",
    "summarize": "fulmen.callbacks.summary",
}
__all__ = [
    "EMA",
    "Callback",
    "DeviceStatsMonitor",
    "EarlyStopping",
    "EarlyStoppingReason",
    "GradientAccumulationScheduler",
    "GradientMonitor",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "NonFiniteGuard",
    "ProgressBar",
    "StochasticWeightAveraging",
    "Timer",
    "WeightDigests",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fulmen.callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from fulmen.callbacks.accumulation import GradientAccumulationScheduler
    from fulmen.callbacks.base import Callback
    from fulmen.callbacks.checkpoint import ModelCheckpoint
    from fulmen.callbacks.device_stats import DeviceStatsMonitor
    from fulmen.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
    from fulmen.callbacks.ema import EMA
    from fulmen.callbacks.gradient_monitor import GradientMonitor
    from fulmen.callbacks.lr_monitor import LearningRateMonitor
    from fulmen.callbacks.nonfinite import NonFiniteGuard
    from fulmen.callbacks.progress import ProgressBar
    from fulmen.callbacks.summary import ModelSummary, summarize
    from fulmen.callbacks.swa import StochasticWeightAveraging
    from fulmen.callbacks.timer import Timer
    from fulmen.callbacks.weight_digests import WeightDigests
