"""Experiment loggers: where ``self.log`` values and hyperparameters end up (imported on first use).

``TensorBoardLogger``, ``MLFlowLogger`` and ``WandbLogger`` import tensorboard, mlflow and wandb
only when they first write, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Logger": "fulmen.loggers.base",
    "FolderLogger": "fulmen.loggers.base",
    "CSVLogger": "fulmen.loggers.csv",
    "TensorBoardLogger": "fulmen.loggers.tensorboard",
    "MLFlowLogger": "fulmen.loggers.mlflow",
    "WandbLogger": "fulmen.loggers.wandb",
}
__all__ = ["CSVLogger", "FolderLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fulmen.loggers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from fulmen.loggers.base import FolderLogger, Logger
    from fulmen.loggers.csv import CSVLogger
    from fulmen.loggers.mlflow import MLFlowLogger
    from fulmen.loggers.tensorboard import TensorBoardLogger
    from fulmen.loggers.wandb import WandbLogger
