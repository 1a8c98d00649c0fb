"""Digits classifier evaluated with a torchmetrics ``MetricCollection`` per stage.

One collection of metrics is defined once and cloned per stage with a prefix; each stage updates
its clone and logs the whole collection with ``self.log_dict(collection)``, which Lightning
accepts (its ``log_dict`` takes a mapping or a ``MetricCollection`` and logs every metric object
in it, computed and reset per epoch). Only the imports are changed (was ``import lightning as L``
and ``from lightning.pytorch.callbacks import ModelCheckpoint``).
"""

import os

import torch
import torch.nn.functional as F
import torchmetrics
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning as L
from fulmen.lightning.callbacks import ModelCheckpoint


class LitClassifier(L.LightningModule):
    def __init__(self, num_classes: int = 10, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))
        metrics = torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes),
                "f1": torchmetrics.F1Score(task="multiclass", num_classes=num_classes, average="macro"),
                "precision": torchmetrics.Precision(task="multiclass", num_classes=num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_metrics.update(logits, y)
        self.log("train_loss", loss)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_metrics.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log_dict(self.val_metrics, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_metrics.update(self(x), y)
        self.log_dict(self.test_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main():
    L.seed_everything(5)
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32) / 16.0, torch.tensor(digits.target))
    train_set, val_set, test_set = random_split(data, [1200, 300, 297], generator=torch.Generator().manual_seed(0))

    checkpoint = ModelCheckpoint(monitor="val_f1", mode="max", filename="{epoch}-{val_f1:.3f}")
    trainer = L.Trainer(max_epochs=5, callbacks=[checkpoint], log_every_n_steps=10)
    model = LitClassifier()
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True), DataLoader(val_set, batch_size=300))

    metrics = trainer.callback_metrics
    for stage in ("train", "val"):
        assert {f"{stage}_acc", f"{stage}_f1", f"{stage}_precision"} <= set(metrics), sorted(metrics)
    assert metrics["val_acc"] > 0.9, metrics
    assert os.path.basename(checkpoint.best_model_path).startswith("epoch=")

    (result,) = trainer.test(model, DataLoader(test_set, batch_size=100))
    assert set(result) == {"test_acc", "test_f1", "test_precision"}, result
    assert result["test_acc"] > 0.9
    print("OK")


if __name__ == "__main__":
    main()
