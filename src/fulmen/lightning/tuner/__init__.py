"""``lightning.pytorch.tuner``: ``Tuner`` with Lightning's signatures and defaults (``.tuning``), on
``fulmen.Tuner``; ``.lr_finder`` holds the learning-rate finder's result under Lightning's names."""

from __future__ import annotations

from fulmen.lightning.tuner.tuning import Tuner

__all__ = ["Tuner"]
