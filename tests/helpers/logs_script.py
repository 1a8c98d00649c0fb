"""A deterministic training run for the log-resume tests (``tests/faults/test_logs.py``).

    python logs_script.py OUT_DIR [--stop WHERE] [--loggers csv,tb] [--ckpt steps|validation] [--flush] [--resume]

``build()`` gives the same run in-process (the uninterrupted reference, and the resumed runs).
The system logs a step value, a value both per step and per epoch, a value only on some batches,
a value first logged late, and a value from ``on_train_epoch_end``; validation runs twice per
epoch; ``ModelCheckpoint`` saves every 5 steps, or after each validation (``--ckpt``), and
``last.ckpt``.

``--stop WHERE`` stops the run there, after writing ``OUT_DIR/stopped`` (its content: the global
step), by blocking until the test kills the process (WHERE ends with ``:block``), by running on
slowly (``:slow``: each later batch sleeps, for a signal the loop handles at the next batch) or by
raising ``KeyboardInterrupt`` (``:raise``). WHERE is one of:

- ``after_save@G``: in ``on_train_batch_end`` of the batch that reached global step G, right after
  ``ModelCheckpoint`` wrote its checkpoint, before that batch's row is sent to the loggers;
- ``batch_start@G``: when the batch after global step G starts (its rows were sent);
- ``epoch_start@E``: when epoch E starts (the previous epoch's end rows were sent).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen


class LogNet(fulmen.System):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = F.mse_loss(out, y)
        self.log("train_loss", loss)
        self.log("train_mae", (out - y).abs().mean(), on_step=True, on_epoch=True)
        if batch_idx % 3 == 0:  # waits in the store until the next log interval on other batches
            self.log("sometimes", float(batch_idx))
        if self.global_step >= 15:  # a column that first appears late in the file (after a checkpoint)
            self.log("late", loss * 2)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def on_train_epoch_end(self) -> None:
        self.log("epoch_marker", float(self.current_epoch))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Stop(fulmen.Callback):
    """Stops the run at ``where`` (see the module's docstring); runs after ModelCheckpoint."""

    monitors = True
    saves_checkpoints = True  # (sorted with ModelCheckpoint, after it: it sees the checkpoint written)

    def __init__(self, out: str, where: str, flush: bool) -> None:
        point, self.how = where.rsplit(":", 1)
        self.kind, at = point.split("@")
        self.at = int(at)
        self.out = out
        self.flush = flush
        self.slow = False

    def _stop(self, trainer: Any) -> None:
        if self.flush:  # what was logged since the last checkpoint is on disk too (as a few seconds later)
            for lg in trainer.loggers:
                lg.save()
        path = os.path.join(self.out, "stopped")
        with open(path + ".tmp", "w") as f:
            f.write(str(trainer.global_step))
        os.replace(path + ".tmp", path)
        if self.how == "raise":
            raise KeyboardInterrupt
        if self.how == "slow":
            self.slow = True
            return
        while True:  # until the test kills this process
            time.sleep(0.05)

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.kind == "after_save" and trainer.global_step == self.at and not self.slow:
            self._stop(trainer)

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        if self.slow:  # (a signal is handled at the next batch boundary: this one comes late enough)
            time.sleep(0.2)
        elif self.kind == "batch_start" and trainer.global_step == self.at:
            self._stop(trainer)

    def on_train_epoch_start(self, trainer: Any, system: Any) -> None:
        if self.kind == "epoch_start" and trainer.current_epoch == self.at and not self.slow:
            self._stop(trainer)


def build(
    out: str, stop: str | None = None, loggers: str = "csv", ckpt: str = "steps", flush: bool = False
) -> tuple[fulmen.Trainer, LogNet, DataLoader, DataLoader]:
    """The trainer, system and data of the run, writing under ``out``. ``ckpt``: ``"steps"``, a
    checkpoint every 5 steps (in ``on_train_batch_end``); ``"validation"``, after each validation
    (in ``on_validation_end``, twice per epoch). The logged values do not depend on it. ``flush``:
    the CSV logger writes every row at once, and the loggers are flushed before a stop (so the
    rows logged after the last checkpoint are on disk); else the loggers' defaults."""
    torch.set_num_threads(1)
    fulmen.seed_everything(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=g)
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=4, shuffle=True)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8)
    chosen: list[fulmen.Logger] = []
    if "csv" in loggers.split(","):
        chosen.append(fulmen.CSVLogger(out, name="logs", flush_logs_every_n_steps=1 if flush else 100))
    if "tb" in loggers.split(","):
        from fulmen.loggers import TensorBoardLogger

        chosen.append(TensorBoardLogger(out, name="logs"))
    every = 5 if ckpt == "steps" else None
    callbacks: list[fulmen.Callback] = [fulmen.ModelCheckpoint(every_n_train_steps=every, save_top_k=-1, save_last=True)]
    if stop is not None:
        callbacks.append(Stop(out, stop, flush))
    trainer = fulmen.Trainer(
        max_epochs=2,
        accelerator="cpu",
        deterministic=True,
        log_every_n_steps=2,
        val_check_interval=0.5,
        num_sanity_val_steps=0,
        logger=chosen,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    return trainer, LogNet(), train, val


def main() -> None:
    out = sys.argv[1]
    stop = sys.argv[sys.argv.index("--stop") + 1] if "--stop" in sys.argv else None
    loggers = sys.argv[sys.argv.index("--loggers") + 1] if "--loggers" in sys.argv else "csv"
    ckpt = sys.argv[sys.argv.index("--ckpt") + 1] if "--ckpt" in sys.argv else "steps"
    trainer, system, train, val = build(out, stop, loggers, ckpt, flush="--flush" in sys.argv)
    trainer.fit(system, train, val, ckpt_path="last" if "--resume" in sys.argv else None)


if __name__ == "__main__":
    main()
