"""``OnExceptionCheckpoint``: write a resumable checkpoint when a fit fails (Lightning's
``lightning.pytorch.callbacks.on_exception_checkpoint``).

    trainer = Trainer(callbacks=[OnExceptionCheckpoint("checkpoints")])
    trainer.fit(model)                  # raises at some step: checkpoints/on_exception.ckpt is left
    trainer.fit(model, ckpt_path="checkpoints/on_exception.ckpt")   # goes on from that step

The checkpoint is a full one (``trainer.save_checkpoint``: weights, optimizer, schedulers, loop
position, random number generators), written in ``on_exception``; the exception then propagates
unchanged. When the batch that failed had not reached its optimizer step (an error in
``training_step`` or the backward), the checkpoint is positioned before that batch, without the
gradient it may have left, so the resumed run trains it again; when it failed at or after its
optimizer step, that batch counts as done. (Inside an accumulation group, a failure after the
batch's backward, e.g. in ``on_after_backward``, keeps its gradient with the group's.) A fit
that finishes normally removes the file, as in Lightning (a run that resumed from it no longer
needs it).

Only failures once training has started are checkpointed (not those in ``setup``,
``configure_optimizers``, restoring a checkpoint or the sanity check, which would write a
checkpoint of nothing trained over a useful one), only in ``fit``, and only with one process: with
several, writing a checkpoint is collective and a failure in one process would leave the others
waiting.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from fulmen.callbacks._failure import FailureTracker
from fulmen.callbacks.base import Callback
from fulmen.errors import warn_once

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["OnExceptionCheckpoint"]


class OnExceptionCheckpoint(Callback):
    """``OnExceptionCheckpoint(dirpath, filename="on_exception")``: on a failure during fit, save
    ``<dirpath>/<filename>.ckpt`` (see the module docstring)."""

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "on_exception") -> None:
        if not isinstance(filename, str) or not filename:
            raise ValueError("OnExceptionCheckpoint(filename=...): the file name must not be empty.")
        if filename.endswith(self.FILE_EXTENSION):
            raise ValueError(
                f"OnExceptionCheckpoint(filename={filename!r}): give the name without {self.FILE_EXTENSION!r} "
                "(it is added)."
            )
        self.dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath)))
        self.filename = filename
        self._failure = FailureTracker()

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written: ``<dirpath>/<filename>.ckpt``."""
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def __repr__(self) -> str:
        return f"OnExceptionCheckpoint(dirpath={self.dirpath!r}, filename={self.filename!r})"

    # -- hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        self._failure.reset()

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._failure.training = True

    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        self._failure.batch_started(trainer, batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Optimizer) -> None:
        self._failure.stepped()

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._failure.stepped()

    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        if not self._failure.may_save(trainer, "OnExceptionCheckpoint"):
            return
        try:
            with self._failure.before_unstepped_batch(trainer, system):
                trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # the failure being reported is the one that matters: keep it
            warn_once(
                f"OnExceptionCheckpoint: could not write {self.ckpt_path} ({type(err).__name__}: {err}).",
                key=f"on-exception-checkpoint-failed-{self.ckpt_path}",
            )
            return
        if hasattr(exception, "add_note"):
            exception.add_note(f"fulmen: OnExceptionCheckpoint saved {self.ckpt_path} (resume with ckpt_path=...)")

    def teardown(self, trainer: Trainer, system: System, stage: str) -> None:
        self._failure.training = False
        # As in Lightning: once a fit has finished normally, the checkpoint of an earlier failure is stale.
        if stage == "fit" and trainer.state.status == "finished" and trainer.is_global_zero:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.ckpt_path)
