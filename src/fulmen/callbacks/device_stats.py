"""``DeviceStatsMonitor``: log memory and utilisation of the device (CUDA) or the process (CPU)."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.base import Callback
from fulmen.callbacks.gradient_monitor import log_step_values

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_MB = 1024.0 * 1024.0
PREFIX = "device_stats"


class DeviceStatsMonitor(Callback):
    """Log device statistics every ``log_every_n_steps`` optimizer steps (default: the trainer's).

    On CUDA (from ``torch.cuda.memory_stats``, which reads the caching allocator's counters on
    the host, without waiting for the GPU):

    - ``device_stats/cuda_allocated_mb``: memory held by tensors now;
    - ``device_stats/cuda_reserved_mb``: memory the caching allocator holds (allocated + cached);
    - ``device_stats/cuda_peak_allocated_mb``: the most allocated at once since the process
      started or ``torch.cuda.reset_peak_memory_stats`` was last called (the callback never
      resets it);
    - ``device_stats/cuda_utilization``: percent of the last sample period the GPU was busy, from
      ``torch.cuda.utilization`` (needs the optional ``pynvml`` package; left out without it).

    For the process (on CPU by default, and also on CUDA with ``cpu_stats=True``):

    - ``device_stats/cpu_rss_mb``: resident memory of this process (``psutil`` when installed,
      else ``/proc/self/status``; left out where neither is available);
    - ``device_stats/cpu_percent``: CPU time this process used over the interval since the
      previous log, in percent of one core (200 = two cores busy), from ``time.process_time``.

    The values are Python numbers: reading them never waits for the device. They are logged at
    the step index the trainer logs that step's metrics under (a ``log_every_n_steps`` that is a
    multiple of the trainer's goes with the trainer's own values). Each process logs its own
    device; the loggers write rank 0's.
    """

    def __init__(self, log_every_n_steps: int | None = None, cpu_stats: bool | None = None) -> None:
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int) or isinstance(log_every_n_steps, bool) or log_every_n_steps < 1
        ):
            raise ValueError(
                f"DeviceStatsMonitor(log_every_n_steps={log_every_n_steps!r}): expected an int >= 1, or None for "
                f"the trainer's log_every_n_steps."
            )
        if cpu_stats is not None and not isinstance(cpu_stats, bool):
            raise ValueError(
                f"DeviceStatsMonitor(cpu_stats={cpu_stats!r}): expected True, False, or None (process statistics "
                f"when not on CUDA)."
            )
        self.log_every_n_steps = log_every_n_steps
        self.cpu_stats = cpu_stats
        #: The values logged last, by name.
        self.last_stats: dict[str, float] = {}
        self._step_at_start = 0
        self._cpu = _CpuTimes()

    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        if stage == "fit":
            self._cpu.reset()

    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step, before = trainer.global_step, self._step_at_start
        if step == before or step // every == before // every:
            return  # no optimizer step, or none that reached a multiple of log_every_n_steps
        stats = self.read(trainer.device)
        if stats:
            self.last_stats = stats
            log_step_values(trainer, stats, step - 1, every)

    def read(self, device: torch.device) -> dict[str, float]:
        """The statistics for ``device`` now, by name."""
        out: dict[str, float] = {}
        on_cuda = device.type == "cuda" and torch.cuda.is_available()
        if on_cuda:
            out.update(cuda_stats(device))
        if self.cpu_stats or (self.cpu_stats is None and not on_cuda):
            rss = process_rss_mb()
            if rss is not None:
                out[f"{PREFIX}/cpu_rss_mb"] = rss
            out[f"{PREFIX}/cpu_percent"] = self._cpu.percent()
        return out


def cuda_stats(device: torch.device) -> dict[str, float]:
    """Allocator counters of ``device`` in MB, and its utilisation when ``pynvml`` is installed."""
    stats = torch.cuda.memory_stats(device)
    out = {
        f"{PREFIX}/cuda_allocated_mb": stats.get("allocated_bytes.all.current", 0) / _MB,
        f"{PREFIX}/cuda_reserved_mb": stats.get("reserved_bytes.all.current", 0) / _MB,
        f"{PREFIX}/cuda_peak_allocated_mb": stats.get("allocated_bytes.all.peak", 0) / _MB,
    }
    if _has_pynvml():
        with contextlib.suppress(Exception):  # no NVML driver, a MIG slice, ...: utilisation is optional
            out[f"{PREFIX}/cuda_utilization"] = float(torch.cuda.utilization(device))
    return out


def _has_pynvml() -> bool:
    return importlib.util.find_spec("pynvml") is not None


def _has_psutil() -> bool:
    return importlib.util.find_spec("psutil") is not None


def process_rss_mb() -> float | None:
    """Resident memory of this process in MB (None where it cannot be read)."""
    if _has_psutil():
        import psutil

        return float(psutil.Process().memory_info().rss) / _MB
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024.0  # the line is "VmRSS:   123456 kB"
    except OSError:
        pass
    return None


class _CpuTimes:
    """CPU time of this process (user + system, children excluded) per wall-clock time, between reads."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._cpu = _cpu_seconds()
        self._wall = time.monotonic()

    def percent(self) -> float:
        cpu, wall = _cpu_seconds(), time.monotonic()
        used, elapsed = cpu - self._cpu, wall - self._wall
        self._cpu, self._wall = cpu, wall
        return 100.0 * used / elapsed if elapsed > 0 else 0.0


def _cpu_seconds() -> float:
    # The process's CPU time, all threads (user + system): time.process_time reads the process
    # clock at nanosecond resolution, where os.times counts in scheduler ticks (10 ms).
    return time.process_time()
