"""``lightning.pytorch.trainer.trainer``: the compatibility ``Trainer``."""

from __future__ import annotations

from fulmen.lightning._trainer import Trainer

__all__ = ["Trainer"]
