"""``fulmen.lightning``: Lightning 2.x scripts run with only their imports changed."""

from __future__ import annotations

import logging
import os
import warnings

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

# --- a typical Lightning script, as in Lightning's docs; only these imports are changed -----------
import fulmen.lightning as L
from fulmen.lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint


class LitRegressor(L.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class RegressionData(L.LightningDataModule):
    def __init__(self, batch_size: int = 16):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        self.data = TensorDataset(x, x.sum(dim=1, keepdim=True))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.data, batch_size=self.hparams.batch_size)


def test_typical_lightning_script_runs(tmp_path):
    L.seed_everything(42)
    model, dm = LitRegressor(hidden=8), RegressionData()
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        log_every_n_steps=2,
        enable_progress_bar=False,
        callbacks=[
            ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2),
            EarlyStopping(monitor="val_loss", patience=3),
            LearningRateMonitor(logging_interval="epoch"),
        ],
    )
    trainer.fit(model, datamodule=dm)

    run = tmp_path / "lightning_logs" / "version_0"
    assert trainer.log_dir == os.fspath(run)
    assert (run / "checkpoints" / "epoch=1-step=8.ckpt").is_file()
    assert (run / "hparams.yaml").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    from torch.utils.tensorboard import SummaryWriter

    assert isinstance(trainer.logger.experiment, SummaryWriter)
    assert trainer.lightning_module is model
    assert trainer.current_epoch == 2

    best = trainer.checkpoint_callback.best_model_path
    restored = LitRegressor.load_from_checkpoint(best)
    assert restored.hparams.hidden == 8 and restored.hparams.lr == 0.1
    (result,) = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)
    assert set(result) == {"test_loss"}
    assert result["test_loss"] == pytest.approx(trainer.checkpoint_callback.best_model_score.item(), rel=1e-5)

    # A second run gets the next version, as in Lightning.
    trainer2 = L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, log_every_n_steps=2, enable_progress_bar=False
    )
    trainer2.fit(LitRegressor(), datamodule=RegressionData())
    assert (tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "epoch=0-step=4.ckpt").is_file()


def test_csv_logger_when_tensorboard_is_missing(tmp_path, monkeypatch):
    from fulmen.lightning import _trainer

    monkeypatch.setattr(_trainer, "_tensorboard_available", lambda: False)
    trainer = L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, log_every_n_steps=2, enable_progress_bar=False
    )
    from fulmen.lightning.loggers import CSVLogger

    assert isinstance(trainer.logger, CSVLogger)
    trainer.fit(LitRegressor(), datamodule=RegressionData())
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()


def test_import_names_and_aliases(capsys):
    import fulmen
    import fulmen.lightning.pytorch as pl
    from fulmen.lightning import callbacks, core, loggers, trainer, utilities
    from fulmen.lightning.loggers.tensorboard import TensorBoardLogger
    from fulmen.lightning.pytorch.callbacks import ModelCheckpoint as PlModelCheckpoint
    from fulmen.lightning.pytorch.callbacks.finetuning import BaseFinetuning as PlBaseFinetuning

    assert pl is L
    assert issubclass(L.LightningModule, fulmen.System) and core.LightningModule is L.LightningModule
    assert L.LightningDataModule is fulmen.DataModule and core.LightningDataModule is fulmen.DataModule
    assert L.Callback is fulmen.Callback and callbacks.Callback is fulmen.Callback
    assert trainer.Trainer is L.Trainer and issubclass(L.Trainer, fulmen.Trainer)
    assert L.seed_everything is fulmen.seed_everything
    assert PlModelCheckpoint is fulmen.ModelCheckpoint is callbacks.ModelCheckpoint
    assert PlBaseFinetuning is callbacks.BaseFinetuning
    assert loggers.TensorBoardLogger is TensorBoardLogger and issubclass(
        TensorBoardLogger, fulmen.TensorBoardLogger
    )
    assert loggers.Logger is fulmen.Logger
    assert utilities.rank_zero_only is fulmen.rank_zero_only
    for name in (
        "Timer",
        "StochasticWeightAveraging",
        "GradientAccumulationScheduler",
        "ModelSummary",
        "DeviceStatsMonitor",
        "EarlyStopping",
        "LearningRateMonitor",
    ):
        assert getattr(callbacks, name) is getattr(fulmen, name)
    assert issubclass(callbacks.TQDMProgressBar, fulmen.ProgressBar)
    assert issubclass(callbacks.RichProgressBar, fulmen.ProgressBar)
    L.cli_lightning_logo()
    assert "running Lightning code" in capsys.readouterr().out
    with pytest.raises(AttributeError, match="no attribute 'Fabric'"):
        L.Fabric  # noqa: B018


