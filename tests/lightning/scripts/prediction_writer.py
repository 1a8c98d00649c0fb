"""Batch inference that writes predictions to disk with a ``BasePredictionWriter`` callback.

Train a small digits classifier, then run ``trainer.predict`` over the whole dataset with
``return_predictions=False`` and let a ``BasePredictionWriter`` subclass save the predictions and
the dataset indices of every batch (per process, as Lightning's docs show for multi-GPU
inference). Only the imports are changed (was ``import lightning as L`` and
``from lightning.pytorch.callbacks import BasePredictionWriter``).
"""

import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen.lightning as L
from fulmen.lightning.callbacks import BasePredictionWriter


class CustomWriter(BasePredictionWriter):
    def __init__(self, output_dir, write_interval="epoch"):
        super().__init__(write_interval)
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        os.makedirs(self.output_dir, exist_ok=True)
        torch.save(predictions, os.path.join(self.output_dir, f"predictions_{trainer.global_rank}.pt"))
        torch.save(batch_indices, os.path.join(self.output_dir, f"batch_indices_{trainer.global_rank}.pt"))


class LitClassifier(L.LightningModule):
    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main():
    L.seed_everything(9)
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32) / 16.0, torch.tensor(digits.target))
    model = LitClassifier()
    L.Trainer(max_epochs=4, log_every_n_steps=10).fit(model, DataLoader(data, batch_size=64, shuffle=True))

    writer = CustomWriter(output_dir="predictions", write_interval="epoch")
    trainer = L.Trainer(accelerator="auto", devices="auto", callbacks=[writer], logger=False)
    out = trainer.predict(model, DataLoader(data, batch_size=200), return_predictions=False)
    assert out is None

    predictions = torch.load("predictions/predictions_0.pt", weights_only=True)
    batch_indices = torch.load("predictions/batch_indices_0.pt", weights_only=True)
    assert len(predictions) == len(batch_indices) == 9
    probs = torch.cat(predictions)
    order = torch.tensor([i for batch in batch_indices for i in batch])
    assert torch.equal(order, torch.arange(len(data)))
    accuracy = (probs.argmax(1) == data.tensors[1][order]).float().mean().item()
    print(f"training-set accuracy from the written predictions: {accuracy:.3f}")
    assert accuracy > 0.9
    print("OK")


if __name__ == "__main__":
    main()
