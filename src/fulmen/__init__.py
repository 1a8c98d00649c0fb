"""fulmen: a lean, reproducible PyTorch training framework.

The public API is what ``__all__`` lists. Names are imported on first use (PEP 562), so
``import fulmen`` itself costs almost nothing over ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "System": "fulmen.system",
    "DataModule": "fulmen.datamodule",
    "Trainer": "fulmen.trainer.trainer",
    "Callback": "fulmen.callbacks.base",
    "ModelCheckpoint": "fulmen.callbacks.checkpoint",
    "AsyncCheckpointIO": "fulmen.checkpoint.background",
    "EarlyStopping": "fulmen.callbacks.early_stopping",
    "GradientAccumulationScheduler": "fulmen.callbacks.accumulation",
    "EMA": "fulmen.callbacks.ema",
    "LearningRateMonitor": "fulmen.callbacks.lr_monitor",
    "StochasticWeightAveraging": "fulmen.callbacks.swa",
    "Timer": "fulmen.callbacks.timer",
    "GradientMonitor": "fulmen.callbacks.gradient_monitor",
    "NonFiniteGuard": "fulmen.callbacks.nonfinite",
    "DeviceStatsMonitor": "fulmen.callbacks.device_stats",
    "NonFiniteGradientError": "fulmen.errors",
    "ProgressBar": "fulmen.callbacks.progress",
    "ModelSummary": "fulmen.callbacks.summary",
    "summarize": "fulmen.callbacks.summary",
    "Logger": "fulmen.loggers.base",
    "CSVLogger": "fulmen.loggers.csv",
    "TensorBoardLogger": "fulmen.loggers.tensorboard",
    "MLFlowLogger": "fulmen.loggers.mlflow",
    "WandbLogger": "fulmen.loggers.wandb",
    "seed_everything": "fulmen.seed",
    "DDPStrategy": "fulmen.runtime.ddp",
    "FSDPStrategy": "fulmen.runtime.fsdp",
    "rank_zero_only": "fulmen.runtime.distributed",
    "doctor": "fulmen.doctor",
    "Tuner": "fulmen.tuner",
    "FlagError": "fulmen.errors",
    "HookReturnError": "fulmen.errors",
    "LoggingError": "fulmen.errors",
    "CheckpointIntegrityError": "fulmen.errors",
    "DataError": "fulmen.errors",
    "NonFiniteLossError": "fulmen.errors",
    "FulmenWarning": "fulmen.errors",
}

__all__ = [
    "EMA",
    "AsyncCheckpointIO",
    "CSVLogger",
    "Callback",
    "CheckpointIntegrityError",
    "DDPStrategy",
    "DataError",
    "DataModule",
    "DeviceStatsMonitor",
    "EarlyStopping",
    "FSDPStrategy",
    "FlagError",
    "FulmenWarning",
    "GradientAccumulationScheduler",
    "GradientMonitor",
    "HookReturnError",
    "LearningRateMonitor",
    "Logger",
    "LoggingError",
    "MLFlowLogger",
    "ModelCheckpoint",
    "ModelSummary",
    "NonFiniteGradientError",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "ProgressBar",
    "StochasticWeightAveraging",
    "System",
    "TensorBoardLogger",
    "Timer",
    "Trainer",
    "Tuner",
    "WandbLogger",
    "__version__",
    "doctor",
    "rank_zero_only",
    "seed_everything",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # (fulmen.fingerprint.fingerprint_files after a plain `import fulmen`)
        return importlib.import_module(f"fulmen.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


#: Submodules reachable as attributes of ``fulmen`` without importing them first.
_SUBMODULES = ("callbacks", "checkpoint", "loggers", "fingerprint", "reproduce", "export", "serve", "audit")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from fulmen.callbacks.accumulation import GradientAccumulationScheduler
    from fulmen.callbacks.base import Callback
    from fulmen.callbacks.checkpoint import ModelCheckpoint
    from fulmen.callbacks.device_stats import DeviceStatsMonitor
    from fulmen.callbacks.early_stopping import EarlyStopping
    from fulmen.callbacks.ema import EMA
    from fulmen.callbacks.gradient_monitor import GradientMonitor
    from fulmen.callbacks.lr_monitor import LearningRateMonitor
    from fulmen.callbacks.nonfinite import NonFiniteGuard
    from fulmen.callbacks.progress import ProgressBar
    from fulmen.callbacks.summary import ModelSummary, summarize
    from fulmen.callbacks.swa import StochasticWeightAveraging
    from fulmen.callbacks.timer import Timer
    from fulmen.checkpoint.background import AsyncCheckpointIO
    from fulmen.datamodule import DataModule
    from fulmen.doctor import doctor
    from fulmen.errors import (
        CheckpointIntegrityError,
        DataError,
        FlagError,
        FulmenWarning,
        HookReturnError,
        LoggingError,
        NonFiniteGradientError,
        NonFiniteLossError,
    )
    from fulmen.loggers.base import Logger
    from fulmen.loggers.csv import CSVLogger
    from fulmen.loggers.mlflow import MLFlowLogger
    from fulmen.loggers.tensorboard import TensorBoardLogger
    from fulmen.loggers.wandb import WandbLogger
    from fulmen.runtime.ddp import DDPStrategy
    from fulmen.runtime.distributed import rank_zero_only
    from fulmen.runtime.fsdp import FSDPStrategy
    from fulmen.seed import seed_everything
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer
    from fulmen.tuner import Tuner
