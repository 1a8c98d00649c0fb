"""A training script for the distributed tests, run as ``python ddp_script.py CONFIG_JSON``
(fulmen starts the other processes itself), under ``torchrun``, or under SLURM's ``srun``.

Each process writes ``<out>/rank<R>.pt``: its final weights, global step, world size and ranks,
the dataset indices it trained and validated on, and what ``callback_metrics`` held. The config
(JSON) chooses the flags; see ``DEFAULTS``.
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
    "num_nodes": 1,
    "strategy": "ddp",
    "max_epochs": 2,
    "max_steps": -1,
    "accumulate": 1,
    "dropout": 0.0,
    "num_workers": 0,
    "seed": 0,
    "ckpt_path": None,
    "every_n_train_steps": None,
    "kill_after_step": None,  # SIGKILL this process (rank 0) once this global step is done
    "logger": True,
    "val": True,
    "precision": "32-true",
    "lr": 0.1,
    "early_stop_rank1": False,  # rank 1 alone would stop: the ranks must still agree
    "test": False,
    "fail_rank1_at_step": None,  # rank 1 raises in training_step at this global step
    "torchmetric": False,  # validation also logs a torchmetrics.SumMetric of the samples seen
}


class Indexed(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Regression data that also returns each sample's index (to check how the data is split)."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


class Regressor(fulmen.System):
    def __init__(self, lr: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 1))
        self.seen_train: list[int] = []
        self.seen_val: list[int] = []

    fail_at: int | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        if self.fail_at is not None and self.global_rank == 1 and self.global_step >= self.fail_at:
            raise RuntimeError("rank 1 fails on purpose")
        self.seen_train.extend(int(i) for i in idx)
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, sync_dist=True)
        self.log("train_count", float(len(idx)), reduce_fx="sum", on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank_max", float(self.global_rank), reduce_fx="max", on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, idx = batch
        self.seen_val.extend(int(i) for i in idx)
        if hasattr(self, "val_total"):  # torchmetrics synchronises it across processes in compute()
            self.val_total.update(torch.full((len(idx),), 1.0))
            self.log("val_metric_total", self.val_total)
        self.log("val_loss", F.mse_loss(self.net(x), y), sync_dist=True)
        self.log("val_count", float(len(idx)), reduce_fx="sum", sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.log("test_loss", F.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)}


class KillAfter(fulmen.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"  # (torchrun --max-restarts)
        if trainer.global_step >= self.step and trainer.is_global_zero and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)


class CountAllReduce(fulmen.Callback):
    """Counts DDP's gradient all-reduces (a communication hook that does the default averaging)."""

    def __init__(self) -> None:
        self.calls = 0

    def on_train_start(self, trainer: Any, system: Any) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state: Any, bucket: Any) -> Any:
            self.calls += 1
            return allreduce_hook(state, bucket)

        # DDP checks the annotations themselves (this module's are strings)
        hook.__annotations__ = {"bucket": torch.distributed.GradBucket, "return": torch.futures.Future[torch.Tensor]}
        trainer.strategy.model.register_comm_hook(None, hook)


class StartStep(fulmen.Callback):
    step: int | None = None

    def on_train_start(self, trainer: Any, system: Any) -> None:
        self.step = trainer.global_step


class StopOnRankOne(fulmen.Callback):
    def on_validation_end(self, trainer: Any, system: Any) -> None:
        decision = trainer.global_rank == 1
        trainer.should_stop = trainer.strategy.reduce_boolean_decision(decision, all=False)


def main() -> None:
    cfg = {**DEFAULTS, **json.loads(sys.argv[1])}
    fulmen.seed_everything(cfg["seed"], workers=True)
    data = Indexed(cfg["n"])
    train = DataLoader(data, batch_size=cfg["batch_size"], shuffle=cfg["shuffle"], num_workers=cfg["num_workers"])
    val = DataLoader(data, batch_size=cfg["batch_size"], num_workers=cfg["num_workers"]) if cfg["val"] else None
    callbacks: list[fulmen.Callback] = []
    if cfg["every_n_train_steps"]:
        callbacks.append(fulmen.ModelCheckpoint(every_n_train_steps=cfg["every_n_train_steps"], save_top_k=-1, save_last=True))
    if cfg["kill_after_step"] is not None:
        callbacks.append(KillAfter(cfg["kill_after_step"]))
    start = StartStep()
    callbacks.append(start)
    counter = CountAllReduce()
    if cfg["strategy"] == "ddp" and cfg["devices"] * cfg["num_nodes"] > 1:
        callbacks.append(counter)
    if cfg["early_stop_rank1"]:
        callbacks.append(StopOnRankOne())
    trainer = fulmen.Trainer(
        accelerator=cfg["accelerator"],
        devices=cfg["devices"],
        num_nodes=cfg["num_nodes"],
        strategy=cfg["strategy"],
        max_epochs=cfg["max_epochs"],
        max_steps=cfg["max_steps"],
        accumulate_grad_batches=cfg["accumulate"],
        default_root_dir=cfg["root"] or cfg["out"],
        logger=cfg["logger"],
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        precision=cfg["precision"],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    system = Regressor(lr=cfg["lr"], dropout=cfg["dropout"])
    system.fail_at = cfg["fail_rank1_at_step"]
    if cfg["torchmetric"]:
        import torchmetrics

        system.val_total = torchmetrics.SumMetric()
    trainer.fit(system, train, val, ckpt_path=cfg["ckpt_path"])
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    test_metrics = trainer.test(system, val, verbose=False) if cfg["test"] else None
    result = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in system.state_dict().items()},
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "seen_train": system.seen_train,
        "seen_val": system.seen_val,
        "callback_metrics": fit_metrics,
        "log_dir": trainer.log_dir,
        "best_model_path": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "test_metrics": test_metrics,
        "allreduce_calls": counter.calls,
        "ckpt_path": trainer.ckpt_path,
        "start_step": start.step,
        "env_kind": getattr(trainer.strategy, "cluster", None) and trainer.strategy.cluster.kind,  # type: ignore[attr-defined]
    }
    os.makedirs(cfg["out"], exist_ok=True)
    torch.save(result, os.path.join(cfg["out"], f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
