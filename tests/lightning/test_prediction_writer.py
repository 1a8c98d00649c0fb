"""BasePredictionWriter: predictions written per batch and/or at the end, with each batch's
dataset indices recorded by the predict loop (also with a shuffled sampler and worker processes)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen.lightning as L
from fulmen.lightning.callbacks import BasePredictionWriter


class Identity(L.LightningModule):
    """Predicts each sample's own id (the dataset holds ids as its input)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        (ids,) = batch
        return ids.clone()


class Recorder(BasePredictionWriter):
    def __init__(self, write_interval: str) -> None:
        super().__init__(write_interval)
        self.batches: list[tuple[torch.Tensor, list[int] | None, int, int]] = []
        self.epoch: tuple[Any, Any] | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((prediction, batch_indices, batch_idx, dataloader_idx))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epoch = (predictions, batch_indices)


def ids_loader(n: int, **kwargs: Any) -> DataLoader:
    return DataLoader(TensorDataset(torch.arange(n)), **kwargs)


def trainer(writer: BasePredictionWriter) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, callbacks=[writer], accelerator="cpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_indices_match_the_samples_of_each_batch(workers: int) -> None:
    writer = Recorder("batch_and_epoch")
    g = torch.Generator().manual_seed(0)
    loader = ids_loader(50, batch_size=8, shuffle=True, generator=g, num_workers=workers)
    out = trainer(writer).predict(Identity(), loader, return_predictions=False)
    assert out is None
    assert [b[2] for b in writer.batches] == list(range(7)) and {b[3] for b in writer.batches} == {0}
    for prediction, indices, _, _ in writer.batches:
        assert prediction.tolist() == indices  # the ids the step saw are the recorded indices
    assert sorted(i for _, idx, _, _ in writer.batches for i in idx) == list(range(50))
    predictions, indices = writer.epoch
    assert len(predictions) == len(indices) == 7
    assert [p.tolist() for p in predictions] == indices


def test_epoch_interval_with_two_dataloaders_and_limits() -> None:
    writer = Recorder("epoch")
    t = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[writer], accelerator="cpu", limit_predict_batches=2)
    t.predict(Identity(), [ids_loader(10, batch_size=3), ids_loader(6, batch_size=4)])
    assert writer.batches == []  # nothing per batch
    predictions, indices = writer.epoch
    assert indices == [[[0, 1, 2], [3, 4, 5]], [[0, 1, 2, 3], [4, 5]]]
    assert [[p.tolist() for p in per_loader] for per_loader in predictions] == indices


def test_write_interval_is_checked_and_hooks_must_exist() -> None:
    with pytest.raises(ValueError, match="write_interval='step'"):
        Recorder("step")

    class NoBatchWriter(BasePredictionWriter):
        pass

    with pytest.raises(NotImplementedError, match="write_on_batch_end"):
        trainer(NoBatchWriter()).predict(Identity(), ids_loader(4, batch_size=2))


def test_plain_predict_records_nothing() -> None:
    t = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    assert len(t.predict(Identity(), ids_loader(4, batch_size=2))) == 2
    assert t.predict_batch_indices == []
