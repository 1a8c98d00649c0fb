"""Experiment loggers: where ``self.log`` values and hyperparameters end up.

``TensorBoardLogger`` imports tensorboard only when it first writes, so importing this package
stays cheap.
"""

from fulmen.loggers.base import FolderLogger, Logger
from fulmen.loggers.csv import CSVLogger
from fulmen.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "FolderLogger", "Logger", "TensorBoardLogger"]
