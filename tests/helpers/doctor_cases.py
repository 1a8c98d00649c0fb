"""Systems and datamodules for ``fulmen.doctor``'s tests: one healthy, and one per mistake.

Every class builds with no arguments, so the CLI (``fulmen doctor helpers.doctor_cases:Healthy``)
can construct it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fulmen


def regression_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class Healthy(fulmen.System):
    """Dropout and batch norm (so modes matter), logs ``val_loss``, trains and validates on
    separate, shuffled / unshuffled data."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(64, seed=0), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(32, seed=1), batch_size=8)


class HealthyData(fulmen.DataModule):
    def setup(self, stage: str) -> None:
        self.train_set = regression_data(64, seed=0)
        self.val_set = regression_data(32, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=8)


class UnusedLayer(Healthy):
    """``self.head`` is never used in the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)


class ZeroGradient(Healthy):
    """``self.scale`` takes part in the loss multiplied by zero: its gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) + 0.0 * self.scale.sum()


class EvalInTraining(Healthy):
    """Calls ``self.eval()`` in ``training_step`` (dropout off, batch norm frozen from then on)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.eval()
        return super().training_step(batch, batch_idx)


class TrainInValidation(Healthy):
    """Calls ``self.train()`` in ``validation_step``."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.train()
        super().validation_step(batch, batch_idx)


class EmptyTrain(Healthy):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(4, seed=0), batch_size=8, drop_last=True)


class UnshuffledTrain(Healthy):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(64, seed=0), batch_size=8)


class ShuffledVal(Healthy):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(32, seed=1), batch_size=8, shuffle=True)


class MonitorNotLogged(Healthy):
    """Its checkpoint callback monitors ``val_acc``, which nothing logs."""

    def configure_callbacks(self) -> Any:
        return [fulmen.ModelCheckpoint(monitor="val_acc", mode="max")]


class _Copies(Dataset):
    """The training samples again, as a different dataset object (a leaked copy)."""

    def __init__(self, base: TensorDataset, n: int) -> None:
        self.base, self.n = base, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        x, y = self.base[i]
        return x.clone(), y.clone()


class OverlappingData(Healthy):
    """Validation reads (copies of) the first 16 training samples."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Copies(regression_data(64, seed=0), 16), batch_size=8)


class NonFiniteLoss(Healthy):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * torch.log(torch.zeros(()))  # -inf


class NoGradLoss(Healthy):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            return super().training_step(batch, batch_idx)


class BatchOnMeta(Healthy):
    """Moves each batch to the meta device after the transfer, so it never reaches the model's
    device (training_step only reads the batch's shape, so it still runs)."""

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return [t.to("meta") for t in batch]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        out = self(torch.ones(x.shape, device=self.device))
        return out.pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self(torch.ones(batch[0].shape, device=self.device)).pow(2).mean())


class CrashingStep(Healthy):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        raise RuntimeError("shape mismatch somewhere in my model")


class ManualOptimization(Healthy):
    """Manual optimization: steps its optimizer in training_step (doctor makes the step do nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        loss = F.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
