"""``BasePredictionWriter`` (``lightning.pytorch.callbacks.prediction_writer``): write what
``predict_step`` returns to disk as it comes (``write_interval="batch"``), at the end
(``"epoch"``), or both, with the dataset indices of every batch.

Subclass it and implement ``write_on_batch_end(trainer, pl_module, prediction, batch_indices,
batch, batch_idx, dataloader_idx)`` and/or ``write_on_epoch_end(trainer, pl_module, predictions,
batch_indices)``. With several processes each writes its own part (name files by
``trainer.global_rank``); ``trainer.predict(..., return_predictions=False)`` then keeps nothing in
memory beyond what an ``"epoch"`` writer collects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["BasePredictionWriter"]

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    needs_batch_indices = True  # the predict loop records each batch's dataset indices for us

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(
                f"{type(self).__name__}(write_interval={write_interval!r}): expected one of {', '.join(map(repr, _INTERVALS))}."
            )
        self.write_interval = write_interval
        self._predictions: list[list[Any]] = []
        self._indices: list[list[list[int] | None]] = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: System,
        prediction: Any,
        batch_indices: list[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch's prediction (``write_interval`` "batch" or "batch_and_epoch")."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_batch_end for write_interval='batch'")

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: System, predictions: list[Any], batch_indices: list[Any]
    ) -> None:
        """Write all predictions at the end (``write_interval`` "epoch" or "batch_and_epoch"):
        a list of batch outputs and a list of batch index lists (one list of each per dataloader
        when there are several)."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_on_epoch_end for write_interval='epoch'")

    def on_predict_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._predictions = [[] for _ in trainer.num_predict_batches]
        self._indices = [[] for _ in trainer.num_predict_batches]

    def on_predict_batch_end(
        self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        recorded = trainer.predict_batch_indices[dataloader_idx] if trainer.predict_batch_indices else []
        indices = recorded[batch_idx] if batch_idx < len(recorded) else None
        if self.write_interval != "epoch":
            self.write_on_batch_end(trainer, system, outputs, indices, batch, batch_idx, dataloader_idx)
        if self.write_interval != "batch":
            self._predictions[dataloader_idx].append(outputs)
            self._indices[dataloader_idx].append(indices)

    def on_predict_epoch_end(self, trainer: Trainer, system: System) -> None:
        if self.write_interval == "batch":
            return
        one = len(self._predictions) == 1
        predictions = self._predictions[0] if one else self._predictions
        indices = self._indices[0] if one else self._indices
        self._predictions, self._indices = [], []
        self.write_on_epoch_end(trainer, system, predictions, indices)
