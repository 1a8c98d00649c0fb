"""A training script for the FSDP tests, run as ``python fsdp_script.py CONFIG_JSON`` (fulmen starts
the other processes itself); gloo on the CPU, or NCCL with ``"accelerator": "cuda"``.

Each process writes ``<out>/rank<R>.pt``: the full weights and the full optimizer state (gathered
from the shards), the global step, whether the parameters were sharded, and, with
``"sharded_roundtrip"``, what a sharded checkpoint folder gave back. See ``DEFAULTS``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import fulmen

DEFAULTS: dict[str, Any] = {
    "out": None,  # folder for the per-rank results
    "root": None,  # default_root_dir (defaults to out)
    "accelerator": "cpu",
    "n": 64,
    "batch_size": 8,
    "shuffle": False,
    "devices": 2,
    "strategy": "fsdp",  # "fsdp" (FSDPStrategy with the options below) or "auto" (one process)
    "wrap": True,  # auto_wrap_policy={nn.Linear}
    "state_dict_type": "full",
    "mixed_precision": None,  # "bf16": FSDPStrategy(mixed_precision=torch.bfloat16)
    "cpu_offload": False,
    "reshard_after_forward": True,
    "precision": "32-true",
    "clip": None,  # gradient_clip_val
    "clip_algorithm": None,
    "max_epochs": 2,
    "accumulate": 1,
    "seed": 0,
    "ckpt_path": None,
    "every_n_train_steps": None,
    "kill_after_step": None,  # SIGKILL this process (rank 0) once this global step is done
    "sharded_roundtrip": False,  # after fit: save a sharded folder, scramble, load it back
    "save_last": True,
    "manual": False,  # manual optimization (ManualRegressor)
    "checkpointing": True,  # enable_checkpointing (ModelCheckpoint's files go through Trainer.save_checkpoint)
}


class Indexed(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class ShardedRegressor(fulmen.System):
    """Two Linear layers (each its own FSDP unit with the wrap policy) and a parameter of the
    system itself (in the root unit), in two optimizer parameter groups."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.offset = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x).float() + self.offset, y.float())
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x).float() + self.offset, y.float()), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            [{"params": self.net.parameters()}, {"params": [self.offset], "lr": self.hparams.lr / 2}],
            lr=self.hparams.lr,
            momentum=0.9,
        )
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)}


class ManualRegressor(ShardedRegressor):
    """The same model with manual optimization: backward, clipping and the step in training_step."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = F.mse_loss(self.net(x).float() + self.offset, y.float())
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad()
        self.log("train_loss", loss, sync_dist=True)
        return loss


class KillAfter(fulmen.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.step and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGKILL)


def full_state(system: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full weights and optimizer state (torch's format) on every rank."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(system, FSDPModule):
        return {k: v.detach().cpu().clone() for k, v in system.state_dict().items()}, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from fulmen.runtime.fsdp import optimizer_state_by_index

    options = StateDictOptions(full_state_dict=True)
    weights = {k: v.detach().cpu().clone() for k, v in get_model_state_dict(system, options=options).items()}
    optim = optimizer_state_by_index(get_optimizer_state_dict(system, optimizer, options=options))
    for s in optim["state"].values():
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                s[k] = v.detach().cpu().clone()
    return weights, optim


def sharded_roundtrip(trainer: Any, system: Any, folder: str) -> dict[str, Any]:
    """Save a sharded checkpoint folder, scramble weights and optimizer state, load it back."""
    from fulmen.checkpoint.state import build_checkpoint
    from fulmen.trainer._resume import restore_model

    strategy = trainer.strategy
    opt = trainer.optimizers[0]
    ckpt = build_checkpoint(trainer, system)
    strategy.save_checkpoint(ckpt, folder)
    before = full_state(system, opt)
    with torch.no_grad():
        for p in system.parameters():
            p.zero_()
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                v.zero_()
    scrambled = full_state(system, opt)
    loaded = strategy.load_checkpoint(folder)
    restore_model(system, loaded, folder)
    strategy.load_optimizer_state_dict(opt, loaded["optimizer_states"][0])
    after = full_state(system, opt)
    return {"before": before, "scrambled": scrambled, "after": after, "meta_step": loaded["global_step"]}


def main() -> None:
    cfg = {**DEFAULTS, **json.loads(sys.argv[1])}
    fulmen.seed_everything(cfg["seed"], workers=True)
    data = Indexed(cfg["n"])
    train = DataLoader(data, batch_size=cfg["batch_size"], shuffle=cfg["shuffle"])
    val = DataLoader(data, batch_size=cfg["batch_size"])
    callbacks: list[fulmen.Callback] = []
    if cfg["every_n_train_steps"]:
        callbacks.append(fulmen.ModelCheckpoint(every_n_train_steps=cfg["every_n_train_steps"], save_top_k=-1, save_last=cfg["save_last"]))
    if cfg["kill_after_step"] is not None:
        callbacks.append(KillAfter(cfg["kill_after_step"]))
    strategy: Any = cfg["strategy"]
    if strategy == "fsdp":
        from fulmen.runtime.fsdp import FSDPStrategy

        strategy = FSDPStrategy(
            auto_wrap_policy={nn.Linear} if cfg["wrap"] else None,
            mixed_precision=torch.bfloat16 if cfg["mixed_precision"] == "bf16" else None,
            cpu_offload=cfg["cpu_offload"],
            reshard_after_forward=cfg["reshard_after_forward"],
            state_dict_type=cfg["state_dict_type"],
        )
    trainer = fulmen.Trainer(
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        strategy=strategy,
        max_epochs=cfg["max_epochs"],
        accumulate_grad_batches=cfg["accumulate"],
        gradient_clip_val=cfg["clip"],
        gradient_clip_algorithm=cfg["clip_algorithm"],
        default_root_dir=cfg["root"] or cfg["out"],
        callbacks=callbacks,
        enable_checkpointing=cfg["checkpointing"],
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        precision=cfg["precision"],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    system = ManualRegressor() if cfg["manual"] else ShardedRegressor()
    trainer.fit(system, train, val, ckpt_path=cfg["ckpt_path"])
    weights, optim = full_state(system, trainer.optimizers[0])
    result: dict[str, Any] = {
        "state_dict": weights,
        "optimizer": optim,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "param_types": sorted({type(p).__name__ for p in system.parameters()}),
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "log_dir": trainer.log_dir,
    }
    if cfg["sharded_roundtrip"]:
        result["roundtrip"] = sharded_roundtrip(trainer, system, os.path.join(cfg["out"], "sharded.ckpt"))
    os.makedirs(cfg["out"], exist_ok=True)
    torch.save(result, os.path.join(cfg["out"], f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
