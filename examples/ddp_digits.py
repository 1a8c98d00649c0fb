"""The digits example on several processes (DDP): the same system, more devices.

    python examples/ddp_digits.py --devices 2              # fulmen starts the second process itself
    torchrun --nproc-per-node=2 examples/ddp_digits.py     # torchrun starts both
    sbatch examples/ddp_digits.sbatch                      # a SLURM job (one task per device)

On CPU each device is a process (gloo); with ``--accelerator gpu`` each GPU gets one (NCCL).
Each process trains on its own half of every epoch's data, gradients are averaged after each
backward, and rank 0 writes the logs and checkpoints. The batch size is per process, so two
processes with ``--batch-size 32`` see 64 samples per optimizer step.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits import DigitsClassifier, DigitsData

import fulmen


def main() -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="auto", help="processes (CPU) or GPUs per machine; 'auto' under torchrun/SLURM")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--root", default=os.path.join("runs", "ddp_digits"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices

    torch.set_num_threads(1)  # one thread per process: the processes share the machine's cores
    fulmen.seed_everything(args.seed, workers=True)
    trainer = fulmen.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy="ddp",
        max_epochs=args.epochs,
        default_root_dir=args.root,
        log_every_n_steps=10,
        deterministic=True,
        enable_progress_bar=False,
    )
    data = DigitsData(batch_size=args.batch_size, seed=args.seed)
    system = DigitsClassifier()
    trainer.fit(system, datamodule=data)
    (metrics,) = trainer.test(system, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        print(f"processes = {trainer.world_size}")
        print(f"test_acc  = {metrics['test_acc']:.4f}")
        print(f"test_loss = {metrics['test_loss']:.4f}")
        print(f"logs      : {trainer.log_dir}")
        return metrics
    return None


if __name__ == "__main__":
    main()
