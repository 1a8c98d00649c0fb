"""Systems and data that record what the Trainer's loops did: which batches ran, when
validation ran, and under which grad/eval modes. Shared by tests/trainer/."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from helpers.systems import TinySystem, make_data


def indexed_loader(n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0, **kwargs: Any) -> DataLoader:
    """Batches ``(x, y, idx)``: ``idx`` holds each sample's position in the dataset."""
    x, y = make_data(n, seed=seed).tensors
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch_size, shuffle=shuffle, **kwargs)


def empty_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.empty(0, 4), torch.empty(0, 1)), batch_size=8)


class Recorder(TinySystem):
    """TinySystem that records every batch it sees (works with 2- and 3-tuple batches).

    ``trained``: ``(epoch, batch_idx)`` per training_step; ``train_idx``: the sample indices of each
    training batch (indexed loaders); ``val_runs``: ``(epoch, global_step, sanity)`` per
    validation run; ``validated``: ``(sanity, dataloader_idx or None, batch_idx)`` per validation_step.
    """

    def __init__(self, features: int = 4, lr: float = 0.05) -> None:
        super().__init__(features, lr)
        self.trained: list[tuple[int, int]] = []
        self.train_idx: list[list[int]] = []
        self.val_runs: list[tuple[int, int, bool]] = []
        self.validated: list[tuple[bool, int | None, int]] = []
        self.tested: list[tuple[int | None, int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.trained.append((self.current_epoch, batch_idx))
        if len(batch) > 2:
            self.train_idx.append(batch[2].tolist())
        loss = F.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def on_validation_start(self) -> None:
        self.val_runs.append((self.current_epoch, self.global_step, self.trainer.sanity_checking))

    def validation_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        self.validated.append((self.trainer.sanity_checking, rest[0] if rest else None, batch_idx))
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))

    def test_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        self.tested.append((rest[0] if rest else None, batch_idx))
        self.log("test_loss", F.mse_loss(self(batch[0]), batch[1]))

    @property
    def val_steps(self) -> list[int]:
        """The global steps at which (non-sanity) validation ran."""
        return [step for _, step, sanity in self.val_runs if not sanity]


class StopAt(fulmen.Callback):
    """Sets ``trainer.should_stop`` at the end of the given (epoch, batch_idx), or every batch."""

    def __init__(self, epoch: int | None = 0, batch_idx: int | None = None) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (self.epoch is None or trainer.current_epoch == self.epoch) and (
            self.batch_idx is None or batch_idx == self.batch_idx
        ):
            trainer.should_stop = True
