"""Per-step overhead of fulmen against a hand-written PyTorch loop ("no tax").

    .venv/bin/python benchmarks/overhead.py [--steps 4000] [--rounds 7] [--data list|loader] [--quick] [--accum-clip]

The workload is chosen so that the framework's Python overhead dominates: a tiny MLP
(32 -> 64 -> 64 -> 1), batch 32, in-memory data, one CPU thread. Three variants train the same
model (same initial weights), on the same batches, with the same optimizer settings:

* raw      a hand-written loop: forward, loss, backward, step, zero_grad(set_to_none=True)
* lean     ``Trainer`` with progress bar, logger, checkpointing, model summary and sanity check
           off; ``training_step`` returns the loss and logs nothing
* default  the Trainer's defaults (progress bar, CSV logger, end-of-epoch ModelCheckpoint) with
           ``default_root_dir`` in a temp dir and ``enable_model_summary=False``;
           ``training_step`` calls ``self.log("loss", loss, prog_bar=True)`` every step. stderr
           (where the bar writes) is redirected to os.devnull during fit, so the bar takes its
           non-terminal path (plain lines, printed by time).

For fulmen the whole ``fit()`` call is timed (setup included); for raw, the loop. The variants
run in alternating order for ``--rounds`` rounds and the median steps/s of each is reported.
The fixed cost of one ``fit()`` (a 1-step fit) is reported separately, as is the number of
Python-level function calls per training step (counted with cProfile, as the difference
between two fits of different lengths, so the fixed setup cost drops out).

A second table (the only one with ``--accum-clip``) covers gradient accumulation and clipping:

* raw_ac   a hand-written loop: ``loss / 4``, backward every batch, and every 4th batch
           ``clip_grad_norm_(model.parameters(), 1.0)``, step, zero_grad(set_to_none=True)
* lean_ac  lean ``Trainer`` with ``accumulate_grad_batches=4, gradient_clip_val=1.0,
           gradient_clip_algorithm="norm"``

"steps" there are batches processed (4 per optimizer step); the runs use a multiple of 4
batches. Both variants are first checked to end with the same weights.

Targets: lean >= 0.97 x raw, default >= 0.95 x raw, lean_ac >= 0.90 x raw_ac (on a shared VM the
ratios of 7 rounds move by several percent; use ``--rounds 15`` for numbers to report). The exit code is 0
either way: it is a report.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen

IN, HIDDEN, OUT, BATCH = 32, 64, 1, 32
LR = 0.01
ACCUM, CLIP = 4, 1.0  # the accumulation/clipping section: batches per optimizer step, max grad norm
TARGETS = {"lean": 0.97, "default": 0.95, "lean_ac": 0.90}
VARIANTS = ("raw", "lean", "default")
AC_VARIANTS = ("raw_ac", "lean_ac")


# -- the workload ---------------------------------------------------------------------------------
def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    return torch.optim.SGD(params, lr=LR)


class Data:
    """The batches every variant trains on: a list of pre-made (x, y) batches, or a DataLoader
    over a TensorDataset holding the same samples (``shuffle=False``)."""

    def __init__(self, steps: int, kind: str) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(steps * BATCH, IN, generator=g)
        y = x[:, :1] * 0.5 - x[:, 1:2] + 0.1 * torch.randn(steps * BATCH, OUT, generator=g)
        self.kind, self.steps = kind, steps
        self.batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, steps * BATCH, BATCH)]
        self.dataset = TensorDataset(x, y)

    def source(self, steps: int) -> Any:
        """What both the raw loop and ``Trainer.fit`` iterate (a fresh object each run)."""
        if self.kind == "loader":
            n = steps * BATCH
            return DataLoader(torch.utils.data.Subset(self.dataset, range(n)), batch_size=BATCH, shuffle=False)
        return self.batches[:steps]


class LeanSystem(fulmen.System):
    def __init__(self, net: nn.Module, optim: str) -> None:
        super().__init__()
        self.net = net
        self.optim = optim

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.optim, self.parameters())


class LoggingSystem(LeanSystem):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss


# -- the three variants (each returns the seconds it took) ----------------------------------------
class Bench:
    def __init__(self, data: Data, optim: str, root: str) -> None:
        self.data, self.optim, self.root = data, optim, root
        torch.manual_seed(0)
        self.init_state = {k: v.clone() for k, v in make_net().state_dict().items()}
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self.devnull.close()

    def fresh_net(self) -> nn.Module:
        net = make_net()
        net.load_state_dict(self.init_state)
        return net

    def raw(self, steps: int) -> float:
        model = self.fresh_net()
        opt = make_optimizer(self.optim, model.parameters())
        data = self.data.source(steps)
        model.train()
        t0 = time.perf_counter()
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def raw_ac(self, steps: int) -> float:
        """Gradient accumulation (ACCUM batches per step) and norm clipping, by hand."""
        model = self.fresh_net()
        opt = make_optimizer(self.optim, model.parameters())
        data = self.data.source(steps)
        model.train()
        clip_grad_norm_ = torch.nn.utils.clip_grad_norm_
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(data):
            loss = F.mse_loss(model(x), y) / ACCUM
            loss.backward()
            if (i + 1) % ACCUM == 0:
                clip_grad_norm_(model.parameters(), CLIP)
                opt.step()
                opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        self.last_net = model
        return dt

    def lean_trainer(self, **flags: Any) -> fulmen.Trainer:
        return fulmen.Trainer(
            accelerator="cpu",
            max_epochs=1,
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            **flags,
        )

    def lean_ac_trainer(self) -> fulmen.Trainer:
        return self.lean_trainer(accumulate_grad_batches=ACCUM, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")

    def default_trainer(self) -> fulmen.Trainer:
        # A fresh, empty folder per run, as for a user starting a new experiment (a folder holding
        # many earlier ``version_N`` runs makes the logger's version lookup slower).
        run_dir = tempfile.mkdtemp(dir=self.root)
        return fulmen.Trainer(accelerator="cpu", max_epochs=1, default_root_dir=run_dir, enable_model_summary=False)

    def lean(self, steps: int) -> float:
        system = LeanSystem(self.fresh_net(), self.optim)
        trainer = self.lean_trainer()
        data = self.data.source(steps)
        t0 = time.perf_counter()
        trainer.fit(system, data)
        dt = time.perf_counter() - t0
        assert trainer.global_step == steps, (trainer.global_step, steps)
        return dt

    def lean_ac(self, steps: int) -> float:
        system = LeanSystem(self.fresh_net(), self.optim)
        trainer = self.lean_ac_trainer()
        data = self.data.source(steps)
        t0 = time.perf_counter()
        trainer.fit(system, data)
        dt = time.perf_counter() - t0
        assert trainer.global_step == -(-steps // ACCUM), (trainer.global_step, steps)
        self.last_net = system.net
        return dt

    def default(self, steps: int) -> float:
        system = LoggingSystem(self.fresh_net(), self.optim)
        trainer = self.default_trainer()
        data = self.data.source(steps)
        with contextlib.redirect_stderr(self.devnull):
            t0 = time.perf_counter()
            trainer.fit(system, data)
            dt = time.perf_counter() - t0
        assert trainer.global_step == steps, (trainer.global_step, steps)
        return dt

    def run(self, variant: str, steps: int) -> float:
        gc.collect()
        return getattr(self, variant)(steps)


# -- call counting ----------------------------------------------------------------------------------
def profile_calls(fn: Callable[[], Any]) -> dict[tuple[str, int, str], int]:
    """Calls per function (cProfile's ncalls, builtins included) while running ``fn``."""
    gc.collect()  # garbage from earlier work must not be collected (finalizers run) while profiling
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    return {key: value[1] for key, value in stats.items()}


def calls_per_step(run: Callable[[int], Any], n1: int, n2: int) -> tuple[float, dict[tuple[str, int, str], float]]:
    """(total calls per step, calls per step by function): the difference of a run of ``n2``
    steps and one of ``n1`` steps, divided by ``n2 - n1`` (fixed per-run work drops out).

    Done three times, keeping the median total: one-time work that happens during one of the
    runs (torch imports some modules, sympy among them, lazily the first times an optimizer
    runs under a profiler) would otherwise show up as thousands of calls, or minus thousands.
    """
    tries = []
    for _ in range(3):
        a = profile_calls(lambda: run(n1))
        b = profile_calls(lambda: run(n2))
        per_fn = {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}
        tries.append((sum(per_fn.values()), {k: v for k, v in per_fn.items() if abs(v) > 1e-9}))
    tries.sort(key=lambda t: t[0])
    return tries[1]


def label(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if file == "~":
        return name  # a builtin / C function
    for marker in ("site-packages" + os.sep, "src" + os.sep):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = os.path.basename(file)
    return f"{file}:{line}({name})"


# -- main ---------------------------------------------------------------------------------------------
def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def rotated(variants: tuple[str, ...], r: int) -> tuple[str, ...]:
    k = r % len(variants)
    return variants[k:] + variants[:k]


Calls = dict[str, tuple[float, dict[tuple[str, int, str], float]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="training steps per timed run (default 4000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of raw/lean/default, rotating order (default 7)")
    parser.add_argument("--data", choices=("list", "loader"), default="list",
                        help="list: pre-made batches (default, the harshest case); loader: DataLoader(TensorDataset)")
    parser.add_argument("--optim", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, 2 rounds")
    parser.add_argument("--accum-clip", action="store_true",
                        help=f"only the gradient accumulation ({ACCUM}) + clipping (norm {CLIP}) section "
                             "(the full run includes it after the main table)")
    parser.add_argument("--no-calls", action="store_true", help="skip the call counting")
    parser.add_argument("--top", type=int, default=15, help="functions listed in the extra-calls breakdown")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = min(args.steps, 60), min(args.rounds, 2)
    steps = max(args.steps, 2)
    ac_steps = max(ACCUM, steps - steps % ACCUM)  # whole accumulation groups only

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # e.g. "no validation_step": irrelevant here
    data = Data(max(steps, ac_steps), args.data)

    with tempfile.TemporaryDirectory(prefix="fulmen-bench-") as root:
        bench = Bench(data, args.optim, root)
        try:
            bench.run("raw", 2)  # warms torch (autograd, optimizer) first
            main_res = None if args.accum_clip else measure_main(bench, args, steps)
            ac_res = measure_ac(bench, args, ac_steps)
        finally:
            bench.close()

    verdicts = []
    if main_res is not None:
        verdicts += report(args, steps, *main_res)
        print()
    verdicts += report_ac(args, ac_steps, *ac_res)
    print()
    print("verdict: " + "; ".join(verdicts))


def measure_main(bench: Bench, args: argparse.Namespace, steps: int) -> tuple[Any, ...]:
    # First fit in this process: includes the modules fit() imports on first use (the loop, checkpoint io).
    cold = {v: bench.run(v, 1) for v in ("lean", "default")}
    # Warm-up: one short run of each.
    for v in VARIANTS:
        bench.run(v, min(steps, 200))

    # Fixed cost of one fit: 1-step runs, alternating; and of building each Trainer.
    one: dict[str, list[float]] = {v: [] for v in VARIANTS}
    build: dict[str, list[float]] = {"lean": [], "default": []}
    for r in range(7):
        for v in rotated(VARIANTS, r):
            one[v].append(bench.run(v, 1))
        for v, make in (("lean", bench.lean_trainer), ("default", bench.default_trainer)):
            t0 = time.perf_counter()
            make()
            build[v].append(time.perf_counter() - t0)

    # Throughput: alternating rounds, rotating order.
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in rotated(VARIANTS, r):
            times[v].append(bench.run(v, steps))

    calls: Calls = {}
    if not args.no_calls:
        n1, n2 = (10, 30) if args.quick else (100, 300)
        n1, n2 = min(n1, steps - 1), min(n2, steps)
        for v in VARIANTS:
            calls[v] = calls_per_step(getattr(bench, v), n1, n2)
    return cold, one, build, times, calls


def measure_ac(bench: Bench, args: argparse.Namespace, steps: int) -> tuple[Any, ...]:
    # Same result first: both must end with the same weights.
    check_n = min(steps, 400)
    bench.run("raw_ac", check_n)
    raw_w = [p.detach().clone() for p in bench.last_net.parameters()]
    bench.run("lean_ac", check_n)
    diff = max((a - p.detach()).abs().max().item() for a, p in zip(raw_w, bench.last_net.parameters()))
    same = (check_n, diff)

    for v in AC_VARIANTS:  # warm-up
        bench.run(v, min(steps, 200))
    one: dict[str, list[float]] = {v: [] for v in AC_VARIANTS}  # one accumulation group
    for r in range(7):
        for v in rotated(AC_VARIANTS, r):
            one[v].append(bench.run(v, ACCUM))
    times: dict[str, list[float]] = {v: [] for v in AC_VARIANTS}
    for r in range(args.rounds):
        for v in rotated(AC_VARIANTS, r):
            times[v].append(bench.run(v, steps))

    calls: Calls = {}
    if not args.no_calls:
        n1, n2 = (8, 32) if args.quick else (100, 300)
        n2 = min(n2, steps)
        n1 = min(n1, n2 - ACCUM)
        if n1 >= ACCUM:
            for v in AC_VARIANTS:
                calls[v] = calls_per_step(getattr(bench, v), n1, n2)
    return same, one, times, calls


def print_table(steps: int, times: dict[str, list[float]], variants: tuple[str, ...]) -> list[str]:
    """The steps/s table; ``variants[0]`` is the baseline. Returns the verdicts."""
    base = variants[0]
    rate = {v: steps / statistics.median(times[v]) for v in variants}
    us = {v: statistics.median(times[v]) / steps * 1e6 for v in variants}
    # Ratio of each round's raw time to the variant's time in the same round: less sensitive to
    # drifts in machine load than the ratio of the medians (which the verdict uses, as specified).
    paired = {v: statistics.median(r / t for r, t in zip(times[base], times[v])) for v in variants}
    head = f"{'variant':<9} {'steps/s (median)':>17} {'min..max':>17} {'us/step':>8} {'+us/step':>9} " \
           f"{'ratio':>6} {'paired':>6} {'target':>7}  verdict"
    print(head)
    print("-" * len(head))
    verdicts = []
    for v in variants:
        rates = sorted(steps / t for t in times[v])
        extra = us[v] - us[base]
        if v == base:
            tail = f"{'':>9} {1.0:>6.3f} {1.0:>6.3f} {'':>7}"
            verdict = ""
        else:
            ratio = rate[v] / rate[base]
            ok = ratio >= TARGETS[v]
            verdict = "PASS" if ok else "FAIL"
            if (paired[v] >= TARGETS[v]) != ok:
                verdict += " (paired ratio disagrees: noisy, rerun)"
            verdicts.append(f"{v} {ratio:.3f} {'>=' if ok else '<'} {TARGETS[v]:.2f} {verdict}")
            tail = f"{extra:>+9.1f} {ratio:>6.3f} {paired[v]:>6.3f} {'>= ' + format(TARGETS[v], '.2f'):>7}"
        print(f"{v:<9} {rate[v]:>17.0f} {rates[0]:>8.0f}..{rates[-1]:<8.0f} {us[v]:>8.1f} {tail}  {verdict}")
    print(f"ratio: median steps/s over {base}'s; paired: median over rounds of ({base} time / variant time)")
    return verdicts


def print_calls(calls: Calls, variants: tuple[str, ...], top: int, unit: str = "training step") -> None:
    print()
    print(f"function calls per {unit} (cProfile ncalls, Python functions + builtins; "
          "difference of two runs, fixed cost excluded):")
    for v in variants:
        total, per_fn = calls[v]
        py = sum(n for k, n in per_fn.items() if k[0] != "~")
        print(f"  {v:<8} {total:7.1f}   (Python-level {py:.1f}, builtin/C {total - py:.1f})")
    base_fn = calls[variants[0]][1]
    for v in variants[1:]:
        extra = {k: n - base_fn.get(k, 0.0) for k, n in calls[v][1].items()}
        extra = {k: n for k, n in extra.items() if abs(n) >= 0.01}
        listed = sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:top]
        print(f"  calls per {unit} that {v} makes beyond {variants[0]} (top {len(listed)}):")
        for k, n in listed:
            print(f"    {n:+7.2f}  {label(k)}")


def report(
    args: argparse.Namespace,
    steps: int,
    cold: dict[str, float],
    one: dict[str, list[float]],
    build: dict[str, list[float]],
    times: dict[str, list[float]],
    calls: Calls,
) -> list[str]:
    setup = {v: statistics.median(one[v]) - statistics.median(one["raw"]) for v in VARIANTS}
    us_raw = statistics.median(times["raw"]) / steps * 1e6
    print(f"fulmen overhead benchmark: MLP {IN}-{HIDDEN}-{HIDDEN}-{OUT}, batch {BATCH}, {args.optim.upper()}, "
          f"data={args.data}, {steps} steps/run, {args.rounds} rounds (rotating order), "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread, Python {sys.version.split()[0]}")
    print("default: progress bar -> os.devnull (non-tty, plain lines), CSV logger + end-of-epoch checkpoint in a "
          "temp dir, self.log('loss', prog_bar=True) every step")
    print()
    verdicts = print_table(steps, times, VARIANTS)
    print()
    print("fixed cost of one fit() (median of 7 one-step runs, minus raw's one step):")
    for v in ("lean", "default"):
        print(f"  {v:<8} {setup[v] * 1e3:7.2f} ms   (first fit in the process: {cold[v] * 1e3:.1f} ms; "
              f"building the Trainer, not timed above: {statistics.median(build[v]) * 1e3:.2f} ms)")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("  (PYTHONDONTWRITEBYTECODE is set: the first fit also compiles the fulmen modules it imports)")
    for v in ("lean", "default"):
        loop_extra = (statistics.median(times[v]) - setup[v] - statistics.median(times["raw"])) / steps * 1e6
        print(f"  {v:<8} per-step overhead with the fixed cost taken out: {loop_extra:+.2f} us/step "
              f"({us_raw:.1f} us/step raw)")
    if calls:
        print_calls(calls, VARIANTS, args.top)
    return verdicts


def report_ac(
    args: argparse.Namespace,
    steps: int,
    same: tuple[int, float],
    one: dict[str, list[float]],
    times: dict[str, list[float]],
    calls: Calls,
) -> list[str]:
    print(f"gradient accumulation + clipping: accumulate {ACCUM} batches, clip_grad_norm_ {CLIP} before each "
          f"optimizer step; MLP {IN}-{HIDDEN}-{HIDDEN}-{OUT}, batch {BATCH}, {args.optim.upper()}, data={args.data}, "
          f"{steps} batches/run ({steps // ACCUM} optimizer steps), {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread")
    print("raw_ac: loss / 4, backward; every 4th batch clip_grad_norm_(model.parameters(), 1.0), step, zero_grad; "
          "lean_ac: lean Trainer(accumulate_grad_batches=4, gradient_clip_val=1.0)")
    n, diff = same
    print(f"same result: after {n} batches the weights of raw_ac and lean_ac differ by at most {diff:.2e}"
          + ("" if diff <= 1e-5 else "  <-- MISMATCH"))
    print("steps/s below = batches processed per second")
    print()
    verdicts = print_table(steps, times, AC_VARIANTS)
    setup = statistics.median(one["lean_ac"]) - statistics.median(one["raw_ac"])
    loop_extra = (statistics.median(times["lean_ac"]) - setup - statistics.median(times["raw_ac"])) / steps * 1e6
    print()
    print(f"fixed cost of one fit() ({ACCUM} batches, median of 7, minus raw_ac's): {setup * 1e3:.2f} ms; "
          f"per-batch overhead with it taken out: {loop_extra:+.2f} us/batch "
          f"({statistics.median(times['raw_ac']) / steps * 1e6:.1f} us/batch raw_ac)")
    if calls:
        print_calls(calls, AC_VARIANTS, args.top, unit="batch")
    return verdicts


if __name__ == "__main__":
    main()
