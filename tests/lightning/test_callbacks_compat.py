"""Lightning's behaviour of EarlyStopping, Timer, LearningRateMonitor and BaseFinetuning through
``fulmen.lightning``: stopping reasons and state keys, ``max_time`` as a Timer, the LR monitor's
names, history and ``callback_metrics``, the fine-tuning warning, and ``callback_metrics`` writes."""

from __future__ import annotations

import datetime
import logging
import math
import warnings
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.lightning.callbacks import BaseFinetuning, EarlyStopping, LearningRateMonitor, Timer
from fulmen.lightning.callbacks.early_stopping import EarlyStoppingReason
from fulmen.lightning.utilities.exceptions import MisconfigurationException


def quiet(**kwargs: Any) -> L.Trainer:
    flags: dict[str, Any] = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    flags.update(kwargs)
    return L.Trainer(**flags)


def data(n: int = 32, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


class Regressor(L.LightningModule):
    def __init__(self, val_losses: list[float] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.val_losses = val_losses

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("real_val_loss", F.mse_loss(self.layer(x), y))

    def on_validation_epoch_end(self) -> None:
        if self.val_losses is not None and not self.trainer.sanity_checking:
            losses = self.val_losses
            self.log("val_loss", losses[min(self.current_epoch, len(losses) - 1)])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


# -- EarlyStopping -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("losses", "kwargs", "reason", "phrase", "epochs"),
    [
        ([5.0] * 10, {"patience": 2}, EarlyStoppingReason.PATIENCE_EXHAUSTED, "did not improve", 3),
        ([5.0, 3.0, 0.5, 0.1], {"stopping_threshold": 0.6}, EarlyStoppingReason.STOPPING_THRESHOLD,
         "Stopping threshold reached", 3),
        ([1.0, 2.0, 9.0, 1.0], {"divergence_threshold": 8.0}, EarlyStoppingReason.DIVERGENCE_THRESHOLD,
         "Divergence threshold reached", 3),
        ([1.0, math.nan, 0.5], {}, EarlyStoppingReason.NON_FINITE_METRIC, "is not finite", 2),
        ([5.0, 4.0, 3.0], {}, EarlyStoppingReason.NOT_STOPPED, None, 3),
    ],
)
def test_early_stopping_reason_and_message(tmp_path, losses, kwargs, reason, phrase, epochs):
    es = EarlyStopping(monitor="val_loss", **kwargs)
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None
    trainer = quiet(max_epochs=3 if reason is EarlyStoppingReason.NOT_STOPPED else 10, default_root_dir=tmp_path,
                    callbacks=[es], enable_checkpointing=False)
    trainer.fit(Regressor(losses), data(), data())
    assert es.stopping_reason is reason
    assert trainer.current_epoch == epochs
    if phrase is None:
        assert es.stopping_reason_message is None and es.stopped_epoch == 0
    else:
        assert phrase in es.stopping_reason_message and es.stopped_epoch == epochs - 1


def test_early_stopping_state_keeps_the_reason_and_reads_states_without_it():
    es = EarlyStopping("val_loss")
    es.stopping_reason, es.stopping_reason_message = EarlyStoppingReason.PATIENCE_EXHAUSTED, "no progress"
    state = es.state_dict()
    assert state["stopping_reason"] == 3 and state["stopping_reason_message"] == "no progress"
    assert isinstance(state["best_score"], torch.Tensor)  # as Lightning keeps it (its code calls .to on it)
    other = EarlyStopping("val_loss")
    other.load_state_dict(state)
    assert other.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED and other.stopping_reason_message == "no progress"
    old = EarlyStopping("val_loss")
    old.load_state_dict({"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3})
    assert old.stopping_reason is EarlyStoppingReason.NOT_STOPPED and old.stopping_reason_message is None
    assert (old.wait_count, old.stopped_epoch, old.best_score) == (2, 5, 0.5)


def test_early_stopping_mode_is_checked_with_lightnings_words():
    with pytest.raises(MisconfigurationException, match=r"`mode` can be .* got average") as info:
        EarlyStopping("val_loss", mode="average")
    assert isinstance(info.value, ValueError) and "expected 'min' or 'max'" in str(info.value)


def test_two_early_stoppings_keep_their_states_in_one_checkpoint_and_resume_them(tmp_path):
    by_val = EarlyStopping("val_loss", patience=5)
    by_max = EarlyStopping("val_loss", mode="max", patience=5)
    assert by_val.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    assert by_max.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'max'}"
    trainer = quiet(max_epochs=3, default_root_dir=tmp_path, callbacks=[by_val, by_max], enable_checkpointing=False)
    trainer.fit(Regressor([3.0, 2.0, 2.5]), data(), data())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    states = torch.load(path, weights_only=True)["callbacks"]
    assert float(states[by_val.state_key]["best_score"]) == 2.0 and states[by_val.state_key]["wait_count"] == 1
    assert float(states[by_max.state_key]["best_score"]) == 3.0 and states[by_max.state_key]["wait_count"] == 2

    # Resumed in the other order: each takes its own state back by key, not by position.
    again_max, again_val = EarlyStopping("val_loss", mode="max", patience=5), EarlyStopping("val_loss", patience=5)
    seen = []

    class Probe(fulmen.Callback):
        def on_train_start(self, trainer, system):
            seen.append((again_val.best_score, again_val.wait_count, again_max.best_score, again_max.wait_count))

    resumed = quiet(max_epochs=4, default_root_dir=tmp_path, callbacks=[again_max, again_val, Probe()],
                    enable_checkpointing=False)
    resumed.fit(Regressor([3.0, 2.0, 2.5, 2.5]), data(), data(), ckpt_path=path)
    assert seen == [(2.0, 1, 3.0, 2)]


def test_early_stopping_reads_a_state_stored_under_the_class_name(tmp_path, monkeypatch):
    """Older fulmen checkpoints stored the states as "EarlyStopping" and "EarlyStopping#1"."""
    with monkeypatch.context() as old_fulmen:
        old_fulmen.setattr(EarlyStopping, "state_key", property(lambda self: type(self).__qualname__))
        first, second = EarlyStopping("val_loss", patience=5), EarlyStopping("real_val_loss", patience=5)
        trainer = quiet(max_epochs=2, default_root_dir=tmp_path, callbacks=[first, second], enable_checkpointing=False)
        trainer.fit(Regressor([3.0, 4.0]), data(), data())
        path = tmp_path / "old.ckpt"
        trainer.save_checkpoint(path)
    assert {"EarlyStopping", "EarlyStopping#1"} <= set(torch.load(path, weights_only=True)["callbacks"])
    seen = []
    a, b = EarlyStopping("val_loss", patience=5), EarlyStopping("real_val_loss", patience=5)

    class Probe(fulmen.Callback):
        def on_train_start(self, trainer, system):
            seen.append(((a.best_score, a.wait_count), (b.best_score, b.wait_count)))

    quiet(max_epochs=3, default_root_dir=tmp_path, callbacks=[a, b, Probe()], enable_checkpointing=False).fit(
        Regressor([3.0, 4.0, 4.0]), data(), data(), ckpt_path=path
    )
    assert seen == [((3.0, 1), (second.best_score, second.wait_count))]
    assert second.best_score != math.inf


def test_verbose_early_stopping_logs_under_lightning_and_prints_under_fulmen(tmp_path, caplog, capsys):
    es = EarlyStopping("val_loss", patience=1, verbose=True)
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        quiet(max_epochs=5, default_root_dir=tmp_path, callbacks=[es], enable_checkpointing=False).fit(
            Regressor([2.0, 2.0]), data(), data()
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "fulmen.lightning"]
    assert any("is the first value" in m for m in messages)
    assert any("did not improve" in m and "Signaling Trainer to stop." in m for m in messages)
    caplog.clear()
    core = fulmen.EarlyStopping("val_loss", patience=1, verbose=True)
    fulmen.Trainer(max_epochs=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[core]).fit(
        Regressor([2.0, 2.0]), data(), data()
    )
    assert "EarlyStopping: val_loss did not improve" in capsys.readouterr().out
    assert not [r for r in caplog.records if "did not improve" in r.getMessage()]


def test_early_stopping_takes_log_rank_zero_only():
    assert EarlyStopping("val_loss", log_rank_zero_only=True).log_rank_zero_only is True


# -- callback_metrics written by callbacks -------------------------------------------------------------------
def test_a_value_set_in_callback_metrics_stays_for_the_run(tmp_path):
    class Feeds(fulmen.Callback):
        def on_train_epoch_end(self, trainer, system):
            trainer.callback_metrics["fed"] = torch.tensor(1.0)  # as Lightning callbacks do

    es = EarlyStopping("fed", patience=1, check_on_train_epoch_end=True)
    trainer = quiet(max_epochs=10, default_root_dir=tmp_path, callbacks=[Feeds(), es], enable_checkpointing=False)
    trainer.fit(Regressor(), data())
    assert trainer.current_epoch == 2  # the baseline, then one check without improvement
    assert float(trainer.callback_metrics["fed"]) == 1.0
    copied = dict(trainer.callback_metrics)
    copied["other"] = 1
    assert "other" not in trainer.callback_metrics  # a copy is a plain dict


# -- Timer and max_time ----------------------------------------------------------------------------------------
def test_max_time_is_a_timer_callback_under_lightning(tmp_path, caplog):
    trainer = quiet(max_time={"seconds": 1337}, default_root_dir=tmp_path)
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer.duration == 1337 and timer.interval == "step"
    assert trainer.max_epochs == -1  # a time limit alone: no epoch limit, as in Lightning

    mine = Timer(duration="00:00:01:00")
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        trainer = quiet(max_time={"seconds": 5}, callbacks=[mine], default_root_dir=tmp_path)
    assert [c for c in trainer.callbacks if isinstance(c, Timer)] == [mine]
    assert "callbacks list already contains a Timer" in caplog.text

    # fulmen's own Trainer keeps max_time as a hard limit of the loop: no Timer is added.
    core = fulmen.Trainer(max_time={"seconds": 5}, logger=False, default_root_dir=tmp_path)
    assert not any(isinstance(c, Timer) for c in core.callbacks)
    with pytest.raises(MisconfigurationException, match=r"Trainer\(max_time='6:00:00'\).*format DD:HH:MM:SS"):
        quiet(max_time="6:00:00")


def test_max_time_under_lightning_waits_for_min_epochs(tmp_path):
    trainer = quiet(max_time=datetime.timedelta(0), min_epochs=2, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(Regressor(), data())
    assert trainer.current_epoch == 2 and trainer.global_step == 8


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_zero_duration_timer_stops_at_once(tmp_path, interval):
    timer = Timer(duration=datetime.timedelta(0), interval=interval)
    trainer = quiet(max_epochs=5, callbacks=[timer], default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(Regressor(), data())
    assert (trainer.global_step, trainer.current_epoch) == (0, 0)
    with_min = Timer(duration=datetime.timedelta(0))
    trainer = quiet(max_epochs=5, min_steps=3, callbacks=[with_min], default_root_dir=tmp_path,
                    enable_checkpointing=False)
    trainer.fit(Regressor(), data())
    assert trainer.global_step == 3


def test_timer_arguments_are_checked_with_lightnings_words():
    for bad in ("6:00:00", "60 minutes"):
        with pytest.raises(MisconfigurationException, match="format DD:HH:MM:SS"):
            Timer(duration=bad)
    with pytest.raises(MisconfigurationException, match="Unsupported parameter value"):
        Timer(interval="batch")
    assert Timer(duration="12:34:56:65").duration == datetime.timedelta(days=12, hours=34, minutes=56,
                                                                        seconds=65).total_seconds()


def test_timer_says_time_limit_reached_in_the_log(tmp_path, caplog):
    timer = Timer(duration=datetime.timedelta(0))
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        quiet(max_epochs=5, callbacks=[timer], default_root_dir=tmp_path).fit(Regressor(), data())
    assert "Time limit reached." in caplog.text and "Signaling Trainer to stop." in caplog.text


# -- LearningRateMonitor ------------------------------------------------------------------------------------
class Manual(L.LightningModule):
    """Two optimizers of one class (the first with two parameter groups) and an SGD with a named group."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
            self.manual_backward(F.mse_loss(self.a(x) + self.b(x) + self.c(x), y))
            opt.step()

    def configure_optimizers(self) -> Any:
        first = torch.optim.Adam([{"params": self.a.parameters()}, {"params": self.b.parameters(), "lr": 0.5}], lr=0.1)
        second = torch.optim.Adam(self.b.parameters(), lr=0.2)
        third = torch.optim.SGD([{"params": self.c.parameters(), "name": "head"}], lr=0.3, momentum=0.9)
        return [first, second, third], [torch.optim.lr_scheduler.StepLR(first, 1), torch.optim.lr_scheduler.StepLR(second, 1)]


def test_lr_monitor_uses_lightnings_names(tmp_path):
    rows: list[dict[str, float]] = []

    class Recording(L.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            rows.append(dict(metrics))
            super().log_metrics(metrics, step)

    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    trainer = L.Trainer(max_epochs=1, logger=Recording(tmp_path), callbacks=[monitor], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(Manual(), data())
    lr_rows = [r for r in rows if "lr-SGD/head" in r]
    assert lr_rows and all("epoch" not in r for r in lr_rows)  # Lightning's rows hold the values only
    assert list(monitor.lrs) == ["lr-Adam/pg1", "lr-Adam/pg2", "lr-Adam-1", "lr-SGD/head"]
    assert monitor.lrs["lr-Adam/pg2"][0] == 0.5 and monitor.lrs["lr-SGD/head"][0] == 0.3
    assert monitor.last_momentum_values == {
        "lr-Adam/pg1-momentum": 0.9, "lr-Adam/pg2-momentum": 0.9, "lr-Adam-1-momentum": 0.9, "lr-SGD/head-momentum": 0.9,
    }
    assert set(monitor.last_weight_decay_values) == {f"{n}-weight_decay" for n in monitor.lrs}
    assert float(trainer.callback_metrics["lr-Adam-1"]) == pytest.approx(0.2)


def test_lr_monitor_custom_scheduler_name_and_duplicate_group_names(tmp_path):
    class Named(Regressor):
        def __init__(self, groups: list[dict[str, Any]] | None = None) -> None:
            super().__init__()
            self.groups = groups

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.groups or self.parameters(), lr=0.1)
            return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "name": "my_lr"}]

    monitor = LearningRateMonitor()
    L.Trainer(max_epochs=1, callbacks=[monitor], logger=L.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(Named(), data())
    assert list(monitor.lrs) == ["my_lr"]
    model = Named()
    model.groups = [{"params": [model.layer.weight], "name": "w"}, {"params": [model.layer.bias], "name": "w"}]
    trainer = L.Trainer(max_epochs=1, callbacks=[LearningRateMonitor()], logger=L.loggers.CSVLogger(tmp_path),
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(MisconfigurationException, match="cannot have multiple parameter groups with identical"):
        trainer.fit(model, data())


def test_lr_monitor_without_logger_is_a_misconfiguration(tmp_path):
    trainer = quiet(max_epochs=1, callbacks=[LearningRateMonitor()], default_root_dir=tmp_path)
    with pytest.raises(MisconfigurationException, match="`Trainer` that has no logger"):
        trainer.fit(Regressor(), data())


@pytest.mark.parametrize("scheduler", [True, False])
def test_lr_monitor_momentum_of_an_optimizer_without_it(tmp_path, scheduler):
    class NoMomentum(Regressor):
        def configure_optimizers(self):
            opt = torch.optim.ASGD(self.parameters(), lr=0.01)
            return ([opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]) if scheduler else opt

    monitor = LearningRateMonitor(log_momentum=True)
    trainer = L.Trainer(max_epochs=1, callbacks=[monitor], logger=L.loggers.CSVLogger(tmp_path), log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match=r"optimizers do not have momentum\."):
        trainer.fit(NoMomentum(), data())
    assert monitor.last_momentum_values == {"lr-ASGD-momentum": 0.0}


def test_lr_monitor_values_reach_callback_metrics_for_early_stopping(tmp_path):
    class Halving(Regressor):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    monitor = LearningRateMonitor()
    es = EarlyStopping("lr-SGD", stopping_threshold=0.02, check_on_train_epoch_end=True)
    trainer = L.Trainer(max_epochs=6, callbacks=[monitor, es], logger=L.loggers.CSVLogger(tmp_path),
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(Halving(), data())
    assert monitor.lrs["lr-SGD"] == [0.1, 0.05, 0.025, 0.0125]
    assert es.stopped_epoch == 3 and es.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD
    assert float(trainer.callback_metrics["lr-SGD"]) == pytest.approx(0.0125)


def test_lr_monitor_history_moves_to_pg1_when_an_optimizer_gains_a_group(tmp_path):
    class Grows(Regressor):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(4, 1)

        def on_train_epoch_start(self):
            if self.current_epoch == 1:
                self.trainer.optimizers[0].add_param_group({"params": self.extra.parameters(), "lr": 0.5})

        def configure_optimizers(self):
            return torch.optim.SGD(self.layer.parameters(), lr=0.1)

    monitor = LearningRateMonitor(logging_interval="epoch")
    model = Grows()
    # The group is added in the system's hook, after the monitor's: epoch 2 logs both groups, and
    # the single group's history goes on under "/pg1".
    L.Trainer(max_epochs=3, callbacks=[monitor], logger=L.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path).fit(model, data())
    assert monitor.lrs == {"lr-SGD/pg1": [0.1, 0.1, 0.1], "lr-SGD/pg2": [0.5]}


# -- BaseFinetuning -----------------------------------------------------------------------------------------------
def test_unfreezing_parameters_already_in_the_optimizer_warns_as_lightning():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(net[0].parameters(), lr=0.01)
    with pytest.warns(UserWarning, match=r"The provided params to be frozen already exist .* Did you init your optimizer in"):
        BaseFinetuning.unfreeze_and_add_param_group(net[0], opt)  # trainable, and already in the optimizer
    assert len(opt.param_groups) == 1
    # A batch norm that was training already (freeze(train_bn=True)) is skipped without a warning.
    BaseFinetuning.freeze(net[1:], train_bn=True)
    opt.add_param_group({"params": list(net[2].parameters())})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BaseFinetuning.unfreeze_and_add_param_group(net[1:], opt, lr=0.5)
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["params"] == list(net[1].parameters())
