"""seed_everything: the seed, the environment, repeatable draws, and dataloader workers."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import quiet_trainer
from torch.utils.data import DataLoader, Dataset

import fulmen
from fulmen.seed import seed_everything, seed_workers_requested, worker_init_fn


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # seed_everything exports variables; monkeypatch puts the environment back afterwards
    # (setenv first, so that monkeypatch remembers them even when they were not set).
    for name in ("FULMEN_GLOBAL_SEED", "FULMEN_SEED_WORKERS"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_returns_the_seed_and_exports_it() -> None:
    assert seed_everything(123) == 123
    assert os.environ["FULMEN_GLOBAL_SEED"] == "123"
    assert not seed_workers_requested()
    assert seed_everything(7, workers=True) == 7
    assert seed_workers_requested()
    assert fulmen.seed_everything is seed_everything


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    seed_everything(42)
    first = draws()
    seed_everything(42)
    assert draws() == first
    seed_everything(43)
    assert draws() != first


def test_no_seed_reads_the_environment_or_picks_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "99")
    assert seed_everything() == 99
    seed_everything(99)
    expected = draws()
    seed_everything()
    assert draws() == expected
    monkeypatch.delenv("FULMEN_GLOBAL_SEED")
    picked = seed_everything()
    assert 0 <= picked <= 2**32 - 1
    assert os.environ["FULMEN_GLOBAL_SEED"] == str(picked)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "42", True, [1]])
def test_invalid_seed(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"seed_everything\(seed=.*int between 0 and 2\*\*32 - 1"):
        seed_everything(bad)


def test_numpy_integer_seed_is_accepted() -> None:
    assert seed_everything(np.int64(5)) == 5
    assert type(seed_everything(np.int32(6))) is int


def test_invalid_seed_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "not-a-number")
    with pytest.raises(ValueError, match=r"FULMEN_GLOBAL_SEED='not-a-number' in the environment is not an int"):
        seed_everything()


def test_worker_init_fn_seeds_numpy_and_random_from_torch() -> None:
    torch.manual_seed(1000)
    worker_init_fn(0)
    a = (random.random(), float(np.random.rand()))
    torch.manual_seed(1000)
    worker_init_fn(0)
    assert (random.random(), float(np.random.rand())) == a
    torch.manual_seed(1000)
    worker_init_fn(1)
    assert (random.random(), float(np.random.rand())) != a


class Augmented(Dataset):
    """Each item draws from NumPy's and Python's global generators, as augmentations do."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        return torch.tensor([float(np.random.rand()), random.random(), float(worker)], dtype=torch.float64)


class Collect(fulmen.System):
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return batch


def run_workers(tmp_path: Path, seed: int) -> torch.Tensor:
    seed_everything(seed, workers=True)
    loader = DataLoader(Augmented(), batch_size=1, num_workers=2)
    trainer = quiet_trainer(tmp_path, logger=False)
    out = trainer.predict(Collect(), loader)
    assert loader.worker_init_fn is worker_init_fn
    assert out is not None
    return torch.cat(out)


def test_workers_differ_and_runs_repeat(tmp_path: Path) -> None:
    first = run_workers(tmp_path, 5)
    second = run_workers(tmp_path, 5)
    assert torch.equal(first, second)
    by_worker = {w: first[first[:, 2] == w, :2] for w in (0.0, 1.0)}
    assert by_worker[0.0].shape == by_worker[1.0].shape == (4, 2)
    # No value repeats between the workers, for either generator.
    for col in (0, 1):
        assert not set(by_worker[0.0][:, col].tolist()) & set(by_worker[1.0][:, col].tolist())
    third = run_workers(tmp_path, 6)
    assert not torch.equal(first, third)


def test_user_worker_init_fn_is_kept(tmp_path: Path) -> None:
    def mine(worker_id: int) -> None:
        pass

    seed_everything(1, workers=True)
    loader = DataLoader(Augmented(), batch_size=4, num_workers=1, worker_init_fn=mine)
    quiet_trainer(tmp_path, logger=False).predict(Collect(), loader)
    assert loader.worker_init_fn is mine
