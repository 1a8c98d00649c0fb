"""Lightning's LambdaCallback, BackboneFinetuning, OnExceptionCheckpoint, RichModelSummary,
LearningRateFinder and BatchSizeFinder in ``fulmen.lightning.callbacks``."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.lightning.callbacks import (
    BackboneFinetuning,
    BatchSizeFinder,
    LambdaCallback,
    LearningRateFinder,
    OnExceptionCheckpoint,
    RichModelSummary,
)
from fulmen.trainer._hooks import CALLBACK_HOOKS
from fulmen.tuner import LRFinder, Tuner


def quiet(**kwargs: Any) -> L.Trainer:
    flags: dict[str, Any] = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    flags.update(kwargs)
    return L.Trainer(**flags)


def regression(n: int = 64, batch_size: int = 8, shuffle: bool = True, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed + 1))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)
        self.steps_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.steps_seen.append(self.trainer.global_step)
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


# -- LambdaCallback -------------------------------------------------------------------------------------
def test_lambda_callback_functions_are_called_at_their_hooks(tmp_path):
    calls: dict[str, list[Any]] = {}

    def record(name):
        return lambda trainer, pl_module, *args: calls.setdefault(name, []).append((trainer, pl_module, args))

    names = [
        "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start",
        "on_train_batch_end", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
        "on_before_zero_grad", "on_train_epoch_end", "on_validation_start", "on_validation_epoch_end",
        "on_sanity_check_start", "on_save_checkpoint", "on_train_end", "on_fit_end", "teardown",
    ]
    hooks = {name: record(name) for name in names}
    # An evaluation batch hook written without dataloader_idx is called without it.
    hooks["on_validation_batch_end"] = lambda trainer, pl_module, outputs, batch, batch_idx: calls.setdefault(
        "on_validation_batch_end", []
    ).append(batch_idx)
    callback = LambdaCallback(**hooks, on_test_start=None)  # None: no hook, as in Lightning
    assert set(callback.hooks) == {*names, "on_validation_batch_end"}
    model = Regressor()
    trainer = quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[callback], enable_checkpointing=True)
    trainer.fit(model, regression(), regression(shuffle=False))

    batches = 2 * 8
    counts = {name: len(got) for name, got in calls.items()}
    assert counts == {
        "setup": 1, "on_fit_start": 1, "on_train_start": 1, "on_train_epoch_start": 2, "on_train_batch_start": batches,
        "on_train_batch_end": batches, "on_before_backward": batches, "on_after_backward": batches,
        "on_before_optimizer_step": batches, "on_before_zero_grad": batches, "on_train_epoch_end": 2,
        "on_validation_start": 3, "on_validation_epoch_end": 3, "on_sanity_check_start": 1, "on_save_checkpoint": 2,
        "on_train_end": 1, "on_fit_end": 1, "teardown": 1, "on_validation_batch_end": 2 + 2 * 8,
    }
    trainer_seen, module_seen, args = calls["setup"][0]
    assert trainer_seen is trainer and module_seen is model and args == ("fit",)
    assert isinstance(calls["on_before_backward"][0][2][0], torch.Tensor)
    assert "state_dict" in calls["on_save_checkpoint"][0][2][0]
    trainer.validate(model, regression(shuffle=False), verbose=False)
    assert calls["teardown"][-1][2] == ("validate",) and counts["on_validation_start"] + 1 == len(calls["on_validation_start"])


def test_lambda_callback_refuses_names_that_are_not_hooks():
    with pytest.raises(TypeError, match=r"'on_train_epoch_ned' \(did you mean 'on_train_epoch_end'\?\)") as info:
        LambdaCallback(on_train_epoch_ned=lambda *a: None)
    assert "on_before_zero_grad" in str(info.value)  # the hooks are listed
    with pytest.raises(TypeError, match="'optimizer_step', 'on_epoch_end'"):
        LambdaCallback(optimizer_step=print, on_epoch_end=print)
    with pytest.raises(TypeError, match=r"LambdaCallback\(on_fit_start=\.\.\.\): expected a callable, got int"):
        LambdaCallback(on_fit_start=3)
    # every fulmen callback hook is accepted (Lightning's LambdaCallback arguments are all among them)
    assert set(LambdaCallback(**dict.fromkeys(CALLBACK_HOOKS, print)).hooks) == set(CALLBACK_HOOKS)


def test_an_error_in_a_lambda_names_the_callback_and_hook(tmp_path):
    def fail(trainer, pl_module):
        raise ValueError("from the lambda")

    trainer = quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[LambdaCallback(on_train_start=fail)])
    with pytest.raises(ValueError, match="from the lambda") as info:
        trainer.fit(Regressor(), regression())
    assert getattr(info.value, "__notes__", []) == ["[fulmen] raised in the callback LambdaCallback.on_train_start during fit"]


# -- BackboneFinetuning ------------------------------------------------------------------------------------
class Transfer(L.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 1)
        self.log_per_epoch: list[dict[str, Any]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.backbone(x)), y)

    def on_train_epoch_start(self):  # after the callbacks' on_train_epoch_start
        opt = self.trainer.optimizers[0]
        self.log_per_epoch.append({
            "lrs": [g["lr"] for g in opt.param_groups],
            "trainable": self.backbone[0].weight.requires_grad,
            "bn_trainable": self.backbone[1].weight.requires_grad,
            "weight": self.backbone[0].weight.detach().clone(),
        })

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=self.hparams.lr)


def test_backbone_finetuning_unfreezes_at_its_epoch_and_schedules_the_backbone_lr(tmp_path):
    model = Transfer()
    start = model.backbone[0].weight.detach().clone()
    callback = BackboneFinetuning(unfreeze_backbone_at_epoch=1, verbose=True)
    quiet(max_epochs=6, default_root_dir=tmp_path, callbacks=[callback], enable_checkpointing=False).fit(model, regression())
    log = model.log_per_epoch
    assert [e["trainable"] for e in log] == [False] + [True] * 5
    assert torch.equal(log[0]["weight"], start) and torch.equal(log[1]["weight"], start)  # frozen for epoch 0
    assert not torch.equal(model.backbone[0].weight, start)
    assert all(e["bn_trainable"] for e in log)  # train_bn=True: batch norms train throughout
    # epoch 1: a new group at 0.1 * backbone_initial_ratio_lr; then x lambda_func(epoch + 1) = 2 a
    # epoch, aligned with the head's 0.1 once it gets there (should_align)
    expected = [[0.1], [0.1, 0.01], [0.1, 0.02], [0.1, 0.04], [0.1, 0.08], [0.1, 0.1]]
    assert [e["lrs"] for e in log] == [pytest.approx(lrs) for lrs in expected]
    assert callback.previous_backbone_lr == 0.1


def test_backbone_finetuning_arguments(tmp_path):
    model = Transfer()
    callback = BackboneFinetuning(
        unfreeze_backbone_at_epoch=0,
        lambda_func=lambda epoch: 10.0 ** (epoch - 2),
        backbone_initial_lr=0.004,
        should_align=False,
        train_bn=False,
    )
    quiet(max_epochs=4, default_root_dir=tmp_path, callbacks=[callback], enable_checkpointing=False).fit(model, regression())
    lrs = [e["lrs"][1] for e in model.log_per_epoch]
    assert lrs == pytest.approx([0.004, 0.004, 0.04, 4.0])  # epoch e > 0: x 10 ** (e - 1); not aligned
    # train_bn=False: the batch norm stays frozen and out of the optimizer once the rest is unfrozen
    assert not any(e["bn_trainable"] for e in model.log_per_epoch)
    backbone_group = {id(p) for p in model.trainer.optimizers[0].param_groups[1]["params"]}
    assert backbone_group == {id(model.backbone[0].weight), id(model.backbone[0].bias)}
    assert not model.backbone[1].track_running_stats

    with pytest.raises(AttributeError, match=r"needs an nn\.Module attribute `backbone`"):
        quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[BackboneFinetuning()]).fit(Regressor(), regression())
    with pytest.raises(ValueError, match="unfreeze_backbone_at_epoch=-1"):
        BackboneFinetuning(unfreeze_backbone_at_epoch=-1)


def test_backbone_finetuning_resumes_with_its_learning_rate_schedule(tmp_path):
    def trainer(epochs):
        return quiet(
            max_epochs=epochs, default_root_dir=tmp_path, deterministic=True, enable_checkpointing=True,
            callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda e: 1.5)],
        )

    torch.manual_seed(0)
    full = Transfer()
    start = {k: v.clone() for k, v in full.state_dict().items()}
    torch.manual_seed(1)
    t1 = trainer(4)
    t1.fit(full, regression())

    first = Transfer()
    first.load_state_dict(start)
    torch.manual_seed(1)
    t2 = trainer(2)  # stopped after epoch 1: the backbone has its group and lr 0.01
    t2.fit(first, regression())
    resumed = Transfer()
    t3 = trainer(4)  # a new callback: its learning rate comes from the checkpoint
    t3.fit(resumed, regression(), ckpt_path=t2.checkpoint_callback.last_model_path or t2.checkpoint_callback.best_model_path)
    assert [e["lrs"] for e in resumed.log_per_epoch] == [e["lrs"] for e in full.log_per_epoch[2:]]
    assert resumed.log_per_epoch[-1]["lrs"] == pytest.approx([0.1, 0.01 * 1.5**2])
    assert t3.callbacks[0].previous_backbone_lr == t1.callbacks[0].previous_backbone_lr
    assert same_weights(full, resumed)


# -- OnExceptionCheckpoint ----------------------------------------------------------------------------------
class Failing(Regressor):
    """Raises at batch ``fail_at = (epoch, batch_idx)`` (None: never), in ``training_step`` or, after
    the batch's backward, in ``on_after_backward``."""

    def __init__(self, fail_at: tuple[int, int] | None = None, where: str = "training_step", lr: float = 0.05):
        super().__init__(lr=lr)
        self.fail_at, self.where = fail_at, where
        self.at: tuple[int, int] | None = None

    def training_step(self, batch, batch_idx):
        self.at = (self.current_epoch, batch_idx)
        if self.at == self.fail_at and self.where == "training_step":
            raise RuntimeError("the data is bad")
        return super().training_step(batch, batch_idx)

    def on_after_backward(self):
        if self.at == self.fail_at and self.where == "on_after_backward":
            raise RuntimeError("the data is bad")


