"""Systems and data for the bias-audit tests: outputs built so each group's rates are known exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import fulmen


class Echo(fulmen.System):
    """Its output is its input: the test builds the logits, so the predictions are known."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def binary_case() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """200 samples, groups a (0-99) and b (100-199), as (logits (n, 1), targets, groups).

    a: 50 positives (0-49), predicted positive 0-44 and 50-59: TP 45, FN 5, FP 10, TN 40.
    b: 40 positives (100-139), predicted positive 100-129 and 140-159: TP 30, FN 10, FP 20, TN 40.
    """
    n = 200
    y = torch.zeros(n, dtype=torch.long)
    y[0:50] = 1
    y[100:140] = 1
    pred = torch.zeros(n)
    pred[0:45] = 1
    pred[50:60] = 1
    pred[100:130] = 1
    pred[140:160] = 1
    logits = (pred * 2 - 1).unsqueeze(1) * 3.0
    groups = np.array(["a"] * 100 + ["b"] * 100)
    return logits, y, groups


class DictData(Dataset):
    """Dict samples ``{"x", "y", "group"}``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, groups: Any) -> None:
        self.x, self.y, self.groups = x, y, list(groups)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "group": self.groups[i]}


def tabular(n: int = 240, seed: int = 0) -> DictData:
    """A binary task whose label depends on the group: group "g1" has its positives shifted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    group = torch.arange(n) % 3 == 0
    y = ((x[:, 0] + 0.8 * group.float() + 0.3 * torch.randn(n, generator=g)) > 0.4).long()
    names = ["g1" if flag else "g0" for flag in group.tolist()]
    return DictData(x, y, names)


class Classifier(fulmen.System):
    """A two-logit linear classifier on dict batches."""

    def __init__(self, features: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["x"]), batch["y"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["x"]), batch["y"]))

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("test_loss", F.cross_entropy(self(batch["x"]), batch["y"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class GroupData(fulmen.DataModule):
    """``tabular()`` in dict batches; built with no arguments (``fulmen audit --data``)."""

    def setup(self, stage: str) -> None:
        self.data = tabular()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=64)


def tensor_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, **kwargs: Any) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, **kwargs)
