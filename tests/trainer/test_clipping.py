"""Gradient clipping: gradient_clip_val / gradient_clip_algorithm, after unscaling under 16-mixed,
and the configure_gradient_clipping hook.

Clipping runs after ``on_before_optimizer_step``, so its effect is read from the weights after one
SGD step with lr=1 (``w - clipped_grad``) and from the gradients seen by ``on_before_zero_grad``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import FlagError


def loud_data(n: int = 8) -> TensorDataset:
    """Targets far from a fresh model's outputs: gradients with a norm far above 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, 50 * x.sum(1, keepdim=True) + 20)


class OneStep(TinySystem):
    """SGD with lr=1: one step moves each weight by exactly its (clipped) gradient. Records the
    gradient norm seen before the step (unclipped) and after it (clipped)."""

    def __init__(self) -> None:
        super().__init__(lr=1.0)
        self.norm_before_step: list[float] = []
        self.grads_after_clipping: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.norm_before_step.append(float(grad_norm(self)))

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.grads_after_clipping.append([p.grad.clone() for p in self.parameters()])  # type: ignore[union-attr]


def grad_norm(module: nn.Module) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in module.parameters()]))  # type: ignore[arg-type]


def by_hand(system: nn.Module, data: TensorDataset, clip: Any) -> list[torch.Tensor]:
    """The weights after one plain-torch SGD step (lr=1) on all of ``data`` with ``clip(params)``."""
    model = copy.deepcopy(system)
    x, y = data.tensors
    F.mse_loss(model(x), y).backward()
    clip(list(model.parameters()))
    with torch.no_grad():
        return [p - p.grad for p in model.parameters()]  # type: ignore[operator]


def one_step(tmp_path: Path, system: Any, data: TensorDataset, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(tmp_path, limit_train_batches=1, **flags)
    trainer.fit(system, DataLoader(data, batch_size=len(data)))
    return trainer


@pytest.mark.parametrize("algorithm", [None, "norm", "NORM"])
def test_clip_by_norm(tmp_path: Path, algorithm: Any) -> None:
    data, s = loud_data(), OneStep()
    expected = by_hand(s, data, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5))
    one_step(tmp_path, s, data, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm)
    assert s.norm_before_step[0] > 10  # on_before_optimizer_step sees the gradients before clipping
    assert float(grad_norm_of(s.grads_after_clipping[0])) == pytest.approx(0.5, rel=1e-5)
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def grad_norm_of(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def test_clip_by_value(tmp_path: Path) -> None:
    data, s = loud_data(), OneStep()
    expected = by_hand(s, data, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.3))
    one_step(tmp_path, s, data, gradient_clip_val=0.3, gradient_clip_algorithm="value")
    grads = torch.cat([g.flatten() for g in s.grads_after_clipping[0]])
    assert grads.abs().max() == pytest.approx(0.3) and (grads.abs() <= 0.3).all()
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_a_large_clip_value_changes_nothing(tmp_path: Path) -> None:
    data, s = loud_data(), OneStep()
    expected = by_hand(s, data, lambda ps: None)
    one_step(tmp_path, s, data, gradient_clip_val=1e6)
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_clip_value_zero_does_not_clip(tmp_path: Path) -> None:
    """As in Lightning, 0 means no clipping (not "set every gradient to zero")."""
    data, s = loud_data(), OneStep()
    expected = by_hand(s, data, lambda ps: None)
    one_step(tmp_path, s, data, gradient_clip_val=0)
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_clipping_with_accumulation_clips_the_summed_gradient(tmp_path: Path) -> None:
    data, s = loud_data(16), OneStep()
    expected = by_hand(s, data, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5))
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, accumulate_grad_batches=4, gradient_clip_val=0.5
    )
    trainer.fit(s, DataLoader(data, batch_size=4))
    assert trainer.global_step == 1
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


class TrueGradients(OneStep):
    """Before each step, compares the gradients the hooks see with float32 gradients computed by
    hand on the same batch (a copy of the layer, no autocast, no scaling)."""

    def __init__(self) -> None:
        super().__init__()
        self.ratios: list[float] = []  # hook-seen norm / true norm, for steps that were not skipped
        self.skipped = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._batch = batch
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        seen = grad_norm(self)
        if not torch.isfinite(seen):  # an overflow: the scaler skips this step
            self.skipped += 1
            return
        layer = copy.deepcopy(self.layer).float()
        x, y = self._batch
        with torch.autocast("cpu", enabled=False):
            F.mse_loss(layer(x.float()), y.float()).backward()
        self.ratios.append(float(seen / grad_norm(layer)))


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_clipping_under_mixed_precision_sees_unscaled_gradients(tmp_path: Path, precision: str) -> None:
    """Under 16-mixed the gradients are unscaled before on_before_optimizer_step and clipping, so
    the clipped norm is gradient_clip_val itself (not gradient_clip_val / loss scale)."""
    s = TrueGradients()
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, precision=precision, gradient_clip_val=0.5
    )
    trainer.fit(s, DataLoader(loud_data(64), batch_size=4))
    if precision == "16-mixed":
        # The first steps overflow float16 at the initial scale (65536) and are skipped, until the
        # scaler has backed off; the scale stays far above 1, so unscaling matters.
        assert s.skipped >= 1
        assert trainer.strategy.precision.scaler.get_scale() >= 2.0**6  # type: ignore[attr-defined]
    assert len(s.ratios) >= 4
    assert s.ratios == pytest.approx([1.0] * len(s.ratios), rel=2e-2)  # unscaled (up to float16 rounding)
    clipped = [float(grad_norm_of(g)) for g in s.grads_after_clipping]
    finite = [n for n in clipped if n == n and n != float("inf")]
    assert len(finite) == len(s.ratios)
    assert finite == pytest.approx([0.5] * len(finite), rel=1e-4)


