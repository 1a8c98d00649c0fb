"""Memory for the batch-size search: the peak a trial adds, out-of-memory errors, and freeing memory
between trials (``fulmen.tuner.batch_size``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["PeakMemory", "default_cpu_limit_mb", "gc_frozen", "is_out_of_memory", "release_memory"]

def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text
        for s in (
            "CUDA out of memory",
            "CUDA error: out of memory",
            "CUBLAS_STATUS_ALLOC_FAILED",
            "CUDNN_STATUS_ALLOC_FAILED",
            "can't allocate memory",  # the CPU allocator (when the kernel refuses rather than kills)
        )
    )


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Collect garbage once, then leave everything that exists now out of the collections during
    the search (``gc.freeze``): the collection after each trial, which frees what the trial left
    in reference cycles, then scans only the trial's objects (milliseconds, not a whole heap)."""
    gc.collect()
    freeze = gc.get_freeze_count() == 0  # (someone else froze objects: leave their freeze alone)
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        if freeze:
            gc.unfreeze()


def release_memory(cuda: bool) -> None:
    gc.collect()
    if cuda and torch.cuda.is_available():
        torch.cuda.empty_cache()


_LIBC: Any = None


def _trim_heap() -> None:
    """Give memory that malloc keeps after frees back to the OS (glibc's ``malloc_trim``), so that a
    trial's resident set grows by what it uses rather than reusing what an earlier trial left."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - absent from musl
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_kb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class PeakMemory:
    """The peak memory a trial adds, in MB, measured from ``start()``.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus what was
    allocated at the start. On the CPU (Linux): the peak resident set size (``VmHWM`` in
    ``/proc/self/status``, reset at the start by writing 5 to ``/proc/self/clear_refs``) minus
    the resident set at the start, after freed heap memory was returned with ``malloc_trim``.
    Elsewhere: the growth of ``getrusage``'s ``ru_maxrss``, which only counts what goes above the
    process's earlier peak (so it can under-count after a larger trial).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._how = ""
        self._base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._how, self._base = "cuda", torch.cuda.memory_allocated(self.device)
            return
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            rss = _proc_status_kb("VmRSS")
        except OSError:
            rss = None
        if rss is not None and _proc_status_kb("VmHWM") is not None:
            self._how, self._base = "hwm", rss
        else:
            self._how, self._base = "maxrss", _maxrss_kb()

    def peak_mb(self) -> float:
        if self._how == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        peak = _proc_status_kb("VmHWM") if self._how == "hwm" else _maxrss_kb()
        return max(0, (peak or 0) - self._base) / 1024


def default_cpu_limit_mb() -> float | None:
    """80% of the memory available now (Linux ``MemAvailable``, else psutil when installed)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return 0.8 * int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return 0.8 * psutil.virtual_memory().available / 2**20
