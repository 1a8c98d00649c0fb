"""``lightning.pytorch.loggers``: fulmen's loggers with Lightning's defaults (``name="lightning_logs"``,
``prefix``), imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Logger": "fulmen.loggers.base",
    "CSVLogger": "fulmen.lightning.loggers.csv_logs",
    "TensorBoardLogger": "fulmen.lightning.loggers.tensorboard",
    "MLFlowLogger": "fulmen.lightning.loggers.mlflow",
    "WandbLogger": "fulmen.lightning.loggers.wandb",
}
__all__ = ["CSVLogger", "Logger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from fulmen.lightning.loggers.csv_logs import CSVLogger
    from fulmen.lightning.loggers.mlflow import MLFlowLogger
    from fulmen.lightning.loggers.tensorboard import TensorBoardLogger
    from fulmen.lightning.loggers.wandb import WandbLogger
    from fulmen.loggers.base import Logger
