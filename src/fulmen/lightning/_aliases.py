"""Lightning's deeper module paths (``lightning.pytorch.callbacks.model_checkpoint``, ...) as small
lazy modules registered in ``sys.modules``, so that ``from fulmen.lightning.callbacks.model_checkpoint
import ModelCheckpoint`` gives fulmen's class without a file per path and without importing it early.

``PytorchAliasFinder`` makes every ``fulmen.lightning.pytorch.<path>`` the very module
``fulmen.lightning.<path>`` (a file or an alias above), imported when first asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Mapping
from typing import Any

# module path under fulmen.lightning -> {public name: (fulmen module, attribute)}
ALIASES: dict[str, dict[str, tuple[str, str]]] = {
    "callbacks.model_checkpoint": {"ModelCheckpoint": ("fulmen.callbacks.checkpoint", "ModelCheckpoint")},
    "callbacks.early_stopping": {
        "EarlyStopping": ("fulmen.callbacks.early_stopping", "EarlyStopping"),
        "EarlyStoppingReason": ("fulmen.callbacks.early_stopping", "EarlyStoppingReason"),
        "log": ("fulmen.callbacks.early_stopping", "log"),
    },
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
    "loggers.logger": {
        "Logger": ("fulmen.loggers.base", "Logger"),
        "rank_zero_experiment": ("fulmen.lightning.loggers._experiment", "rank_zero_experiment"),
        "DummyExperiment": ("fulmen.lightning.loggers._experiment", "DummyExperiment"),
        "DummyLogger": ("fulmen.lightning.loggers._experiment", "DummyLogger"),
    },
    "utilities.seed": {"seed_everything": ("fulmen.seed", "seed_everything")},
    "profilers.simple": {"SimpleProfiler": ("fulmen.profilers", "SimpleProfiler")},
    "profilers.advanced": {"AdvancedProfiler": ("fulmen.profilers", "AdvancedProfiler")},
    "profilers.pytorch": {"PyTorchProfiler": ("fulmen.profilers", "PyTorchProfiler")},
    "profilers.profiler": {"Profiler": ("fulmen.profilers", "Profiler")},
    "profilers.base": {"PassThroughProfiler": ("fulmen.profilers", "PassThroughProfiler")},
    "utilities.parsing": {"AttributeDict": ("fulmen._hparams", "AttributeDict")},
    "strategies.strategy": {"Strategy": ("fulmen.runtime.strategy", "Strategy")},
    "strategies.single_device": {"SingleDeviceStrategy": ("fulmen.runtime.strategy", "SingleDeviceStrategy")},
    "utilities.grads": {"grad_norm": ("fulmen.lightning.utilities", "grad_norm")},
    "plugins.io": {
        "AsyncCheckpointIO": ("fulmen.lightning.plugins", "AsyncCheckpointIO"),
        "CheckpointIO": ("fulmen.checkpoint.background", "CheckpointIO"),
    },
    "plugins.io.async_plugin": {"AsyncCheckpointIO": ("fulmen.lightning.plugins", "AsyncCheckpointIO")},
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


class PytorchAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: ``<package>.pytorch.<path>`` is the module ``<package>.<path>`` itself (not a
    second copy of its file), so both spellings give the same classes."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.prefix = f"{package}.pytorch."

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.prefix):
            return None
        real = f"{self.package}.{fullname[len(self.prefix):]}"
        if real not in sys.modules:
            try:
                if importlib.util.find_spec(real) is None:
                    return None
            except (ImportError, ValueError):
                return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=real)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(str(spec.origin))
        spec.loader_state = getattr(module, "__spec__", None)  # import sets __spec__ to ours: put it back
        _mirror(self.package, str(spec.origin))  # its alias children (a module that is no package has no path)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state if module.__spec__ is not None else None


def _mirror(package: str, under: str) -> None:
    """Register ``<package>.pytorch.<path>`` for every module ``under`` and below it already in
    ``sys.modules`` (e.g. the alias modules of ``ALIASES``)."""
    alias = f"{package}.pytorch"
    for name in [n for n in sys.modules if n.startswith(f"{under}.")]:
        if name != alias and not name.startswith(f"{alias}."):
            sys.modules.setdefault(f"{alias}{name[len(package):]}", sys.modules[name])


def install_pytorch_alias(package: str) -> None:
    """Register ``<package>.pytorch`` as ``<package>`` and put the finder first on ``sys.meta_path``
    (before the path finder, which would otherwise load a second copy of each file)."""
    sys.modules[f"{package}.pytorch"] = sys.modules[package]
    _mirror(package, package)
    if not any(isinstance(f, PytorchAliasFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.insert(0, PytorchAliasFinder(package))
