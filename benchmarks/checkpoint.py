"""What fulmen's checked checkpoints cost against plain ``torch.save`` / ``torch.load``.

    .venv/bin/python benchmarks/checkpoint.py [--rounds 7] [--params 100] [--quick]

A state dict of about ``--params`` million float32 parameters (square Linear layers of 4096,
CPU) is written, in rotating order each round, by:

* ``torch.save``          plain ``torch.save(ckpt, path)``: returns when the bytes are in the OS page cache
* ``torch.save+fsync``    the same, then ``os.fsync``: the bytes are on disk (what a crash-safe save needs)
* ``fulmen``              ``write_checkpoint(ckpt, path, audit_dir=run, metrics=...)``: an atomic
                          write (temp file, fsync, rename, folder fsync), the content digest
                          computed on another thread while the file is written (stored in its zip
                          comment), the file's SHA-256 computed while writing, and the audit-log
                          line (fsynced)

and read back by ``torch.load(weights_only=True)`` against ``load_checkpoint`` (``weights_only=True``
and the digest checked). Medians, ``min..max`` and the ratio of medians are printed; the target
is fulmen save <= 1.15 x ``torch.save`` followed by fsync (a synchronous save that survives a
crash). A breakdown times the parts (digest alone, the
write with and without hashing the file). Before each timed save the previous file is deleted
and ``os.sync()`` runs (untimed), so no variant pays for another's writeback or block freeing. Files go to ``build/bench-checkpoint`` in the
repository (the same filesystem as a run folder usually is; ``/tmp`` may be a RAM disk) and are
removed. It is a report: the exit code is 0 either way.

Asynchronous saves (``Trainer(plugins=[AsyncCheckpointIO()])``), for ``--async-params`` (default
100M and 400M parameters: 384 MiB and 1.5 GiB): the time training is blocked per save (the copy
to host memory; target <= 0.3 x a plain ``torch.save`` of the same state; the first save, which
allocates the buffers, is shown apart), the time until the file is durable, and a fulmen fit of
``--loop-steps`` steps (Linear(4096, 4096) layers, SGD, batch 4) that saves every ``--every``
steps: steps/s with asynchronous, synchronous and no checkpoints, and the peak extra resident
memory of each (sampled every 2 ms). On a GPU (not measured here) the snapshot goes to pinned
buffers without a host sync.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from fulmen.checkpoint import load_checkpoint, tensor_digest, write_checkpoint
from fulmen.checkpoint.io import _save

ASYNC_TARGET = 0.3  # time an asynchronous save blocks training / a plain torch.save of the same state
TARGET = 1.15  # fulmen save / (torch.save + fsync), medians
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "bench-checkpoint")


def make_state(million: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = max(1, round(million * 1e6 / (4096 * 4096 + 4096)))
    state: dict[str, torch.Tensor] = {}
    for i in range(n):
        state[f"layers.{i}.weight"] = torch.randn(4096, 4096, generator=g)
        state[f"layers.{i}.bias"] = torch.randn(4096, generator=g)
    return state


def checkpoint_of(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"format": 1, "epoch": 0, "global_step": 100, "state_dict": dict(state), "hyper_parameters": {"lr": 0.1}}


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle() -> None:
    """Let the filesystem finish the previous run's work (writeback, freeing a deleted file's
    blocks), untimed, so that it is not billed to whichever variant fsyncs next."""
    if hasattr(os, "sync"):
        os.sync()
    time.sleep(0.05)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.3f} s  ({min(xs):.3f}..{max(xs):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--params", type=float, default=100.0, help="millions of parameters")
    parser.add_argument("--quick", action="store_true", help="20M parameters, 3 rounds, a short loop")
    parser.add_argument(
        "--async-params", default="100,400", help="millions of parameters for the asynchronous-save section ('' skips it)"
    )
    parser.add_argument("--loop-steps", type=int, default=40, help="steps of the training loop that saves every --every")
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.params, args.async_params, args.loop_steps, args.every = 3, 20.0, "20", 12, 4

    state = make_state(args.params)
    n_params = sum(t.numel() for t in state.values())
    n_bytes = sum(t.numel() * t.element_size() for t in state.values())
    print(f"# fulmen checkpoint benchmark: {n_params / 1e6:.1f}M float32 parameters ({n_bytes / 2**20:.0f} MiB)")
    print(
        f"torch {torch.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs "
        f"(usable: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}), folder {ROOT}"
    )

    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    try:
        run(state, args.rounds)
        del state
        gc.collect()
        for million in [float(m) for m in args.async_params.split(",") if m.strip()]:
            big = make_state(million)
            mib = sum(t.numel() * t.element_size() for t in big.values()) / 2**20
            print(f"\n## asynchronous saves: {mib:.0f} MiB ({million:g}M float32 parameters)\n")
            async_saves(big, args.rounds)
            del big
            gc.collect()
            print(f"\n## a training loop that saves every {args.every} steps: {mib:.0f} MiB of weights\n")
            training_loop(million, args.loop_steps, args.every)
            gc.collect()
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)


def run(state: dict[str, torch.Tensor], rounds: int) -> None:
    counter = iter(range(10**9))

    def fresh(name: str) -> str:
        return os.path.join(ROOT, f"{name}-{next(counter)}.ckpt")

    def plain_save() -> str:
        path = fresh("plain")
        torch.save(checkpoint_of(state), path)
        return path

    def plain_save_fsync() -> str:
        path = fresh("plain-fsync")
        torch.save(checkpoint_of(state), path)
        fsync_file(path)
        return path

    def fulmen_save() -> str:
        path = fresh("fulmen")
        write_checkpoint(checkpoint_of(state), path, audit_dir=ROOT, metrics={"val_loss": 0.5})
        return path

    saves: dict[str, Callable[[], str]] = {
        "torch.save": plain_save,
        "torch.save+fsync": plain_save_fsync,
        "fulmen": fulmen_save,
    }
    times: dict[str, list[float]] = {k: [] for k in saves}
    # one untimed round: first-touch page allocation makes the very first write much slower
    for fn in saves.values():
        os.remove(fn())
    names = list(saves)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            settle()
            start = time.perf_counter()
            path = saves[name]()
            times[name].append(time.perf_counter() - start)
            os.remove(path)

    print("\n## save\n")
    base = statistics.median(times["torch.save"])
    base_fsync = statistics.median(times["torch.save+fsync"])
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"{name:18s} {stats(xs)}   {m / base:5.2f} x torch.save   {m / base_fsync:5.2f} x torch.save+fsync")
    ratio = statistics.median(times["fulmen"]) / base_fsync
    verdict = "PASS" if ratio <= TARGET else "OVER"
    print(f"\n{verdict}: fulmen save = {ratio:.2f} x torch.save followed by fsync (target <= {TARGET}); "
          f"{statistics.median(times['fulmen']) / base:.2f} x plain torch.save")

    # -- load ------------------------------------------------------------------------------------------
    plain_path = plain_save()
    fulmen_path = fulmen_save()
    loads: dict[str, Callable[[], Any]] = {
        "torch.load": lambda: torch.load(plain_path, weights_only=True),
        "load_checkpoint": lambda: load_checkpoint(fulmen_path),
        "..(verify=False)": lambda: load_checkpoint(fulmen_path, verify=False),
    }
    ltimes: dict[str, list[float]] = {k: [] for k in loads}
    for fn in loads.values():
        fn()
    lnames = list(loads)
    for r in range(rounds):
        for name in lnames[r % 3 :] + lnames[: r % 3]:
            ltimes[name].append(timed(loads[name]))
    print("\n## load (file in the page cache)\n")
    lbase = statistics.median(ltimes["torch.load"])
    for name, xs in ltimes.items():
        print(f"{name:18s} {stats(xs)}   {statistics.median(xs) / lbase:5.2f} x torch.load")

    # -- where the save time goes ------------------------------------------------------------------
    ckpt = checkpoint_of(state)
    digest_1 = [timed(lambda: tensor_digest(ckpt, workers=1)) for _ in range(3)]
    digest_n = [timed(lambda: tensor_digest(ckpt)) for _ in range(3)]
    unhashed, hashed = [], []
    for _ in range(3):
        p = fresh("part")
        settle()
        unhashed.append(timed(lambda p=p: _save(ckpt, p, hash_file=False)))  # type: ignore[misc]
        os.remove(p)
        p = fresh("part")
        settle()
        hashed.append(timed(lambda p=p: _save(ckpt, p, hash_file=True)))  # type: ignore[misc]
        os.remove(p)
    print("\n## save, part by part (medians of 3)\n")
    print(f"tensor digest, 1 thread        {statistics.median(digest_1):.3f} s")
    print(f"tensor digest, default threads {statistics.median(digest_n):.3f} s")
    print(f"atomic write (fsync)           {statistics.median(unhashed):.3f} s")
    print(f"atomic write + file SHA-256    {statistics.median(hashed):.3f} s")
    os.remove(plain_path)
    os.remove(fulmen_path)


# -- asynchronous saves ------------------------------------------------------------------------------
def _rss() -> int:
    """This process's resident memory in bytes (Linux), or 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _PeakRSS:
    """Samples the resident memory on a thread; ``extra`` = peak - the value at the start."""

    def __init__(self) -> None:
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return self.peak - self.start


