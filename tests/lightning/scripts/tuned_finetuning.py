"""Tune, fine-tune, survive a crash: Lightning's tuning and fine-tuning callbacks together.

The batch size and the learning rate are searched when the fit starts (``BatchSizeFinder``,
``LearningRateFinder``), the pretrained backbone is frozen and then fine-tuned on a learning-rate
schedule of its own (``BackboneFinetuning``), ``RichModelSummary`` prints the layers, a
``LambdaCallback`` keeps a history, and ``OnExceptionCheckpoint`` saves the run when it is
interrupted (a Ctrl-C after 30 steps here), so that the script picks it up again with
``ckpt_path=``. Only the imports are changed (was ``import lightning.pytorch as pl`` and
``from lightning.pytorch.callbacks import ...``).
"""

import os

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import fulmen.lightning.pytorch as pl
from fulmen.lightning.pytorch.callbacks import (
    BackboneFinetuning,
    BatchSizeFinder,
    LambdaCallback,
    LearningRateFinder,
    OnExceptionCheckpoint,
    RichModelSummary,
)

CRASH_DIR = "crash"


class DigitsData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage):
        digits = load_digits()
        data = TensorDataset(torch.tensor(digits.images, dtype=torch.float32) / 16.0, torch.tensor(digits.target))
        self.train_set, self.val_set = random_split(data, [1440, 357], generator=torch.Generator().manual_seed(1))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=256)


class Classifier(pl.LightningModule):
    def __init__(self, learning_rate: float = 1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(
            filter(lambda p: p.requires_grad, self.parameters()), lr=self.hparams.learning_rate, momentum=0.9
        )


def interrupt_at(step):
    def hook(trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == step:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a run

    return hook


def run(history, crash_at=None):
    callbacks = [
        BatchSizeFinder(init_val=16, max_trials=4),
        LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=50),
        BackboneFinetuning(unfreeze_backbone_at_epoch=2, lambda_func=lambda epoch: 1.5),
        RichModelSummary(max_depth=2),
        LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: history.append(
            (trainer.current_epoch, len(trainer.optimizers[0].param_groups))
        )),
        OnExceptionCheckpoint(CRASH_DIR),
    ]
    if crash_at is not None:
        callbacks.append(LambdaCallback(on_train_batch_end=interrupt_at(crash_at)))
    pl.seed_everything(7)
    trainer = pl.Trainer(max_epochs=4, deterministic=True, callbacks=callbacks, log_every_n_steps=5,
                         enable_progress_bar=False)
    model, data = Classifier(), DigitsData()
    resume = os.path.join(CRASH_DIR, "on_exception.ckpt")
    trainer.fit(model, datamodule=data, ckpt_path=resume if os.path.exists(resume) else None)
    return trainer, model, data


def main():
    history = []
    try:
        run(history, crash_at=30)
        raise AssertionError("the run should have been interrupted")
    except KeyboardInterrupt:
        pass
    assert os.path.isfile(os.path.join(CRASH_DIR, "on_exception.ckpt"))
    saved = torch.load(os.path.join(CRASH_DIR, "on_exception.ckpt"), weights_only=True)
    assert saved["global_step"] == 30, saved["global_step"]

    # the same script run again: it resumes from the crash checkpoint, with the batch size and
    # learning rate found the first time (no new search), and the backbone's schedule
    trainer, model, data = run(history)
    assert data.hparams.batch_size == 128, data.hparams.batch_size  # 16, 32, 64, 128 (max_trials=4)
    assert trainer.train_dataloader.batch_size == 128
    lr_finder = next(cb for cb in trainer.callbacks if isinstance(cb, LearningRateFinder))
    suggestion = lr_finder.optimal_lr.suggestion()
    assert suggestion is not None and model.hparams.learning_rate == suggestion
    assert trainer.global_step == 4 * 12, trainer.global_step  # 1440 / 128 -> 12 batches an epoch
    assert not os.path.exists(os.path.join(CRASH_DIR, "on_exception.ckpt"))  # removed once the run finished
    # epochs 0-1 with the head only, the backbone's group from epoch 2 (epoch 1 ended in the first run)
    assert history == [(0, 1), (1, 1), (2, 2), (3, 2)], history
    groups = trainer.optimizers[0].param_groups
    assert groups[0]["lr"] == suggestion and groups[1]["lr"] == min(suggestion, 0.1 * suggestion * 1.5)

    # the interrupted-and-resumed run ends where an uninterrupted one does
    _, uninterrupted, _ = run([])
    for a, b in zip(model.state_dict().values(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), "the resumed run differs from the uninterrupted one"
    assert trainer.callback_metrics["val_acc"] > 0.8, trainer.callback_metrics
    print(f"batch size {data.hparams.batch_size}, learning rate {suggestion:.4g}, "
          f"val_acc {trainer.callback_metrics['val_acc']:.3f}")
    print("OK")


if __name__ == "__main__":
    main()
