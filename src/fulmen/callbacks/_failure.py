"""Saving a resumable checkpoint when a fit fails: the bookkeeping shared by
``ModelCheckpoint(save_on_exception=True)`` and ``fulmen.lightning``'s ``OnExceptionCheckpoint``.

A ``FailureTracker`` follows the training batches through three cheap hooks (batch start, before
the optimizer step, batch end) and knows, when an exception arrives, whether the batch that failed
had reached its optimizer step. ``before_unstepped_batch`` then positions the checkpoint before
that batch, without the gradient it may have left, so that ``fit(ckpt_path=...)`` trains it again;
a batch that failed at or after its optimizer step counts as done. (Inside an accumulation group,
a failure after the batch's backward, e.g. in ``on_after_backward``, keeps its gradient with the
group's.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fulmen.errors import warn_once

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class FailureTracker:
    """Whether training has started in this fit, and which batch is running without its optimizer step."""

    __slots__ = ("training", "unstepped")

    def __init__(self) -> None:
        self.training = False  # from on_train_start: a failure now leaves something worth resuming
        # (epoch, batch index) of the training batch running and not yet at its optimizer step.
        self.unstepped: tuple[int, int] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FailureTracker):
            return NotImplemented
        return (self.training, self.unstepped) == (other.training, other.unstepped)

    __hash__ = None  # type: ignore[assignment]

    def reset(self) -> None:
        self.training = False
        self.unstepped = None

    def batch_started(self, trainer: Trainer, batch_idx: int) -> None:
        self.unstepped = (trainer.current_epoch, batch_idx)

    def stepped(self) -> None:
        self.unstepped = None  # the batch reached its optimizer step (or ended): it counts as done

    def may_save(self, trainer: Trainer, who: str) -> bool:
        """True when a failure now should be checkpointed: during ``fit``, once training started,
        with one process (with several, saving is collective and the other processes may not have
        failed: a warning says so once)."""
        if trainer.state.stage != "fit" or not self.training:
            return False
        if trainer.world_size > 1:
            warn_once(
                f"{who}: no checkpoint is written on an exception with several processes (saving is collective, and "
                f"the other processes may not have failed); use ModelCheckpoint(every_n_train_steps=...) to resume.",
                key=f"on-exception-checkpoint-distributed-{who}",
            )
            return False
        return True

    @contextlib.contextmanager
    def before_unstepped_batch(self, trainer: Trainer, system: System) -> Iterator[None]:
        """While saving: when the batch that failed had not reached its optimizer step, the loop
        position before it (so that a resume trains it again) and, when it began an accumulation
        group (always without accumulation), no gradients (only its own can be there)."""
        unstepped = self.unstepped
        batch_idx = unstepped[1] if unstepped is not None else -1
        if (
            unstepped is None
            or unstepped[0] != trainer.current_epoch
            or trainer.loop.phase != "batch"
            or trainer.loop.batches_done != batch_idx + 1
        ):
            yield
            return
        drop_grads = system.automatic_optimization and batch_idx % max(1, trainer.accumulate_grad_batches) == 0
        grads = {p: p.grad for p in system.parameters()} if drop_grads else {}
        try:
            for p in grads:
                p.grad = None
            with trainer.loop.rewound_to(batch_idx):
                yield
        finally:
            for p, g in grads.items():
                p.grad = g
