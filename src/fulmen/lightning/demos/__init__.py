"""``lightning.pytorch.demos``: the small models and datasets that Lightning examples and bug
reports start from (``fulmen.lightning.demos.boring_classes``), written for fulmen."""

from __future__ import annotations

from fulmen.lightning.demos.boring_classes import BoringDataModule, BoringModel, DemoModel

__all__ = ["BoringDataModule", "BoringModel", "DemoModel"]
