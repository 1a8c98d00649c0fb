"""``strategy="ddp_spawn"`` / ``"ddp_fork"`` (``python spawn_script.py METHOD OUT``): the run
happens in child processes and this process gets rank 0's results back; writes them to OUT."""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ddp_script import Indexed, Regressor

import fulmen

if __name__ == "__main__":
    method, out = sys.argv[1], sys.argv[2]
    fulmen.seed_everything(0)
    data = Indexed(64)
    trainer = fulmen.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=method,
        max_epochs=2,
        default_root_dir=out,
        callbacks=[fulmen.ModelCheckpoint(monitor="val_loss")],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=True,
    )
    system = Regressor()
    trainer.fit(system, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    validated = trainer.validate(system, DataLoader(data, batch_size=8), verbose=False)
    torch.save(
        {
            "state_dict": system.state_dict(),
            "global_step": trainer.global_step,
            "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "best_model_path": trainer.checkpoint_callback.best_model_path,
            "validated": validated,
            "pid": os.getpid(),
        },
        os.path.join(out, "result.pt"),
    )