@pytest.mark.parametrize(
    ("accumulate", "fail_at", "where"),
    [
        (1, (1, 3), "training_step"),
        (1, (1, 3), "on_after_backward"),  # its gradient is not in the checkpoint: the batch runs again
        (2, (1, 2), "training_step"),  # at the start of an accumulation group
        (2, (1, 2), "on_after_backward"),
        (2, (1, 3), "training_step"),  # in the middle of one: the group's earlier gradients are kept
    ],
)
def test_on_exception_checkpoint_resumes_the_failed_fit_where_it_stopped(tmp_path, accumulate, fail_at, where):
    def trainer():
        return quiet(
            max_epochs=3, default_root_dir=tmp_path, deterministic=True, accumulate_grad_batches=accumulate,
            callbacks=[OnExceptionCheckpoint(tmp_path / "crash")],
        )

    torch.manual_seed(0)
    start = Failing().state_dict()
    full = Failing()
    full.load_state_dict(start)
    trainer().fit(full, regression())

    crashed = Failing(fail_at=fail_at, where=where)
    crashed.load_state_dict(start)
    with pytest.raises(RuntimeError, match="the data is bad") as info:
        trainer().fit(crashed, regression())
    path = tmp_path / "crash" / "on_exception.ckpt"
    assert path.is_file()
    assert any("OnExceptionCheckpoint saved" in note for note in getattr(info.value, "__notes__", []))
    step = crashed.trainer.global_step  # the steps taken before the failure
    assert step == (8 + fail_at[1]) // accumulate

    resumed = Failing()
    t = trainer()
    t.fit(resumed, regression(), ckpt_path=str(path))
    assert resumed.steps_seen[0] == step  # goes on from the step it failed at, with the batch that failed
    assert t.global_step == full.trainer.global_step
    assert same_weights(full, resumed)  # as if it had never failed
    assert not path.exists()  # a fit that finishes removes the stale checkpoint, as in Lightning


