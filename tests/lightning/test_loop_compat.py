"""fulmen.lightning's loop flags and what ``self.log`` records, as in Lightning: when validation
runs (a fraction of the epoch, a duration), the info messages and warnings Lightning gives for
flags, ``fast_dev_run``'s stand-in logger, ``overfit_batches``' samplers, evaluation step values
sent to the loggers, one key logged from two hooks, per-dataloader results; and where the core
``fulmen.Trainer`` keeps its own rule."""

from __future__ import annotations

import datetime
import itertools
import logging
import re
import time
import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler, SequentialSampler, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.errors import FulmenWarning, LoggingError
from fulmen.lightning.callbacks import TQDMProgressBar
from fulmen.lightning.loggers.logger import DummyLogger
from fulmen.lightning.utilities.exceptions import MisconfigurationException
from fulmen.lightning.utilities.warnings import PossibleUserWarning
from fulmen.loggers.base import Logger


def data(n: int = 80, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def loader(n: int = 80, batch_size: int = 8, **kwargs: Any) -> DataLoader:
    return DataLoader(data(n), batch_size=batch_size, **kwargs)


class Model(L.LightningModule):
    """Linear regression that records when validation runs (not during the sanity check)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.validated_at: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def on_validation_epoch_start(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append((self.current_epoch, self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class System(fulmen.System):
    """The same model for the core Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.validated_at: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def on_validation_epoch_start(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append((self.current_epoch, self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recording(Logger):
    """Keeps every ``log_metrics`` call as (metrics, step)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int]] = []

    def log_metrics(self, metrics, step):
        self.calls.append((dict(metrics), step))


QUIET = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def lightning(tmp_path, **flags: Any) -> L.Trainer:
    flags = {"logger": False, "max_epochs": 1, **QUIET, **flags}
    return L.Trainer(default_root_dir=tmp_path, **flags)


def core(tmp_path, **flags: Any) -> fulmen.Trainer:
    flags = {"logger": False, "max_epochs": 1, **QUIET, **flags}
    return fulmen.Trainer(default_root_dir=tmp_path, **flags)


class FakeClock:
    """``time.monotonic`` that advances ``tick`` seconds at each read."""

    def __init__(self, tick: float = 1.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick
        return now


# -- when validation runs ---------------------------------------------------------------------------
def test_a_fraction_validates_at_its_multiples_only_in_lightning_and_also_at_the_end_in_fulmen(tmp_path):
    model = Model()
    lightning(tmp_path, max_epochs=2, val_check_interval=0.3, num_sanity_val_steps=0).fit(model, loader(), loader(16))
    assert model.validated_at == [(0, 3), (0, 6), (0, 9), (1, 13), (1, 16), (1, 19)]  # 10 batches an epoch
    system = System()
    core(tmp_path, max_epochs=2, val_check_interval=0.3, num_sanity_val_steps=0).fit(system, loader(), loader(16))
    assert system.validated_at == [(0, 3), (0, 6), (0, 9), (0, 10), (1, 13), (1, 16), (1, 19), (1, 20)]


@pytest.mark.parametrize("interval", ["00:00:00:03", {"seconds": 3}, datetime.timedelta(seconds=3)])
@pytest.mark.parametrize("make", [lightning, core])
def test_a_duration_validates_after_the_first_batch_past_it(tmp_path, interval, make):
    # Each clock read advances one second: the start of training (0), one read after each batch
    # (batch 3 reads 3: due), one when a validation ends (4, the new start) -> after batches 3, 6, 9.
    model = Model() if make is lightning else System()
    trainer = make(tmp_path, val_check_interval=interval, num_sanity_val_steps=0, limit_val_batches=1)
    with mock.patch("time.monotonic", FakeClock()):
        trainer.fit(model, loader(), loader(16))
    assert [step for _, step in model.validated_at] == [3, 6, 9]  # no extra one at the epoch's end


def test_a_duration_waits_for_an_epoch_that_validates(tmp_path):
    # check_val_every_n_epoch=2: the loop reads the clock only in epochs 1 and 3 (time passes in
    # epochs 0 and 2 through the model's own reads); the interval is long past when epoch 1
    # starts, so validation runs after its first batch, and then every 3 clock seconds.
    class TimePasses(Model):
        def on_train_batch_end(self, *args):
            if self.current_epoch % 2 == 0:
                time.monotonic()

    model = TimePasses()
    trainer = lightning(
        tmp_path, max_epochs=4, val_check_interval="00:00:00:03", check_val_every_n_epoch=2, num_sanity_val_steps=0,
        limit_val_batches=1, limit_train_batches=4,
    )
    with mock.patch("time.monotonic", FakeClock()):
        trainer.fit(model, loader(), loader(16))
    assert model.validated_at == [(1, 5), (1, 8), (3, 13), (3, 16)]


def test_duration_values_that_are_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"val_check_interval='3 seconds'.*DD:HH:MM:SS"):
        lightning(tmp_path, val_check_interval="3 seconds")
    with pytest.raises(MisconfigurationException, match=r"val_check_interval='00:00:00:00'.*must be positive"):
        lightning(tmp_path, val_check_interval="00:00:00:00")
    with pytest.raises(MisconfigurationException, match=r"timedelta arguments"):
        lightning(tmp_path, val_check_interval={"secs": 2})
    # a duration counts across epochs, so check_val_every_n_epoch=None is fine with it
    lightning(tmp_path, val_check_interval={"minutes": 5}, check_val_every_n_epoch=None)


def test_a_fraction_without_check_val_every_n_epoch_is_refused_in_lightnings_words(tmp_path):
    phrase = (
        "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
        "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`."
    )
    with pytest.raises(MisconfigurationException) as err:
        lightning(tmp_path, val_check_interval=0.5, check_val_every_n_epoch=None)
    assert phrase in str(err.value) and "val_check_interval must be an int" in str(err.value)


def test_an_interval_longer_than_the_epoch_is_a_value_error_in_lightnings_words(tmp_path):
    with pytest.raises(ValueError, match="must be less than or equal to the number of the training batches"):
        lightning(tmp_path, limit_train_batches=4, val_check_interval=10).fit(Model(), loader(), loader(16))


def test_lightnings_none_for_limits_and_interval_means_the_default(tmp_path):
    model = Model()
    trainer = lightning(
        tmp_path, limit_train_batches=None, limit_val_batches=None, val_check_interval=None, num_sanity_val_steps=0
    )
    trainer.fit(model, loader(), loader(16))
    assert (trainer.num_training_batches, trainer.num_val_batches, trainer.val_check_interval) == (10, [2], 1.0)
    assert model.validated_at == [(0, 10)]


# -- messages ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "value", "text"),
    [
        ("limit_train_batches", 1, "`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used."),
        ("limit_val_batches", 1.0, "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used."),
        ("limit_test_batches", 1, "`Trainer(limit_test_batches=1)` was configured so 1 batch will be used."),
        ("overfit_batches", 1, "`Trainer(overfit_batches=1)` was configured so 1 batch will be used."),
        ("val_check_interval", 1, "`Trainer(val_check_interval=1)` was configured so validation will run after every batch."),
        (
            "val_check_interval",
            1.0,
            "`Trainer(val_check_interval=1.0)` was configured so validation will run at the end of the training epoch.",
        ),
    ],
)
def test_flags_of_one_are_explained_as_lightning_does(tmp_path, caplog, flag, value, text):
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        lightning(tmp_path, **{flag: value})
    assert text in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        lightning(tmp_path)  # not given: no message
        lightning(tmp_path, **{flag: 2})
    assert "was configured" not in caplog.text


def test_fast_dev_run_is_announced_and_swaps_the_logger_for_a_dummy(tmp_path, caplog):
    from fulmen.lightning.loggers import CSVLogger

    class UsesTheExperiment(Model):
        def training_step(self, batch, batch_idx):
            self.logger.experiment.add_histogram("weights", self.layer.weight)  # nothing happens
            self.log("loss_seen", 1.0)
            return super().training_step(batch, batch_idx)

    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        trainer = L.Trainer(default_root_dir=tmp_path, fast_dev_run=2, logger=CSVLogger(tmp_path), **QUIET)
    assert "Running in `fast_dev_run` mode: will run the requested loop using 2 batch(es)." in caplog.text
    assert isinstance(trainer.logger, DummyLogger) and len(trainer.loggers) == 1
    trainer.fit(UsesTheExperiment(), loader(), loader(16))
    assert trainer.global_step == 2
    assert not (tmp_path / "lightning_logs").exists()
    assert lightning(tmp_path, fast_dev_run=True, logger=False).logger is None  # no logger asked for: none
    assert core(tmp_path, fast_dev_run=True, logger=Recording()).logger is None  # fulmen's Trainer: none


def test_max_epochs_not_set_warning(tmp_path):
    class StopAtOnce(Model):
        def on_train_batch_end(self, *args):
            self.trainer.should_stop = True

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = lightning(tmp_path, max_epochs=None, limit_train_batches=1)
        trainer.fit(StopAtOnce(), loader())
    found = [w for w in caught if issubclass(w.category, PossibleUserWarning)]
    assert len(found) == 1 and "`max_epochs` was not set. Setting it to 1000 epochs." in str(found[0].message)
    assert issubclass(PossibleUserWarning, FulmenWarning)
    assert trainer.max_epochs == 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightning(tmp_path, max_epochs=None, fast_dev_run=True)
    assert not [w for w in caught if issubclass(w.category, PossibleUserWarning)]


def test_deterministic_warn_uses_torchs_warn_only_mode(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        lightning(tmp_path, deterministic="warn")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        core(tmp_path, deterministic=True)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(fulmen.errors.FlagError, match="'warn'"):
            core(tmp_path, deterministic="always")
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# -- overfit_batches and the dataloaders ------------------------------------------------------------------
class InOrder(Sampler):
    """A sampler of the user's own (not a SequentialSampler)."""

    def __init__(self, source):
        self.n = len(source)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_overfit_batches_swaps_any_other_sampler_for_a_sequential_one(tmp_path):
    train = DataLoader(data(), batch_size=8, sampler=InOrder(data()))
    val = DataLoader(data(16), batch_size=8, sampler=InOrder(data(16)))
    trainer = lightning(tmp_path, overfit_batches=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(Model(), train, val)
    said = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert any("requested to overfit but enabled train dataloader shuffling" in m for m in said)
    assert any("requested to overfit but enabled val dataloader shuffling" in m for m in said)
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert isinstance(trainer.val_dataloaders, DataLoader)  # one loader: itself, as in Lightning
    assert isinstance(trainer.val_dataloaders.sampler, SequentialSampler)
    assert (trainer.num_training_batches, trainer.num_val_batches) == (2, [2])


def test_one_val_dataloader_is_returned_itself_and_several_as_a_list(tmp_path):
    trainer = lightning(tmp_path)
    assert trainer.val_dataloaders is None
    val = loader(16)
    trainer.fit(Model(), loader(), val)
    assert trainer.val_dataloaders is val
    system = System()
    trainer2 = core(tmp_path)
    trainer2.fit(system, loader(), val)
    assert trainer2.val_dataloaders == [val]  # fulmen's Trainer: a list


# -- what self.log records ---------------------------------------------------------------------------------
class StepAndEpoch(Model):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("a", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("v", F.mse_loss(self.layer(x), y), on_step=True, on_epoch=True)
        self.log("only_step", 1.0, on_step=True, on_epoch=False)


def test_validation_step_values_reach_the_loggers_at_each_batch(tmp_path):
    logger = Recording()
    trainer = lightning(tmp_path, logger=logger, max_epochs=2, limit_train_batches=2, limit_val_batches=3,
                        log_every_n_steps=1)
    trainer.fit(StepAndEpoch(), loader(), loader(32))
    val_steps = [(sorted(m), step) for m, step in logger.calls if "v_step" in m]
    # the step counts this dataloader's validation batches during the fit (the sanity check not
    # included), and such a call has no "epoch" entry
    assert val_steps == [(["only_step", "v_step"], s) for s in range(6)]
    epoch_ends = [(sorted(m), step) for m, step in logger.calls if "v_epoch" in m]
    assert epoch_ends == [(["epoch", "v_epoch"], 1), (["epoch", "v_epoch"], 3)]
    assert set(trainer.logged_metrics) == {"a_step", "a_epoch", "v_step", "v_epoch", "only_step"}
    # callbacks see validation's epoch values only
    assert set(trainer.callback_metrics) == {"a", "a_step", "a_epoch", "v", "v_epoch"}
    assert all(isinstance(v, torch.Tensor) for v in trainer.callback_metrics.values())
    assert all(isinstance(v, torch.Tensor) for v in trainer.logged_metrics.values())


def test_validate_and_test_count_their_own_steps(tmp_path):
    logger = Recording()
    trainer = lightning(tmp_path, logger=logger, limit_val_batches=2, limit_test_batches=2)
    model = StepAndEpoch()

    def test_step(batch, batch_idx):
        model.log("t", 2.0, on_step=True, on_epoch=False)

    model.test_step = test_step
    trainer.validate(model, loader(32), verbose=False)
    trainer.test(model, loader(32), verbose=False)
    assert [(sorted(m), s) for m, s in logger.calls if "t" in m or "v_step" in m] == [
        (["only_step", "v_step"], 0), (["only_step", "v_step"], 1), (["t"], 0), (["t"], 1),
    ]


def test_fulmen_sends_evaluation_epoch_values_only(tmp_path):
    class Core(System):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("v", F.mse_loss(self.layer(x), y), on_step=True, on_epoch=True)

    logger = Recording()
    trainer = core(tmp_path, logger=logger, limit_val_batches=3)
    trainer.fit(Core(), loader(), loader(32))
    assert not any("v_step" in m for m, _ in logger.calls)
    assert any("v_epoch" in m for m, _ in logger.calls)


def test_lightning_calls_log_metrics_with_keywords(tmp_path):
    class KeywordsOnly(Logger):
        def __init__(self):
            self.seen = []

        def log_metrics(self, *, metrics, step):  # only keywords: a positional call fails
            self.seen.append(step)

    logger = KeywordsOnly()
    lightning(tmp_path, logger=logger, limit_train_batches=2, log_every_n_steps=1).fit(StepAndEpoch(), loader())
    assert logger.seen == [0, 1, 1]


def test_one_key_from_training_step_and_the_epoch_end(tmp_path):
    class TwoHooks(Model):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("metric", loss, on_step=True, on_epoch=False)
            return loss

        def on_train_epoch_end(self):
            self.log("metric", 7.0, on_step=False, on_epoch=True)

    logger = Recording()
    trainer = lightning(tmp_path, logger=logger, max_epochs=2, limit_train_batches=2, log_every_n_steps=1)
    trainer.fit(TwoHooks(), loader())
    assert float(trainer.callback_metrics["metric"]) == 7.0
    sent = [(m["metric"], step) for m, step in logger.calls if "metric" in m]
    assert [step for _, step in sent] == [0, 1, 1, 2, 3, 3]
    assert sent[2][0] == 7.0 and sent[5][0] == 7.0
    # fulmen's Trainer: one name, one meaning
    with pytest.raises(LoggingError, match="settings that differ"):
        core(tmp_path, limit_train_batches=2).fit(_core_two_hooks(), loader())


def _core_two_hooks() -> fulmen.System:
    class TwoHooks(System):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("metric", loss, on_step=True, on_epoch=False)
            return loss

        def on_train_epoch_end(self):
            self.log("metric", 7.0, on_step=False, on_epoch=True)

    return TwoHooks()


def test_one_key_twice_in_one_hook_with_other_settings_is_refused(tmp_path):
    class Twice(Model):
        def training_step(self, batch, batch_idx):
            self.log("foo", 1.0, prog_bar=False)
            self.log("foo", 1.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"self.log\(foo, ...\)` twice in `training_step`"):
        lightning(tmp_path, limit_train_batches=1).fit(Twice(), loader())


def test_results_per_test_dataloader_with_add_dataloader_idx_false(tmp_path):
    class PerLoader(Model):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            self.log(f"only_dl{dataloader_idx}", float(dataloader_idx + 1), add_dataloader_idx=False)
            self.log("common", 5.0)

        def on_test_epoch_end(self):
            self.log("at_end", 3.0)

    results = lightning(tmp_path).test(PerLoader(), [loader(16), loader(16)], verbose=False)
    assert results == [
        {"only_dl0": 1.0, "common/dataloader_idx_0": 5.0, "at_end": 3.0},
        {"only_dl1": 2.0, "common/dataloader_idx_1": 5.0, "at_end": 3.0},
    ]


@pytest.mark.parametrize("make", [lightning, core])
def test_a_key_naming_a_dataloader_is_refused(tmp_path, make):
    class Named(Model if make is lightning else System):
        def training_step(self, batch, batch_idx):
            self.log("foo/dataloader_idx_0", 1.0)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"`self\.log` with the key `foo/dataloader_idx_0`"):
        make(tmp_path, limit_train_batches=1).fit(Named(), loader())


@pytest.mark.parametrize(
    "value", [None, {"a": 1}, "foo", [1, 2, 3], (1, 2), torch.ones(2), float("nan")]
)
def test_values_that_cannot_be_logged_name_the_call_as_lightning_does(tmp_path, value):
    class Bad(Model):
        def training_step(self, batch, batch_idx):
            self.log("foo", value)
            return super().training_step(batch, batch_idx)

    if isinstance(value, float):  # NaN is a number: logged
        lightning(tmp_path, limit_train_batches=1).fit(Bad(), loader())
        return
    phrase = "tensor must have a single element" if isinstance(value, torch.Tensor) else f"self.log(foo, {value})` was called"
    with pytest.raises(ValueError, match=re.escape(phrase)):
        lightning(tmp_path, limit_train_batches=1).fit(Bad(), loader())


def test_on_step_and_on_epoch_both_false_is_not_useful(tmp_path):
    class Useless(Model):
        def training_step(self, batch, batch_idx):
            self.log("foo", 1.0, on_step=False, on_epoch=False)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="is not useful"):
        lightning(tmp_path, limit_train_batches=1).fit(Useless(), loader())


def test_a_logged_metric_object_must_belong_to_the_module(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    class Loose(Model):
        def training_step(self, batch, batch_idx):
            self.log("acc", torchmetrics.MeanMetric())
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="fix this by setting an attribute for the metric"):
        lightning(tmp_path, limit_train_batches=1).fit(Loose(), loader())

    class Other(Loose):
        def __init__(self):
            super().__init__()
            self.bar = torchmetrics.MeanMetric()

    with pytest.raises(MisconfigurationException, match=r"metric_attribute=name\)` where `name` is one of \['bar'\]"):
        lightning(tmp_path, limit_train_batches=1).fit(Other(), loader())

    class Owned(Model):
        def __init__(self):
            super().__init__()
            self.mean = torchmetrics.MeanMetric()

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.mean(loss.detach())
            self.log("mean_loss", self.mean, metric_attribute="mean")
            return loss

    trainer = lightning(tmp_path, limit_train_batches=2)
    trainer.fit(Owned(), loader())
    assert "mean_loss" in trainer.callback_metrics


# -- the progress bar's Lightning API --------------------------------------------------------------------
def test_progress_bar_get_metrics_and_total_val_batches(tmp_path):
    class Bar(TQDMProgressBar):
        def __init__(self):
            super().__init__()
            self.totals: list[int | float] = []
            self.shown: list[dict[str, Any]] = []

        def get_metrics(self, trainer, model):
            items = super().get_metrics(trainer, model)
            items.pop("v_num", None)
            items["extra"] = 1
            return items

        def on_train_epoch_end(self, trainer, model):
            self.totals.append(self.total_val_batches)
            self.shown.append(self.get_metrics(trainer, model))
            super().on_train_epoch_end(trainer, model)

    class Shown(Model):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss, prog_bar=True)
            return loss

    bar = Bar()
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[bar], max_epochs=4, check_val_every_n_epoch=2, limit_val_batches=2, num_sanity_val_steps=0,
    )
    trainer.fit(Shown(), loader(), loader(32))
    assert bar.totals == [0, 2, 0, 2]
    assert bar.trainer is trainer and bar.total_train_batches == 10
    assert all({"loss", "extra"} <= set(shown) for shown in bar.shown)


def test_tqdm_bar_shows_the_loggers_version_as_v_num(tmp_path):
    from fulmen.lightning.loggers import CSVLogger

    bar = TQDMProgressBar()
    trainer = L.Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path), callbacks=[bar], max_epochs=1,
                        enable_checkpointing=False, enable_model_summary=False, limit_train_batches=1)
    trainer.fit(Model(), loader())
    assert bar.get_metrics(trainer, trainer.lightning_module)["v_num"] == 0


