"""``lightning.pytorch.callbacks``: fulmen's callbacks under Lightning's names (imported on first use).

``TQDMProgressBar`` and ``RichProgressBar`` are both fulmen's ``ProgressBar`` (see
``fulmen.lightning.callbacks.progress``); ``BaseFinetuning`` is in ``.finetuning``.
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
    "BaseFinetuning": ("fulmen.lightning.callbacks.finetuning", "BaseFinetuning"),
}
__all__ = [
    "BaseFinetuning",
    "Callback",
    "DeviceStatsMonitor",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
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
    from fulmen.lightning.callbacks.finetuning import BaseFinetuning
    from fulmen.lightning.callbacks.progress import RichProgressBar, TQDMProgressBar