def test_logger_defaults_and_prefix(tmp_path):
    from fulmen.lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    tb = TensorBoardLogger(tmp_path)
    assert tb.log_dir == os.fspath(tmp_path / "lightning_logs" / "version_0")
    csv = CSVLogger(tmp_path, prefix="fit")
    csv.log_metrics({"loss": 1.0, "epoch": 0.0}, step=0)
    csv.save()
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,fit-loss,step"  # Lightning's header: the names sorted
    graph = TensorBoardLogger(tmp_path, log_graph=True, sub_dir="tb")  # Lightning's arguments, honoured
    assert graph._log_graph and graph._sub_dir == "tb"
    assert MLFlowLogger(save_dir=os.fspath(tmp_path), log_model=True)._log_checkpoints == "all"
    with pytest.raises(ValueError, match="log_model='best'"):
        MLFlowLogger(save_dir=os.fspath(tmp_path), log_model="best")


def test_progress_bars_take_lightning_arguments(caplog):
    from fulmen.lightning.callbacks import RichProgressBar, TQDMProgressBar

    assert TQDMProgressBar(refresh_rate=5).print_every_n_steps == 5
    with pytest.raises(ValueError, match="enable_progress_bar=False"):
        TQDMProgressBar(refresh_rate=0)
    with pytest.raises(ValueError, match="process_position"):
        TQDMProgressBar(process_position=1)
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        RichProgressBar(theme=object())
    assert "theme" in caplog.text


def test_rank_zero_helpers(caplog, monkeypatch):
    from fulmen.lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        rank_zero_info("hello from rank zero")
    assert "hello from rank zero" in caplog.text
    with pytest.warns(UserWarning, match="careful"):
        rank_zero_warn("careful")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    caplog.clear()
    rank_zero_info("not printed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rank_zero_warn("not warned")
    assert "not printed" not in caplog.text and not caught


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"plugins": [object()]}, "plugins="),
        ({"barebones": True}, "barebones=True"),
        ({"enable_autolog_hparams": False}, "enable_autolog_hparams=False"),
        ({"model_registry": "my-model"}, "model_registry="),
        ({"gpus": 1}, "gpus="),
        ({"resume_from_checkpoint": "x.ckpt"}, "resume_from_checkpoint="),
        ({"benchmark": True, "deterministic": True}, "benchmark=True, deterministic=True"),
    ],
)
def test_unsupported_arguments_are_refused(tmp_path, flags, match):
    from fulmen.errors import FlagError

    with pytest.raises(FlagError, match=match):
        L.Trainer(default_root_dir=tmp_path, **flags)


def test_accepted_lightning_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        plugins=None,
        barebones=False,
        enable_autolog_hparams=True,
        benchmark=True,
        logger=False,
    )
    assert torch.backends.cudnn.benchmark is True
    assert trainer.logger is None
    from fulmen.errors import FlagError

    with pytest.raises(FlagError, match="weights_only=False"):
        trainer.test(LitRegressor(), datamodule=RegressionData(), weights_only=False)


# --- BaseFinetuning --------------------------------------------------------------------------------
from fulmen.lightning.callbacks.finetuning import BaseFinetuning  # noqa: E402


class FeatureExtractorFreezeUnfreeze(BaseFinetuning):
    def __init__(self, unfreeze_at_epoch: int = 1):
        super().__init__()
        self._unfreeze_at_epoch = unfreeze_at_epoch

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, current_epoch, optimizer):
        if current_epoch == self._unfreeze_at_epoch:
            self.unfreeze_and_add_param_group(modules=pl_module.backbone, optimizer=optimizer, lr=0.01)


class TransferModel(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.backbone(x)), y)

    def on_train_epoch_start(self):
        opt = self.trainer.optimizers[0]
        self.seen.append(
            (
                len(opt.param_groups),
                self.backbone[0].weight.requires_grad,
                self.backbone[0].weight.detach().clone(),
            )
        )

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


