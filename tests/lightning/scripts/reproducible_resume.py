"""Reproducible training with the Trainer's flags, a smoke test, and resuming a run.

``seed_everything(42, workers=True)`` with ``deterministic=True`` (dataloader workers included),
bf16 mixed precision, gradient clipping, gradient accumulation, ``limit_train_batches``, a
validation twice per epoch (``val_check_interval=0.5``), a ``fast_dev_run`` smoke test before the
real run, and a second Trainer that continues the run from ``last.ckpt`` with
``trainer.fit(..., ckpt_path="last")``. Only the imports are changed (was ``import lightning as L``
and ``from lightning.pytorch.callbacks import ModelCheckpoint``).
"""

import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning as L
from fulmen.lightning.callbacks import Callback, ModelCheckpoint


class LitDigits(L.LightningModule):
    def __init__(self, hidden: int = 96, lr: float = 0.05, dropout: float = 0.2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )
        self.logits_dtypes = set()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.logits_dtypes.add(logits.dtype)  # bf16 under precision="bf16-mixed"
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return [optimizer], [scheduler]


class CountValidations(Callback):
    def __init__(self):
        self.at_steps = []
        self.config = None

    def on_fit_start(self, trainer, pl_module):
        # what many projects write to their experiment tracker
        self.config = {
            "precision": trainer.precision,
            "gradient_clip_val": trainer.gradient_clip_val,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "limit_train_batches": trainer.limit_train_batches,
            "val_check_interval": trainer.val_check_interval,
            "num_training_batches": trainer.num_training_batches,
        }

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at_steps.append(trainer.global_step)


def make_loaders():
    digits = load_digits()
    data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32) / 16.0, torch.tensor(digits.target))
    train_set, val_set = random_split(data, [1440, 357], generator=torch.Generator().manual_seed(1))
    # 45 batches; limit_train_batches=0.8 keeps 36 of them, i.e. 18 optimizer steps per epoch
    train = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True)
    val = DataLoader(val_set, batch_size=128)
    return train, val


def trainer_for(max_epochs, callbacks, **kwargs):
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
        accumulate_grad_batches=2,
        limit_train_batches=0.8,
        val_check_interval=0.5,
        callbacks=callbacks,
        log_every_n_steps=5,
        **kwargs,
    )


def train_from_scratch(max_epochs, root):
    L.seed_everything(42, workers=True)
    train, val = make_loaders()
    model = LitDigits()
    counter = CountValidations()
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), save_last=True,
                                 every_n_epochs=1, save_top_k=-1)
    trainer = trainer_for(max_epochs, [checkpoint, counter], default_root_dir=root)
    trainer.fit(model, train, val)
    return trainer, model, counter


def main():
    # 1. smoke test: one batch of training and validation, nothing written
    L.seed_everything(42, workers=True)
    train, val = make_loaders()
    smoke = L.Trainer(fast_dev_run=True, precision="32", default_root_dir="smoke")
    smoke.fit(LitDigits(), train, val)
    assert smoke.global_step == 1
    assert not os.path.exists(os.path.join("smoke", "lightning_logs")), os.listdir("smoke")

    # 2. the same seed twice gives the same model
    trainer_a, model_a, counter = train_from_scratch(2, "run_a")
    _, model_b, _ = train_from_scratch(2, "run_b")
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b), "deterministic runs differ"
    assert trainer_a.global_step == 2 * 18, trainer_a.global_step
    # validation twice per epoch: after 18 of the 36 batches and at the end of the epoch
    assert counter.at_steps == [9, 18, 27, 36], counter.at_steps
    assert counter.config == {"precision": "bf16-mixed", "gradient_clip_val": 1.0, "accumulate_grad_batches": 2,
                             "limit_train_batches": 0.8, "val_check_interval": 0.5, "num_training_batches": 36}, counter.config
    assert model_a.logits_dtypes == {torch.bfloat16}
    assert model_a.net[1].weight.dtype == torch.float32  # mixed: the weights stay float32
    assert trainer_a.callback_metrics["val_acc"] > 0.8, trainer_a.callback_metrics
    assert {"epoch=0-step=18.ckpt", "epoch=1-step=36.ckpt", "last.ckpt"} <= set(os.listdir("run_a/checkpoints"))
    assert trainer_a.optimizers[0].param_groups[0]["lr"] == 0.025  # StepLR(step_size=2) stepped once

    # 3. a new Trainer (as after a crash or a job time limit) continues run_a up to epoch 4
    L.seed_everything(42, workers=True)
    train, val = make_loaders()
    checkpoint = ModelCheckpoint(dirpath="run_a/checkpoints", save_last=True, every_n_epochs=1, save_top_k=-1)
    resumed_trainer = trainer_for(4, [checkpoint], default_root_dir="run_a")
    resumed = LitDigits()
    resumed_trainer.fit(resumed, train, val, ckpt_path="last")
    assert resumed_trainer.current_epoch == 4
    assert resumed_trainer.global_step == 4 * 18, resumed_trainer.global_step
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == 0.0125
    assert os.path.isfile("run_a/checkpoints/epoch=3-step=72.ckpt")
    last = torch.load("run_a/checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 72
    assert resumed_trainer.callback_metrics["val_acc"] > 0.85, resumed_trainer.callback_metrics
    print(f"val_acc after 2 epochs: {trainer_a.callback_metrics['val_acc']:.3f}, "
          f"after resuming to 4: {resumed_trainer.callback_metrics['val_acc']:.3f}")
    print("OK")


if __name__ == "__main__":
    main()
