"""GPU checks and timings for fulmen: one prepared script for a machine with one NVIDIA GPU.

    PYTHONPATH=src python3 benchmarks/gpu.py [--quick]            # on the GPU machine (< 5 min)
    .venv/bin/python benchmarks/gpu.py --device cpu [--quick]      # dry run here: tiny sizes, no CUDA parts

Parts (each in its own try/except: a failing part prints a FAIL line and the others still run):

(a) mixed precision: a small classifier trained with ``precision="16-mixed"`` and with
    ``"bf16-mixed"``: the loss falls (first-epoch mean vs last-epoch mean), the weights stay
    float32 while the outputs inside ``training_step`` are float16 / bfloat16, and under 16-mixed
    the GradScaler's scale is finite and > 0 and its state is in the saved checkpoint.
(b) no host-device sync per step: one epoch with the DEFAULT Trainer (progress bar to a non-tty
    stream, CSV logger, checkpointing, model summary) and ``self.log`` every step, under
    ``torch.cuda.set_sync_debug_mode("error")`` from the 2nd to the second-to-last batch
    (32-true). (b2) the same over 120 batches, where only the steps that end a
    ``log_every_n_steps`` window may sync (by design: the loss NaN check and the loggers).
    (b3) syncs per step under 16-mixed (counted with sync debug mode "warn"): fulmen against
    a hand-written GradScaler loop (which syncs once per step by design).
(c) throughput: an MLP 1024-4096-4096-1024, batch 256, AdamW, the same batches pre-made on
    the GPU for every variant: a hand-written AMP loop (bf16 autocast; fp16 autocast +
    GradScaler) against fulmen lean (no progress bar, logger, checkpoint, summary) and fulmen
    default (all defaults, ``self.log`` every step). The timed region is the same for all: from
    the first batch after the warm-up to the end of the data, with ``torch.cuda.synchronize()``
    at both ends only (so a ``fit()``'s setup and its end-of-epoch checkpoint are not in it).
    Alternating rounds, median steps/s, ratio to the hand-written loop; target >= 0.97.

Everything is printed as a Markdown section, and also written to ``$OUT/gpu_results.md`` when
the ``OUT`` environment variable is set (rewritten after each part, so a timeout keeps what ran).
The exit code is 0 either way: it is a report.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen

TARGET = 0.97
START = time.monotonic()


def set_sync_mode(mode: str) -> None:
    """torch.cuda.set_sync_debug_mode; a no-op in the CPU dry run (see main)."""
    torch.cuda.set_sync_debug_mode(mode)


# -- report ---------------------------------------------------------------------------------------
class Report:
    """Collects the Markdown lines; prints each at once and rewrites $OUT/gpu_results.md."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.passed = 0
        self.failed: list[str] = []
        out = os.environ.get("OUT")
        self.path = os.path.join(out, "gpu_results.md") if out else None

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.line(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}")
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return ok

    def error(self, part: str, err: BaseException) -> None:
        tb = traceback.format_exception(type(err), err, err.__traceback__)
        print("".join(tb), file=sys.stdout, flush=True)  # the full traceback goes to the log only
        where = traceback.extract_tb(err.__traceback__)
        fulmen_frames = [f for f in where if "fulmen" in f.filename]
        loc = fulmen_frames[-1] if fulmen_frames else (where[-1] if where else None)
        at = f" (at {os.path.basename(loc.filename)}:{loc.lineno} in {loc.name})" if loc else ""
        msg = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        self.check(part, False, f"error {type(err).__name__}: {msg}{at}")

    def flush(self) -> None:
        if self.path:
            with open(self.path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


def sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """stdout and stderr into a StringIO (not a tty: the progress bar prints plain lines by time)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


# -- (a) mixed precision ----------------------------------------------------------------------------
class Classifier(fulmen.System):
    def __init__(self, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))
        self.losses: list[tuple[int, torch.Tensor]] = []
        self.seen: dict[str, Any] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        if not self.seen:
            self.seen = {
                "out_dtype": out.dtype,
                "param_dtype": self.net[0].weight.dtype,
                "input_dtype": x.dtype,
                "device": x.device.type,
            }
        loss = F.cross_entropy(out, y)
        self.losses.append((self.current_epoch, loss.detach()))  # on the device: no sync here
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def classification_data(n: int, d_in: int, classes: int, batch: int, pin: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    teacher = torch.randn(d_in, classes, generator=g)
    y = (x @ teacher).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, pin_memory=pin,
                      generator=torch.Generator().manual_seed(1))


def part_a(rep: Report, args: argparse.Namespace, device: torch.device, root: str) -> None:
    rep.line("### (a) mixed precision: 16-mixed and bf16-mixed")
    rep.line()
    small = args.device == "cpu"
    n, d_in, hidden, classes = (2048, 32, 64, 10) if small else (8192, 64, 512, 10)
    epochs = 3 if (args.quick or small) else 5
    expected = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
    for precision, dtype in expected.items():
        try:
            torch.manual_seed(0)
            system = Classifier(d_in, hidden, classes)
            run_dir = tempfile.mkdtemp(dir=root)
            trainer = fulmen.Trainer(accelerator=device.type, precision=precision, max_epochs=epochs,
                                     default_root_dir=run_dir, enable_progress_bar=False, logger=False,
                                     enable_model_summary=False)
            t0 = time.perf_counter()
            trainer.fit(system, classification_data(n, d_in, classes, 64, pin=device.type == "cuda"))
            dt = time.perf_counter() - t0
            by_epoch: dict[int, list[float]] = {}
            for e, loss in system.losses:
                by_epoch.setdefault(e, []).append(float(loss))
            first, last = statistics.fmean(by_epoch[0]), statistics.fmean(by_epoch[max(by_epoch)])
            finite = all(math.isfinite(v) for vs in by_epoch.values() for v in vs)
            rep.check(f"{precision} loss falls", finite and last < 0.9 * first,
                      f"first-epoch mean {first:.4f} -> last-epoch ({max(by_epoch) + 1}) mean {last:.4f}, all finite: "
                      f"{finite} ({trainer.global_step} steps, {dt:.1f} s)")
            seen = system.seen
            params32 = all(p.dtype == torch.float32 for p in system.parameters())
            on_dev = all(p.device.type == device.type for p in system.parameters())
            rep.check(f"{precision} dtypes", seen.get("out_dtype") == dtype and seen.get("param_dtype") == torch.float32
                      and params32 and on_dev and seen.get("device") == device.type,
                      f"output in training_step {seen.get('out_dtype')} (expected {dtype}), weight in training_step "
                      f"{seen.get('param_dtype')}, all weights float32 after fit: {params32}, on {device.type}: {on_dev}, "
                      f"inputs {seen.get('input_dtype')} on {seen.get('device')}")
            scaler = getattr(trainer.strategy.precision, "scaler", None)
            path = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
            ckpt = torch.load(path, map_location="cpu", weights_only=False) if path else {}
            if precision == "16-mixed":
                scale = scaler.get_scale() if scaler is not None else float("nan")
                saved = ckpt.get("precision", {}).get("scaler", {}) if ckpt else {}
                saved_scale = saved.get("scale")
                saved_scale = float(saved_scale) if saved_scale is not None else None
                rep.check("16-mixed GradScaler", scaler is not None and math.isfinite(scale) and scale > 0,
                          f"scale {scale:g} after {trainer.global_step} steps")
                rep.check("16-mixed scaler state in checkpoint", saved_scale is not None and saved_scale == scale,
                          f"{os.path.basename(path) or 'no checkpoint'}: precision.scaler keys {sorted(saved)}, "
                          f"scale {saved_scale}")
            else:
                rep.check("bf16-mixed without GradScaler", scaler is None and bool(ckpt) and "precision" in ckpt,
                          f"scaler {scaler}, checkpoint {os.path.basename(path) or 'missing'} precision state "
                          f"{ckpt.get('precision') if ckpt else None}")
        except Exception as err:
            rep.error(f"(a) {precision}", err)
    rep.line()


# -- (b) host-device syncs ----------------------------------------------------------------------------
class SyncGuard(fulmen.Callback):
    """set_sync_debug_mode(mode) from batch 1 to batch n-2; with ``allow_log_windows`` the steps
    that end a ``log_every_n_steps`` window are let through (the loop syncs there by design)."""

    def __init__(self, n_batches: int, mode: str = "error", allow_log_windows: bool = False) -> None:
        self.n, self.mode, self.allow = n_batches, mode, allow_log_windows
        self.guarded = 0
        self.let_through = 0

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        if 1 <= batch_idx <= self.n - 2:  # the first batch warms up allocators and kernels
            set_sync_mode(self.mode)
            self.guarded += 1

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.n - 2:
            set_sync_mode("default")
        elif self.allow and trainer.global_step % trainer.log_every_n_steps == 0:
            set_sync_mode("default")  # the loss check and the loggers run after this hook
            self.let_through += 1


class Logs(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # logs train_loss (prog_bar) every step
        self.log("train_loss_epoch_mean", loss, on_step=False, on_epoch=True)
        return loss


def part_b(rep: Report, args: argparse.Namespace, device: torch.device, root: str) -> None:
    rep.line("### (b) no host-device sync per step (32-true, default Trainer)")
    rep.line()
    dry = "[dry run: no sync checking on the CPU] " if device.type != "cuda" else ""
    for name, n, allow in (("(b) 40 batches, sync mode error", 40, False),
                           ("(b2) 120 batches, log windows let through", 120, True)):
        try:
            guard = SyncGuard(n, "error", allow_log_windows=allow)
            run_dir = tempfile.mkdtemp(dir=root)
            loader = classification_data(64 * n, 64, 10, 64, pin=True)
            trainer = fulmen.Trainer(accelerator=device.type, max_epochs=1, default_root_dir=run_dir,
                                     callbacks=[guard])
            try:
                with quiet() as buf:
                    trainer.fit(Logs(64, 256, 10), loader)
            finally:
                set_sync_mode("default")
            csvs = [os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs if f.endswith(".csv")]
            ckpts = [f for _, _, fs in os.walk(run_dir) for f in fs if f.endswith(".ckpt")]
            defaults = sorted(type(c).__name__ for c in trainer.callbacks)
            ok = (trainer.global_step == n and "train_loss_epoch_mean" in trainer.callback_metrics
                  and bool(csvs) and bool(ckpts))
            rep.check(dry + name, ok,
                      f"{trainer.global_step} steps, {guard.guarded} batches under sync_debug_mode('error')"
                      f"{f', {guard.let_through} log-window steps let through' if allow else ''}; "
                      f"callbacks {defaults}; CSV {len(csvs)}, checkpoints {len(ckpts)}, "
                      f"bar/summary output {len(buf.getvalue())} chars")
        except Exception as err:
            rep.error(name, err)
    try:
        part_b3(rep, args, device, dry)
    except Exception as err:
        rep.error(dry + "(b3) syncs per step under 16-mixed", err)
    rep.line()


def count_syncs(fn: Callable[[], Any]) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        finally:
            set_sync_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def part_b3(rep: Report, args: argparse.Namespace, device: torch.device, dry: str) -> None:
    n = 40
    loader = classification_data(64 * n, 64, 10, 64, pin=True)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    sync_fn(device)()

    torch.manual_seed(0)
    raw = Classifier(64, 256, 10).net.to(device)
    opt = torch.optim.Adam(raw.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(device.type)

    def raw_loop() -> None:
        for i, (x, y) in enumerate(batches):
            if i == 1:
                set_sync_mode("warn")
            if i == n - 1:
                set_sync_mode("default")
            with torch.autocast(device.type, dtype=torch.float16):
                loss = F.cross_entropy(raw(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

    raw_syncs = count_syncs(raw_loop)
    guard = SyncGuard(n, "warn")
    trainer = fulmen.Trainer(accelerator=device.type, precision="16-mixed", max_epochs=1, enable_progress_bar=False,
                             logger=False, enable_checkpointing=False, enable_model_summary=False,
                             callbacks=[guard])
    torch.manual_seed(0)

    class Plain(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

    fulmen_syncs = count_syncs(lambda: trainer.fit(Plain(64, 256, 10), batches))
    steps = n - 2  # batches 1 .. n-2
    rep.check(dry + "(b3) syncs per step under 16-mixed, fulmen <= hand-written GradScaler loop",
              fulmen_syncs <= raw_syncs and (raw_syncs >= steps or bool(dry)),  # GradScaler.step syncs once a step
              f"fulmen {fulmen_syncs / steps:.2f}/step ({fulmen_syncs} in {steps} steps) vs hand-written "
              f"{raw_syncs / steps:.2f}/step ({raw_syncs}); each extra sync stops the CPU from queueing ahead")


# -- (c) throughput ------------------------------------------------------------------------------------
class TimedData:
    """``n`` batches cycled from ``batches``; times from batch ``warm`` to the end of the data,
    with a device synchronize at both ends. The same object type feeds every variant."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int, warm: int,
                 sync: Callable[[], None]) -> None:
        self.batches, self.n, self.warm, self.sync = batches, n, warm, sync
        self.t0 = self.t1 = 0.0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, k, warm = self.batches, len(self.batches), self.warm
        for i in range(self.n):
            if i == warm:
                self.sync()
                self.t0 = time.perf_counter()
            yield batches[i % k]
        self.sync()
        self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class Regressor(fulmen.System):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class LoggingRegressor(Regressor):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss, prog_bar=True)
        return loss


