"""``lightning.pytorch.loops.optimization``: ``Closure``, the type of the closure ``optimizer_step`` receives."""

from __future__ import annotations

from fulmen.lightning.loops.optimization.automatic import Closure

__all__ = ["Closure"]
