"""Lightning's deeper module paths (``lightning.pytorch.callbacks.model_checkpoint``, ...) as small
lazy modules registered in ``sys.modules``, so that ``from fulmen.lightning.callbacks.model_checkpoint
import ModelCheckpoint`` gives fulmen's class without a file per path and without importing it early.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

# module path under fulmen.lightning -> {public name: (fulmen module, attribute)}
ALIASES: dict[str, dict[str, tuple[str, str]]] = {
    "callbacks.model_checkpoint": {"ModelCheckpoint": ("fulmen.callbacks.checkpoint", "ModelCheckpoint")},
    "callbacks.early_stopping": {"EarlyStopping": ("fulmen.callbacks.early_stopping", "EarlyStopping")},
    "callbacks.lr_monitor": {"LearningRateMonitor": ("fulmen.callbacks.lr_monitor", "LearningRateMonitor")},
    "callbacks.timer": {"Timer": ("fulmen.callbacks.timer", "Timer")},
    "callbacks.stochastic_weight_avg": {
        "StochasticWeightAveraging": ("fulmen.callbacks.swa", "StochasticWeightAveraging")
    },
    "callbacks.gradient_accumulation_scheduler": {
        "GradientAccumulationScheduler": ("fulmen.callbacks.accumulation", "GradientAccumulationScheduler")
    },
    "callbacks.model_summary": {"ModelSummary": ("fulmen.callbacks.summary", "ModelSummary")},
    "callbacks.device_stats_monitor": {"DeviceStatsMonitor": ("fulmen.callbacks.device_stats", "DeviceStatsMonitor")},
    "callbacks.callback": {"Callback": ("fulmen.callbacks.base", "Callback")},
    "callbacks.progress.tqdm_progress": {"TQDMProgressBar": ("fulmen.lightning.callbacks.progress", "TQDMProgressBar")},
    "callbacks.progress.rich_progress": {"RichProgressBar": ("fulmen.lightning.callbacks.progress", "RichProgressBar")},
    "callbacks.rich_model_summary": {
        "RichModelSummary": ("fulmen.lightning.callbacks.rich_summary", "RichModelSummary")
    },
    "callbacks.lambda_function": {"LambdaCallback": ("fulmen.lightning.callbacks.lambda_hooks", "LambdaCallback")},
    "callbacks.on_exception_checkpoint": {
        "OnExceptionCheckpoint": ("fulmen.lightning.callbacks.exception_checkpoint", "OnExceptionCheckpoint")
    },
    "callbacks.lr_finder": {"LearningRateFinder": ("fulmen.lightning.callbacks.tuning", "LearningRateFinder")},
    "callbacks.batch_size_finder": {"BatchSizeFinder": ("fulmen.lightning.callbacks.tuning", "BatchSizeFinder")},
    "core.module": {"LightningModule": ("fulmen.lightning._module", "LightningModule")},
    "core.datamodule": {"LightningDataModule": ("fulmen.datamodule", "DataModule")},
    "trainer.trainer": {"Trainer": ("fulmen.lightning._trainer", "Trainer")},
    "loggers.logger": {
        "Logger": ("fulmen.loggers.base", "Logger"),
        "rank_zero_experiment": ("fulmen.lightning.loggers._experiment", "rank_zero_experiment"),
        "DummyExperiment": ("fulmen.lightning.loggers._experiment", "DummyExperiment"),
        "DummyLogger": ("fulmen.lightning.loggers._experiment", "DummyLogger"),
    },
    "tuner.tuning": {"Tuner": ("fulmen.lightning.tuner", "Tuner")},
    "utilities.seed": {"seed_everything": ("fulmen.seed", "seed_everything")},
    "utilities.grads": {"grad_norm": ("fulmen.lightning.utilities", "grad_norm")},
}


def _lazy_module(name: str, exports: Mapping[str, tuple[str, str]]) -> types.ModuleType:
    module = types.ModuleType(name, f"Lightning's module path {name.split('.', 2)[-1]}: fulmen's names, imported on use.")

    def __getattr__(attr: str) -> Any:
        if attr not in exports:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        where, real = exports[attr]
        value = getattr(importlib.import_module(where), real)
        setattr(module, attr, value)
        return value

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__all__ = sorted(exports)  # type: ignore[attr-defined]
    return module


def register(package: str) -> list[str]:
    """Put every alias module into ``sys.modules`` under ``package`` (and as attributes of their
    parents); returns the module paths registered."""
    for path, exports in ALIASES.items():
        full = f"{package}.{path}"
        if full not in sys.modules:
            sys.modules[full] = _lazy_module(full, exports)
        parent, _, leaf = full.rpartition(".")
        parent_module = sys.modules.get(parent) or importlib.import_module(parent)
        if leaf not in vars(parent_module):
            setattr(parent_module, leaf, sys.modules[full])
    return list(ALIASES)
