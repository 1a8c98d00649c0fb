"""The training step of a ``LightningModule`` that overrides Lightning's ``optimizer_zero_grad``,
``backward`` or ``optimizer_step``: fulmen's automatic step (``fulmen.trainer._step``) with those
overrides in its slots, chosen by ``LightningModule._train_step_variant`` once per epoch.

In Lightning's order: at the first batch of each accumulation group ``on_before_zero_grad`` and
``optimizer_zero_grad(epoch, batch_idx, optimizer)`` after ``training_step`` (also when it returned
None), in place of the zeroing after each step; ``backward`` receives the loss multiplied by the
loss scale under 16-mixed (as Lightning's precision passes it); ``optimizer_step(epoch, batch_idx,
optimizer, optimizer_closure)`` takes the step, with an optimizer (``ClosureStep``) that steps
through the run's precision and a closure that returns the loss fulmen already computed
(``StepClosure``), or that evaluates the batch again for an optimizer that needs a closure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.trainer._hooks import call_hooks
from fulmen.trainer._optim import Reevaluation
from fulmen.trainer._step import (
    OptimizerStep,
    Reevaluate,
    Step,
    StepParts,
    automatic_step,
    prepare_optimizer_step,
)

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.lightning._module import LightningModule


def lightning_step(system: LightningModule, parts: StepParts, start: int) -> Step:
    """The automatic step with the system's overrides (only those it has) in its slots."""
    trainer, optimizer, precision, before_zero = parts.trainer, parts.optimizer, parts.precision, parts.before_zero
    zero_first: Callable[[int], None] | None = None
    if system._zero_grad_hook:
        zero_hook = parts.timed("optimizer_zero_grad", system.optimizer_zero_grad)

        def zero_first(batch_idx: int) -> None:
            if before_zero:
                call_hooks(before_zero, optimizer)
            zero_hook(trainer.current_epoch, batch_idx, optimizer)

    backward: Callable[[Tensor], Any] | None = None
    if system._backward_hook:
        backward_hook = parts.timed("backward", system.backward)
        scale = precision.scaler.scale if precision.scales_loss else None  # type: ignore[attr-defined]

        def backward(loss: Tensor) -> None:
            backward_hook(scale(loss) if scale is not None else loss)

    optimizer_step = None
    if system._optimizer_step_hook or zero_first is not None:

        def optimizer_step(reevaluate: Reevaluate | None) -> OptimizerStep:
            return _lightning_optimizer_step(system, parts, reevaluate, zeroes_after=zero_first is None)

    return automatic_step(parts, start, zero_first=zero_first, backward=backward, optimizer_step=optimizer_step)


def _lightning_optimizer_step(
    system: LightningModule,
    parts: StepParts,
    reevaluate: Reevaluate | None,
    zeroes_after: bool,
) -> OptimizerStep:
    """The optimizer step through an ``optimizer_step`` override (or torch's, when only
    ``optimizer_zero_grad`` is overridden); zeroing after it only when ``zeroes_after`` (without an
    ``optimizer_zero_grad`` override; a skipped step's gradients are always dropped)."""
    trainer, optimizer, precision, before_zero = parts.trainer, parts.optimizer, parts.precision, parts.before_zero
    report_skipped = parts.report_skipped
    overridden = system._optimizer_step_hook

    def step(loss: Any, batch: Any, batch_idx: int) -> bool:
        ready = stepped = prepare_optimizer_step(parts)
        closure = Reevaluation(loss, reevaluate, batch, batch_idx) if ready and reevaluate is not None else None
        if ready and overridden:
            stepper = ClosureStep(optimizer, precision, report_skipped, passes_closure=closure is not None)
            system.optimizer_step(
                trainer.current_epoch, batch_idx, stepper, closure if closure is not None else StepClosure(loss)
            )
            stepped = stepper.stepped
        elif closure is not None:
            optimizer.step(closure)
        elif ready:
            stepped = precision.optimizer_step(optimizer, report_skipped)
        if zeroes_after or not ready:
            if before_zero:
                call_hooks(before_zero, optimizer)
            optimizer.zero_grad(set_to_none=True)
        return stepped

    return step


class StepClosure:
    """The ``optimizer_closure`` a Lightning-style ``optimizer_step`` override receives: fulmen has
    already run ``training_step`` and ``backward``, so calling it returns that step's loss."""

    __slots__ = ("loss",)

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def __call__(self) -> Any:
        return self.loss


class ClosureStep:
    """The optimizer a Lightning-style ``optimizer_step(epoch, batch_idx, optimizer, closure)``
    override receives: ``step(closure)`` calls the closure (fulmen already ran the forward and
    backward, so it only returns the loss) and steps through the run's precision; everything else
    is the optimizer's. ``passes_closure`` (an optimizer that needs one, such as LBFGS): the
    closure goes to the optimizer's own step, which calls it as often as it needs."""

    def __init__(self, optimizer: Optimizer, precision: Any, report_skipped: bool, passes_closure: bool = False) -> None:
        self._optimizer, self._precision, self._report = optimizer, precision, report_skipped
        self._passes_closure = passes_closure
        self.stepped = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self._passes_closure and closure is not None:
            self.stepped = True
            return self._optimizer.step(closure)
        result = closure() if closure is not None else None
        self.stepped = self._precision.optimizer_step(self._optimizer, self._report) or not self._report
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)