def test_on_exception_checkpoint_writes_nothing_before_training_starts(tmp_path):
    class FailsValidating(Regressor):
        def validation_step(self, batch, batch_idx):
            raise RuntimeError("validation is broken")

    callback = OnExceptionCheckpoint(tmp_path, filename="crash")
    assert callback.ckpt_path == os.path.join(os.path.realpath(tmp_path), "crash.ckpt")
    with pytest.raises(RuntimeError, match="validation is broken"):  # in the sanity check
        quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[callback]).fit(FailsValidating(), regression(), regression())
    assert not os.path.exists(callback.ckpt_path)
    with pytest.raises(ValueError, match="must not be empty"):
        OnExceptionCheckpoint(tmp_path, filename="")
    with pytest.raises(ValueError, match=r"without '\.ckpt'"):
        OnExceptionCheckpoint(tmp_path, filename="x.ckpt")


def test_on_exception_checkpoint_after_the_optimizer_step_counts_the_batch_done(tmp_path):
    class FailsAfterStep(Regressor):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.current_epoch == 0 and batch_idx == 4:
                raise KeyboardInterrupt

    callback = OnExceptionCheckpoint(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[callback]).fit(FailsAfterStep(), regression())
    ckpt = torch.load(callback.ckpt_path, weights_only=True)
    assert (ckpt["global_step"], ckpt["loops"]["batches_done"]) == (5, 5)


