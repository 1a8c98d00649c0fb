"""Every precision on the CPU: names and aliases, the dtypes the steps see, that training works,
loss scaling under 16-mixed (checkpointed, and skipped steps), and bad names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.nn import functional as F

import fulmen
from fulmen.errors import FlagError
from fulmen.runtime.precision import HalfPrecision, MixedPrecision, Precision, resolve_precision

# name: (weights dtype, dtype of a Linear's output inside the steps, class, scales the loss)
EXPECTED: dict[str, tuple[torch.dtype, torch.dtype, type, bool]] = {
    "32-true": (torch.float32, torch.float32, Precision, False),
    "64-true": (torch.float64, torch.float64, Precision, False),
    "16-mixed": (torch.float32, torch.float16, MixedPrecision, True),
    "bf16-mixed": (torch.float32, torch.bfloat16, MixedPrecision, False),
    "16-true": (torch.float16, torch.float16, HalfPrecision, False),
    "bf16-true": (torch.bfloat16, torch.bfloat16, HalfPrecision, False),
}
ALIASES = {32: "32-true", "32": "32-true", 64: "64-true", "64": "64-true", 16: "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}


@pytest.mark.parametrize("flag", [*EXPECTED, *ALIASES, "BF16-Mixed"])
def test_names_and_aliases(flag: Any) -> None:
    name = ALIASES.get(flag, flag.lower() if isinstance(flag, str) else flag)
    precision = resolve_precision(flag)
    weights, _, cls, scales = EXPECTED[name]
    assert type(precision) is cls
    assert precision.name == name
    assert precision.dtype == weights
    assert precision.scales_loss is scales
    assert (getattr(precision, "scaler", None) is not None) is scales


@pytest.mark.parametrize("bad", ["fp16", "16-bit", "mixed", "bf32", "32-mixed", "half", 8, 16.5, None, True, [16]])
def test_unknown_precision_lists_the_valid_ones(bad: Any) -> None:
    with pytest.raises(FlagError) as info:
        fulmen.Trainer(accelerator="cpu", precision=bad, max_epochs=1)
    message = str(info.value)
    assert message.startswith(f"Trainer(precision={bad!r}): expected one of ")
    for name in EXPECTED:
        assert repr(name) in message
    assert "(or the short forms 32, 64, 16, 'bf16')" in message


class Dtypes(TinySystem):
    """Records the dtypes seen inside the steps: weights, input, a Linear's output, the loss."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        self.seen: dict[str, set[tuple[torch.dtype, ...]]] = {"train": set(), "val": set(), "predict": set()}
        self.epoch_losses: list[float] = []
        self._sum = 0.0

    def _record(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        self.seen[stage].add((self.layer.weight.dtype, x.dtype, out.dtype))
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self._record("train", x), y)
        self._sum += float(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(self._sum)
        self._sum = 0.0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._record("val", batch[0])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._record("predict", batch[0])


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_dtypes_inside_the_steps(tmp_path: Path, name: str) -> None:
    weights, compute, _, _ = EXPECTED[name]
    # Mixed precision leaves the batch alone (autocast casts inside the ops); true precisions
    # convert floating-point inputs to the weights' dtype.
    inputs = torch.float32 if "mixed" in name else weights
    s = Dtypes()
    trainer = quiet_trainer(tmp_path, precision=name, logger=False, enable_checkpointing=False, num_sanity_val_steps=1)
    loader = make_loader(16)
    trainer.fit(s, loader, loader)
    trainer.predict(s, loader)
    assert s.seen == {stage: {(weights, inputs, compute)} for stage in ("train", "val", "predict")}
    assert all(p.dtype == weights for p in s.parameters())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_loss_falls(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    s = Dtypes()
    trainer = quiet_trainer(tmp_path, precision=name, logger=False, enable_checkpointing=False, max_epochs=4)
    trainer.fit(s, make_loader(64))
    assert len(s.epoch_losses) == 4
    assert s.epoch_losses[-1] < 0.5 * s.epoch_losses[0], s.epoch_losses


def test_the_scaler_state_is_in_the_checkpoint(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, precision="16-mixed", logger=False, max_epochs=2)
    trainer.fit(TinySystem(), make_loader(32))
    (path,) = (tmp_path / "checkpoints").iterdir()
    ckpt = torch.load(path, weights_only=True)
    scaler = trainer.strategy.precision.scaler  # type: ignore[attr-defined]
    assert set(ckpt["precision"]) == {"scaler"}
    saved = ckpt["precision"]["scaler"]
    # The first steps overflow float16 at the initial scale, so the scale is below 65536 by now.
    assert saved["scale"] == scaler.get_scale() < 2.0**16
    assert saved == scaler.state_dict()
    assert {"growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(saved)
    # A new precision object takes the state back.
    fresh = resolve_precision("16-mixed")
    fresh.load_state_dict(ckpt["precision"])
    assert fresh.scaler.state_dict() == scaler.state_dict()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["32-true", "bf16-mixed", "bf16-true"])
def test_no_scaler_state_without_loss_scaling(tmp_path: Path, name: str) -> None:
    trainer = quiet_trainer(tmp_path, precision=name, logger=False, max_epochs=1)
    trainer.fit(TinySystem(), make_loader(16))
    (path,) = (tmp_path / "checkpoints").iterdir()
    assert torch.load(path, weights_only=True)["precision"] == {}


def mixed_trainer(tmp_path: Path, **flags: Any) -> fulmen.Trainer:
    """A 16-mixed Trainer whose loss scale starts at 256: TinySystem's gradients then never
    overflow float16 by themselves (at the default 65536 they do, in the first steps)."""
    trainer = quiet_trainer(tmp_path, precision="16-mixed", logger=False, enable_checkpointing=False, **flags)
    trainer.strategy.precision.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)  # type: ignore[attr-defined]
    return trainer


class InfAt(TinySystem):
    """Puts inf into a gradient at one step (16-mixed skips it), with a step-interval scheduler;
    records the weights and the scheduler around every batch."""

    def __init__(self, bad_step: int) -> None:
        super().__init__(lr=0.05)
        self.bad_step = bad_step
        self.around: list[tuple[torch.Tensor, torch.Tensor, int, float]] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _state(self) -> tuple[torch.Tensor, int, float]:
        sched = self.lr_schedulers()
        return self.layer.weight.detach().clone(), sched.last_epoch, sched.optimizer.param_groups[0]["lr"]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._before = self._state()

    def on_after_backward(self) -> None:
        if self.global_step == self.bad_step:
            self.layer.weight.grad[0, 0] = float("inf")  # type: ignore[index]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        w0, last0, lr0 = self._before
        w1, last1, lr1 = self._state()
        self.around.append((w0, w1, last1 - last0, lr1 / lr0))


def test_a_skipped_step_leaves_the_weights_and_the_scheduler_alone(tmp_path: Path) -> None:
    s = InfAt(bad_step=2)
    trainer = mixed_trainer(tmp_path)
    trainer.fit(s, make_loader(40))  # 5 batches
    scaler = trainer.strategy.precision.scaler  # type: ignore[attr-defined]
    for i, (w0, w1, sched_steps, lr_ratio) in enumerate(s.around):
        if i == 2:
            assert torch.equal(w0, w1)
            assert (sched_steps, lr_ratio) == (0, 1.0)
        else:
            assert not torch.equal(w0, w1)
            assert (sched_steps, lr_ratio) == (1, 0.5)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert scaler.get_scale() == 128.0  # halved once
    # As in Lightning, global_step counts the optimizer step call even though the scaler skipped it.
    assert trainer.global_step == 5


def test_a_skipped_step_under_accumulation(tmp_path: Path) -> None:
    s = InfAt(bad_step=1)
    trainer = mixed_trainer(tmp_path, accumulate_grad_batches=2)
    trainer.fit(s, make_loader(48))  # 6 batches: steps after batches 1, 3, 5; the second is skipped
    assert [steps for *_, steps, _ in s.around] == [0, 1, 0, 0, 0, 1]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert trainer.global_step == 3


def test_16_mixed_weights_match_32_true_closely(tmp_path: Path) -> None:
    """Same start, same data: mixed precision follows the float32 run (up to float16 rounding)."""
    torch.manual_seed(0)
    full, mixed = TinySystem(), TinySystem()
    mixed.load_state_dict(full.state_dict())
    loader = make_loader(64, seed=3)
    quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=2).fit(full, loader)
    trainer = mixed_trainer(tmp_path, max_epochs=2)
    trainer.fit(mixed, loader)
    assert trainer.strategy.precision.scaler.get_scale() == 256.0  # type: ignore[attr-defined]  # no step skipped
    for a, b in zip(full.parameters(), mixed.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
