"""``lightning.pytorch.loops.optimization.automatic``: ``Closure``, the type of the
``optimizer_closure`` an ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)``
override receives. It is fulmen's ``StepClosure``: fulmen has already run ``training_step`` and
``backward`` when it calls the override, so calling the closure returns that step's loss (pass it
on with ``optimizer.step(closure=optimizer_closure)``, or call it)."""

from __future__ import annotations

from fulmen.lightning._step import StepClosure as Closure

__all__ = ["Closure"]
