"""A digits MLP trained with the usual set of callbacks.

ModelCheckpoint (a filename template, top-2 by validation loss plus ``last.ckpt``, and a second
one keeping the most accurate model in its own folder), EarlyStopping with a stopping threshold,
LearningRateMonitor, GradientAccumulationScheduler, Timer, ModelSummary, and a custom Callback
recording ``trainer.callback_metrics`` after every training and validation epoch. Metrics go to a
CSVLogger, read back at the end. Only the imports are changed (was ``import lightning as L`` and
``from lightning.pytorch.callbacks import ...``, ``from lightning.pytorch.loggers import CSVLogger``).
"""

import csv
import glob
import itertools
import os
import re

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning as L
from fulmen.lightning.callbacks import (
    Callback,
    EarlyStopping,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    Timer,
)
from fulmen.lightning.loggers import CSVLogger


class LitMLP(L.LightningModule):
    def __init__(self, hidden: int = 64, dropout: float = 0.1, lr: float = 3e-3, max_epochs: int = 30):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", acc, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.max_epochs)
        return [optimizer], [scheduler]


class MetricsHistory(Callback):
    """Keeps the epoch metrics, as many projects do for plotting after training."""

    def __init__(self):
        super().__init__()
        self.train = []
        self.val = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.val.append({"epoch": trainer.current_epoch, "val_loss": metrics["val_loss"].item(),
                         "val_acc": metrics["val_acc"].item()})

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.train.append({"epoch": trainer.current_epoch, "train_loss": metrics["train_loss"].item(),
                           "val_loss": metrics["val_loss"].item()})


def main():
    L.seed_everything(3)
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32) / 16.0, torch.tensor(digits.target))
    train_set, val_set = random_split(data, [1408, 389], generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)  # 22 batches
    val_loader = DataLoader(val_set, batch_size=389)

    max_epochs = 30
    checkpoint = ModelCheckpoint(
        filename="digits-{epoch:02d}-{val_loss:.3f}", monitor="val_loss", mode="min", save_top_k=2,
        save_last=True,
    )
    most_accurate = ModelCheckpoint(dirpath="checkpoints/most_accurate", monitor="val_acc", mode="max",
                                    filename="{epoch}-{val_acc:.4f}")
    early_stopping = EarlyStopping(monitor="val_acc", mode="max", patience=4, stopping_threshold=0.98)
    lr_monitor = LearningRateMonitor(logging_interval="epoch")
    accumulation = GradientAccumulationScheduler(scheduling={0: 1, 3: 2})
    timer = Timer(duration="00:00:05:00")
    history = MetricsHistory()

    trainer = L.Trainer(
        max_epochs=max_epochs,
        logger=CSVLogger("logs", name="digits_mlp"),
        callbacks=[checkpoint, most_accurate, early_stopping, lr_monitor, accumulation, timer, history,
                   ModelSummary(max_depth=2)],
        log_every_n_steps=10,
    )
    trainer.fit(LitMLP(max_epochs=max_epochs), train_loader, val_loader)

    epochs_run = trainer.current_epoch
    assert trainer.early_stopping_callback is early_stopping
    print(f"stopped after {epochs_run} epochs (stopped_epoch={trainer.early_stopping_callback.stopped_epoch}), "
          f"best val_loss {checkpoint.best_model_score:.4f}, training took {timer.time_elapsed('train'):.1f}s")
    assert trainer.should_stop and epochs_run < max_epochs
    assert early_stopping.stopped_epoch == epochs_run - 1
    assert history.val[-1]["val_acc"] >= 0.98 or early_stopping.wait_count >= 4
    assert 0 < timer.time_elapsed("train") < 300

    # gradient accumulation from epoch 3: half the optimizer steps per epoch
    assert trainer.global_step == 3 * 22 + (epochs_run - 3) * 11, trainer.global_step

    # the custom callback saw every epoch, with this epoch's validation results at train epoch end
    assert [h["epoch"] for h in history.val] == list(range(epochs_run))
    assert [h["epoch"] for h in history.train] == list(range(epochs_run))
    for train, val in zip(history.train, history.val):
        assert train["val_loss"] == val["val_loss"]

    # checkpoints: the run folder of the CSVLogger, Lightning's file names
    ckpt_dir = os.path.join("logs", "digits_mlp", "version_0", "checkpoints")
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ckpt_dir, "*.ckpt")))
    print(files)
    assert "last.ckpt" in files
    top = [f for f in files if f != "last.ckpt"]
    assert len(top) == 2 and all(re.fullmatch(r"digits-epoch=\d\d-val_loss=\d\.\d{3}\.ckpt", f) for f in top), files
    assert len(checkpoint.best_k_models) == 2
    best_val = min(h["val_loss"] for h in history.val)
    assert abs(checkpoint.best_model_score.item() - best_val) < 1e-6
    best_epoch = min(history.val, key=lambda h: h["val_loss"])["epoch"]
    assert os.path.basename(checkpoint.best_model_path).startswith(f"digits-epoch={best_epoch:02d}-")
    assert os.path.realpath(checkpoint.last_model_path) == os.path.realpath(os.path.join(ckpt_dir, "last.ckpt"))
    last = torch.load(checkpoint.last_model_path, weights_only=True)
    assert last["epoch"] == epochs_run - 1 and last["global_step"] == trainer.global_step

    (acc_file,) = [os.path.basename(p) for p in glob.glob("checkpoints/most_accurate/*.ckpt")]
    best_acc = max(h["val_acc"] for h in history.val)
    assert acc_file.startswith("epoch=") and abs(most_accurate.best_model_score.item() - best_acc) < 1e-6

    # the learning rate per epoch, from the CSV file
    trainer.logger.save()
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert len(lrs) == epochs_run, lrs
    assert lrs[0] == 3e-3 and all(a > b for a, b in itertools.pairwise(lrs)), lrs
    train_losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert len(train_losses) == epochs_run
    assert all(abs(a - h["train_loss"]) < 1e-6 for a, h in zip(train_losses, history.train))
    assert train_losses[-1] < train_losses[0]

    model = LitMLP.load_from_checkpoint(checkpoint.best_model_path)
    assert model.hparams.hidden == 64
    print("OK")


if __name__ == "__main__":
    main()
