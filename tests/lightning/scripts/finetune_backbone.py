"""Transfer learning: pretrain a backbone on digits 0-4, fine-tune it on digits 5-9.

The fine-tuning run freezes the pretrained backbone with a ``BaseFinetuning`` callback and
unfreezes it (in a new parameter group with a smaller learning rate) at a milestone epoch, while
a ``ReduceLROnPlateau`` scheduler, configured through Lightning's scheduler dict (``interval``,
``frequency``, ``monitor``), watches the validation loss. Only the imports are changed (was
``import lightning.pytorch as pl`` and ``from lightning.pytorch.callbacks import ...``).
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen.lightning.pytorch as pl
from fulmen.lightning.pytorch.callbacks import BaseFinetuning, LearningRateMonitor


def backbone():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()
    )


class Classifier(pl.LightningModule):
    def __init__(self, num_classes: int = 5, lr: float = 1e-2, pretrained: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.feature_extractor = backbone()
        if pretrained is not None:
            self.feature_extractor.load_state_dict(torch.load(pretrained, weights_only=True))
        self.classifier = nn.Linear(32, num_classes)
        self.epoch_log = []
        self.val_losses = []

    def forward(self, x):
        return self.classifier(self.feature_extractor(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.val_losses.append(self.trainer.callback_metrics["val_loss"].item())

    def on_train_epoch_start(self):
        optimizer = self.trainer.optimizers[0]
        self.epoch_log.append({
            "epoch": self.current_epoch,
            "groups": len(optimizer.param_groups),
            "backbone_trainable": self.feature_extractor[1].weight.requires_grad,
            "backbone_weight": self.feature_extractor[1].weight.detach().clone(),
            "lrs": [group["lr"] for group in optimizer.param_groups],
        })

    def configure_optimizers(self):
        # only the parameters that train from the start; the callback adds the backbone later
        optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=self.hparams.lr,
                                    momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=0, threshold=0.3
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch", "frequency": 1},
        }


class FeatureExtractorFreezeUnfreeze(BaseFinetuning):
    def __init__(self, unfreeze_at_epoch: int = 3, backbone_lr: float = 1e-3):
        super().__init__()
        self._unfreeze_at_epoch = unfreeze_at_epoch
        self._backbone_lr = backbone_lr

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.feature_extractor)

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == self._unfreeze_at_epoch:
            self.unfreeze_and_add_param_group(
                modules=pl_module.feature_extractor, optimizer=optimizer, lr=self._backbone_lr, train_bn=True
            )


def split(images, targets, digits):
    keep = torch.isin(targets, torch.tensor(digits))
    x, y = images[keep], targets[keep] - digits[0]
    n_val = len(x) // 5
    train = DataLoader(TensorDataset(x[n_val:], y[n_val:]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[:n_val], y[:n_val]), batch_size=256)
    return train, val


def main():
    pl.seed_everything(21)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target)

    # 1. pretrain on digits 0-4 and keep the feature extractor
    train, val = split(images, targets, [0, 1, 2, 3, 4])
    pretrainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    source = Classifier(lr=0.05)
    pretrainer.fit(source, train, val)
    assert pretrainer.callback_metrics["val_acc"] > 0.9
    torch.save(source.feature_extractor.state_dict(), "backbone.pt")

    # 2. fine-tune on digits 5-9
    train, val = split(images, targets, [5, 6, 7, 8, 9])
    model = Classifier(lr=0.05, pretrained="backbone.pt")
    pretrained = model.feature_extractor[1].weight.detach().clone()
    finetuning = FeatureExtractorFreezeUnfreeze(unfreeze_at_epoch=3, backbone_lr=5e-3)
    lr_monitor = LearningRateMonitor(logging_interval="epoch")
    trainer = pl.Trainer(max_epochs=6, callbacks=[finetuning, lr_monitor], log_every_n_steps=10)
    trainer.fit(model, train, val)

    log = model.epoch_log
    assert [e["groups"] for e in log] == [1, 1, 1, 2, 2, 2], [e["groups"] for e in log]
    assert [e["backbone_trainable"] for e in log] == [False, False, False, True, True, True]
    # frozen: the pretrained weights were untouched until the milestone, then trained
    assert all(torch.equal(e["backbone_weight"], pretrained) for e in log[:4])
    assert not torch.equal(model.feature_extractor[1].weight, pretrained)
    assert log[3]["lrs"][1] == 5e-3

    # ReduceLROnPlateau was stepped once per epoch with that epoch's val_loss
    head_lrs = [e["lrs"][0] for e in log] + [trainer.optimizers[0].param_groups[0]["lr"]]
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, mode="min", factor=0.5, patience=0, threshold=0.3)
    expected = [0.05]
    for val_loss in model.val_losses:
        plateau.step(val_loss)
        expected.append(reference.param_groups[0]["lr"])
    print("val_loss per epoch:", [round(v, 4) for v in model.val_losses])
    print("head learning rate per epoch:", head_lrs)
    assert len(model.val_losses) == 6 and head_lrs == expected, (head_lrs, expected)
    assert head_lrs[-1] < head_lrs[0]
    config = trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (config.monitor, config.interval, config.frequency) == ("val_loss", "epoch", 1)

    assert trainer.callback_metrics["val_acc"] > 0.85, trainer.callback_metrics
    assert "lr-SGD" in lr_monitor.last_values or any(k.startswith("lr-SGD") for k in lr_monitor.last_values)
    print("OK")


if __name__ == "__main__":
    main()
