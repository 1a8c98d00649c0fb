"""A fit whose checkpoints overflow the filesystem they are written to (tests/faults/test_disk.py).

``python full_disk_fit.py ROOT [async]``: a TinySystem with an extra 1 MiB parameter, so each checkpoint is
about 1 MiB, saved every 2 steps (all kept) under ``ROOT``; on a 3 MiB filesystem the third save
runs out of space. The process ends with fulmen's exception, as a user's script would.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fulmen
from helpers.systems import TinySystem, make_loader


class Heavy(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.bulk = nn.Parameter(torch.zeros(256 * 1024))  # 1 MiB of float32 in every checkpoint


if __name__ == "__main__":
    root = sys.argv[1]
    plugins = [fulmen.AsyncCheckpointIO()] if sys.argv[2:] == ["async"] else None  # written in the background
    trainer = fulmen.Trainer(
        plugins=plugins,
        default_root_dir=root,
        max_epochs=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[fulmen.ModelCheckpoint(dirpath=os.path.join(root, "ckpts"), every_n_train_steps=2, save_top_k=-1)],
    )
    trainer.fit(Heavy(), make_loader(64, batch_size=8))
