"""Gradient accumulation: k batches of size b give the step one batch of size k*b would, checked
numerically in float64 against hand-written torch loops."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder
from helpers.systems import make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import FlagError

# Exact up to float64 rounding (summing 4 means of 8 vs one mean of 32 differs in the last bits).
TIGHT = {"rtol": 1e-12, "atol": 1e-13}


def float64_data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.sin(x).sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, y)


class MLP(fulmen.System):
    """A small non-linear model (so the check is not only about a linear layer), SGD with momentum."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).double()
        self.lr = lr
        self.step_batches: list[int] = []
        self.backward_losses: list[float] = []
        self._batch_idx = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._batch_idx = batch_idx
        x, y = batch
        return F.mse_loss(self(x), y)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.backward_losses.append(float(loss.detach()))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.step_batches.append(self._batch_idx)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def hand_loop(model: nn.Module, data: TensorDataset, group_sizes: list[int], lr: float = 0.1) -> None:
    """Plain torch: one SGD step per group of ``group_sizes`` consecutive samples (the mean loss)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = data.tensors
    start = 0
    for size in group_sizes:
        opt.zero_grad()
        F.mse_loss(model(x[start : start + size]), y[start : start + size]).backward()
        opt.step()
        start = (start + size) % len(x)


def fit(tmp_path: Path, system: Any, train: Any, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(tmp_path, precision="64-true", **flags)
    trainer.fit(system, train)
    return trainer


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, **TIGHT, msg=lambda m, n=name: f"{n}: {m}")  # type: ignore[misc]


def test_k_batches_of_b_match_one_batch_of_k_times_b(tmp_path: Path) -> None:
    data = float64_data(128)
    system = MLP()
    reference = copy.deepcopy(system.net)
    # 16 batches of 8 an epoch, a step every 4: 4 steps an epoch, 3 epochs.
    trainer = fit(tmp_path, system, DataLoader(data, batch_size=8), accumulate_grad_batches=4, max_epochs=3)
    hand_loop(reference, data, [32] * 12)
    assert trainer.global_step == 12
    assert system.step_batches == [3, 7, 11, 15] * 3
    assert_same_weights(system.net, reference)
    # A plain run without accumulation differs: the comparison above is not vacuous.
    plain = copy.deepcopy(MLP().net)
    hand_loop(plain, data, [8] * 48)
    assert not torch.allclose(plain[0].weight, reference[0].weight, rtol=1e-6)


def test_the_loss_backward_sees_is_divided_by_k(tmp_path: Path) -> None:
    data = float64_data(32)
    system = MLP()
    model = copy.deepcopy(system.net)
    fit(tmp_path, system, DataLoader(data, batch_size=8), accumulate_grad_batches=4, max_epochs=1)
    x, y = data.tensors
    with torch.no_grad():
        expected = [float(F.mse_loss(model(x[i : i + 8]), y[i : i + 8])) / 4 for i in range(0, 32, 8)]
    assert system.backward_losses == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "k", "groups"),
    [
        (40, 2, [16, 16, 8]),  # 5 batches of 8: groups of 2, 2, 1 batches
        (40, 3, [24, 16]),  # 5 batches: groups of 3, 2
        (36, 4, [32, 4]),  # 4 full batches and one of 4 samples: one group of 4, one of the last batch
    ],
)
def test_the_last_partial_group_steps_on_the_mean_of_its_own_samples(
    tmp_path: Path, n: int, k: int, groups: list[int]
) -> None:
    data = float64_data(n, seed=1)
    system = MLP()
    reference = copy.deepcopy(system.net)
    trainer = fit(tmp_path, system, DataLoader(data, batch_size=8), accumulate_grad_batches=k, max_epochs=2)
    hand_loop(reference, data, groups * 2)
    assert trainer.global_step == 2 * len(groups)
    assert_same_weights(system.net, reference)


def test_a_group_with_a_short_batch_steps_on_the_mean_of_its_batch_losses(tmp_path: Path) -> None:
    """fulmen cannot know how a loss was reduced, so each batch's loss weighs the same within its
    group (as in Lightning): 5 batches of 8 and one of 4, k=4: the last group is (loss_8 + loss_4) / 2."""
    data = float64_data(44, seed=4)
    system = MLP()
    reference = copy.deepcopy(system.net)
    trainer = fit(tmp_path, system, DataLoader(data, batch_size=8), accumulate_grad_batches=4)
    x, y = data.tensors
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    F.mse_loss(reference(x[:32]), y[:32]).backward()
    opt.step()
    opt.zero_grad()
    ((F.mse_loss(reference(x[32:40]), y[32:40]) + F.mse_loss(reference(x[40:]), y[40:])) / 2).backward()
    opt.step()
    assert trainer.global_step == 2
    assert_same_weights(system.net, reference)


def test_the_last_group_of_limit_train_batches(tmp_path: Path) -> None:
    # 16 batches, limit 6, k=4: groups of 4 and 2 batches (the limit, not the loader, ends the epoch).
    data = float64_data(128, seed=2)
    system = MLP()
    reference = copy.deepcopy(system.net)
    trainer = fit(
        tmp_path, system, DataLoader(data, batch_size=8), accumulate_grad_batches=4, limit_train_batches=6
    )
    hand_loop(reference, data, [32, 16])
    assert trainer.global_step == 2 and system.step_batches == [3, 5]
    assert_same_weights(system.net, reference)


class Unsized:
    """An iterable of batches without ``len`` (like a streaming dataset)."""

    def __init__(self, data: TensorDataset, batch_size: int) -> None:
        self.loader = DataLoader(data, batch_size=batch_size)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)


def test_a_loader_without_length_steps_on_its_last_partial_group(tmp_path: Path) -> None:
    """The epoch's end is not known in advance: the last group's gradients are rescaled to the
    mean of the batches it had, as for a loader with a length."""
    data = float64_data(40, seed=3)
    system = MLP()
    reference = copy.deepcopy(system.net)
    trainer = fit(tmp_path, system, Unsized(data, 8), accumulate_grad_batches=3, max_epochs=2)
    hand_loop(reference, data, [24, 16] * 2)
    assert trainer.global_step == 4
    assert system.step_batches == [2, 4, 2, 4]
    assert_same_weights(system.net, reference)


def test_a_step_scheduler_steps_at_the_last_partial_group_of_a_loader_without_length(tmp_path: Path) -> None:
    class Scheduled(MLP):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = fit(tmp_path, Scheduled(), Unsized(float64_data(40), 8), accumulate_grad_batches=3, max_epochs=2)
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4


def test_global_step_counts_optimizer_steps(tmp_path: Path) -> None:
    s = Recorder()
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=2, accumulate_grad_batches=3)
    trainer.fit(s, make_loader(64))  # 8 batches: groups of 3, 3, 2
    assert len(s.trained) == 16
    assert trainer.global_step == 6


def test_max_steps_counts_optimizer_steps(tmp_path: Path) -> None:
    s = Recorder()
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=5, max_steps=3, accumulate_grad_batches=2)
    trainer.fit(s, make_loader(64))
    assert trainer.global_step == 3
    assert s.trained == [(0, b) for b in range(6)]


def test_accumulate_1_steps_every_batch(tmp_path: Path) -> None:
    data = float64_data(32)
    system = MLP()
    reference = copy.deepcopy(system.net)
    fit(tmp_path, system, DataLoader(data, batch_size=8), max_epochs=2)
    hand_loop(reference, data, [8] * 8)
    assert system.step_batches == [0, 1, 2, 3] * 2
    assert_same_weights(system.net, reference)


def test_trainer_accumulate_grad_batches_attribute(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, accumulate_grad_batches=5)
    assert trainer.accumulate_grad_batches == 5
    assert quiet_trainer(tmp_path).accumulate_grad_batches == 1


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "4", None])
def test_bad_accumulate_grad_batches(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(FlagError, match=rf"Trainer\(accumulate_grad_batches={bad!r}\): expected an int >= 1 \(1: step after every batch\)"):
        quiet_trainer(tmp_path, accumulate_grad_batches=bad)
