"""What goes into a checkpoint: plain containers, tensors, numbers and strings only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fulmen._hparams import plain_hparams
from fulmen.checkpoint.io import CHECKPOINT_FORMAT

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def build_checkpoint(trainer: Trainer, system: System, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict; ``torch.load(path, weights_only=True)`` reads it back.

    ``weights_only`` leaves out the optimizer, scheduler and callback states (a smaller file for
    inference or sharing).
    """
    from fulmen import __version__

    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "fulmen_version": __version__,
        "torch_version": str(torch.__version__),
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "state_dict": system.state_dict(),
        "hyper_parameters": plain_hparams(system.hparams, "system"),
    }
    if trainer.datamodule is not None and trainer.datamodule.hparams:
        ckpt["datamodule_hyper_parameters"] = plain_hparams(trainer.datamodule.hparams, "datamodule")
    if not weights_only:
        ckpt["optimizer_states"] = [opt.state_dict() for opt in trainer.optimizers]
        ckpt["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        ckpt["precision"] = trainer.strategy.precision.state_dict()
        ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in trainer.callbacks}
        if trainer.datamodule is not None:
            ckpt["datamodule"] = trainer.datamodule.state_dict()
        assert trainer._hooks is not None
        trainer._hooks.call("on_save_checkpoint", ckpt)
    else:
        system.on_save_checkpoint(ckpt)
    return ckpt