def async_saves(state: dict[str, torch.Tensor], rounds: int) -> dict[str, float]:
    """Blocked time and time to durable of ``AsyncCheckpointIO.save`` against plain ``torch.save``."""
    from fulmen.checkpoint.background import AsyncCheckpointIO

    folder = os.path.join(ROOT, "async")
    os.makedirs(folder, exist_ok=True)
    io = AsyncCheckpointIO()
    ckpt = checkpoint_of(state)
    plain: list[float] = []
    sync: list[float] = []
    counter = iter(range(10**9))
    # the first save allocates the snapshot buffers (first-touch page faults): timed on its own
    settle()
    start = time.perf_counter()
    io.save(ckpt, os.path.join(folder, "first.ckpt"), audit_dir=folder)
    first_blocked = time.perf_counter() - start
    io.finish()
    for r in range(rounds):
        for name in (["plain", "sync", "async"][r % 3 :] + ["plain", "sync", "async"][: r % 3]):
            path = os.path.join(folder, f"{name}-{next(counter)}.ckpt")
            settle()
            if name == "plain":
                plain.append(timed(lambda path=path: torch.save(ckpt, path)))  # type: ignore[misc]
            elif name == "sync":
                sync.append(timed(lambda path=path: write_checkpoint(checkpoint_of(state), path, audit_dir=folder)))  # type: ignore[misc]
            else:
                io.save(ckpt, path, audit_dir=folder)
                io.finish()
            os.remove(path)
    blocked, durable = io.blocked[1:], io.durable[1:]
    base = statistics.median(plain)
    print(f"plain torch.save (page cache)  {stats(plain)}")
    print(f"fulmen synchronous save        {stats(sync)}   {statistics.median(sync) / base:5.2f} x torch.save (durable when it returns)")
    print(f"async: training blocked        {stats(blocked)}   {statistics.median(blocked) / base:5.2f} x torch.save   (first save, allocating the buffers: {first_blocked:.3f} s)")
    print(f"async: until the file is durable {stats(durable)}   {statistics.median(durable) / base:5.2f} x torch.save")
    print(f"snapshot buffers held          {io.pooled_bytes / 2**20:7.0f} MiB (the state is {sum(t.numel() * t.element_size() for t in state.values()) / 2**20:.0f} MiB)")
    ratio = statistics.median(blocked) / base
    print(f"{'PASS' if ratio <= ASYNC_TARGET else 'OVER'}: asynchronous save blocks training {ratio:.2f} x a plain torch.save (target <= {ASYNC_TARGET})")
    io.release()
    shutil.rmtree(folder, ignore_errors=True)
    return {"blocked": statistics.median(blocked), "plain": base}


