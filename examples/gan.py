"""Train a small GAN on a ring of 8 Gaussians with manual optimization (two optimizers).

    python examples/gan.py [--epochs 30] [--root runs/gan] [--seed 0]

The target is a 2-D mixture of 8 Gaussians (std 0.05) whose means sit on a circle of radius 2.
A generator (noise -> point) and a discriminator (point -> real/fake logit) are small MLPs, each
with its own Adam optimizer. Automatic optimization steps one optimizer per batch, so the system
sets ``automatic_optimization = False`` and steps both itself in ``training_step``:

    1. the discriminator, on real samples (label 1) and generated ones (label 0), plus an R1
       gradient penalty on the real samples (it keeps the generator from dropping modes);
    2. the generator, so that the discriminator calls its samples real.

Every step is: ``toggle_optimizer`` (only that optimizer's parameters require grad), compute
the loss, ``opt.zero_grad()``, ``self.manual_backward(loss)``, ``opt.step()``,
``untoggle_optimizer``. Each ``opt.step()`` counts in ``global_step``: two per batch.

The data are drawn once in this script (no download). At the end the script prints how close
the generated samples are to the target before and after training (the same measures are logged
at each epoch end), and where the CSV log and the checkpoint are.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen

N_MODES = 8
RADIUS = 2.0


# -- the target distribution and how to measure a generator against it -------------------------
def ring_modes(n_modes: int = N_MODES, radius: float = RADIUS) -> Tensor:
    """The means of the mixture: ``n_modes`` points evenly spaced on a circle, shape (n_modes, 2)."""
    angles = torch.arange(n_modes) * (2 * math.pi / n_modes)
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_ring(n: int, std: float, seed: int) -> Tensor:
    """``n`` points from the mixture (each mode equally likely), drawn with their own generator."""
    gen = torch.Generator().manual_seed(seed)
    modes = ring_modes()
    which = torch.randint(len(modes), (n,), generator=gen)
    return modes[which] + std * torch.randn(n, 2, generator=gen)


def gaussian_mmd(x: Tensor, y: Tensor, bandwidth: float = 0.2) -> float:
    """Squared maximum mean discrepancy between two samples with a Gaussian kernel (biased
    estimate): 0 when the samples come from the same distribution, larger the more they differ."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2)).mean()

    return (k(x, x) + k(y, y) - 2 * k(x, y)).item()


@torch.no_grad()
def sample_quality(samples: Tensor, real: Tensor, std: float, min_share: float = 0.25) -> dict[str, float]:
    """How well ``samples`` (n, 2) match the ring of Gaussians.

    - ``mode_dist``: mean distance from each sample to its nearest mode (about ``std * 1.25``
      for perfect samples, about 2 for samples at the centre);
    - ``high_quality``: fraction of samples within 3 std of a mode;
    - ``modes_covered``: modes that receive at least ``min_share`` of their fair share
      (1/8 of the samples) as high-quality samples;
    - ``mmd``: Gaussian-kernel MMD against ``real`` samples of the target.
    """
    dist, nearest = torch.cdist(samples, ring_modes().to(samples)).min(dim=1)
    good = dist < 3 * std
    per_mode = torch.bincount(nearest[good], minlength=N_MODES).float() / len(samples)
    return {
        "mode_dist": dist.mean().item(),
        "high_quality": good.float().mean().item(),
        "modes_covered": float((per_mode >= min_share / N_MODES).sum().item()),
        "mmd": gaussian_mmd(samples, real.to(samples)),
    }


# -- the GAN ------------------------------------------------------------------------------------
def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


