"""``lightning.pytorch.demos.boring_classes``: tiny models and random datasets for examples, tests and
bug reports, with the names, constructor arguments, shapes and defaults Lightning users know:

- ``RandomDataset(size, length)``: ``length`` rows of ``size`` standard-normal values (drawn once,
  when it is built); ``RandomDictDataset`` gives each row as ``{"a": row, "b": row + 2}``;
  ``RandomIterableDataset(size, count)`` draws ``count`` fresh rows as it is iterated (no
  ``len``), ``RandomIterableDatasetWithLen`` the same with ``len() == count``.
- ``BoringModel``: ``self.layer = Linear(32, 2)``, trained to output ones (mean squared error),
  SGD(lr=0.1) with a StepLR(step_size=1); ``training_step`` returns ``{"loss": ...}``,
  ``validation_step`` ``{"x": ...}``, ``test_step`` ``{"y": ...}``; each dataloader is 64 rows
  of ``RandomDataset(32, 64)``, batch size 1.
- ``BoringDataModule``: one ``RandomDataset(32, 256)``, rows 0-63 for training, 64-127 for
  validation, 128-191 for testing, 192-255 for prediction (each made in ``setup`` of its stage).
- ``BoringDataModuleNoLen`` / ``IterableBoringDataModule``: iterable datasets without a length,
  and lists of a sized and an iterable dataloader.
- ``ManualOptimBoringModel``: ``BoringModel`` with manual optimization; ``DemoModel``: a ReLU
  layer over 32 inputs whose output sum is the loss (Adam); ``Net``: a small MNIST convnet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from fulmen.datamodule import DataModule as LightningDataModule
from fulmen.lightning._module import LightningModule
from fulmen.lightning.core.optimizer import LightningOptimizer
from fulmen.lightning.utilities.types import STEP_OUTPUT

__all__ = [
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "ManualOptimBoringModel",
    "Net",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
]


# -- datasets --------------------------------------------------------------------------------------
class RandomDataset(Dataset):
    """``length`` rows of ``size`` values from a standard normal distribution."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __len__(self) -> int:
        return self.len

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]


class RandomDictDataset(RandomDataset):
    """``RandomDataset`` whose items are dicts: ``{"a": row, "b": row + 2}``."""

    def __getitem__(self, index: int) -> dict[str, Tensor]:  # type: ignore[override]
        row = self.data[index]
        return {"a": row, "b": row + 2}


class RandomIterableDataset(IterableDataset):
    """``count`` rows of ``size`` standard-normal values, drawn anew on every pass; no length."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count

    def __iter__(self) -> Iterator[Tensor]:
        return (torch.randn(self.size) for _ in range(self.count))


class RandomIterableDatasetWithLen(RandomIterableDataset):
    """``RandomIterableDataset`` that also reports its length (``count``)."""

    def __len__(self) -> int:
        return self.count


# -- models ----------------------------------------------------------------------------------------
class BoringModel(LightningModule):
    """The smallest complete LightningModule: override the one hook a test or report is about.

    ``self.layer`` maps 32 features to 2; ``step(batch)`` is the mean squared error between its
    output and ones (``loss(preds, labels)`` with other targets)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def loss(self, preds: Tensor, labels: Tensor | None = None) -> Tensor:
        target = torch.ones_like(preds) if labels is None else labels
        return nn.functional.mse_loss(preds, target)

    def step(self, batch: Any) -> Tensor:
        return self.loss(self(batch))

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"loss": self.step(batch)}

    def validation_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"y": self.step(batch)}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))


class ManualOptimBoringModel(BoringModel):
    """``BoringModel`` stepping its optimizer itself (``automatic_optimization = False``)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        opt = self.optimizers()
        assert isinstance(opt, (Optimizer, LightningOptimizer))
        loss = self.step(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


class DemoModel(LightningModule):
    """A ReLU layer from 32 inputs (each batch flattened) to ``out_dim``; the loss is the sum of its
    outputs; Adam with ``learning_rate``."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.l1(x.reshape(x.size(0), -1)))

    def training_step(self, batch: Any, batch_nb: int) -> STEP_OUTPUT:
        return self(batch).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class Net(nn.Module):
    """A small convolutional classifier for 1x28x28 images (MNIST): log-probabilities of 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        features = nn.functional.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        hidden = torch.relu(self.fc1(torch.flatten(self.dropout1(features), 1)))
        return nn.functional.log_softmax(self.fc2(self.dropout2(hidden)), dim=1)


# -- datamodules -----------------------------------------------------------------------------------
class BoringDataModule(LightningDataModule):
    """Four disjoint slices of one ``RandomDataset(32, 256)``: train, val, test, predict (64 rows each)."""

    def __init__(self) -> None:
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def _rows(self, part: int) -> Subset:
        return Subset(self.random_full, indices=range(64 * part, 64 * (part + 1)))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.random_train = self._rows(0)
        if stage in ("fit", "validate"):
            self.random_val = self._rows(1)
        if stage == "test":
            self.random_test = self._rows(2)
        if stage == "predict":
            self.random_predict = self._rows(3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


class BoringDataModuleNoLen(LightningDataModule):
    """Iterable datasets of 32 features without a length: 512 training rows, 128 validation, 256
    test, 64 predict."""

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.random_train = RandomIterableDataset(32, 512)
        if stage in ("fit", "validate"):
            self.random_val = RandomIterableDataset(32, 128)
        if stage == "test":
            self.random_test = RandomIterableDataset(32, 256)
        if stage == "predict":
            self.random_predict = RandomIterableDataset(32, 64)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


class IterableBoringDataModule(LightningDataModule):
    """Each stage gets two dataloaders over 4 features: a sized ``RandomDataset`` and an iterable
    one of the same length (16 rows for training, 32 validation, 64 test, 128 predict)."""

    _LENGTHS = {"train": 16, "val": 32, "test": 64, "predict": 128}

    def _pair(self, split: str) -> list[Dataset]:
        n = self._LENGTHS[split]
        return [RandomDataset(4, n), RandomIterableDataset(4, n)]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_datasets = self._pair("train")
        if stage in ("fit", "validate"):
            self.val_datasets = self._pair("val")
        if stage == "test":
            self.test_datasets = self._pair("test")
        if stage == "predict":
            self.predict_datasets = self._pair("predict")

    def train_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d) for d in self.train_datasets]

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d) for d in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d) for d in self.test_datasets]

    def predict_dataloader(self) -> list[DataLoader]:
        return [DataLoader(d) for d in self.predict_datasets]
