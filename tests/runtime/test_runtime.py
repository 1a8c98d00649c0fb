"""The runtime layer: choosing the device, precision, and the single-device strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import FlagError
from fulmen.runtime import accelerator as acc_mod
from fulmen.runtime.accelerator import resolve_accelerator, resolve_device
from fulmen.runtime.precision import Precision, resolve_precision
from fulmen.runtime.strategy import SingleDeviceStrategy


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(acc_mod, "_mps_available", lambda: False)


@pytest.fixture
def two_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two CUDA devices exist (resolving does not touch them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(acc_mod, "_mps_available", lambda: False)


# -- accelerator -----------------------------------------------------------------------------------------
def test_cpu_and_auto_without_accelerators(no_gpu: None) -> None:
    assert resolve_accelerator("cpu") == "cpu"
    assert resolve_accelerator("CPU") == "cpu"
    assert resolve_accelerator("auto") == "cpu"


def test_auto_and_gpu_pick_cuda_when_present(two_cuda: None) -> None:
    assert resolve_accelerator("auto") == "cuda"
    assert resolve_accelerator("gpu") == "cuda"
    assert resolve_accelerator("cuda") == "cuda"


def test_auto_and_gpu_pick_mps_on_apple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(acc_mod, "_mps_available", lambda: True)
    assert resolve_accelerator("auto") == "mps"
    assert resolve_accelerator("gpu") == "mps"


@pytest.mark.parametrize("bad", ["tpu", "", None, 1])
def test_unknown_accelerator(bad: Any) -> None:
    with pytest.raises(FlagError, match=r"Trainer\(accelerator=.*expected one of 'auto', 'cpu', 'cuda', 'gpu', 'mps'"):
        resolve_accelerator(bad)


def test_missing_cuda_says_what_to_do(no_gpu: None) -> None:
    for name in ("cuda", "gpu"):
        with pytest.raises(FlagError, match=rf"accelerator='{name}'.*CUDA is not available.*accelerator='cpu'"):
            resolve_accelerator(name)
    with pytest.raises(FlagError, match=r"accelerator='mps'.*MPS backend is not available"):
        resolve_accelerator("mps")
    with pytest.raises(FlagError, match="CUDA is not available"):
        fulmen.Trainer(accelerator="cuda", max_epochs=1)


@pytest.mark.parametrize("devices", [1, "1", "auto", -1, "-1", [0], (0,)])
def test_one_device_forms(devices: Any) -> None:
    assert resolve_device("cpu", devices) == torch.device("cpu")


def test_cuda_device_index(two_cuda: None) -> None:
    assert resolve_device("cuda", 1) == torch.device("cuda", 0)
    assert resolve_device("cuda", [1]) == torch.device("cuda", 1)
    with pytest.raises(FlagError, match=r"devices=\[3\].*no cuda device 3; 2 available"):
        resolve_device("cuda", [3])


@pytest.mark.parametrize("devices", [2, 0, [0, 1], "2", "0,1", True, None])
def test_several_devices_are_refused(devices: Any) -> None:
    with pytest.raises(FlagError, match=r"Trainer\(devices=.*trains on one device.*expected 1, 'auto'"):
        resolve_device("cpu", devices)


def test_trainer_checks_device_flags() -> None:
    with pytest.raises(FlagError, match="accelerator='tpu'"):
        fulmen.Trainer(accelerator="tpu", max_epochs=1)
    with pytest.raises(FlagError, match=r"devices=\[0, 1\].*CPU processes have no indices"):
        fulmen.Trainer(accelerator="cpu", devices=[0, 1], max_epochs=1)
    with pytest.raises(FlagError, match="devices=0"):
        fulmen.Trainer(accelerator="cpu", devices=0, max_epochs=1)
    assert fulmen.Trainer(accelerator="cpu", logger=False, max_epochs=1).device == torch.device("cpu")


# -- precision -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "dtype"),
    [("32-true", torch.float32), ("32", torch.float32), (32, torch.float32), ("64-true", torch.float64), (64, torch.float64), ("64", torch.float64)],
)
def test_precision_names(flag: Any, dtype: torch.dtype) -> None:
    precision = resolve_precision(flag)
    assert isinstance(precision, Precision)
    assert precision.dtype == dtype


@pytest.mark.parametrize("bad", ["fp64", "transformer-engine", "16-bit", 8, None, True, [64]])
def test_unknown_precision(bad: Any) -> None:
    with pytest.raises(
        FlagError,
        match=r"Trainer\(precision=.*\): expected one of '32-true', '64-true', '16-mixed', 'bf16-mixed', '16-true', "
        r"'bf16-true' \(or the short forms 32, 64, 16, 'bf16'\)",
    ):
        resolve_precision(bad)


def test_trainer_refuses_unknown_precision() -> None:
    with pytest.raises(FlagError, match=r"precision='fp8'"):
        fulmen.Trainer(accelerator="cpu", precision="fp8", max_epochs=1)


class DtypeSystem(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, torch.dtype, torch.dtype]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        self.seen.append(("train", self.layer.weight.dtype, x.dtype, idx.dtype))
        loss = F.mse_loss(self(x), y)
        assert loss.dtype == torch.float64
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _, idx = batch
        self.seen.append(("val", self.layer.weight.dtype, x.dtype, idx.dtype))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])


def test_64_true_trains_in_float64(tmp_path: Path) -> None:
    x = torch.randn(16, 4)
    data = TensorDataset(x, x.sum(1, keepdim=True), torch.arange(16))
    loader = DataLoader(data, batch_size=8)
    system = DtypeSystem()
    trainer = quiet_trainer(tmp_path, precision="64-true", num_sanity_val_steps=0)
    trainer.fit(system, loader, loader)
    assert system.seen == [("train", torch.float64, torch.float64, torch.int64)] * 2 + [
        ("val", torch.float64, torch.float64, torch.int64)
    ] * 2
    assert all(p.dtype == torch.float64 for p in system.parameters())
    (pred, _) = trainer.predict(system, loader)
    assert pred.dtype == torch.float64
    assert trainer.optimizers[0].param_groups[0]["params"][0].dtype == torch.float64


def test_32_true_leaves_the_batch_alone(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Watch(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch)
            return super().training_step(batch, batch_idx)

    loader = make_loader(8, 8)
    quiet_trainer(tmp_path).fit(Watch(), loader)
    x, _ = next(iter(loader))
    assert seen[0][0].dtype == torch.float32 and torch.equal(seen[0][0], x)


# -- strategy ---------------------------------------------------------------------------------------------
def test_single_device_strategy() -> None:
    strategy = SingleDeviceStrategy(torch.device("cpu"), resolve_precision("64-true"))
    module = strategy.setup_module(torch.nn.Linear(2, 1))
    assert module.weight.dtype == torch.float64
    assert strategy.is_global_zero and strategy.world_size == 1
    t = torch.tensor([1.0, 2.0])
    assert strategy.reduce(t) is t
    assert strategy.broadcast("x") == "x"
    assert strategy.all_gather(t).shape == (1, 2)
    strategy.barrier("sync")
    loss = (module.weight**2).sum()
    strategy.backward(loss)
    assert module.weight.grad is not None


@pytest.mark.gpu  # runs with `pytest -m gpu` on a GPU machine
def test_64_true_on_cuda(tmp_path: Path) -> None:
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True), torch.arange(16)), batch_size=8)
    system = DtypeSystem()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", precision="64-true", num_sanity_val_steps=0)
    trainer.fit(system, loader, loader)
    assert {s[1:] for s in system.seen} == {(torch.float64, torch.float64, torch.int64)}
    assert system.device.type == "cuda"


# -- devices -----------------------------------------------------------------------------------------
def test_device_lists_for_each_form(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.runtime.select import parse_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_devices("cuda", "auto", None) == [0, 1]  # every GPU
    assert parse_devices("cuda", -1, None) == [0, 1]
    assert parse_devices("cuda", [1], None) == [1]
    assert parse_devices("cuda", "0,1", None) == [0, 1]
    assert parse_devices("cuda", 1, None) == [0]
    assert parse_devices("cpu", "auto", None) == [0]  # one CPU process
    assert parse_devices("cpu", 3, None) == [0, 1, 2]
    assert parse_devices("cpu", "auto", 4) == [0, 1, 2, 3]  # under a launcher: the processes it started here
    with pytest.raises(FlagError, match=r"Trainer\(devices=3\): asked for 3 cuda devices, but 2 are available here"):
        parse_devices("cuda", 3, None)
    with pytest.raises(FlagError, match=r"there is no cuda device 2; 2 available"):
        parse_devices("cuda", [0, 2], None)
    with pytest.raises(FlagError, match="a device index appears twice"):
        parse_devices("cuda", [1, 1], None)
