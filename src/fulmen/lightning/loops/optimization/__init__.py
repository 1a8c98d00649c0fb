"""``lightning.pytorch.loops.optimization``: Lightning's optimization loop objects (not provided)."""

from __future__ import annotations

from fulmen.lightning.loops.optimization.automatic import Closure

__all__ = ["Closure"]
