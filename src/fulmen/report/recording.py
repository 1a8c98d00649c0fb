"""What a run records for its report while it trains and tests: ``EpochTimes`` (a callback that
writes ``epoch_times.csv``) and ``save_predictions`` (a classifier's test-set outputs in
``predictions.pt``).

This module is what a training run imports; it never imports the plotting side (matplotlib,
``fulmen.report.plots``) or the page writer.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.report import EPOCH_TIME_FIELDS, EPOCH_TIMES_FILE, PREDICTIONS_FILE

if TYPE_CHECKING:
    import torch

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class EpochTimes(Callback):
    """Write the wall time of each training epoch to ``epoch_times.csv`` in the run folder.

    One row per epoch, appended when the epoch ends (so a run that crashes keeps the epochs it
    finished): ``epoch``, ``seconds`` (from ``on_train_epoch_start`` to ``on_train_epoch_end``,
    the epoch-end validation included), ``train_seconds`` and ``val_seconds`` (validation inside
    the epoch; the sanity check is not counted), ``end_time`` (Unix time). Only rank zero writes.
    The file goes to ``trainer.log_dir``; a resumed run appends to it.
    """

    def __init__(self, filename: str = EPOCH_TIMES_FILE) -> None:
        self.filename = filename
        self.path: str | None = None
        self._start: float | None = None
        self._val_start: float | None = None
        self._val = 0.0

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._start = time.monotonic()
        self._val = 0.0

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self._val_start = time.monotonic()

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        if self._val_start is not None:
            self._val += time.monotonic() - self._val_start
            self._val_start = None

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if self._start is None:
            return
        seconds = time.monotonic() - self._start
        self._start = None
        if not trainer.is_global_zero:
            return
        row = {
            "epoch": trainer.current_epoch,
            "seconds": f"{seconds:.6f}",
            "train_seconds": f"{max(seconds - self._val, 0.0):.6f}",
            "val_seconds": f"{self._val:.6f}",
            "end_time": f"{time.time():.3f}",
        }
        os.makedirs(trainer.log_dir, exist_ok=True)
        self.path = os.path.join(trainer.log_dir, self.filename)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=EPOCH_TIME_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


def save_predictions(
    run_dir: str | os.PathLike[str],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    kind: str = "auto",
    class_names: Sequence[str] | None = None,
) -> str:
    """Store a classifier's predictions in ``run_dir/predictions.pt`` for the report; return its path.

    ``outputs`` is ``(N, C)`` logits or probabilities (``kind="logits"`` / ``"probs"``; ``"auto"``
    takes rows of numbers in [0, 1] summing to 1 as probabilities), or ``(N,)`` / ``(N, 1)`` for a
    binary classifier (a logit or the probability of class 1). ``targets`` is ``(N,)`` class
    indices; ``inputs`` (optional, first dimension N) lets the report draw the highest-loss
    examples. The file holds plain tensors and lists (``torch.load(..., weights_only=True)``). It
    is recorded, with its SHA-256, in the run's audit log (``checkpoints.jsonl``), so that
    ``fulmen verify`` knows it and notices a later change.
    """
    import torch

    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"save_predictions(kind={kind!r}): expected 'auto', 'logits' or 'probs'.")
    scores = torch.as_tensor(outputs).detach().cpu().float()
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim not in (1, 2):
        raise ValueError(f"save_predictions: outputs must be (N, C) or (N,), got shape {tuple(scores.shape)}.")
    labels = _class_indices(targets, scores.shape[0])
    probs = _probabilities(scores, kind)
    n_classes = probs.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"save_predictions: targets must lie in [0, {n_classes}) for {n_classes} classes, "
            f"got values from {int(labels.min())} to {int(labels.max())}."
        )
    data: dict[str, Any] = {"format": 1, "probs": probs.contiguous(), "targets": labels.contiguous()}
    if inputs is not None:
        x = torch.as_tensor(inputs).detach().cpu()
        if x.shape[0] != labels.shape[0]:
            raise ValueError(
                f"save_predictions: inputs must have N = {labels.shape[0]} rows, got shape {tuple(x.shape)}."
            )
        data["inputs"] = x.contiguous()
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != n_classes:
            raise ValueError(f"save_predictions: {len(names)} class_names for {n_classes} classes.")
        data["class_names"] = names
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, PREDICTIONS_FILE)
    tmp = path + ".tmp"
    torch.save(data, tmp)
    os.replace(tmp, path)
    from fulmen.checkpoint.audit import record_artifact

    record_artifact(run_dir, path, kind="predictions")  # so that `fulmen verify` knows it, and checks its bytes
    return path


def _class_indices(targets: torch.Tensor, n: int) -> torch.Tensor:
    """``targets`` as ``(n,)`` int64 class indices on the CPU; ``ValueError`` for anything else."""
    import torch

    labels = torch.as_tensor(targets).detach().cpu()
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"save_predictions: targets must be (N,) class indices with N = {n} (the outputs' "
            f"first dimension), got shape {tuple(labels.shape)}."
        )
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("save_predictions: targets must be class indices, not probabilities or one-hot rows.")
    return labels.long()


def _probabilities(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """``(N, C)`` class probabilities from ``(N, C)`` or binary ``(N,)`` logits or probabilities;
    ``kind="auto"`` takes rows of numbers in [0, 1] (summing to 1 for ``C`` classes) as probabilities."""
    import torch

    binary = scores.ndim == 1
    if kind == "auto":
        in_unit = bool(((scores >= 0) & (scores <= 1)).all()) if scores.numel() else True
        if binary:
            kind = "probs" if in_unit else "logits"
        else:
            sums_to_one = bool(torch.allclose(scores.sum(1), torch.ones(scores.shape[0]), atol=1e-3))
            kind = "probs" if in_unit and sums_to_one else "logits"
    if binary:
        p1 = scores if kind == "probs" else torch.sigmoid(scores)
        return torch.stack([1 - p1, p1], dim=1)
    return scores if kind == "probs" else torch.softmax(scores, dim=1)
