"""``ModelCheckpoint``: save the run's state at the end of each training epoch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class ModelCheckpoint(Callback):
    """Save a checkpoint at the end of every ``every_n_epochs``-th training epoch, keeping the newest.

    Files go to ``dirpath`` (default: ``<log_dir>/checkpoints``, or
    ``<default_root_dir>/checkpoints`` without a logger) as ``epoch={epoch}-step={step}.ckpt``.
    The older file this callback wrote is removed once the new one is complete, so a crash
    always leaves one good checkpoint. A checkpoint is a plain dict that
    ``torch.load(path, weights_only=True)`` reads.
    """

    monitors = True  # runs after the system's on_train_epoch_end, so it sees what was logged there

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "epoch={epoch}-step={step}",
        every_n_epochs: int = 1,
        save_weights_only: bool = False,
    ) -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"ModelCheckpoint(every_n_epochs={every_n_epochs!r}): expected an int >= 1.")
        try:
            filename.format(epoch=0, step=0)
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            raise ValueError(
                f"ModelCheckpoint(filename={filename!r}): the name may use {{epoch}} and {{step}} (e.g. the "
                f"default 'epoch={{epoch}}-step={{step}}'); formatting it failed with {type(err).__name__}: {err}."
            ) from err
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self.every_n_epochs = every_n_epochs
        self.save_weights_only = save_weights_only
        self.last_model_path = ""

    @property
    def best_model_path(self) -> str:
        """Without a monitored metric the newest checkpoint is the best one."""
        return self.last_model_path

    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.log_dir, "checkpoints")

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or (trainer.current_epoch + 1) % self.every_n_epochs:
            return  # fast_dev_run is a smoke test: it writes no checkpoints
        self.save(trainer)

    def save(self, trainer: Trainer) -> str:
        assert self.dirpath is not None
        name = self.filename.format(epoch=trainer.current_epoch, step=trainer.global_step) + ".ckpt"
        path = os.path.join(self.dirpath, name)
        previous = self.last_model_path
        self.last_model_path = path  # before saving, so the file's own state names itself
        try:
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        except BaseException:
            self.last_model_path = previous
            raise
        if previous and previous != path and trainer.is_global_zero and os.path.exists(previous):
            os.remove(previous)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_model_path = state_dict.get("last_model_path", "")