# -- configure_gradient_clipping ----------------------------------------------------------------------
class HookedClipping(OneStep):
    def __init__(self, clip_self: bool = True) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any, Any]] = []
        self.clip_self = clip_self

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        self.calls.append((optimizer, gradient_clip_val, gradient_clip_algorithm))
        if self.clip_self:
            self.clip_gradients(optimizer, 0.1, "value")


def test_configure_gradient_clipping_gets_the_optimizer_and_the_flags(tmp_path: Path) -> None:
    s = HookedClipping(clip_self=False)
    trainer = quiet_trainer(
        tmp_path,
        logger=False,
        enable_checkpointing=False,
        gradient_clip_val=0.25,
        gradient_clip_algorithm="Value",
        accumulate_grad_batches=2,
    )
    trainer.fit(s, make_loader(64))
    # once per optimizer step: 8 batches, a step every 2
    assert s.calls == [(trainer.optimizers[0], 0.25, "value")] * 4


def test_overriding_configure_gradient_clipping_replaces_the_default(tmp_path: Path) -> None:
    data, s = loud_data(), HookedClipping(clip_self=False)
    expected = by_hand(s, data, lambda ps: None)
    one_step(tmp_path, s, data, gradient_clip_val=0.01)
    for p, e in zip(s.parameters(), expected):  # the hook did not clip, so nothing was clipped
        torch.testing.assert_close(p.detach(), e)


def test_configure_gradient_clipping_runs_without_the_flags_and_can_clip(tmp_path: Path) -> None:
    data, s = loud_data(), HookedClipping(clip_self=True)
    expected = by_hand(s, data, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.1))
    trainer = one_step(tmp_path, s, data)
    assert s.calls == [(trainer.optimizers[0], None, "norm")]
    for p, e in zip(s.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_clip_gradients_clips_only_the_optimizers_parameters(tmp_path: Path) -> None:
    class TwoParts(OneStep):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x) + self.other(x)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.layer.parameters(), lr=1.0)

        def on_before_zero_grad(self, optimizer: Any) -> None:
            self.grads_after_clipping.append([p.grad.clone() for p in self.parameters()])  # type: ignore[union-attr]

    s = TwoParts()
    one_step(tmp_path, s, loud_data(), gradient_clip_val=0.5)
    layer_grads, other_grads = s.grads_after_clipping[0][:2], s.grads_after_clipping[0][2:]
    assert float(grad_norm_of(layer_grads)) == pytest.approx(0.5, rel=1e-5)
    assert float(grad_norm_of(other_grads)) > 10


# -- bad values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.5, -1, float("nan"), float("inf"), "1.0", True])
def test_bad_clip_values(tmp_path: Path, value: Any) -> None:
    with pytest.raises(FlagError, match=r"Trainer\(gradient_clip_val=.*\): expected a number >= 0 .*None turns clipping off"):
        quiet_trainer(tmp_path, gradient_clip_val=value)


@pytest.mark.parametrize("algorithm", ["l2", "", 2, "norm2"])
def test_bad_clip_algorithms(tmp_path: Path, algorithm: Any) -> None:
    pattern = rf"Trainer\(gradient_clip_algorithm={algorithm!r}\): expected 'norm' .* or 'value'"
    with pytest.raises(FlagError, match=pattern):
        quiet_trainer(tmp_path, gradient_clip_val=1.0, gradient_clip_algorithm=algorithm)
    with pytest.raises(FlagError, match=pattern):  # checked even without a clip value
        quiet_trainer(tmp_path, gradient_clip_algorithm=algorithm)


def test_clip_gradients_checks_its_arguments(tmp_path: Path) -> None:
    class BadClip(OneStep):
        def configure_gradient_clipping(self, optimizer: Any, *args: Any) -> None:
            self.clip_gradients(optimizer, -1.0)

    with pytest.raises(FlagError, match=r"clip_gradients\(gradient_clip_val=-1\.0\): expected a number >= 0"):
        one_step(tmp_path, BadClip(), loud_data())
