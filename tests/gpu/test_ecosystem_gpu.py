"""The ecosystem pieces on a CUDA device: the batch-size finder stopping on a real CUDA
out-of-memory error (and on a memory limit measured with CUDA's allocator), the LR finder under
bf16-mixed, and a torchmetrics object logged from a system on the GPU.

Deselected on CPU machines; run with ``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_data, quiet_trainer
from torch.nn import functional as F
from torch.utils.data import DataLoader

import fulmen
from fulmen import Tuner

pytestmark = pytest.mark.gpu
GIB_FLOATS = 2**28  # float32 elements in one GiB


class _HungryOnGpu(TinySystem):
    """Each sample of a batch holds ``gib_per_sample`` GiB of CUDA memory through backward."""

    def __init__(self, batch_size: int = 2, gib_per_sample: float = 1.0, lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        pad = torch.ones(len(x), int(self.hparams.gib_per_sample * GIB_FLOATS), device=x.device)
        scale = self.layer.weight.sum()
        return F.mse_loss(self(x), y) + 0.0 * (pad * scale).mean()  # pad is saved for backward

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_data(4096), batch_size=self.hparams.batch_size)


def _weights(system: fulmen.System) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in system.state_dict().items()}


def test_scale_batch_size_stops_on_a_real_cuda_out_of_memory(tmp_path: Path) -> None:
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    system = _HungryOnGpu(gib_per_sample=max(1.0, total_gib / 40))  # out of memory at ~20-40 samples
    before = _weights(system)
    allocated = torch.cuda.memory_allocated()  # earlier tests in this process may hold some
    tuner = Tuner(quiet_trainer(tmp_path, accelerator="cuda", logger=False, enable_checkpointing=False))
    found = tuner.scale_batch_size(system, mode="binsearch", steps_per_trial=1)
    failures = [t for t in tuner.batch_size_trials if t["failure"] is not None]
    assert failures and all(t["failure"].startswith("out of memory") for t in failures), tuner.batch_size_trials
    assert 4 <= found < min(t["batch_size"] for t in failures)
    assert found * system.hparams.gib_per_sample < total_gib
    assert system.hparams.batch_size == found
    for k, v in _weights(system).items():  # the finder left the model as it was (on the CPU again)
        assert torch.equal(v.cpu(), before[k].cpu()), k
    # The failed trials' tens of GiB were given back; what stays is cuBLAS's workspace (64 MiB on
    # an H100, allocated through torch's allocator by the first matrix product) and the weights.
    assert torch.cuda.memory_allocated() < allocated + 128 * 2**20
    # The size found trains for real.
    trainer = quiet_trainer(tmp_path, accelerator="cuda", logger=False, enable_checkpointing=False, max_steps=2)
    trainer.fit(system)
    assert trainer.global_step == 2


def test_scale_batch_size_memory_limit_measured_on_cuda(tmp_path: Path) -> None:
    system = _HungryOnGpu(gib_per_sample=1 / 20)  # 51.2 MiB per sample
    tuner = Tuner(quiet_trainer(tmp_path, accelerator="cuda", logger=False, enable_checkpointing=False))
    found = tuner.scale_batch_size(system, steps_per_trial=1, max_memory_mb=1000)
    # 51.2 MiB per sample, about twice that while the product (forward) or the gradient (backward)
    # is alive beside it: 8 samples fit in 1000 MB, 16 do not.
    assert found in (4, 8), tuner.batch_size_trials
    for t in tuner.batch_size_trials:
        assert t["peak_mb"] is not None and (t["failure"] is None) == (t["peak_mb"] <= 1000), t
        assert t["peak_mb"] >= t["batch_size"] * 51.2 * 0.9  # the allocator's peak, not the process's RSS


def test_lr_find_on_cuda_under_bf16_mixed(tmp_path: Path) -> None:
    class Regression(TinySystem):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(make_data(2048), batch_size=32, shuffle=True)

    torch.manual_seed(0)
    system = Regression()
    before = _weights(system)
    trainer = quiet_trainer(tmp_path, accelerator="cuda", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    result = Tuner(trainer).lr_find(system, num_training=60)
    losses = torch.tensor(result.results["loss"])
    assert len(losses) >= 10 and torch.isfinite(losses[:10]).all()
    assert losses.min() < 0.8 * losses[0]  # some learning rate in the range trained the model
    suggestion = result.suggestion()
    assert suggestion is not None and 1e-8 <= suggestion <= 1.0
    for k, v in _weights(system).items():
        assert torch.equal(v.cpu(), before[k].cpu()), k


def test_torchmetrics_object_logged_on_cuda(tmp_path: Path) -> None:
    torchmetrics = pytest.importorskip("torchmetrics")

    class Classifier(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 3)
            self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
            self.seen: list[torch.Tensor] = []

        def on_validation_epoch_start(self) -> None:
            self.seen = []  # the sanity check's batches are not in the epoch's value

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            preds = self.net(x).argmax(-1)
            self.seen.append((preds == y).float().cpu())
            self.acc(preds, y)
            self.log("val_acc", self.acc)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = x[:, :3].argmax(-1)
    data = torch.utils.data.TensorDataset(x, y)
    system = Classifier()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", logger=False, enable_checkpointing=False, max_epochs=1)
    trainer.fit(system, DataLoader(data, batch_size=16), DataLoader(data, batch_size=20))
    assert system.acc.device.type == "cuda"
    expected = torch.cat(system.seen).mean()
    assert torch.isclose(trainer.callback_metrics["val_acc"].cpu(), expected)


def test_lightning_overrides_under_16_mixed_on_cuda(tmp_path: Path) -> None:
    """Lightning's optimizer_step warm-up, optimizer_zero_grad and backward overrides with CUDA's
    GradScaler: the backward sees the scaled loss, the warm-up sets the lr, training goes on."""
    import fulmen.lightning as L

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen: list[float] = []
            self.lrs: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self.layer(x), y)

        def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.seen.append(float(loss.detach()))
            loss.backward(*args, **kwargs)

        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            optimizer.zero_grad(set_to_none=False)

        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            for group in optimizer.param_groups:  # Lightning's documented warm-up
                group["lr"] = min(1.0, (self.trainer.global_step + 1) / 4) * 0.05
            self.lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step(closure=optimizer_closure)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    model = Lit()
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cuda", devices=1, precision="16-mixed", max_epochs=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )
    before = model.layer.weight.detach().clone()
    trainer.fit(model, DataLoader(make_data(64), batch_size=8))
    assert trainer.global_step == 16 and model.lrs[:5] == pytest.approx([0.0125, 0.025, 0.0375, 0.05, 0.05])
    assert min(model.seen) > 100  # the loss times CUDA GradScaler's scale
    assert not torch.equal(model.layer.weight.detach().cpu(), before)
    assert model.layer.weight.grad is not None  # zero-filled, never set to None


def test_prediction_writer_and_log_graph_on_cuda(tmp_path: Path) -> None:
    import fulmen.lightning as L
    from fulmen.lightning.callbacks import BasePredictionWriter
    from fulmen.lightning.loggers import TensorBoardLogger

    class Writer(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__("epoch")
            self.got: Any = None

        def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
            self.got = (predictions, batch_indices)

    class Net(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.example_input_array = torch.randn(3, 4)  # on the CPU: the logger moves it

    writer = Writer()
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cuda", max_epochs=1, logger=logger, callbacks=[writer],
        enable_progress_bar=False,
    )
    system = Net()
    trainer.fit(system, DataLoader(make_data(32), batch_size=8))
    trainer.predict(system, DataLoader(make_data(20), batch_size=8, shuffle=True))
    predictions, indices = writer.got
    assert [len(i) for i in indices] == [8, 8, 4] and sorted(i for b in indices for i in b) == list(range(20))
    assert all(p.device.type == "cuda" for p in predictions)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert acc.Tags()["graph"] is True
