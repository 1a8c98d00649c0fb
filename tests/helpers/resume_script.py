"""A training run for the exact-resume tests, run as a subprocess.

    python resume_script.py OUT_DIR WORKERS [--kill-at WHERE] [--resume]

Shuffling, dropout, a step LR scheduler, gradient accumulation and validation inside and at the
end of each epoch. A callback writes ``OUT_DIR/last.ckpt`` after every optimizer step, after each
validation and at each epoch end. ``--kill-at`` SIGKILLs the process at a point (a few batches
after a save, at an epoch boundary, or inside validation); ``--resume`` continues from last.ckpt.
The final weights go to ``OUT_DIR/final.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen


class Net(fulmen.System):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SaveAndKill(fulmen.Callback):
    def __init__(self, out: str, kill_at: str | None) -> None:
        self.path = os.path.join(out, "last.ckpt")
        self.kill_at = kill_at
        self.saved_step = -1

    def _save(self, trainer: Any) -> None:
        trainer.save_checkpoint(self.path)

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.saved_step:  # only batches that stepped (accumulation)
            self.saved_step = trainer.global_step
            self._save(trainer)

    def on_validation_end(self, trainer: Any, system: Any) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
        self._save(trainer)

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        if self.kill_at == "mid_epoch" and trainer.current_epoch == 1 and batch_idx == 7:
            os.kill(os.getpid(), signal.SIGKILL)  # 2 batches after the last save (step at batch 5)

    def on_train_epoch_start(self, trainer: Any, system: Any) -> None:
        if self.kill_at == "epoch_boundary" and trainer.current_epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.kill_at == "validation" and trainer.current_epoch == 1 and trainer.global_step >= 8 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, workers = sys.argv[1], int(sys.argv[2])
    kill_at = sys.argv[sys.argv.index("--kill-at") + 1] if "--kill-at" in sys.argv else None
    resume = "--resume" in sys.argv
    torch.set_num_threads(1)
    fulmen.seed_everything(7, workers=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(88, 6, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(88, 1, generator=g)
    train = DataLoader(TensorDataset(x[:72], y[:72]), batch_size=6, shuffle=True, num_workers=workers)
    val = DataLoader(TensorDataset(x[72:], y[72:]), batch_size=8, num_workers=workers)
    trainer = fulmen.Trainer(
        max_epochs=3,
        accelerator="cpu",
        deterministic=True,
        accumulate_grad_batches=2,
        val_check_interval=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveAndKill(out, kill_at)],
        default_root_dir=out,
    )
    system = Net()
    trainer.fit(system, train, val, ckpt_path=os.path.join(out, "last.ckpt") if resume else None)
    torch.save(system.state_dict(), os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main()
