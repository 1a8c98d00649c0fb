"""fulmen.lightning.Trainer: Lightning's entry-point signatures, its ``ckpt_path`` defaults, and the
read-only properties Lightning code reads (found missing by the scripts in tests/lightning/scripts)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen.lightning as L
from fulmen.lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: dict[str, Any] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        self.seen.setdefault("last_batch", []).append((batch_idx, self.trainer.is_last_batch))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))
        self.seen.setdefault("validating", set()).add((self.trainer.sanity_checking, self.trainer.validating))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self.layer(x), y))
        self.seen["testing"] = (self.trainer.testing, self.trainer.validating, self.trainer.predicting)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen["predicting"] = (self.trainer.predicting, self.trainer.testing)
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Data(L.LightningDataModule):
    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(40, 4, generator=g)
        self.data = TensorDataset(x, x.sum(1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    test_dataloader = val_dataloader


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)  # 5 batches


def trainer(tmp_path, **kwargs) -> L.Trainer:
    kwargs.setdefault("max_epochs", 2)
    return L.Trainer(default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1, **kwargs)


def test_best_with_the_default_checkpoint_callback_is_its_newest_checkpoint(tmp_path):
    """Lightning: without a monitor, ModelCheckpoint's best_model_path is the checkpoint it wrote last,
    and ckpt_path="best" loads it (fulmen's own Trainer asks for a monitor)."""
    t = trainer(tmp_path)
    t.fit(Regressor(), loader(), loader())
    best = t.checkpoint_callback.best_model_path
    assert os.path.basename(best) == "epoch=1-step=10.ckpt"
    assert t._resolve_ckpt("best") == best
    (result,) = t.test(dataloaders=loader(), ckpt_path="best", verbose=False)
    assert set(result) == {"test_loss"}

    fresh = trainer(tmp_path)
    with pytest.raises(ValueError, match="has not saved a checkpoint yet"):
        fresh.test(Regressor(), loader(), ckpt_path="best", verbose=False)
    no_ckpt = trainer(tmp_path, enable_checkpointing=False, logger=False)
    with pytest.raises(ValueError, match="no ModelCheckpoint is configured"):
        no_ckpt.test(Regressor(), loader(), ckpt_path="best", verbose=False)


def test_evaluating_without_a_model_after_fit_uses_the_best_checkpoint(tmp_path):
    model = Regressor()
    t = trainer(tmp_path, callbacks=[ModelCheckpoint(monitor="val_loss")])
    t.fit(model, loader(), loader())
    saved = torch.load(t.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    with torch.no_grad():
        model.layer.weight.zero_()

    # a model given: its current weights, as in Lightning
    t.test(model, loader(), verbose=False)
    assert torch.count_nonzero(model.layer.weight) == 0
    # no model: the best checkpoint of the fit (Lightning's ckpt_path=None default)
    for run in (lambda: t.test(dataloaders=loader(), verbose=False),
                lambda: t.validate(dataloaders=loader(), verbose=False),
                lambda: t.predict(dataloaders=loader())):
        with torch.no_grad():
            model.layer.weight.zero_()
        run()
        assert torch.equal(model.layer.weight, saved["layer.weight"])


def test_no_model_and_no_checkpoint_keeps_the_current_weights(tmp_path):
    model = Regressor()
    t = trainer(tmp_path, enable_checkpointing=False, logger=False)
    t.fit(model, loader())
    weight = model.layer.weight.detach().clone()
    t.test(dataloaders=loader(), verbose=False)
    assert torch.equal(model.layer.weight, weight)


def test_lightnings_keyword_and_positional_forms(tmp_path):
    t = trainer(tmp_path, max_epochs=1)
    model = Regressor()
    t.fit(model=model, train_dataloaders=loader(), val_dataloaders=loader())
    assert t.global_step == 5
    t.fit(system=Regressor(), train_dataloaders=loader())  # fulmen's keyword still works
    with pytest.raises(TypeError, match="both model= and system="):
        t.test(model=model, system=model, dataloaders=loader())
    with pytest.raises(TypeError, match="needs the LightningModule"):
        t.fit(train_dataloaders=loader())

    best = t.checkpoint_callback.best_model_path
    # Lightning's order: (model, dataloaders, ckpt_path, verbose, datamodule)
    (r1,) = t.test(model, loader(), best, False)
    (r2,) = t.validate(model, None, best, False, Data())
    # fulmen's order: (system, dataloaders, datamodule, verbose, ckpt_path) is recognised by type
    (r3,) = t.validate(model, None, Data(), False, best)
    assert set(r1) == {"test_loss"} and r2 == r3
    out = t.predict(model=model, dataloaders=loader(), return_predictions=None)
    assert len(out) == 5
    assert t.predict(model, loader(), return_predictions=False) is None


def test_lightnings_read_only_trainer_properties(tmp_path):
    stop = EarlyStopping(monitor="val_loss", patience=50)
    t = trainer(tmp_path, callbacks=[stop], precision="bf16", gradient_clip_val=0.5, limit_train_batches=4,
                val_check_interval=0.5, num_sanity_val_steps=1)
    assert t.precision == "bf16-mixed"
    assert t.early_stopping_callback is stop and t.early_stopping_callbacks == [stop]
    assert (t.gradient_clip_val, t.gradient_clip_algorithm) == (0.5, None)  # (Lightning: None when not given)
    assert (t.limit_train_batches, t.limit_val_batches, t.val_check_interval) == (4, 1.0, 0.5)
    assert (t.check_val_every_n_epoch, t.num_sanity_val_steps, t.overfit_batches) == (1, 1, 0.0)
    assert t.reload_dataloaders_every_n_epochs == 0
    assert not (t.validating or t.testing or t.predicting or t.interrupted or t.is_last_batch)

    model = Regressor()
    t.fit(model, loader(), loader())
    # is_last_batch: true on the epoch's last batch only (4 batches with limit_train_batches=4)
    assert model.seen["last_batch"] == [(0, False), (1, False), (2, False), (3, True)] * 2
    # validating: during validation inside fit, not during the sanity check
    assert model.seen["validating"] == {(True, False), (False, True)}
    t.test(model, loader(), verbose=False)
    assert model.seen["testing"] == (True, False, False)
    t.predict(model, loader())
    assert model.seen["predicting"] == (True, False)
    assert not (t.validating or t.testing or t.predicting)
    assert L.Trainer(precision="32", logger=False).precision == "32-true"
    assert L.Trainer(fast_dev_run=True, logger=False).limit_train_batches == 1


def test_interrupted(tmp_path):
    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            raise KeyboardInterrupt

    t = trainer(tmp_path, callbacks=[CtrlC()], logger=False)
    with pytest.raises(KeyboardInterrupt):
        t.fit(Regressor(), loader())
    assert t.interrupted


@pytest.mark.parametrize(
    ("flag", "advice"),
    [
        ("resume_from_checkpoint", "ckpt_path=path"),
        ("auto_lr_find", "Tuner(trainer).lr_find"),
        ("checkpoint_callback", "enable_checkpointing"),
        ("progress_bar_refresh_rate", "TQDMProgressBar(refresh_rate=N)"),
        ("replace_sampler_ddp", "use_distributed_sampler"),
    ],
)
def test_removed_lightning_1x_arguments_name_their_replacement(tmp_path, flag, advice):
    from fulmen.errors import FlagError

    with pytest.raises(FlagError, match=r"Lightning 1\.x argument that Lightning 2\.x removed") as err:
        L.Trainer(default_root_dir=tmp_path, **{flag: True})
    assert advice in str(err.value)
