"""Logging a digits classifier to TensorBoard, CSV and a home-made logger at once.

The module writes images and weight histograms straight to TensorBoard through
``self.logger.experiment`` (the ``SummaryWriter``), walks ``self.loggers`` for the TensorBoard
one, and relies on the folders Lightning uses: the first logger's
``<save_dir>/<name>/version_N/checkpoints`` for checkpoints, and ``lightning_logs/version_N`` under
``default_root_dir`` for the default logger, paths that scripts hard-code. Only the imports are
changed (was ``import lightning as L``, ``from lightning.pytorch.loggers import ...``,
``from lightning.pytorch.utilities import rank_zero_only``).
"""

import csv
import glob
import os

import torch
import torch.nn.functional as F
import yaml
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning as L
from fulmen.lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from fulmen.lightning.utilities import rank_zero_only


class InMemoryLogger(Logger):
    """A minimal custom logger: keeps everything in Python lists."""

    def __init__(self):
        super().__init__()
        self.hparams = {}
        self.history = []
        self.finalized_with = None

    @property
    def name(self):
        return "in_memory"

    @property
    def version(self):
        return "0.1"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams.update(params)

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        self.history.append((step, dict(metrics)))

    @rank_zero_only
    def finalize(self, status):
        self.finalized_with = status


class LitCNN(L.LightningModule):
    def __init__(self, channels: int = 8, lr: float = 5e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(channels * 16, 10),
        )
        self.example_input_array = torch.zeros(2, 1, 8, 8)  # for the TensorBoard graph

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log_dict({"val_loss": F.cross_entropy(logits, y), "val_acc": (logits.argmax(1) == y).float().mean()},
                      prog_bar=True)
        if batch_idx == 0:
            self._first_val_batch = x[:16]

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or self.logger is None:
            return
        # a 4x4 grid of validation digits, written straight to TensorBoard
        grid = self._first_val_batch.reshape(4, 4, 8, 8).permute(0, 2, 1, 3).reshape(32, 32)
        self.logger.experiment.add_image("val/digits", grid, global_step=self.current_epoch, dataformats="HW")

    def on_train_epoch_end(self):
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, param in self.named_parameters():
                    logger.experiment.add_histogram(f"weights/{name}", param, global_step=self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders():
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0,
                         torch.tensor(digits.target))
    train_set, val_set = random_split(data, [1408, 389], generator=torch.Generator().manual_seed(0))
    return DataLoader(train_set, batch_size=64, shuffle=True), DataLoader(val_set, batch_size=128)


def main():
    L.seed_everything(11)
    train_loader, val_loader = loaders()  # 22 and 4 batches

    # --- several loggers at once --------------------------------------------------------------
    tb_logger = TensorBoardLogger("tb_logs", name="digits_cnn", log_graph=True)
    csv_logger = CSVLogger("csv_logs", name="digits_cnn")
    memory = InMemoryLogger()
    trainer = L.Trainer(max_epochs=3, logger=[tb_logger, csv_logger, memory], log_every_n_steps=5)
    model = LitCNN()
    trainer.fit(model, train_loader, val_loader)

    assert trainer.logger is tb_logger and trainer.loggers == [tb_logger, csv_logger, memory]
    assert tb_logger.version == 0 and csv_logger.version == 0
    assert tb_logger.log_dir == os.path.join("tb_logs", "digits_cnn", "version_0")
    assert trainer.log_dir == tb_logger.log_dir
    # checkpoints go into the first logger's run folder
    assert os.path.isfile("tb_logs/digits_cnn/version_0/checkpoints/epoch=2-step=66.ckpt"), glob.glob("tb_logs/**", recursive=True)
    with open("tb_logs/digits_cnn/version_0/hparams.yaml") as f:
        assert yaml.safe_load(f) == {"channels": 8, "lr": 5e-3}
    assert os.path.isfile("csv_logs/digits_cnn/version_0/hparams.yaml")

    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    val_acc = [float(r["val_acc"]) for r in rows if r.get("val_acc")]
    assert len(val_acc) == 3 and val_acc[-1] > 0.85, val_acc
    assert len([r for r in rows if r.get("train_loss")]) == 66 // 5

    events = EventAccumulator(tb_logger.log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train_loss", "val_loss", "val_acc"} <= set(tags["scalars"]), tags["scalars"]
    assert [e.step for e in events.Images("val/digits")] == [0, 1, 2]
    assert "weights/net.0.weight" in tags["histograms"] and len(events.Histograms("weights/net.0.weight")) == 3
    assert tags["graph"], "log_graph=True with example_input_array draws the model graph"

    assert memory.hparams == {"channels": 8, "lr": 5e-3}
    logged = [name for _, metrics in memory.history for name in metrics]
    assert "val_acc" in logged and "train_loss" in logged
    assert memory.finalized_with == "success"

    # --- the default logger and the paths scripts hard-code -----------------------------------
    trainer = L.Trainer(max_epochs=2, default_root_dir="experiments", log_every_n_steps=5)
    trainer.fit(LitCNN(channels=4), train_loader, val_loader)
    ckpt = "experiments/lightning_logs/version_0/checkpoints/epoch=1-step=44.ckpt"
    assert os.path.isfile(ckpt), glob.glob("experiments/**", recursive=True)
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert trainer.logger.log_dir == os.path.join("experiments", "lightning_logs", "version_0")
    assert glob.glob("experiments/lightning_logs/version_0/events.out.tfevents.*")
    restored = LitCNN.load_from_checkpoint(ckpt)
    assert restored.hparams.channels == 4

    # a second run gets the next version
    trainer = L.Trainer(max_epochs=1, default_root_dir="experiments", log_every_n_steps=5)
    trainer.fit(LitCNN(), train_loader, val_loader)
    assert os.path.isfile("experiments/lightning_logs/version_1/checkpoints/epoch=0-step=22.ckpt")

    # a named version, as people do for a final run
    final = TensorBoardLogger(save_dir="tb_logs", name="digits_cnn", version="final")
    trainer = L.Trainer(max_epochs=1, logger=final, log_every_n_steps=5)
    trainer.fit(LitCNN(), train_loader, val_loader)
    assert os.path.isfile("tb_logs/digits_cnn/final/checkpoints/epoch=0-step=22.ckpt")
    print("OK")


if __name__ == "__main__":
    main()
