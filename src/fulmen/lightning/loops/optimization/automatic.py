"""``lightning.pytorch.loops.optimization.automatic``: ``Closure``, Lightning's object for the closure
its automatic optimization passes to ``optimizer_step``. fulmen passes a plain function."""

from __future__ import annotations

from fulmen.lightning._internal import unprovided_class

__all__ = ["Closure"]

Closure = unprovided_class(
    "lightning.pytorch.loops.optimization.automatic.Closure",
    "In an optimizer_step(epoch, batch_idx, optimizer, optimizer_closure) override, optimizer_closure is a plain "
    "callable that returns the step's loss (fulmen has already run training_step and backward); call it, or pass "
    "it to optimizer.step(closure=optimizer_closure).",
)