def test_time_checks_are_made_only_in_epochs_that_validate(tmp_path):
    # The clock is read at the start of training and, in a validating epoch, once per batch.
    clock = FakeClock(tick=0.0)
    reads = itertools.count()

    def counted() -> float:
        next(reads)
        return clock()

    with mock.patch("time.monotonic", counted):
        lightning(tmp_path, max_epochs=2, val_check_interval="01:00:00:00", check_val_every_n_epoch=2,
                  limit_train_batches=3, num_sanity_val_steps=0).fit(Model(), loader(), loader(16))
    assert next(reads) == 1 + 3


# -- self.log from a callback's hooks ------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lightning, core])
def test_a_callback_logs_through_the_system_being_run(tmp_path, make):
    class Logs(fulmen.Callback):
        def on_train_start(self, trainer, system):
            self.log("at_start", 1.0)

        def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx):
            self.log("per_batch", float(batch_idx))  # per step by default in a batch hook

        def on_train_epoch_end(self, trainer, system):
            self.log_dict({"at_end": 5.0, "lr": trainer.optimizers[0].param_groups[0]["lr"]})

    trainer = make(tmp_path, limit_train_batches=3, callbacks=[Logs()])
    trainer.fit(Model() if make is lightning else System(), loader())
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert got == pytest.approx({"at_start": 1.0, "per_batch": 2.0, "at_end": 5.0, "lr": 0.01})


def test_a_callback_cannot_log_outside_a_run():
    with pytest.raises(AttributeError, match="outside a run"):
        fulmen.Callback().log("x", 1.0)
    with pytest.raises(AttributeError, match="outside a run"):
        fulmen.Callback().log_dict({"x": 1.0})
    assert not hasattr(fulmen.Callback(), "log")  # hasattr stays usable


def test_callback_log_is_given_per_run_not_a_class_function():
    """Lightning attaches the module's log/log_dict to each callback instance; the class's public
    functions stay its hooks (LambdaCallback accepts every one of them)."""
    import inspect

    from fulmen.lightning.callbacks import LambdaCallback

    public = {n for n, _ in inspect.getmembers(fulmen.Callback, inspect.isfunction) if not n.startswith("_")}
    assert "log" not in public and "log_dict" not in public
    LambdaCallback(**{n: (lambda *a, **k: None) for n in public - {"state_dict", "load_state_dict"}})
