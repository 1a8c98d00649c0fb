"""``lightning.pytorch.core``: ``LightningModule`` (``fulmen.System`` with Lightning's hooks) and
``LightningDataModule`` (``fulmen.DataModule``); ``.optimizer`` holds ``LightningOptimizer``,
``.saving`` the hparams YAML helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LightningDataModule", "LightningModule"]


def __getattr__(name: str) -> Any:
    if name == "LightningModule":
        from fulmen.lightning._module import LightningModule

        return LightningModule
    if name == "LightningDataModule":
        from fulmen.datamodule import DataModule

        return DataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from fulmen.datamodule import DataModule as LightningDataModule
    from fulmen.lightning._module import LightningModule
