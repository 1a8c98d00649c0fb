"""``self.log(name, metric)`` with a ``torchmetrics.Metric``: step values from its forward, epoch
values from ``compute()`` over the whole epoch, reset each epoch; nothing imported when unused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import LoggingError


def classification_data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


class Classifier(fulmen.System):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 2)
        self.train_acc = torchmetrics.classification.BinaryAccuracy()
        self.val_acc = torchmetrics.classification.BinaryAccuracy()
        self.step_values: list[float] = []
        self.batch_accs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        preds = logits.argmax(1)
        batch_acc = self.train_acc(preds, y)  # forward: updates the state, returns this batch's value
        self.batch_accs.append(float(batch_acc))
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return nn.functional.cross_entropy(logits, y)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_values.append(float(self.trainer.callback_metrics["train_acc_step"]))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        preds = self.net(x).argmax(1)
        self.val_acc.update(preds, y)
        self.log("val_acc", self.val_acc)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_epoch_values_are_computed_over_the_epoch_and_reset(tmp_path: Path) -> None:
    train = DataLoader(classification_data(96), batch_size=16)
    val_data = classification_data(40, seed=1)
    val = DataLoader(val_data, batch_size=16)  # 16 + 16 + 8: a mean of batch means would differ
    system = Classifier()
    seen: list[dict[str, float]] = []

    class Keep(fulmen.Callback):
        def on_validation_end(self, trainer: Any, s: Any) -> None:
            if not trainer.sanity_checking:
                expected = float(((s.net(val_data.tensors[0]).argmax(1)) == val_data.tensors[1]).float().mean())
                seen.append({"logged": float(trainer.callback_metrics["val_acc"]), "expected": expected})

    trainer = fulmen.Trainer(
        max_epochs=3, default_root_dir=tmp_path, callbacks=[Keep()], enable_progress_bar=False, num_sanity_val_steps=0, log_every_n_steps=1
    )
    trainer.fit(system, train, val)
    assert len(seen) == 3
    for s in seen:  # each epoch's value is over that epoch's 40 samples only (reset in between)
        assert s["logged"] == pytest.approx(s["expected"], abs=1e-6)
    # on_step: the value its forward returned for that batch
    assert system.step_values == pytest.approx(system.batch_accs)
    # the logger got the epoch values
    csv = (Path(trainer.log_dir) / "metrics.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert "val_acc" in header and "train_acc_epoch" in header and "train_acc_step" in header


def test_a_second_metric_object_under_one_name_is_refused(tmp_path: Path) -> None:
    class Two(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            metric = torchmetrics.MeanMetric()  # a new object each call: a common mistake
            metric.update(torch.tensor(1.0))
            self.log("val_mean", metric)

    trainer = fulmen.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    with pytest.raises(LoggingError, match="a different Metric object was logged under this name"):
        trainer.fit(Two(), DataLoader(classification_data(32), batch_size=16), DataLoader(classification_data(32), batch_size=16))


def test_torchmetrics_is_not_imported_when_unused(tmp_path: Path) -> None:
    code = (
        "import sys, torch, fulmen\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "class S(fulmen.System):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.l = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, b, i):\n"
        "        loss = self.l(b[0]).pow(2).mean(); self.log('loss', loss); return loss\n"
        "    def configure_optimizers(self):\n"
        "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "x = torch.randn(8, 2)\n"
        "fulmen.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)"
        ".fit(S(), DataLoader(TensorDataset(x), batch_size=4))\n"
        "assert 'torchmetrics' not in sys.modules, 'torchmetrics was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
