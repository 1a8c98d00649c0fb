"""A training script for the sharded-checkpoint tests (tests/runtime/test_fsdp_checkpoints.py), run as
``python fsdp_ckpt_script.py CONFIG_JSON``; gloo on the CPU. The model, data and per-rank results are
those of ``fsdp_script.py``; here the checkpoint options vary (see ``DEFAULTS``).

Each process writes ``<out>/rank<R>.pt``: the full weights and optimizer state, the global step, the
checkpoint the run resumed from (``ckpt_path``), and ModelCheckpoint's best and last paths.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp_script import Indexed, KillAfter, ShardedRegressor, full_state

import fulmen

DEFAULTS: dict[str, Any] = {
    "out": None,  # folder for the per-rank results
    "root": None,  # default_root_dir (defaults to out)
    "n": 32,
    "batch_size": 4,
    "shuffle": True,
    "devices": 2,
    "strategy": "fsdp",  # "fsdp": FSDPStrategy(auto_wrap_policy={nn.Linear}, state_dict_type=...); "auto": one process
    "state_dict_type": "sharded",
    "async": False,  # Trainer(plugins=[AsyncCheckpointIO()])
    "max_epochs": 2,
    "seed": 0,
    "ckpt_path": None,
    "every_n_train_steps": 2,
    "save_top_k": -1,
    "monitor": None,
    "save_last": True,
    "kill_after_step": None,  # SIGKILL rank 0 once this global step is done
    "validate_best": False,  # after fit: trainer.validate(ckpt_path="best"); its metrics are "validated"
}


def main() -> None:
    cfg = {**DEFAULTS, **json.loads(sys.argv[1])}
    fulmen.seed_everything(cfg["seed"], workers=True)
    data = Indexed(cfg["n"])
    train = DataLoader(data, batch_size=cfg["batch_size"], shuffle=cfg["shuffle"])
    val = DataLoader(data, batch_size=cfg["batch_size"])
    checkpoint = fulmen.ModelCheckpoint(
        every_n_train_steps=cfg["every_n_train_steps"],
        save_top_k=cfg["save_top_k"],
        monitor=cfg["monitor"],
        save_last=cfg["save_last"],
    )
    callbacks: list[fulmen.Callback] = [checkpoint]
    if cfg["kill_after_step"] is not None:
        callbacks.append(KillAfter(cfg["kill_after_step"]))
    strategy: Any = cfg["strategy"]
    if strategy == "fsdp":
        from fulmen.runtime.fsdp import FSDPStrategy

        strategy = FSDPStrategy(auto_wrap_policy={nn.Linear}, state_dict_type=cfg["state_dict_type"])
    from fulmen.checkpoint.background import AsyncCheckpointIO

    trainer = fulmen.Trainer(
        plugins=[AsyncCheckpointIO()] if cfg["async"] else None,
        accelerator="cpu",
        devices=cfg["devices"],
        strategy=strategy,
        max_epochs=cfg["max_epochs"],
        default_root_dir=cfg["root"] or cfg["out"],
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    system = ShardedRegressor()
    trainer.fit(system, train, val, ckpt_path=cfg["ckpt_path"])
    weights, optim = full_state(system, trainer.optimizers[0])
    validated = None
    if cfg["validate_best"]:
        validated = trainer.validate(system, val, ckpt_path="best", verbose=False)
    result: dict[str, Any] = {
        "state_dict": weights,
        "optimizer": optim,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "param_types": sorted({type(p).__name__ for p in system.parameters()}),
        "resumed_from": trainer.ckpt_path,
        "best_model_path": checkpoint.best_model_path,
        "last_model_path": checkpoint.last_model_path,
        "log_dir": trainer.log_dir,
        "async": trainer.strategy.checkpoint_io.asynchronous,
        "validated": validated,
    }
    os.makedirs(cfg["out"], exist_ok=True)
    torch.save(result, os.path.join(cfg["out"], f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
