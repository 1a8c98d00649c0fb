"""Classify scikit-learn's bundled 8x8 handwritten digits with fulmen (the project's main job).

    python examples/digits.py [--epochs 30] [--root runs/digits]

Trains a small MLP on a train/val/test split of ``load_digits`` (1,797 images, no download),
shows a progress bar, writes CSV and TensorBoard logs, the learning rate, epoch times and a
checkpoint into one run folder, stores the test-set predictions, writes a report (an HTML page with
the curves, a confusion matrix and the highest-loss digits) and prints the test metrics and where
everything went.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.report import EpochTimes, save_predictions, write_report


class DigitsData(fulmen.DataModule):
    """load_digits split 70/15/15 (stratified), features scaled to [0, 1]. ``data_file``: the same
    data from an ``.npz`` file (arrays ``x`` and ``y``) instead of scikit-learn's bundled copy."""

    def __init__(self, batch_size: int = 64, seed: int = 0, data_file: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()

    def fingerprint(self) -> str | None:
        """What the data is, for the run record (``fulmen reproduce`` checks it before re-running);
        the bundled copy is fingerprinted by fulmen itself, as tensors."""
        path = self.hparams.data_file
        return fulmen.fingerprint.fingerprint_files(path) if path else None

    def setup(self, stage: str) -> None:
        if self.hparams.data_file:
            with np.load(self.hparams.data_file) as arrays:
                x, y = arrays["x"], arrays["y"]
        else:
            x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        seed = self.hparams.seed
        x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
        )
        self.train_set = TensorDataset(x_train, y_train)
        self.val_set = TensorDataset(x_val, y_val)
        self.test_set = TensorDataset(x_test, y_test)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class DigitsClassifier(fulmen.System):
    """A two-layer MLP with dropout; logs loss and accuracy for each stage."""

    def __init__(self, hidden: int = 128, dropout: float = 0.2, lr: float = 2e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.example_input_array = torch.zeros(1, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        # sync_dist: with several processes, the epoch value is over all of them (no-op for one)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        x, _ = batch
        return self(x).argmax(1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs or 30)
        return {"optimizer": opt, "lr_scheduler": sched}


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--root", default=os.path.join("runs", "digits"), help="folder for logs and checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", help="an .npz file with arrays x (n, 64) and y (n,) instead of the bundled digits")
    args = parser.parse_args()

    torch.set_num_threads(min(2, torch.get_num_threads()))
    fulmen.seed_everything(args.seed, workers=True)
    data = DigitsData(seed=args.seed, data_file=args.data)
    system = DigitsClassifier()
    trainer = fulmen.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        logger=[fulmen.CSVLogger(args.root), fulmen.TensorBoardLogger(args.root)],
        # Weight digests every 10 steps in the audit log: fulmen reproduce names the first 10 steps that differ.
        callbacks=[fulmen.LearningRateMonitor(), EpochTimes(), fulmen.callbacks.WeightDigests(every_n_steps=10)],
        log_every_n_steps=10,
        deterministic=True,
    )
    trainer.fit(system, datamodule=data)
    (metrics,) = trainer.test(system, datamodule=data, verbose=False)

    # The test set's outputs, for the report's confusion matrix and highest-loss digits.
    x_test, y_test = data.test_set.tensors
    system.eval()
    with torch.no_grad():
        logits = system(x_test.to(system.device)).cpu()
    save_predictions(trainer.log_dir, logits, y_test, inputs=x_test.reshape(-1, 8, 8))
    report = write_report(trainer.log_dir)

    print()
    print(f"test_acc  = {metrics['test_acc']:.4f}")
    print(f"test_loss = {metrics['test_loss']:.4f}")
    print(f"logs        : {trainer.log_dir}  (metrics.csv, TensorBoard events, hparams.yaml, run.json)")
    print(f"checkpoint  : {trainer.checkpoint_callback.last_model_path}")
    print(f"TensorBoard : tensorboard --logdir {os.path.dirname(trainer.log_dir)}")
    print(f"audit       : fulmen verify {trainer.log_dir}")
    print(f"report      : {report}")
    return metrics


if __name__ == "__main__":
    main()
