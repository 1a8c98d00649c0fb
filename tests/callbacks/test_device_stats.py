"""DeviceStatsMonitor on the CPU: process memory and CPU use in metrics.csv, every n steps."""

from __future__ import annotations

import csv
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

from fulmen.callbacks import DeviceStatsMonitor, device_stats

RSS, CPU = "device_stats/cpu_rss_mb", "device_stats/cpu_percent"


def run(tmp_path: Path, monitor: DeviceStatsMonitor, **flags: Any) -> list[dict[str, str]]:
    flags.setdefault("log_every_n_steps", 2)
    trainer = quiet_trainer(tmp_path, callbacks=[monitor], logger=True, enable_checkpointing=False, **flags)
    trainer.fit(TinySystem(), make_loader(64))  # 8 steps
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cpu_stats_in_metrics_csv(tmp_path: Path) -> None:
    monitor = DeviceStatsMonitor()
    rows = run(tmp_path, monitor)
    logged = [r for r in rows if r.get(RSS)]
    assert [int(r["step"]) for r in logged] == [1, 3, 5, 7]
    assert all(r.get("train_loss") for r in logged)  # on the trainer's rows for those steps
    assert all(float(r[RSS]) > 1 for r in logged)
    assert all(float(r[CPU]) >= 0 for r in logged)
    assert set(monitor.last_stats) == {RSS, CPU}
    assert not any(k.startswith("device_stats/cuda") for k in rows[0])


def test_own_interval(tmp_path: Path) -> None:
    rows = run(tmp_path, DeviceStatsMonitor(log_every_n_steps=3))
    assert [int(r["step"]) for r in rows if r.get(RSS)] == [2, 5]


def test_with_accumulation_logs_per_optimizer_step(tmp_path: Path) -> None:
    rows = run(tmp_path, DeviceStatsMonitor(), accumulate_grad_batches=2, log_every_n_steps=1)
    assert [int(r["step"]) for r in rows if r.get(RSS)] == [0, 1, 2, 3]


def test_cpu_stats_off(tmp_path: Path) -> None:
    monitor = DeviceStatsMonitor(cpu_stats=False)
    rows = run(tmp_path, monitor)
    assert not any(r.get(RSS) or r.get(CPU) for r in rows)
    assert monitor.last_stats == {}


def test_rss_without_psutil_reads_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    monkeypatch.setattr(device_stats, "_has_psutil", lambda: False)
    rss = device_stats.process_rss_mb()
    assert rss is not None and rss > 1


def test_rss_from_psutil_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_stats, "_has_psutil", lambda: True)
    fake = types.ModuleType("psutil")
    fake.__spec__ = importlib.machinery.ModuleSpec("psutil", None)

    class Process:
        def memory_info(self) -> Any:
            return types.SimpleNamespace(rss=256 * 1024 * 1024)

    fake.Process = Process  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert device_stats.process_rss_mb() == 256.0


def test_cpu_percent_measures_the_interval() -> None:
    times = device_stats._CpuTimes()
    end = torch.randn(256, 256)
    for _ in range(200):
        end = end @ end.clamp(-1, 1) / 256
    busy = times.percent()
    assert 0 < busy <= 100 * 64  # some CPU time was used since the reset


def test_bad_arguments() -> None:
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="log_every_n_steps"):
            DeviceStatsMonitor(log_every_n_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cpu_stats"):
        DeviceStatsMonitor(cpu_stats="yes")  # type: ignore[arg-type]