# -- RichModelSummary -------------------------------------------------------------------------------------
def test_rich_model_summary_prints_fulmens_summary_once(tmp_path, capsys, caplog, monkeypatch):
    from fulmen.lightning.callbacks import rich_summary

    monkeypatch.setattr(rich_summary, "_noted", False)
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        summary = RichModelSummary(max_depth=2, header_style="bold", title_justify="left")
        RichModelSummary(header_style="bold")
    notes = [r.getMessage() for r in caplog.records if "RichModelSummary" in r.getMessage()]
    assert notes == ["RichModelSummary: fulmen prints a plain-text summary; header_style, title_justify (rich styling) not used."]
    assert isinstance(summary, fulmen.ModelSummary) and summary.max_depth == 2
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[summary])
    trainer.fit(Regressor(), regression())
    out = capsys.readouterr().out
    assert out.count("Total params") == 1  # the Trainer added no ModelSummary of its own
    assert sum(isinstance(c, fulmen.ModelSummary) for c in trainer.callbacks) == 1


# -- LearningRateFinder -----------------------------------------------------------------------------------
def test_learning_rate_finder_trains_with_the_suggested_lr(tmp_path):
    torch.manual_seed(0)
    start = Regressor().state_dict()
    found = Regressor()
    found.load_state_dict(start)
    finder = LearningRateFinder(min_lr=1e-4, max_lr=1.0, num_training_steps=40)
    trainer = quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[finder], deterministic=True)
    torch.manual_seed(5)
    trainer.fit(found, regression(256, batch_size=32))
    assert isinstance(finder.optimal_lr, LRFinder)
    lr = finder.optimal_lr.suggestion()
    assert lr is not None and 1e-4 < lr < 1.0
    assert found.hparams.lr == lr  # update_attr=True (Lightning's default)
    assert trainer.optimizers[0].param_groups[0]["lr"] == lr  # configure_optimizers ran again
    assert found.steps_seen[-16:] == list(range(16)) and trainer.global_step == 16  # (the search's steps before)
    assert found.trainer is trainer

    # the same as a fit given that learning rate from the start: the search changed nothing else
    plain = Regressor(lr=lr)
    plain.load_state_dict(start)
    torch.manual_seed(5)
    quiet(max_epochs=2, default_root_dir=tmp_path, deterministic=True).fit(plain, regression(256, batch_size=32))
    assert same_weights(found, plain)


