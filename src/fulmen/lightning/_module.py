"""``LightningModule``: ``fulmen.System`` that also accepts Lightning's ``optimizer_step`` override.

A Lightning script may override ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)``
(typically for a learning-rate warm-up). fulmen runs ``training_step`` and ``backward`` itself,
before the step, so the closure it passes only returns the loss already computed; the
``optimizer`` it passes steps through the run's precision (loss scaling under 16-mixed). A step
the override does not take is not taken (as in Lightning).
"""

from __future__ import annotations

from typing import Any

from fulmen.system import System


class LightningModule(System):
    _allowed_lightning_hooks = ("optimizer_step",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "optimizer_step" in vars(cls):
            cls._optimizer_step_hook = True

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's default: ``optimizer.step(closure=optimizer_closure)``."""
        optimizer.step(closure=optimizer_closure)
