"""Diagnostics on a CUDA device: GradientMonitor after 16-mixed unscaling, DeviceStatsMonitor's CUDA
memory counters, NonFiniteGuard under bf16-mixed, and the NaN-loss report on the per-window path.

Deselected on CPU machines; run with ``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn

import fulmen
from fulmen.callbacks import DeviceStatsMonitor, GradientMonitor, NonFiniteGuard
from fulmen.errors import FulmenWarning, NonFiniteGradientError, NonFiniteLossError

pytestmark = pytest.mark.gpu


def cuda_trainer(tmp_path: Any, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    return quiet_trainer(tmp_path, accelerator="cuda", **flags)


def read_csv(trainer: fulmen.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class Blowup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e39 if self.on else x  # overflows float32, float16 and bfloat16 alike


class Net(fulmen.System):
    """Linear -> Blowup -> Linear; at batch ``bad`` Blowup makes inf and the loss hides it, so only
    the gradients go NaN (``loss_too``: the loss goes NaN as well)."""

    def __init__(self, bad: int = 2, loss_too: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), Blowup(), nn.Linear(8, 1))
        self.bad, self.loss_too = bad, loss_too

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.net[1].on = batch_idx == self.bad
        out = self.net(x).float()
        self.net[1].on = False
        if not self.loss_too:
            out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return (out - y).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Reference(fulmen.Callback):
    """After the monitor, on the same (unscaled) gradients: torch's own total norm."""

    def __init__(self) -> None:
        self.totals: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, system: Any, optimizer: Any) -> None:
        copies = []
        for p in system.parameters():
            c = nn.Parameter(torch.zeros_like(p))
            c.grad = p.grad.clone()
            copies.append(c)
        self.totals.append(float(torch.nn.utils.clip_grad_norm_(copies, max_norm=math.inf)))


def test_gradient_monitor_sees_unscaled_gradients_under_16_mixed(tmp_path: Any) -> None:
    monitor, ref = GradientMonitor(), Reference()
    trainer = cuda_trainer(tmp_path, precision="16-mixed", callbacks=[monitor, ref], log_every_n_steps=1)
    trainer.strategy.precision.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)  # type: ignore[attr-defined]
    trainer.fit(TinySystem(), make_loader(32))
    total = monitor.last_norms["grad_2.0_norm_total"]
    assert total.device.type == "cuda"  # logged as a tensor: converted with the trainer's own values
    assert float(total) == pytest.approx(ref.totals[-1], rel=1e-5)
    assert float(total) < 100  # the true gradients, not multiplied by the scale (4096)


def test_gradient_monitor_csv_on_cuda(tmp_path: Any) -> None:
    trainer = cuda_trainer(tmp_path, callbacks=[GradientMonitor()], logger=True, log_every_n_steps=2)
    trainer.fit(TinySystem(), make_loader(64))
    rows = read_csv(trainer)
    assert [int(r["step"]) for r in rows if r.get("grad_2.0_norm_total")] == [1, 3, 5, 7]
    assert [int(r["step"]) for r in rows if r.get("grad_2.0_norm/layer.weight")] == [1, 3, 5, 7]


def test_device_stats_cuda_memory(tmp_path: Any) -> None:
    monitor = DeviceStatsMonitor()
    trainer = cuda_trainer(tmp_path, callbacks=[monitor], logger=True, log_every_n_steps=2)
    trainer.fit(TinySystem(), make_loader(64))
    rows = [r for r in read_csv(trainer) if r.get("device_stats/cuda_allocated_mb")]
    assert [int(r["step"]) for r in rows] == [1, 3, 5, 7]
    for r in rows:
        assert float(r["device_stats/cuda_allocated_mb"]) > 0
        assert float(r["device_stats/cuda_reserved_mb"]) >= float(r["device_stats/cuda_allocated_mb"])
        assert float(r["device_stats/cuda_peak_allocated_mb"]) >= float(r["device_stats/cuda_allocated_mb"])
        assert not r.get("device_stats/cpu_rss_mb")  # process statistics only when asked for on CUDA
    has_util = "device_stats/cuda_utilization" in monitor.last_stats
    if importlib.util.find_spec("pynvml") is None:
        assert not has_util


def test_device_stats_cuda_with_cpu_stats(tmp_path: Any) -> None:
    monitor = DeviceStatsMonitor(cpu_stats=True)
    trainer = cuda_trainer(tmp_path, callbacks=[monitor], logger=True, log_every_n_steps=4)
    trainer.fit(TinySystem(), make_loader(64))
    assert {"device_stats/cuda_allocated_mb", "device_stats/cpu_rss_mb", "device_stats/cpu_percent"} <= set(
        monitor.last_stats
    )


def test_guard_names_the_module_under_bf16_mixed(tmp_path: Any) -> None:
    with pytest.raises(NonFiniteGradientError, match=r"at global step 2 \(epoch 0, batch 2\)") as err:
        cuda_trainer(tmp_path, precision="bf16-mixed", callbacks=[NonFiniteGuard()]).fit(Net(bad=2), make_loader(32))
    assert "The first module whose output was non-finite: net.1 (Blowup)" in str(err.value)


def test_guard_skip_on_cuda(tmp_path: Any) -> None:
    guard = NonFiniteGuard(mode="skip")
    system = Net(bad=1)
    with pytest.warns(FulmenWarning, match="skipped the optimizer step"):
        cuda_trainer(tmp_path, callbacks=[guard], max_epochs=2).fit(system, make_loader(32))
    assert guard.skipped_steps == 2 and [b for _, b, _ in guard.skipped] == [1, 1]
    assert all(bool(torch.isfinite(p).all()) for p in system.parameters())


def test_guard_inactive_under_16_mixed(tmp_path: Any) -> None:
    with pytest.warns(FulmenWarning, match="does nothing under precision='16-mixed'"):
        cuda_trainer(tmp_path, precision="16-mixed", callbacks=[NonFiniteGuard()]).fit(TinySystem(), make_loader(32))


def test_nan_loss_on_cuda_points_to_the_guard(tmp_path: Any) -> None:
    """On a GPU losses are checked per log window (no batch to re-run): the message says what finds the module."""
    with pytest.raises(NonFiniteLossError, match=r"at global step 2 \(epoch 0, batch 2\)") as err:
        cuda_trainer(tmp_path, log_every_n_steps=1).fit(Net(bad=2, loss_too=True), make_loader(32))
    assert "NonFiniteGuard" in str(err.value)
    with pytest.raises(NonFiniteGradientError, match=r"net.1 \(Blowup\)"):
        cuda_trainer(tmp_path, callbacks=[NonFiniteGuard()]).fit(Net(bad=2, loss_too=True), make_loader(32))
