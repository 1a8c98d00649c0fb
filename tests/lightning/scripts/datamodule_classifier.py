"""A digits CNN with a LightningDataModule and torchmetrics.

The data lives in a ``LightningDataModule`` (``prepare_data`` writes the dataset to disk once,
``setup(stage)`` builds the splits, four dataloaders); the model takes its backbone as an
argument, so ``save_hyperparameters(ignore=["backbone"])`` keeps it out of the checkpoint and
``load_from_checkpoint`` gets it again. Accuracy and F1 are torchmetrics objects logged directly
with ``self.log`` / ``self.log_dict``
(``log_dict`` of a ``MetricCollection`` is in metric_collection.py); a OneCycle schedule steps every batch, sized by
``trainer.estimated_stepping_batches``. Only the Lightning imports are changed
(was ``import lightning.pytorch as pl`` and ``from lightning.pytorch.callbacks import ...``).
"""

import os

import torch
import torch.nn.functional as F
import torchmetrics
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning.pytorch as pl
from fulmen.lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint


class DigitsDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str = "./data", batch_size: int = 64, num_workers: int = 0, val_size: int = 250):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.num_classes = 10
        self.setup_calls = []

    @property
    def data_file(self):
        return os.path.join(self.data_dir, "digits.pt")

    def prepare_data(self):
        # "download": runs once, on one process; no state may be set here
        if not os.path.exists(self.data_file):
            os.makedirs(self.data_dir, exist_ok=True)
            digits = load_digits()
            torch.save(
                {"images": torch.tensor(digits.images, dtype=torch.float32), "targets": torch.tensor(digits.target)},
                self.data_file,
            )

    def setup(self, stage: str):
        self.setup_calls.append(stage)
        data = torch.load(self.data_file)
        images = (data["images"] / 16.0).unsqueeze(1)  # N x 1 x 8 x 8
        full = TensorDataset(images, data["targets"])
        # the last 297 images are the held-out test set
        train_val = torch.utils.data.Subset(full, range(0, 1500))
        if stage in ("fit", "validate"):
            self.train_set, self.val_set = random_split(
                train_val, [1500 - self.hparams.val_size, self.hparams.val_size],
                generator=torch.Generator().manual_seed(7),
            )
        if stage in ("test", "predict"):
            self.test_set = torch.utils.data.Subset(full, range(1500, len(full)))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256, num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=256, num_workers=self.hparams.num_workers)

    def predict_dataloader(self):
        return DataLoader(self.test_set, batch_size=100, num_workers=self.hparams.num_workers)


def make_backbone(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )


class LitDigitsClassifier(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int = 128, num_classes: int = 10,
                 lr: float = 1e-2, weight_decay: float = 1e-4):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_f1 = torchmetrics.F1Score(task="multiclass", num_classes=num_classes, average="macro")

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.test_f1.update(logits, y)
        self.log_dict({"test_acc": self.test_acc, "test_f1": self.test_f1})

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main():
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=50)
    model = LitDigitsClassifier(make_backbone())
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", filename="digits-{epoch}-{val_acc:.3f}")
    trainer = pl.Trainer(
        max_epochs=6,
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=10,
    )
    trainer.fit(model=model, datamodule=dm)
    assert trainer.estimated_stepping_batches == 6 * 25
    assert trainer.global_step == 150
    assert os.path.isfile("data/digits.pt")
    assert dm.setup_calls == ["fit"], dm.setup_calls
    assert "backbone" not in model.hparams and model.hparams.lr == 1e-2
    # OneCycle ends near zero
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-4

    best = checkpoint.best_model_path
    assert os.path.basename(best).startswith("digits-epoch="), best
    assert checkpoint.best_model_score > 0.9, checkpoint.best_model_score

    # validate the trained model again, then test it, from the same datamodule
    (val_metrics,) = trainer.validate(model, datamodule=dm)
    assert val_metrics["val_acc"] > 0.9, val_metrics
    (test_metrics,) = trainer.test(model, datamodule=dm)
    print(test_metrics)
    assert set(test_metrics) == {"test_acc", "test_f1"}, test_metrics
    assert test_metrics["test_acc"] > 0.85 and test_metrics["test_f1"] > 0.85, test_metrics
    assert dm.setup_calls == ["fit", "validate", "test"], dm.setup_calls

    # the backbone was not saved: give it again when loading
    restored = LitDigitsClassifier.load_from_checkpoint(best, backbone=make_backbone())
    assert restored.hparams.feature_dim == 128
    predictions = trainer.predict(restored, datamodule=dm)
    predicted = torch.cat(predictions)
    targets = torch.cat([y for _, y in dm.predict_dataloader()])
    accuracy = (predicted.cpu() == targets).float().mean().item()
    print(f"accuracy of the best checkpoint on the held-out digits: {accuracy:.3f}")
    assert accuracy > 0.85

    # the datamodule's hyperparameters travel in the checkpoint too
    dm2 = DigitsDataModule.load_from_checkpoint(best)
    assert dm2.hparams.batch_size == 50
    print("OK")


if __name__ == "__main__":
    main()
