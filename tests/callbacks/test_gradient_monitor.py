"""GradientMonitor: per-parameter and total gradient norms, when they are logged, and their values."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F

import fulmen
from fulmen.callbacks import GradientMonitor


class TwoLayer(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.layer = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(F.relu(self.hidden(x)))


class Reference(fulmen.Callback):
    """Runs after the monitor, on the same gradients: what torch's own functions say."""

    def __init__(self, norm_type: float) -> None:
        self.norm_type = norm_type
        self.seen: list[tuple[int, dict[str, float], float]] = []

    def on_before_optimizer_step(self, trainer: Any, system: Any, optimizer: Any) -> None:
        grads = {n: p.grad.clone() for n, p in system.named_parameters() if p.grad is not None}
        per = {n: float(torch.linalg.vector_norm(g, self.norm_type)) for n, g in grads.items()}
        copies = [nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
        for c, g in zip(copies, grads.values()):
            c.grad = g
        total = float(torch.nn.utils.clip_grad_norm_(copies, max_norm=math.inf, norm_type=self.norm_type))
        self.seen.append((trainer.global_step, per, total))


def read_csv(trainer: fulmen.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def steps_with(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(r["step"]) for r in rows if r.get(column)]


@pytest.mark.parametrize("norm_type", [2.0, 1, "inf"])
def test_norms_equal_torch_on_the_same_gradients(tmp_path: Path, norm_type: Any) -> None:
    monitor = GradientMonitor(norm_type=norm_type)
    ref = Reference(float(norm_type))
    trainer = quiet_trainer(
        tmp_path, callbacks=[monitor, ref], logger=False, enable_checkpointing=False, log_every_n_steps=1
    )
    trainer.fit(TwoLayer(), make_loader(32))
    prefix = f"grad_{float(norm_type)}_norm"
    assert monitor.prefix == prefix
    *_, (_, per, total) = ref.seen
    names = {"hidden.weight", "hidden.bias", "layer.weight", "layer.bias"}
    assert set(monitor.last_norms) == {f"{prefix}/{n}" for n in names} | {f"{prefix}_total"}
    for n in names:
        assert float(monitor.last_norms[f"{prefix}/{n}"]) == pytest.approx(per[n], rel=1e-6)
    assert float(monitor.last_norms[f"{prefix}_total"]) == pytest.approx(total, rel=1e-6)
    # Logged as tensors through the trainer's store: they reach callback_metrics too.
    assert isinstance(trainer.callback_metrics[f"{prefix}_total"], torch.Tensor)


def test_norms_are_taken_before_clipping(tmp_path: Path) -> None:
    clipped: list[float] = []

    class AfterClip(fulmen.Callback):
        def on_before_zero_grad(self, trainer: Any, system: Any, optimizer: Any) -> None:
            grads = [p.grad for p in system.parameters()]
            clipped.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    monitor = GradientMonitor(log_every_n_steps=1)
    ref = Reference(2.0)
    trainer = quiet_trainer(
        tmp_path, callbacks=[monitor, ref, AfterClip()], logger=False, enable_checkpointing=False, gradient_clip_val=1e-3
    )
    trainer.fit(TwoLayer(), make_loader(16))
    total = float(monitor.last_norms["grad_2.0_norm_total"])
    assert total == pytest.approx(ref.seen[-1][2], rel=1e-6)
    assert total > 1e-2  # the gradients as backward made them ...
    assert clipped[-1] == pytest.approx(1e-3, rel=1e-3)  # ... and clipping came after the monitor


def test_logged_every_n_steps_only(tmp_path: Path) -> None:
    trainer = quiet_trainer(
        tmp_path, callbacks=[GradientMonitor()], logger=True, enable_checkpointing=False, log_every_n_steps=3, max_epochs=2
    )
    trainer.fit(TwoLayer(), make_loader(64))  # 8 steps per epoch, 16 in all
    rows = read_csv(trainer)
    expected = [2, 5, 8, 11, 14]
    assert steps_with(rows, "grad_2.0_norm_total") == expected
    assert steps_with(rows, "grad_2.0_norm/layer.weight") == expected
    # On the same rows as the trainer's own step values (one conversion, one row per step).
    assert steps_with(rows, "train_loss") == expected


@pytest.mark.parametrize(("own", "expected"), [(4, [3, 7]), (3, [2, 5])])
def test_own_interval(tmp_path: Path, own: int, expected: list[int]) -> None:
    """A multiple of the trainer's interval goes with the trainer's values; another is sent alone."""
    trainer = quiet_trainer(
        tmp_path, callbacks=[GradientMonitor(log_every_n_steps=own)], logger=True, enable_checkpointing=False,
        log_every_n_steps=2,
    )
    trainer.fit(TwoLayer(), make_loader(64))
    rows = read_csv(trainer)
    assert steps_with(rows, "grad_2.0_norm_total") == expected
    assert steps_with(rows, "train_loss") == [1, 3, 5, 7]


def test_other_steps_compute_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = torch._foreach_norm

    def counting(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(tensors))
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting)
    trainer = quiet_trainer(
        tmp_path, callbacks=[GradientMonitor(log_every_n_steps=4)], logger=False, enable_checkpointing=False,
    )
    trainer.fit(TwoLayer(), make_loader(64))  # 8 steps: norms at steps 3 and 7 only
    assert len(calls) == 2


def test_accumulation_logs_per_optimizer_step(tmp_path: Path) -> None:
    trainer = quiet_trainer(
        tmp_path, callbacks=[GradientMonitor()], logger=True, enable_checkpointing=False, log_every_n_steps=1,
        accumulate_grad_batches=2,
    )
    trainer.fit(TwoLayer(), make_loader(64))
    assert steps_with(read_csv(trainer), "grad_2.0_norm_total") == [0, 1, 2, 3]


def test_bad_arguments() -> None:
    for bad in (0, -1, "two", None):
        with pytest.raises(ValueError, match="norm_type"):
            GradientMonitor(norm_type=bad)  # type: ignore[arg-type]
    for bad_n in (0, 1.5, True):
        with pytest.raises(ValueError, match="log_every_n_steps"):
            GradientMonitor(log_every_n_steps=bad_n)  # type: ignore[arg-type]
    assert GradientMonitor(norm_type="inf").prefix == "grad_inf_norm"
