"""Small systems for the export tests: an MLP that exports everywhere, and ones that cannot."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen


def loader(n: int = 32, features: int = 8, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return DataLoader(TensorDataset(x, x[:, :2] * 2.0), batch_size=batch_size)


class MLP(fulmen.System):
    """Two linear layers; ``example_input_array`` a batch of 4 unless ``example=False``."""

    def __init__(self, features: int = 8, hidden: int = 16, example: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        if example:
            self.example_input_array = torch.randn(4, features, generator=torch.Generator().manual_seed(1))

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
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Gate(nn.Module):
    """Data-dependent control flow: the branch taken depends on the values of ``x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class Branchy(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.net(x))


class Eig(nn.Module):
    """An op with no ONNX conversion (eigenvalues of 2x2 blocks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x.reshape(-1, 2, 2)).real.reshape(x.shape[0], -1)


class Eigen(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.eig = Eig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eig(self.net[0](x)[:, :4])


class Noisy(MLP):
    """Adds fresh noise on every call, so no exported file matches the eager outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.randn_like(self.net(x))


class FixedBatch(MLP):
    """Its code fixes the batch size at 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(4, 2)


class TwoInOut(fulmen.System):
    """Two inputs (a tuple example) and a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)
        self.example_input_array = (torch.randn(5, 4), torch.randn(5, 2))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.a(x) + self.b(z)
        return {"logits": h, "probs": h.softmax(-1)}