def test_learning_rate_finder_rebuilds_schedulers_from_the_suggestion(tmp_path):
    class OneCycle(Regressor):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=100)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    model = OneCycle()
    finder = LearningRateFinder(min_lr=1e-4, num_training_steps=30)
    trainer = quiet(max_steps=3, default_root_dir=tmp_path, callbacks=[finder])
    trainer.fit(model, regression(256, batch_size=32))
    (config,) = trainer.lr_scheduler_configs
    assert config.scheduler.optimizer is trainer.optimizers[0]
    assert trainer.optimizers[0].param_groups[0]["max_lr"] == finder.optimal_lr.suggestion()


def test_learning_rate_finder_at_milestones_keeps_the_optimizer_state(tmp_path):
    class AtEpochOne(LearningRateFinder):  # Lightning's documented fine-tuning pattern
        def on_fit_start(self, trainer, pl_module):
            return

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.before = trainer.optimizers[0]
                self.momentum = trainer.optimizers[0].state_dict()["state"][0]["momentum_buffer"].clone()
                self.lr_find(trainer, pl_module)

    model = Regressor()
    finder = AtEpochOne(min_lr=1e-4, num_training_steps=30)
    trainer = quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[finder])
    trainer.fit(model, regression(256, batch_size=32))
    lr = finder.optimal_lr.suggestion()
    assert trainer.optimizers[0] is finder.before  # the same optimizer, its groups set to the suggestion
    assert trainer.optimizers[0].param_groups[0]["lr"] == lr == model.hparams.lr
    assert model.steps_seen[-8:] == list(range(8, 16)) and trainer.global_step == 16  # the search's steps not counted
    assert "train_loss" in trainer.callback_metrics  # the module still logs into the fit after the search


def test_learning_rate_finder_refusals(tmp_path):
    with pytest.raises(ValueError, match="mode='cosine'"):
        LearningRateFinder(mode="cosine")

    class NoLr(Regressor):
        def __init__(self):
            super().__init__()
            del self.hparams["lr"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match="has no 'lr' or 'learning_rate' attribute"):
        quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[LearningRateFinder()]).fit(NoLr(), regression())
    # update_attr=False: a search only
    model, finder = Regressor(), LearningRateFinder(min_lr=1e-4, num_training_steps=20, update_attr=False)
    quiet(max_steps=1, default_root_dir=tmp_path, callbacks=[finder]).fit(model, regression(256, batch_size=32))
    assert finder.optimal_lr is not None and model.hparams.lr == 0.05


def test_learning_rate_finder_does_not_search_again_on_resume(tmp_path, monkeypatch):
    model, finder = Regressor(), LearningRateFinder(min_lr=1e-4, num_training_steps=30)
    t1 = quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[finder], enable_checkpointing=True)
    t1.fit(model, regression(256, batch_size=32))
    lr = finder.optimal_lr.suggestion()

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(Tuner, "lr_find", no_search)
    resumed, again = Regressor(), LearningRateFinder(min_lr=1e-4, num_training_steps=30)
    t2 = quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[again], enable_checkpointing=True)
    t2.fit(resumed, regression(256, batch_size=32), ckpt_path=t1.checkpoint_callback.last_model_path or t1.checkpoint_callback.best_model_path)
    assert again.optimal_lr is not None and again.optimal_lr.results == finder.optimal_lr.results
    assert resumed.hparams.lr == lr and t2.optimizers[0].param_groups[0]["lr"] == lr
    assert same_weights(resumed, t2.lightning_module)


# -- BatchSizeFinder ----------------------------------------------------------------------------------------
class Sized(Regressor):
    def __init__(self, batch_size: int = 2):
        super().__init__(batch_size=batch_size)

    def train_dataloader(self):
        return regression(64, batch_size=self.hparams.batch_size)


