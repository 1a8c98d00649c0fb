"""fulmen's DDP against a hand-written DDP loop: 2 CPU processes, gloo.

    .venv/bin/python benchmarks/ddp.py [--steps 1500] [--rounds 5] [--quick]

Both variants run under ``torchrun --standalone --nproc-per-node=2`` (one launch per variant and
round, in alternating order) on the same model (an MLP 64 -> 256 -> 256 -> 1), the same data
(a ``TensorDataset`` read through a ``DataLoader`` with a ``DistributedSampler``, batch 64 per
process), SGD, one thread per process:

* raw     ``DistributedDataParallel(model)``; each step: forward, MSE loss, backward, step,
          zero_grad(set_to_none=True)
* fulmen  ``Trainer(strategy="ddp", devices=2)`` with progress bar, logger, checkpointing and the
          model summary off; ``training_step`` returns the loss

Each rank 0 times its training loop only, from the end of the 50th step to the end of the last
(process start, the process-group rendezvous and warm-up are left out for both; for fulmen the
clock starts in ``on_train_batch_end`` of batch 49 and stops in ``on_train_end`` after a
barrier, as raw's does). The median steps/s of each variant and their ratio are printed; target
>= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.abspath(__file__)
TARGET = 0.95


def make_data(n: int) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def make_model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))


def worker_raw(steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo")
    data = make_data(steps * 64 * 2)
    loader = DataLoader(data, batch_size=64, sampler=DistributedSampler(data, shuffle=True, seed=0))
    model = DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    warmup = 50
    start = 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dist.barrier()
    elapsed = time.perf_counter() - start
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"steps_per_s": (steps - warmup) / elapsed}, f)
    dist.destroy_process_group()


def worker_fulmen(steps: int, out: str) -> None:
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    import fulmen

    warmup = 50

    class Timing(fulmen.Callback):
        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup - 1:
                self.start = time.perf_counter()

        def on_train_end(self, trainer: Any, system: Any) -> None:
            trainer.strategy.barrier()
            self.elapsed = time.perf_counter() - self.start

    class Regressor(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    timing = Timing()
    trainer = fulmen.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timing],
    )
    data = make_data(steps * 64 * 2)
    trainer.fit(Regressor(), DataLoader(data, batch_size=64, shuffle=True))
    if trainer.is_global_zero:
        with open(out, "w") as f:
            json.dump({"steps_per_s": (steps - warmup) / timing.elapsed}, f)


def launch(variant: str, steps: int) -> float:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [torchrun, "--standalone", "--nproc-per-node=2", HERE, "--worker", variant, "--steps", str(steps), "--out", out],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return float(json.load(f)["steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="400 steps, 3 rounds")
    parser.add_argument("--worker", choices=["raw", "fulmen"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        (worker_raw if args.worker == "raw" else worker_fulmen)(args.steps, args.out)
        return
    if args.quick:
        args.steps, args.rounds = 400, 3
    import torch

    print(f"# fulmen DDP vs hand-written DDP: 2 CPU processes (gloo), {args.steps} steps per run, {args.rounds} rounds")
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    results: dict[str, list[float]] = {"raw": [], "fulmen": []}
    for r in range(args.rounds):
        for variant in (("raw", "fulmen") if r % 2 == 0 else ("fulmen", "raw")):
            results[variant].append(launch(variant, args.steps))
    for name, xs in results.items():
        print(f"{name:7s} {statistics.median(xs):8.1f} steps/s  (min {min(xs):.1f}, max {max(xs):.1f})")
    ratio = statistics.median(results["fulmen"]) / statistics.median(results["raw"])
    print(f"\n{'PASS' if ratio >= TARGET else 'UNDER'}: fulmen / raw = {ratio:.3f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