class RingGAN(fulmen.System):
    """Generator and discriminator, each with its own Adam, stepped by hand in training_step."""

    def __init__(
        self,
        noise_dim: int = 4,
        hidden: int = 128,
        lr: float = 1e-3,
        r1_weight: float = 0.1,
        std: float = 0.05,
        n_eval: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # training_step steps the optimizers itself
        self.generator = mlp(noise_dim, hidden, 2)
        self.discriminator = mlp(2, hidden, 1)
        # Fixed noise, and real samples, to measure the generator with (not saved in checkpoints).
        self.register_buffer("eval_noise", torch.randn(n_eval, noise_dim), persistent=False)
        self.register_buffer("eval_real", sample_ring(n_eval, std, seed=12345), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()  # in the order configure_optimizers returned them
        z = torch.randn(len(real), self.hparams.noise_dim, device=self.device)
        is_real = torch.ones(len(real), 1, device=self.device)
        is_fake = torch.zeros(len(real), 1, device=self.device)

        # 1. Discriminator: real samples -> 1, generated samples -> 0. While opt_d is toggled only
        #    the discriminator's parameters require grad: the generator's forward pass builds no
        #    graph, and the backward pass fills only the discriminator's gradients.
        self.toggle_optimizer(opt_d)
        real.requires_grad_(True)  # for the gradient penalty below
        d_real = self.discriminator(real)
        d_fake = self.discriminator(self.generator(z))
        d_loss = F.binary_cross_entropy_with_logits(d_real, is_real) + F.binary_cross_entropy_with_logits(
            d_fake, is_fake
        )
        # R1 penalty: the squared gradient of the discriminator at the real samples. Keeping it
        # small stops the discriminator from overreacting, which keeps the generator from
        # collapsing onto a few modes. create_graph=True lets manual_backward differentiate it.
        (grad_real,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        r1 = grad_real.square().sum(dim=1).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss + self.hparams.r1_weight / 2 * r1)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # 2. Generator: make the (just updated) discriminator call generated samples real. The
        #    gradient flows through the discriminator, which is toggled off and does not change.
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self.generator(z)), is_real)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict({"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}, prog_bar=True)
        self.log("r1_penalty", r1.detach())
        # Nothing to return: with manual optimization the Trainer does no backward pass itself.

    @torch.no_grad()
    def quality(self) -> dict[str, float]:
        """``sample_quality`` of the generator's samples from the fixed evaluation noise."""
        return sample_quality(self.generator(self.eval_noise), self.eval_real, self.hparams.std)

    def on_train_epoch_end(self) -> None:
        for name, value in self.quality().items():
            self.log(name, value, prog_bar=name in ("mode_dist", "modes_covered"))

    def configure_optimizers(self):
        betas = (0.5, 0.999)  # a short momentum memory, as usual for GANs
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas)
        return [opt_g, opt_d]


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--root", default=os.path.join("runs", "gan"), help="folder for logs and checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=8192, help="size of the training set")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    torch.set_num_threads(1)  # layers this small run fastest on one thread (and a busy machine hurts less)
    fulmen.seed_everything(args.seed, workers=True)
    system = RingGAN()
    data = TensorDataset(sample_ring(args.samples, system.hparams.std, seed=args.seed))
    train = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    before = system.quality()

    trainer = fulmen.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        logger=fulmen.CSVLogger(args.root),
        log_every_n_steps=20,  # counts optimizer steps: two per batch here
        deterministic=True,
    )
    trainer.fit(system, train)
    after = system.quality()

    print()
    std = system.hparams.std
    print(f"generated samples vs. the target ({N_MODES} Gaussians, std {std}, on a ring of radius {RADIUS}):")
    for name in before:
        print(f"  {name:14} before: {before[name]:8.4f}   after: {after[name]:8.4f}")
    print("  mode_dist: mean distance to the nearest mode; high_quality: share within 3 std of a mode;")
    print(f"  modes_covered: modes (of {N_MODES}) with >= 1/4 of their share of such samples;")
    print("  mmd: Gaussian-kernel maximum mean discrepancy to real samples (0 for a perfect generator)")
    print(f"optimizer steps : {trainer.global_step} (2 per batch: discriminator, generator)")
    print(f"logs            : {trainer.log_dir}  (metrics.csv, hparams.yaml)")
    print(f"checkpoint      : {trainer.checkpoint_callback.last_model_path}")
    return {"before": before, "after": after, "global_step": trainer.global_step, "log_dir": trainer.log_dir}


if __name__ == "__main__":
    main()