def test_batch_size_finder_sets_the_batch_size_before_the_dataloaders_are_built(tmp_path):
    model, finder = Sized(), BatchSizeFinder(steps_per_trial=1, max_trials=3)
    assert finder.optimal_batch_size == 2  # init_val until it has searched
    trainer = quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == 8 == model.hparams.batch_size  # 2, 4, 8 fit: max_trials reached
    assert trainer.train_dataloader.batch_size == 8 and trainer.global_step == 8
    assert model.steps_seen == [0, 0, 0, *range(8)]  # a step per trial (each its own quiet fit), then the fit

    # with a datamodule: its hparams hold the batch size
    class Data(L.LightningDataModule):
        def __init__(self, batch_size: int = 4):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self):
            return regression(64, batch_size=self.hparams.batch_size)

    data, finder = Data(), BatchSizeFinder(mode="binsearch", init_val=4, max_trials=4)
    quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[finder]).fit(Regressor(), datamodule=data)
    assert finder.optimal_batch_size == data.hparams.batch_size == 32  # 4, 8, 16, 32


def test_batch_size_finder_puts_back_layers_built_in_configure_model(tmp_path):
    class Configured(Sized):
        def __init__(self):
            super().__init__()
            self.layer = None

        def configure_model(self):
            if self.layer is None:
                self.layer = torch.nn.Linear(4, 1)
                self.built = self.layer.weight.detach().clone()

        def on_fit_start(self):
            self.at_fit_start = self.layer.weight.detach().clone()

    model = Configured()
    quiet(max_steps=1, default_root_dir=tmp_path, callbacks=[BatchSizeFinder(max_trials=3)]).fit(model)
    assert torch.equal(model.at_fit_start, model.built)  # the trials trained it, the fit starts from it untrained


def test_batch_size_finder_refuses_dataloaders_it_cannot_rebuild(tmp_path):
    with pytest.raises(fulmen.errors.DataError, match="define train_dataloader"):
        quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[BatchSizeFinder()]).fit(Regressor(), regression())

    class Both(Sized):  # a train_dataloader() the fit does not use
        pass

    with pytest.raises(fulmen.errors.DataError, match="has batch_size=8: it was not built from 'batch_size'"):
        quiet(max_epochs=1, default_root_dir=tmp_path, callbacks=[BatchSizeFinder(max_trials=2)]).fit(Both(), regression())
    with pytest.raises(ValueError, match="mode='linear'"):
        BatchSizeFinder(mode="linear")


def test_batch_size_finder_keeps_the_batch_size_on_resume(tmp_path, monkeypatch):
    t1 = quiet(
        max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=True, callbacks=[BatchSizeFinder(max_trials=3)]
    )
    t1.fit(Sized())

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(Tuner, "scale_batch_size", no_search)
    resumed, finder = Sized(), BatchSizeFinder(max_trials=3)
    t2 = quiet(max_epochs=2, default_root_dir=tmp_path, enable_checkpointing=True, callbacks=[finder])
    t2.fit(resumed, ckpt_path=t1.checkpoint_callback.last_model_path or t1.checkpoint_callback.best_model_path)
    assert finder.optimal_batch_size == resumed.hparams.batch_size == 8
    assert t2.train_dataloader.batch_size == 8 and t2.global_step == 16


# -- import paths --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("callbacks.lambda_function", "LambdaCallback"),
        ("callbacks.finetuning", "BackboneFinetuning"),
        ("callbacks.on_exception_checkpoint", "OnExceptionCheckpoint"),
        ("callbacks.rich_model_summary", "RichModelSummary"),
        ("callbacks.lr_finder", "LearningRateFinder"),
        ("callbacks.batch_size_finder", "BatchSizeFinder"),
    ],
)
def test_lightnings_module_paths(path, name):
    expected = getattr(importlib.import_module("fulmen.lightning.callbacks"), name)
    for prefix in ("fulmen.lightning", "fulmen.lightning.pytorch"):
        assert getattr(importlib.import_module(f"{prefix}.{path}"), name) is expected
    assert name in L.callbacks.__all__
