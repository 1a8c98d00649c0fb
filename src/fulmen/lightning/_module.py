"""``LightningModule``: ``fulmen.System`` that also runs Lightning's optimization and mode hooks.

A Lightning script may override hooks that a plain ``fulmen.System`` refuses; here they are
called, decided once per class (a hook not overridden costs nothing per step):

- ``optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)`` (typically a learning-rate
  warm-up). fulmen runs ``training_step`` and ``backward`` itself, before the step, so the closure
  it passes only returns the loss already computed; the ``optimizer`` it passes steps through the
  run's precision (loss scaling under 16-mixed). A step the override does not take is not taken.
- ``optimizer_zero_grad(epoch, batch_idx, optimizer)``: called where Lightning calls it, after
  ``training_step`` and before the backward of the first batch of each accumulation group
  (``on_before_zero_grad`` fires just before it), instead of fulmen's zeroing after the step.
- ``backward(loss, *args, **kwargs)``: called instead of ``loss.backward()`` with the loss as
  Lightning passes it (multiplied by the loss scale under 16-mixed), between
  ``on_before_backward`` and ``on_after_backward``; ``manual_backward`` calls it too.
- ``on_validation_model_eval`` / ``on_validation_model_train``, ``on_test_model_eval`` /
  ``on_test_model_train`` and ``on_predict_model_eval``: called instead of fulmen's own switch to
  eval mode (before ``on_*_start``) and restore of each module's mode (after ``on_*_end``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fulmen.system import System

_MODE_HOOKS = (
    "on_validation_model_eval",
    "on_validation_model_train",
    "on_test_model_eval",
    "on_test_model_train",
    "on_predict_model_eval",
)


class LightningModule(System):
    _allowed_lightning_hooks = ("optimizer_step", "optimizer_zero_grad", "backward", *_MODE_HOOKS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "optimizer_step" in own:
            cls._optimizer_step_hook = True
        if "optimizer_zero_grad" in own:
            cls._zero_grad_hook = True
        if "backward" in own:
            cls._backward_hook = True
        modes = {name for name in _MODE_HOOKS if name in own}
        if modes:
            cls._model_mode_hooks = cls._model_mode_hooks | modes

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's default: ``optimizer.step(closure=optimizer_closure)``."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Lightning's default: ``optimizer.zero_grad()``."""
        optimizer.zero_grad()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's default: ``loss.backward(*args, **kwargs)`` (the loss is already scaled
        under 16-mixed)."""
        loss.backward(*args, **kwargs)

    def on_validation_model_eval(self) -> None:
        """Lightning's default: eval mode for validation."""
        self.eval()

    def on_validation_model_train(self) -> None:
        """Lightning's default when called: train mode after validation (fulmen, when the hook is
        not overridden, restores each module's own mode instead)."""
        self.train()

    def on_test_model_eval(self) -> None:
        """Lightning's default: eval mode for testing."""
        self.eval()

    def on_test_model_train(self) -> None:
        """Lightning's default when called: train mode after testing."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Lightning's default: eval mode for prediction."""
        self.eval()
