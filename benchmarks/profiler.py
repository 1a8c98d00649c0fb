"""What ``profiler="simple"`` itself costs: the lean Trainer of ``overhead.py`` with and without it.

    .venv/bin/python benchmarks/profiler.py [--steps 4000] [--rounds 7]

Same workload as ``benchmarks/overhead.py`` (MLP 32-64-64-1, batch 32, SGD, in-memory batches,
one CPU thread); the two variants run in alternating order and the median ``fit()`` times are
compared. The report each profiled fit prints at its end goes to os.devnull (it is part of the
timed fit). Target: the simple profiler costs under 5% (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from overhead import Bench, Data, LeanSystem

TARGET = 0.95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        bench = Bench(Data(args.steps, "list"), "sgd", root)
        times: dict[str, list[float]] = {"lean": [], "lean+simple": []}

        def fit(profiler: str | None) -> float:
            system = LeanSystem(bench.fresh_net(), "sgd")
            trainer = bench.lean_trainer(profiler=profiler)
            data = bench.data.source(args.steps)
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                t0 = time.perf_counter()
                trainer.fit(system, data)
                return time.perf_counter() - t0

        fit(None), fit("simple")  # warm-up
        for r in range(args.rounds):
            order = ("lean", "lean+simple") if r % 2 == 0 else ("lean+simple", "lean")
            for name in order:
                times[name].append(fit("simple" if name == "lean+simple" else None))
        bench.close()
    base = statistics.median(times["lean"])
    print(f"# simple profiler cost: {args.steps} steps x {args.rounds} rounds, torch {torch.__version__}, 1 thread\n")
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"{name:12s} {args.steps / m:8.0f} steps/s   {m / args.steps * 1e6:7.1f} us/step   ratio {base / m:.3f}")
    ratio = base / statistics.median(times["lean+simple"])
    print(f"\n{'PASS' if ratio >= TARGET else 'OVER'}: with profiler='simple' = {ratio:.3f} x without (target >= {TARGET})")


if __name__ == "__main__":
    main()