class Throughput:
    def __init__(self, args: argparse.Namespace, device: torch.device, root: str) -> None:
        self.device, self.root = device, root
        self.sync = sync_fn(device)
        if args.device == "cpu":
            self.dims, self.batch, self.n, self.warm = (64, 128, 128, 64), 32, 60, 10
        else:
            self.dims, self.batch = (1024, 4096, 4096, 1024), 256
            self.n, self.warm = (200, 20) if args.quick else (600, 50)
        torch.manual_seed(0)
        self.init = {k: v.to(device) for k, v in self.make_net().state_dict().items()}
        g = torch.Generator().manual_seed(0)
        d_in, d_out = self.dims[0], self.dims[-1]
        self.batches = []
        for _ in range(32):
            x = torch.randn(self.batch, d_in, generator=g)
            y = torch.tanh(x[:, :d_out] + 0.1 * torch.randn(self.batch, d_out, generator=g))
            self.batches.append((x.to(device), y.to(device)))
        self.sync()

    def make_net(self) -> nn.Module:
        d = self.dims
        layers: list[nn.Module] = []
        for i in range(len(d) - 1):
            layers.append(nn.Linear(d[i], d[i + 1]))
            if i < len(d) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def fresh_net(self) -> nn.Module:
        with torch.device(self.device):  # built on the device: no CPU init of 25M weights per run
            net = self.make_net()
        net.load_state_dict(self.init)
        return net

    def data(self) -> TimedData:
        return TimedData(self.batches, self.n, self.warm, self.sync)

    def raw(self, precision: str) -> tuple[float, float]:
        net = self.fresh_net()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        data = self.data()
        dev = self.device.type
        t0 = time.perf_counter()
        if precision == "bf16-mixed":
            for x, y in data:
                with torch.autocast(dev, dtype=torch.bfloat16):
                    loss = F.mse_loss(net(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            scaler = torch.amp.GradScaler(dev)
            for x, y in data:
                with torch.autocast(dev, dtype=torch.float16):
                    loss = F.mse_loss(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
        return data.seconds, time.perf_counter() - t0

    def fulmen(self, precision: str, default: bool) -> tuple[float, float]:
        data = self.data()
        run_dir = tempfile.mkdtemp(dir=self.root)
        if default:
            system: Regressor = LoggingRegressor(self.fresh_net())
            trainer = fulmen.Trainer(accelerator=self.device.type, precision=precision, max_epochs=1,
                                     default_root_dir=run_dir)
        else:
            system = Regressor(self.fresh_net())
            trainer = fulmen.Trainer(accelerator=self.device.type, precision=precision, max_epochs=1,
                                     default_root_dir=run_dir, enable_progress_bar=False, logger=False,
                                     enable_checkpointing=False, enable_model_summary=False,
                                     num_sanity_val_steps=0)
        try:
            t0 = time.perf_counter()
            with quiet():
                trainer.fit(system, data)
            whole = time.perf_counter() - t0
            assert trainer.global_step == self.n, (trainer.global_step, self.n)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)  # default: a checkpoint of the model + AdamW state
        return data.seconds, whole

    def run(self, variant: str, precision: str) -> tuple[float, float]:
        gc.collect()
        if variant == "raw":
            return self.raw(precision)
        return self.fulmen(precision, default=variant == "default")


def part_c(rep: Report, args: argparse.Namespace, device: torch.device, root: str) -> None:
    rep.line(f"### (c) throughput against a hand-written AMP loop (target >= {TARGET:.2f})")
    rep.line()
    bench = Throughput(args, device, root)
    dims = "-".join(map(str, bench.dims))
    rep.line(f"MLP {dims}, batch {bench.batch}, AdamW, data pre-made on the {device.type} (32 batches cycled), "
             f"{bench.n} batches per run, first {bench.warm} untimed; timed region = batches {bench.warm}.."
             f"{bench.n - 1} with a synchronize at both ends. lean = no progress bar/logger/checkpoint/summary; "
             f"default = all defaults + self.log('loss', prog_bar=True) every step.")
    rep.line()
    variants = ("raw", "lean", "default")
    rounds = 2 if args.device == "cpu" else (3 if args.quick else 7)
    deadline = START + args.time_budget
    for precision in ("bf16-mixed", "16-mixed"):
        label = "bf16 autocast" if precision == "bf16-mixed" else "fp16 autocast + GradScaler"
        try:
            for v in variants:  # warm-up: kernels, allocator, cuBLAS workspaces, first fit's imports
                bench.run(v, precision)
            times: dict[str, list[float]] = {v: [] for v in variants}
            whole: dict[str, list[float]] = {v: [] for v in variants}
            done = 0
            for r in range(rounds):
                if r >= 3 and time.monotonic() > deadline - 30:
                    break  # keep the whole script inside its time budget
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    t, w = bench.run(v, precision)
                    times[v].append(t)
                    whole[v].append(w)
                done += 1
            steps = bench.n - bench.warm
            rate = {v: steps / statistics.median(ts) for v, ts in times.items()}
            paired = {v: statistics.median(r / t for r, t in zip(times["raw"], times[v])) for v in variants}
            rep.line(f"**{precision}** ({label}), {done} rounds, rotating order:")
            rep.line()
            rep.line("| variant | steps/s (median) | min..max | ms/step | ratio | paired | fit() wall s (median) |")
            rep.line("|---|---|---|---|---|---|---|")
            for v in variants:
                rs = sorted(steps / t for t in times[v])
                rep.line(f"| {v} | {rate[v]:.1f} | {rs[0]:.1f}..{rs[-1]:.1f} | {1e3 / rate[v]:.3f} | "
                         f"{rate[v] / rate['raw']:.3f} | {paired[v]:.3f} | {statistics.median(whole[v]):.2f} |")
            rep.line()
            for v in ("lean", "default"):
                ratio = rate[v] / rate["raw"]
                note = "" if (paired[v] >= TARGET) == (ratio >= TARGET) else " (paired ratio disagrees: noisy)"
                rep.check(f"(c) {precision} {v}", ratio >= TARGET,
                          f"{ratio:.3f} x hand-written ({rate[v]:.1f} vs {rate['raw']:.1f} steps/s, "
                          f"{(1 / rate[v] - 1 / rate['raw']) * 1e6:+.1f} us/step), paired {paired[v]:.3f}{note}")
            rep.line()
        except Exception as err:
            rep.error(f"(c) {precision}", err)
            rep.line()
        rep.flush()


# -- main ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, batches and rounds")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run with tiny sizes, skipping the CUDA-only parts")
    parser.add_argument("--time-budget", type=float, default=240.0,
                        help="seconds after which (c) stops adding rounds (after 3); default 240")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    args = parser.parse_args()

    warnings.simplefilter("ignore")  # fulmen's advice (no validation_step, ...) is not under test here
    rep = Report()
    if args.device == "cuda" and not torch.cuda.is_available():
        rep.line("## fulmen GPU checks")
        rep.check("CUDA available", False, f"torch {torch.__version__} sees no GPU")
        rep.flush()
        return
    device = torch.device(args.device)
    if device.type != "cuda":
        global set_sync_mode

        def set_sync_mode(mode: str) -> None:  # the CPU dry run runs (b)'s code without the checking
            pass

    card = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU dry run ({platform.processor() or platform.machine()})"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    rep.line(f"## fulmen GPU checks: {card}, {date}")
    rep.line()
    rep.line(f"torch {torch.__version__}{cuda}, Python {sys.version.split()[0]}, fulmen {fulmen.__version__}, "
             f"command: `python3 benchmarks/gpu.py{' --quick' if args.quick else ''}"
             f"{' --device cpu' if args.device == 'cpu' else ''}`")
    rep.line()
    rep.flush()

    with tempfile.TemporaryDirectory(prefix="fulmen-gpu-") as root:
        for key, part in (("a", part_a), ("b", part_b), ("c", part_c)):
            if key not in args.parts:
                continue
            try:
                torch.manual_seed(0)
                part(rep, args, device, root)
            except Exception as err:
                rep.error(f"({key})", err)
            finally:
                if device.type == "cuda":
                    set_sync_mode("default")
            rep.flush()

    rep.line(f"**Summary: {rep.passed} PASS, {len(rep.failed)} FAIL**"
             + (f" ({'; '.join(rep.failed)})" if rep.failed else "")
             + f"; {time.monotonic() - START:.0f} s")
    rep.flush()


if __name__ == "__main__":
    main()
