"""LitAutoEncoder on the 8x8 handwritten digits.

The classic first Lightning script: an encoder/decoder pair trained with a default Trainer,
validated each epoch, tested from the best checkpoint, reloaded with ``load_from_checkpoint``
and used for predictions. Only the import of Lightning is changed (was ``import lightning as L``).
"""

import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning as L


class LitAutoEncoder(L.LightningModule):
    def __init__(self, latent_dim: int = 8, hidden_dim: int = 32, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(64, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 64))

    def forward(self, x):
        # in Lightning, forward defines the prediction/inference action
        return self.encoder(x.view(x.size(0), -1))

    def _reconstruction_loss(self, batch):
        x, _ = batch
        x = x.view(x.size(0), -1)
        x_hat = self.decoder(self.encoder(x))
        return F.mse_loss(x_hat, x)

    def training_step(self, batch, batch_idx):
        loss = self._reconstruction_loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._reconstruction_loss(batch)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss = self._reconstruction_loss(batch)
        psnr = 10 * torch.log10(1.0 / loss)
        self.log_dict({"test_loss": loss, "test_psnr": psnr}, sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        return self(x), y

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def digits_dataset():
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target)
    return TensorDataset(images, labels)


def main():
    L.seed_everything(1234)
    dataset = digits_dataset()
    train_set, val_set, test_set = random_split(
        dataset, [1200, 300, 297], generator=torch.Generator().manual_seed(42)
    )
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=128)
    test_loader = DataLoader(test_set, batch_size=128)

    autoencoder = LitAutoEncoder()
    trainer = L.Trainer(max_epochs=8, accelerator="auto", devices="auto", log_every_n_steps=5)
    trainer.fit(autoencoder, train_loader, val_loader)

    # what was logged: on_step and on_epoch give train_loss_step / train_loss_epoch
    metrics = trainer.callback_metrics
    assert {"train_loss_step", "train_loss_epoch", "val_loss"} <= set(metrics), sorted(metrics)
    assert metrics["val_loss"] < 0.06

    # test with the best weights (no model passed: the trainer's own one)
    (test_metrics,) = trainer.test(dataloaders=test_loader, ckpt_path="best")
    print(test_metrics)
    assert test_metrics["test_loss"] < 0.06, test_metrics
    assert test_metrics["test_psnr"] > 12, test_metrics

    # Lightning writes the run under ./lightning_logs/version_0 of the working directory
    best = trainer.checkpoint_callback.best_model_path
    steps_per_epoch = len(train_loader)  # 19
    expected = os.path.join(os.getcwd(), "lightning_logs", "version_0", "checkpoints", f"epoch=7-step={8 * steps_per_epoch}.ckpt")
    assert os.path.abspath(best) == expected, best
    assert os.path.isfile("lightning_logs/version_0/hparams.yaml")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir("lightning_logs/version_0"))

    # reload the weights and hyperparameters for inference
    model = LitAutoEncoder.load_from_checkpoint(best)
    model.eval()
    assert model.hparams.latent_dim == 8 and model.hparams.lr == 3e-3
    for a, b in zip(model.parameters(), autoencoder.parameters()):
        assert torch.equal(a.cpu(), b.cpu())

    predict_loader = DataLoader(dataset, batch_size=256)
    predictions = trainer.predict(model, dataloaders=predict_loader)
    assert len(predictions) == len(predict_loader)
    embeddings = torch.cat([z for z, _ in predictions]).float().cpu()
    labels = torch.cat([y for _, y in predictions])
    assert embeddings.shape == (len(dataset), 8)

    # the embeddings separate the digits reasonably well
    probe = LogisticRegression(max_iter=2000).fit(embeddings[:1500].numpy(), labels[:1500].numpy())
    accuracy = probe.score(embeddings[1500:].numpy(), labels[1500:].numpy())
    print(f"linear probe accuracy on the embeddings: {accuracy:.3f}")
    assert accuracy > 0.6

    # embed one new image with the bare encoder
    with torch.no_grad():
        z = model(dataset[0][0].unsqueeze(0).to(model.device))
    assert z.shape == (1, 8)
    print("OK")


if __name__ == "__main__":
    main()
