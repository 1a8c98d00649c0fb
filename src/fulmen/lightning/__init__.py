"""``fulmen.lightning``: run PyTorch Lightning 2.x scripts on fulmen by changing only the imports.

    import lightning as L                      ->  import fulmen.lightning as L
    import lightning.pytorch as pl             ->  import fulmen.lightning as pl
    from lightning.pytorch.callbacks import X  ->  from fulmen.lightning.callbacks import X

``LightningModule`` is ``fulmen.System`` (plus Lightning's ``optimizer_step`` override), ``LightningDataModule`` is ``fulmen.DataModule`` and
``Callback`` is ``fulmen.Callback``; ``Trainer`` is a ``fulmen.Trainer`` with Lightning's defaults
(``lightning_logs/version_N``, a TensorBoard logger). What differs is listed in
docs/migrating-from-lightning.md. ``fulmen.lightning.pytorch`` is this same package, so
``import fulmen.lightning.pytorch as pl`` works too.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from fulmen.lightning import _aliases

#: The PyTorch Lightning release whose behaviour this layer follows (its API, defaults and
#: checkpoint keys). Lightning code that compares ``__version__`` (``Version(pl.__version__) >=
#: Version("2.0")``) takes the 2.x branch; fulmen's own version is ``fulmen.__version__``.
__version__ = "2.6.6"

_EXPORTS = {
    "LightningModule": ("fulmen.lightning._module", "LightningModule"),
    "LightningDataModule": ("fulmen.datamodule", "DataModule"),
    "Callback": ("fulmen.callbacks.base", "Callback"),
    "Trainer": ("fulmen.lightning._trainer", "Trainer"),
    "seed_everything": ("fulmen.seed", "seed_everything"),
}
_SUBMODULES = (
    "callbacks",
    "callbacks.finetuning",
    "callbacks.prediction_writer",
    "callbacks.progress",
    "core",
    "demos",
    "loggers",
    "loggers.csv_logs",
    "loggers.mlflow",
    "loggers.tensorboard",
    "loggers.wandb",
    "loops",
    "profilers",
    "strategies",
    "trainer",
    "tuner",
    "utilities",
    "utilities.rank_zero",
    "utilities.types",
)
__all__ = [
    "Callback",
    "LightningDataModule",
    "LightningModule",
    "Trainer",
    "__version__",
    "callbacks",
    "cli_lightning_logo",
    "core",
    "demos",
    "loggers",
    "profilers",
    "seed_everything",
    "strategies",
    "trainer",
    "tuner",
    "utilities",
]

_LOGO = r"""
    ____      __
   / __/_  __/ /___ ___  ___  ____
  / /_/ / / / / __ `__ \/ _ \/ __ \
 / __/ /_/ / / / / / / /  __/ / / /
/_/  \__,_/_/_/ /_/ /_/\___/_/ /_/   running Lightning code
"""


def cli_lightning_logo() -> None:
    """Print a small text logo (Lightning's examples call this first)."""
    print(_LOGO)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


# ``fulmen.lightning.pytorch`` (and its submodules) are this package's modules under a second name,
# so ``import fulmen.lightning.pytorch as pl`` and ``from fulmen.lightning.pytorch.callbacks import X``
# give the very same classes (an import hook maps each ``pytorch.<path>`` to ``<path>`` on first use).
pytorch = sys.modules[__name__]
_aliases.register(__name__)  # Lightning's deeper module paths that have no file of their own
_aliases.install_pytorch_alias(__name__)

if TYPE_CHECKING:
    from fulmen.callbacks.base import Callback
    from fulmen.datamodule import DataModule as LightningDataModule
    from fulmen.lightning._module import LightningModule
    from fulmen.lightning._trainer import Trainer
    from fulmen.seed import seed_everything
