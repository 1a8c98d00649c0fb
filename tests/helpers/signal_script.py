"""A fit that tests/faults/test_signals.py stops with a real signal: ``python signal_script.py CONFIG_JSON``.

TinySystem on 64 samples, batches of 8 (8 steps an epoch), 3 epochs, ``log_every_n_steps=1``, a
``CSVLogger`` and a ``StatusLogger`` (appends each ``finalize`` status to ``<root>/status.txt``).

Synchronised, not timed: when ``global_step`` reaches ``marker_step`` (first run only, rank 0
only), the batch writes ``<root>/reached`` and then waits (at most 60 s) until fulmen's handler
has noted the signal the test sends; so the signal always arrives during that batch. With
``hold``, the batch then writes ``<root>/noted`` and goes on waiting, as a slow step would: the
test's second signal has to end the process at once. With ``own_handler``, the script sets its
own SIGTERM handler first (it writes ``<root>/own`` and exits 7); the batch then waits for that.

Prints ``FIT_START global_step=<n> ckpt_path=<path>`` and, when the fit returns, ``DONE global_step=<n>``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for helpers

import fulmen
from helpers.systems import TinySystem, make_loader

DEFAULTS: dict[str, Any] = {
    "root": None,  # default_root_dir (required)
    "max_epochs": 3,
    "devices": 1,
    "marker_step": 5,
    "ckpt_path": None,
    "hold": False,
    "own_handler": False,
    "enable_checkpointing": True,
    "dirpath": None,  # a ModelCheckpoint with this dirpath
    "async": False,  # checkpoints written in the background (AsyncCheckpointIO)
}


class StatusLogger(fulmen.Logger):
    """Records the status each run's ``finalize`` receives."""

    def __init__(self, path: str) -> None:
        self.path = path

    def log_metrics(self, metrics: Any, step: int) -> None:
        pass

    def finalize(self, status: str) -> None:
        with open(self.path, "a") as f:
            f.write(status + "\n")


class Probe(fulmen.Callback):
    def __init__(self, cfg: dict[str, Any], own: list[int]) -> None:
        self.cfg = cfg
        self.own = own

    def on_train_start(self, trainer: Any, system: Any) -> None:
        print(f"FIT_START global_step={trainer.global_step} ckpt_path={trainer.ckpt_path}", flush=True)

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        cfg = self.cfg
        if trainer.global_step != cfg["marker_step"] or trainer.ckpt_path is not None or trainer.global_rank != 0:
            return
        root = cfg["root"]
        with open(os.path.join(root, "reached"), "w") as f:
            f.write(str(trainer.global_step))
        deadline = time.monotonic() + 60
        while not (trainer.loop.signalled or self.own) and time.monotonic() < deadline:
            time.sleep(0.005)  # (a signal's handler runs between these sleeps)
        if cfg["hold"]:
            with open(os.path.join(root, "noted"), "w") as f:
                f.write("noted")
            time.sleep(60)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = {**DEFAULTS, **json.load(f)}
    root = cfg["root"]
    own: list[int] = []
    if cfg["own_handler"]:

        def handler(signum: int, frame: Any) -> None:
            own.append(signum)
            with open(os.path.join(root, "own"), "w") as f:
                f.write(str(signum))
            sys.exit(7)

        signal.signal(signal.SIGTERM, handler)
    fulmen.seed_everything(0)
    callbacks: list[fulmen.Callback] = [Probe(cfg, own)]
    if cfg["dirpath"]:
        callbacks.append(fulmen.ModelCheckpoint(dirpath=cfg["dirpath"]))
    trainer = fulmen.Trainer(
        plugins=[fulmen.AsyncCheckpointIO()] if cfg["async"] else None,
        accelerator="cpu",
        devices=cfg["devices"],
        strategy="ddp" if cfg["devices"] > 1 else "auto",
        max_epochs=cfg["max_epochs"],
        default_root_dir=root,
        logger=[fulmen.CSVLogger(root), StatusLogger(os.path.join(root, "status.txt"))],
        callbacks=callbacks,
        enable_checkpointing=cfg["enable_checkpointing"],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(TinySystem(), make_loader(shuffle=True), make_loader(), ckpt_path=cfg["ckpt_path"])
    print(f"DONE global_step={trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
