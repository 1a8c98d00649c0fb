"""``lightning.pytorch.core.datamodule``: ``LightningDataModule`` is ``fulmen.DataModule``."""

from __future__ import annotations

from fulmen.datamodule import DataModule as LightningDataModule

__all__ = ["LightningDataModule"]
