"""What ``WeightDigests`` costs: the lean Trainer of ``overhead.py`` with and without it.

    .venv/bin/python benchmarks/weight_digests.py [--steps 4000] [--rounds 7] [--every 50 10]

Same workload as ``benchmarks/overhead.py`` (MLP 32-64-64-1, batch 32, SGD, in-memory batches,
one CPU thread; its ``Bench``, ``Data`` and ``LeanSystem``). Variants: the lean Trainer, and the
lean Trainer with ``WeightDigests(every_n_steps=N)`` for each N of ``--every``; every fit writes
into a fresh folder (the digests go to its ``checkpoints.jsonl``). The variants run in rotating
order for ``--rounds`` rounds and the median ``fit()`` times are compared. The whole fit is timed,
so the digests still being hashed at the end (written at ``on_train_end``) are included.
Printed per variant: median steps/s, the ratio of medians (the verdict), the median of per-round
ratios (``paired``) and the ratio of the fastest fits (least disturbed by other processes on a
shared machine). Target: ratio >= 0.95 at N = 50. A report: the exit code is 0 either way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from overhead import Bench, Data, LeanSystem, rotated

from fulmen.callbacks import WeightDigests
from fulmen.checkpoint import read_weight_digests

TARGET = 0.95


def fit(bench: Bench, steps: int, every: int | None) -> float:
    """Seconds of one lean ``fit()`` of ``steps`` steps, with ``WeightDigests(every)`` unless None."""
    run_dir = tempfile.mkdtemp(dir=bench.root)
    callbacks = [WeightDigests(every_n_steps=every)] if every else []
    trainer = bench.lean_trainer(default_root_dir=run_dir, callbacks=callbacks)
    system = LeanSystem(bench.fresh_net(), bench.optim)
    data = bench.data.source(steps)
    t0 = time.perf_counter()
    trainer.fit(system, data)
    dt = time.perf_counter() - t0
    assert trainer.global_step == steps, (trainer.global_step, steps)
    if every:
        assert len(read_weight_digests(run_dir)) == steps // every + 1  # step 0 and every N
    return dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="training steps per timed fit (default 4000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of all variants, rotating order (default 7)")
    parser.add_argument("--every", type=int, nargs="+", default=[50, 10], help="every_n_steps values (default 50 10)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # e.g. "no validation_step": irrelevant here
    variants = ("lean", *(f"every={n}" for n in args.every))
    every = {"lean": None, **{f"every={n}": n for n in args.every}}
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="fulmen-bench-") as root:
        bench = Bench(Data(args.steps, "list"), "sgd", root)
        try:
            for v in variants:  # warm-up: imports and first-fit costs
                fit(bench, min(args.steps, 100), every[v])
            for r in range(args.rounds):
                for v in rotated(variants, r):
                    times[v].append(fit(bench, args.steps, every[v]))
        finally:
            bench.close()
    base = statistics.median(times["lean"])
    print(f"# WeightDigests cost: {args.steps} steps x {args.rounds} rounds, torch {torch.__version__}, 1 thread\n")
    for v in variants:
        m = statistics.median(times[v])
        paired = statistics.median(b / x for b, x in zip(times["lean"], times[v]))
        print(
            f"{v:10s} {args.steps / m:8.0f} steps/s   {m / args.steps * 1e6:7.1f} us/step   "
            f"ratio {base / m:.3f}   paired {paired:.3f}   ratio of fastest fits {min(times['lean']) / min(times[v]):.3f}"
        )
    if 50 in args.every:
        ratio = base / statistics.median(times["every=50"])
        print(f"\n{'PASS' if ratio >= TARGET else 'OVER'}: WeightDigests(every_n_steps=50) = {ratio:.3f} x without (target >= {TARGET})")


if __name__ == "__main__":
    main()