def test_base_finetuning_freezes_then_unfreezes(tmp_path):
    model, finetuning = TransferModel(), FeatureExtractorFreezeUnfreeze(unfreeze_at_epoch=1)
    trainer = L.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        callbacks=[finetuning],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = RegressionData()
    data.setup("fit")
    trainer.fit(model, data.train_dataloader())

    (groups0, grad0, w0), (groups1, grad1, w1) = model.seen
    assert (groups0, grad0) == (1, False)  # frozen for epoch 0: only the head (and batch norm) trains
    assert torch.equal(w0, w1)
    assert (groups1, grad1) == (2, True)  # unfrozen at the start of epoch 1, in a new group
    opt = trainer.optimizers[0]
    assert opt.param_groups[1]["lr"] == 0.01
    assert not torch.equal(model.backbone[0].weight, w1)  # and trained in epoch 1
    assert model.backbone[1].weight in opt.param_groups[0]["params"]  # train_bn=True kept batch norm training
    saved = finetuning.state_dict()["internal_optimizer_metadata"][0]
    assert saved[1]["params"] == ["backbone.0.weight", "backbone.0.bias"]


def test_base_finetuning_helpers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    BaseFinetuning.freeze(net, train_bn=False)
    assert not any(p.requires_grad for p in net.parameters())
    assert not net[1].track_running_stats
    opt = torch.optim.SGD(net[0].parameters(), lr=1.0)  # frozen parameters given to the optimizer
    with pytest.warns(UserWarning, match="already in the optimizer"):
        BaseFinetuning.unfreeze_and_add_param_group(net, opt)  # default lr: the first group's / 10
    assert all(p.requires_grad for p in net.parameters()) and net[1].track_running_stats
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[1]["params"] == [net[1].weight, net[1].bias]
    with pytest.raises(NotImplementedError, match="finetune_function"):
        BaseFinetuning().finetune_function(None, 0, opt)


def test_base_finetuning_run_resumes_with_its_added_parameter_group(tmp_path):
    def trainer(epochs, **kwargs):
        return L.Trainer(
            max_epochs=epochs,
            default_root_dir=tmp_path,
            callbacks=[FeatureExtractorFreezeUnfreeze(unfreeze_at_epoch=1)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
            **kwargs,
        )

    data = RegressionData()
    data.setup("fit")
    torch.manual_seed(0)
    full = TransferModel()
    start = {k: v.clone() for k, v in full.state_dict().items()}
    torch.manual_seed(1)
    trainer(3).fit(full, data.train_dataloader())

    # the same run, stopped after epoch 1 (the backbone is already in its own parameter group) ...
    first = TransferModel()
    first.load_state_dict(start)
    torch.manual_seed(1)
    t2 = trainer(2)
    t2.fit(first, data.train_dataloader())
    ckpt = t2.checkpoint_callback.last_model_path or t2.checkpoint_callback.best_model_path
    # ... and resumed: the callback adds the group back before the optimizer state is loaded
    resumed = TransferModel()
    t3 = trainer(3)
    t3.fit(resumed, data.train_dataloader(), ckpt_path=ckpt)
    assert len(t3.optimizers[0].param_groups) == 2
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


class WarmUp(L.LightningModule):
    """Lightning's documented warm-up: optimizer_step overridden to scale the learning rate."""

    def __init__(self, learning_rate=0.1, warmup=10):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)
        self.lrs = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
        loss = optimizer.step(closure=optimizer_closure)
        assert loss is not None and loss.ndim == 0  # the closure gives the step's loss
        if self.trainer.global_step < self.hparams.warmup:
            scale = min(1.0, float(self.trainer.global_step + 1) / self.hparams.warmup)
            for pg in optimizer.param_groups:
                pg["lr"] = scale * self.hparams.learning_rate
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_an_optimizer_step_override_steps_and_warms_up(tmp_path, precision):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    model = WarmUp()
    before = model.net.weight.detach().clone()
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, precision=precision)
    trainer.fit(model, loader)
    assert trainer.global_step == 16
    # global_step inside optimizer_step counts the steps before this one (as in Lightning)
    assert model.lrs[:3] == pytest.approx([0.01, 0.02, 0.03])
    assert model.lrs[-1] == pytest.approx(0.1)
    assert not torch.equal(model.net.weight, before)  # the override's optimizer.step() stepped


def test_an_optimizer_step_that_does_not_step_leaves_the_weights(tmp_path):
    class NoStep(WarmUp):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
            optimizer_closure()

    model = NoStep()
    before = model.net.weight.detach().clone()
    x = torch.randn(16, 4)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    )
    assert torch.equal(model.net.weight, before)


def test_plain_fulmen_systems_still_refuse_optimizer_step():
    import fulmen

    with pytest.raises(TypeError, match="a PyTorch Lightning hook that fulmen does not call"):

        class Plain(fulmen.System):
            def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
                optimizer.step(closure=optimizer_closure)
