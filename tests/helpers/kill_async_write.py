"""A fit with asynchronous checkpoints that is SIGKILLed while the second one is written in the
background (tests/checkpoint/test_async.py).

    python kill_async_write.py OUT_DIR

Epoch 0 ends with ``epoch=0-step=8.ckpt`` (and ``last.ckpt``); in epoch 1 a 256 MB buffer joins
the system, so the checkpoint at its end takes a while to write; a thread kills the process once
that file's temporary copy holds more than 1 MB, while training goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fulmen
from helpers.systems import TinySystem, make_loader


def trainer_for(out: Any) -> fulmen.Trainer:
    out = os.fspath(out)
    return fulmen.Trainer(
        max_epochs=3,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        plugins=[fulmen.AsyncCheckpointIO()],
        callbacks=[fulmen.ModelCheckpoint(dirpath=os.path.join(out, "ckpts"), save_last=True, save_top_k=-1)],
    )


class Big(TinySystem):
    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            self.register_buffer("ballast", torch.randn(64, 1024, 1024))
            threading.Thread(target=watch_and_kill, args=(self.trainer.checkpoint_callback.dirpath,), daemon=True).start()


def watch_and_kill(folder: str) -> None:
    while True:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if name.startswith(".epoch=1") and size > 1_000_000:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)


if __name__ == "__main__":
    fulmen.seed_everything(0)
    system = Big()
    trainer_for(sys.argv[1]).fit(system, make_loader(shuffle=True))
    print("not killed")