def training_loop(million: float, steps: int, every: int) -> None:
    """steps/s of a fulmen fit that saves every ``every`` steps: asynchronous vs synchronous vs none,
    and the extra resident memory each needed."""
    import fulmen
    from fulmen.checkpoint.background import AsyncCheckpointIO

    layers = max(1, round(million * 1e6 / (4096 * 4096 + 4096)))

    class Big(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    class Clock(fulmen.Callback):
        def on_train_start(self, trainer: Any, system: Any) -> None:
            self.start = time.perf_counter()

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(steps * 4, 4096)), batch_size=4)
    torch.manual_seed(0)
    system = Big()
    results: dict[str, tuple[float, int]] = {}
    for name in ("none", "sync", "async", "none"):  # "none" twice: the first run pays the warm-up
        folder = os.path.join(ROOT, f"loop-{name}")
        clock = Clock()
        callbacks: list[Any] = [clock]
        if name != "none":
            callbacks.append(fulmen.ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_top_k=1))
        trainer = fulmen.Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=name != "none", callbacks=callbacks, default_root_dir=folder,
            plugins=[AsyncCheckpointIO()] if name == "async" else None,
        )
        settle()
        peak = _PeakRSS()
        trainer.fit(system, data)  # (returns once every write is on disk)
        elapsed = time.perf_counter() - clock.start
        extra = peak.stop()
        results[name] = (steps / elapsed, extra)
        shutil.rmtree(folder, ignore_errors=True)
        del trainer
        gc.collect()
    state_bytes = sum(p.numel() * p.element_size() for p in system.parameters())
    base = results["none"][0]
    print(f"model: {layers} Linear(4096, 4096), {state_bytes / 2**20:.0f} MiB of weights, SGD, batch 4; {steps} steps, a checkpoint every {every}")
    for name in ("none", "sync", "async"):
        rate, extra = results[name]
        over = (extra - results["none"][1]) / 2**20
        print(
            f"{name:6s} {rate:7.3f} steps/s  {rate / base:5.2f} x no checkpoints   peak extra resident memory "
            f"{extra / 2**20:6.0f} MiB ({over:+.0f} MiB over no checkpoints)"
        )


if __name__ == "__main__":
    main()
