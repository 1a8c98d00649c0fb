"""Writes last.ckpt at the end of epoch 0, then is SIGKILLed while writing a large last.ckpt at the
end of epoch 1 (a thread watches for the temporary file). Used by tests/checkpoint/test_durability.py.

    python kill_while_writing.py OUT_DIR
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import fulmen
from helpers.systems import TinySystem, make_loader


class Big(TinySystem):
    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 1:  # the second checkpoint is large: 256 MB
            self.register_buffer("ballast", torch.randn(64, 1024, 1024))


def watch_and_kill(folder: str) -> None:
    while True:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.startswith(".last.ckpt") and os.path.getsize(path) > 1_000_000:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)


class SaveLast(fulmen.Callback):
    monitors = True

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
        if trainer.current_epoch == 1:
            threading.Thread(target=watch_and_kill, args=(self.out,), daemon=True).start()
        trainer.save_checkpoint(os.path.join(self.out, "last.ckpt"))


if __name__ == "__main__":
    out = sys.argv[1]
    trainer = fulmen.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SaveLast(out)], default_root_dir=out,
    )
    trainer.fit(Big(), make_loader())
    print("not killed")
