"""A small GAN on the 8x8 digits, trained with manual optimization.

Two optimizers (generator, discriminator) stepped by hand in ``training_step``: the generator's
and the discriminator's passes each toggle their optimizer so only their parameters get
gradients, the discriminator's gradients are clipped with ``self.clip_gradients``, and both
learning-rate schedulers are stepped by hand through ``self.lr_schedulers()`` (the generator's every
epoch, the discriminator's every second epoch on ``self.trainer.is_last_batch``).
Only the imports are changed (was ``import lightning as L``).
"""

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen.lightning as L


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 16, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 64), nn.Sigmoid(),
        )

    def forward(self, z):
        return self.net(z).view(-1, 1, 8, 8)


class Discriminator(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x):
        return self.net(x)


class GAN(L.LightningModule):
    def __init__(self, latent_dim: int = 16, lr: float = 2e-3, b1: float = 0.5, b2: float = 0.999,
                 lr_decay: float = 0.9, d_clip: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        # Important: this property activates manual optimization
        self.automatic_optimization = False
        self.generator = Generator(latent_dim)
        self.discriminator = Discriminator()
        self.validation_z = torch.randn(32, latent_dim)
        self.requires_grad_seen = []

    def forward(self, z):
        return self.generator(z)

    def adversarial_loss(self, y_hat, y):
        return F.binary_cross_entropy_with_logits(y_hat, y)

    def training_step(self, batch, batch_idx):
        imgs, _ = batch
        optimizer_g, optimizer_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)

        # train the generator: make the discriminator call fakes real
        self.toggle_optimizer(optimizer_g)
        self.requires_grad_seen.append(
            (any(p.requires_grad for p in self.discriminator.parameters()),
             all(p.requires_grad for p in self.generator.parameters()))
        )
        fake = self(z)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        g_loss = self.adversarial_loss(self.discriminator(fake), valid)
        optimizer_g.zero_grad()
        self.manual_backward(g_loss)
        optimizer_g.step()
        self.untoggle_optimizer(optimizer_g)

        # train the discriminator: tell real from fake
        self.toggle_optimizer(optimizer_d)
        real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
        fake_target = torch.zeros(imgs.size(0), 1).type_as(imgs)
        fake_loss = self.adversarial_loss(self.discriminator(fake.detach()), fake_target)
        d_loss = (real_loss + fake_loss) / 2
        optimizer_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(optimizer_d, gradient_clip_val=self.hparams.d_clip, gradient_clip_algorithm="norm")
        optimizer_d.step()
        self.untoggle_optimizer(optimizer_d)

        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

        # the discriminator's schedule steps every 2 epochs, at the epoch's last batch
        if self.trainer.is_last_batch and (self.trainer.current_epoch + 1) % 2 == 0:
            _, sch_d = self.lr_schedulers()
            sch_d.step()

    def on_train_epoch_end(self):
        sch_g, _ = self.lr_schedulers()
        sch_g.step()  # every epoch
        # a look at what the generator makes from fixed noise
        with torch.no_grad():
            samples = self(self.validation_z.type_as(self.generator.net[0].weight))
        self.log("sample_mean", samples.mean())

    def configure_optimizers(self):
        lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
        sch_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=self.hparams.lr_decay)
        sch_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=self.hparams.lr_decay)
        return [opt_g, opt_d], [sch_g, sch_d]


def main():
    L.seed_everything(7)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    loader = DataLoader(TensorDataset(images, torch.tensor(digits.target)), batch_size=64, shuffle=True,
                        drop_last=True)

    model = GAN()
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    epochs = 5
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices="auto", log_every_n_steps=5)
    trainer.fit(model, loader)

    batches = len(loader)  # 28
    # in manual optimization every optimizer step counts: two per batch here
    assert trainer.global_step == 2 * batches * epochs, trainer.global_step
    # toggle_optimizer froze the discriminator while the generator trained
    assert model.requires_grad_seen and all(seen == (False, True) for seen in model.requires_grad_seen)
    # and untoggle_optimizer gave every parameter its gradient back
    assert all(p.requires_grad for p in model.parameters())

    opt_g, opt_d = trainer.optimizers
    for opt, steps in ((opt_g, epochs), (opt_d, epochs // 2)):
        assert math.isclose(opt.param_groups[0]["lr"], 2e-3 * 0.9**steps, rel_tol=1e-6), opt.param_groups[0]["lr"]
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))

    metrics = trainer.callback_metrics
    assert {"g_loss", "d_loss", "sample_mean"} <= set(metrics), sorted(metrics)
    assert all(torch.isfinite(metrics[k]) for k in ("g_loss", "d_loss"))
    # the generator learned the digits' overall brightness (mostly dark background)
    real_mean = images.mean().item()
    print(f"mean pixel: real {real_mean:.3f}, generated {metrics['sample_mean'].item():.3f}")
    assert abs(metrics["sample_mean"].item() - real_mean) < 0.15

    # checkpoints keep both optimizers and schedulers
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    restored = GAN.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    restored.eval()
    with torch.no_grad():
        fakes = restored(torch.randn(4, restored.hparams.latent_dim))
    assert fakes.shape == (4, 1, 8, 8) and fakes.min() >= 0 and fakes.max() <= 1
    print("OK")


if __name__ == "__main__":
    main()
