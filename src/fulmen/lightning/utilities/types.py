"""``lightning.pytorch.utilities.types``: the type aliases Lightning scripts annotate with, and
``LRSchedulerConfig`` (fulmen's scheduler configuration: what ``trainer.lr_scheduler_configs`` holds).

Annotations only: fulmen checks what hooks return at run time, whatever the annotation says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from fulmen.trainer._optim import SchedulerConfig as LRSchedulerConfig

__all__ = [
    "EVAL_DATALOADERS",
    "STEP_OUTPUT",
    "TRAIN_DATALOADERS",
    "LRSchedulerConfig",
    "LRSchedulerTypeUnion",
    "OptimizerLRScheduler",
]

STEP_OUTPUT = torch.Tensor | Mapping[str, Any] | None
TRAIN_DATALOADERS = Any
EVAL_DATALOADERS = Any
LRSchedulerTypeUnion = LRScheduler | ReduceLROnPlateau
OptimizerLRScheduler = (
    Optimizer
    | Sequence[Optimizer]
    | tuple[Sequence[Optimizer], Sequence[LRSchedulerTypeUnion | Mapping[str, Any]]]
    | Mapping[str, Any]
    | Sequence[Mapping[str, Any]]
    | None
)
