"""A resumable training run for the SLURM requeue tests: ``python slurm_script.py CONFIG_JSON_FILE``,
run directly, under a fake SLURM environment, or by ``srun`` inside a real SLURM job.

SLURM's warning signal can arrive before ``Trainer.fit`` installs fulmen's handler (observed: 2 s
after Python starts, while ``import torch`` still runs), and SIGUSR1's default action kills the
process. So the very first thing this script does is catch SIGUSR1 with a handler that counts it in
``received``: fulmen's handler, once ``fit`` installs it, acts on that count (see
``RequeueHandler.install``). ``early_signals=N`` on the ``FIT_START`` line tells the tests when
this happened.

Each process that completes the fit writes ``<out>/rank<R>.pt`` (final weights, global step, the
checkpoint it resumed from, SLURM_RESTART_COUNT). A requeued process writes nothing and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys


class EarlySignal:
    """Counts the signal until fit starts; fulmen takes over ``received`` (and resets it)."""

    received = 0
    total = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.received += 1
        self.total += 1


_early = EarlySignal()
signal.signal(signal.SIGUSR1, _early)  # before anything slow (import torch)
if os.environ.get("SLURM_SCRIPT_SIGNAL_AT_START") == "1":
    os.kill(os.getpid(), signal.SIGUSR1)  # the tests' stand-in for a signal during `import torch`

import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import fulmen  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "out": None,  # folder for rank<R>.pt (required)
    "root": None,  # default_root_dir (defaults to out)
    "n": 64,
    "batch_size": 8,
    "max_epochs": 3,
    "devices": 1,
    "dropout": 0.3,
    "step_sleep": 0.0,  # seconds per training step (to make a run outlast SLURM's signal tick)
    "signal_at_step": None,  # send SIGUSR1 to this process after this global step (restart 0 only)
    "signal_name": "SIGUSR1",  # which signal signal_at_step / signal_at_batch send
    "seed": 7,
    "enable_checkpointing": True,
    "accumulate": 1,
    "val": True,
    "signal_at_batch": None,  # or after this many training batches (restart 0 only)
}


def log(msg: str) -> None:
    rank = os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))
    print(f"[slurm_script rank={rank} restart={os.environ.get('SLURM_RESTART_COUNT', '-')}] {msg}", flush=True)


class Net(fulmen.System):
    def __init__(self, dropout: float, step_sleep: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))
        self.step_sleep = step_sleep

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.8)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SlurmProbe(fulmen.Callback):
    """Reports where the fit starts, forwards a signal that came before fit, and (for the tests
    without a real SLURM) signals this process at a chosen step."""

    def __init__(self, signal_at_step: int | None, signal_at_batch: int | None, signal_name: str = "SIGUSR1") -> None:
        self.signal_at_step = signal_at_step
        self.signum = signal.Signals[signal_name]
        self.signal_at_batch = signal_at_batch
        self.batches = 0

    def on_train_start(self, trainer: Any, system: Any) -> None:
        log(f"FIT_START global_step={trainer.global_step} ckpt_path={trainer.ckpt_path} early_signals={_early.total}")

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        if (self.signal_at_step is not None and trainer.global_step == self.signal_at_step) or self.batches == self.signal_at_batch:
            if os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
                log(f"SEND_SIGNAL at global_step={trainer.global_step}")
                os.kill(os.getpid(), self.signum)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = {**DEFAULTS, **json.load(f)}
    log(f"START pid={os.getpid()} early_signals={_early.total}")
    fulmen.seed_everything(cfg["seed"], workers=True)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(cfg["n"], 6, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(cfg["n"], 1, generator=g)
    data = TensorDataset(x, y)
    train = DataLoader(data, batch_size=cfg["batch_size"], shuffle=True)
    val = DataLoader(data, batch_size=cfg["batch_size"])
    trainer = fulmen.Trainer(
        accelerator="cpu",
        devices=cfg["devices"],
        strategy="ddp" if cfg["devices"] > 1 else "auto",
        max_epochs=cfg["max_epochs"],
        default_root_dir=cfg["root"] or cfg["out"],
        callbacks=[SlurmProbe(cfg["signal_at_step"], cfg["signal_at_batch"], cfg["signal_name"])],
        enable_checkpointing=cfg["enable_checkpointing"],
        accumulate_grad_batches=cfg["accumulate"],
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    system = Net(cfg["dropout"], cfg["step_sleep"])
    try:
        trainer.fit(system, train, val if cfg["val"] else None)
    except SystemExit as exc:
        log(f"EXIT {type(exc).__name__}({exc.code}) at global_step={trainer.global_step}")
        raise
    finally:
        # A late SIGUSR1 (this run's own warning, after fit) must not kill a finished process;
        # Python also drops its own handlers while it shuts down.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    result = {
        "state_dict": {k: v.detach().clone() for k, v in system.state_dict().items()},
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "ckpt_path": trainer.ckpt_path,
        "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "log_dir": trainer.log_dir,
    }
    os.makedirs(cfg["out"], exist_ok=True)
    torch.save(result, os.path.join(cfg["out"], f"rank{trainer.global_rank}.pt"))
    log(f"DONE global_step={trainer.global_step}")


if __name__ == "__main__":
    main()
