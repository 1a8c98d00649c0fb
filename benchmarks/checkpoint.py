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
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from fulmen.checkpoint import load_checkpoint, tensor_digest, write_checkpoint
from fulmen.checkpoint.io import _save

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
    parser.add_argument("--quick", action="store_true", help="20M parameters, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.params = 3, 20.0

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


if __name__ == "__main__":
    main()
