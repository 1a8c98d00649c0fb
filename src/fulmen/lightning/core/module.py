"""``lightning.pytorch.core.module``: ``LightningModule`` (see ``fulmen.lightning._module``)."""

from __future__ import annotations

from fulmen.lightning._internal import unprovided_class
from fulmen.lightning._module import LightningModule

__all__ = ["LightningModule"]

#: Lightning's stand-in trainer for a module run under Lightning Fabric; fulmen.lightning runs
#: modules with its Trainer only.
_TrainerFabricShim = unprovided_class(
    "lightning.pytorch.core.module._TrainerFabricShim",
    "fulmen.lightning runs a LightningModule with fulmen.lightning.Trainer only, not under Lightning Fabric.",
)
