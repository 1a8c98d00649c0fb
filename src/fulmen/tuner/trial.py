"""One short run of a search: a real ``Trainer.fit`` of the sandbox's quiet Trainer, driven by a
``SearchProbe`` (the callback each search extends)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen._sandbox import Sandbox
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["SearchProbe", "run_trial"]


class SearchProbe(Callback):
    """Hands the sandbox what a run adds before it trains (the train dataloader's own generators,
    layers ``configure_model`` built), and stops a run that makes no progress (``training_step``
    returning None for a whole epoch)."""

    def __init__(self) -> None:
        self._epoch_start_step = 0
        self.sandbox: Sandbox | None = None

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if self.sandbox is not None:
            self.sandbox.keep_generators(trainer.train_dataloader)
            self.sandbox.capture_new()  # layers configure_model made in this first trial, before training

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._epoch_start_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if trainer.global_step == self._epoch_start_step:
            trainer.should_stop = True


def run_trial(
    sandbox: Sandbox, probe: SearchProbe, system: System, train_dataloaders: Any, datamodule: Any, max_steps: int
) -> None:
    """Fit ``system`` for at most ``max_steps`` optimizer steps (-1: until ``probe`` stops it), no
    validation, with the quiet Trainer of ``sandbox``."""
    probe.sandbox = sandbox
    quiet = sandbox.quiet_trainer([probe], limit_val_batches=0, max_epochs=-1, max_steps=max_steps)
    try:
        quiet.fit(system, train_dataloaders, datamodule=datamodule)
    finally:
        del quiet
