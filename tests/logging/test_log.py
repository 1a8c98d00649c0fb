"""``self.log`` / ``self.log_dict`` through real Trainer runs: defaults, forking, reductions,
batch sizes, the progress bar, loggers, dataloader suffixes and the errors."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import FulmenWarning, LoggingError


def read_metrics(trainer: fulmen.Trainer) -> tuple[list[str], list[dict[str, str]]]:
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv"), newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def column(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    """(step, value) for the rows that have ``name``."""
    return [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]


def floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def counting_loader(n: int, batch_size: int) -> DataLoader:
    """Batches of ``x`` = 0, 1, ..., n-1 (one feature) with y = x."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return DataLoader(TensorDataset(x, x.clone()), batch_size=batch_size)


class Recorder(fulmen.Callback):
    """Records what callbacks see in ``trainer.callback_metrics`` and ``progress_bar_metrics``."""

    def __init__(self) -> None:
        self.batch: list[dict[str, float]] = []
        self.epoch: list[dict[str, float]] = []
        self.pbar: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        self.batch.append(floats(trainer.callback_metrics))
        self.pbar.append(dict(trainer.progress_bar_metrics))

    def on_train_epoch_end(self, trainer, system) -> None:
        self.epoch.append(floats(trainer.callback_metrics))


# -- defaults ----------------------------------------------------------------------------------------
class DefaultsSystem(TinySystem):
    def on_train_epoch_end(self) -> None:
        self.log("epoch_hook", float(self.current_epoch) + 0.5)


def test_defaults_per_hook(tmp_path: Path) -> None:
    system = DefaultsSystem()
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(system, make_loader(32, 8), make_loader(16, 8))

    train, val = trainer.metrics.stores["train"].entries, trainer.metrics.stores["val"].entries
    assert (train["train_loss"].on_step, train["train_loss"].on_epoch) == (True, False)
    assert (train["epoch_hook"].on_step, train["epoch_hook"].on_epoch) == (False, True)
    assert (val["val_loss"].on_step, val["val_loss"].on_epoch) == (False, True)

    header, rows = read_metrics(trainer)
    assert not any(name.endswith(("_step", "_epoch")) for name in header)
    assert [s for s, _ in column(rows, "train_loss")] == list(range(8))  # every step, log_every_n_steps=1
    assert [s for s, _ in column(rows, "val_loss")] == [3, 7]  # once per epoch
    assert column(rows, "epoch_hook") == [(3, 0.5), (7, 1.5)]
    assert [int(r["epoch"]) for r in rows if r.get("epoch_hook")] == [0, 1]


# -- on_step and on_epoch together -----------------------------------------------------------------------
class ForkSystem(TinySystem):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("metric", torch.tensor(float(batch_idx + 10 * self.current_epoch)), on_step=True, on_epoch=True)
        return loss


def test_on_step_and_on_epoch_fork_the_name(tmp_path: Path) -> None:
    rec = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=1, callbacks=[rec])
    trainer.fit(ForkSystem(), make_loader(32, 8))  # 4 batches per epoch

    header, rows = read_metrics(trainer)
    assert "metric_step" in header and "metric_epoch" in header and "metric" not in header
    assert column(rows, "metric_step") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 10.0), (5, 11.0), (6, 12.0), (7, 13.0)]
    assert column(rows, "metric_epoch") == [(3, 1.5), (7, 11.5)]

    # Inside the batch loop: the step value under both names; no epoch value in the first epoch.
    assert {k: v for k, v in rec.batch[2].items() if k.startswith("metric")} == {"metric": 2.0, "metric_step": 2.0}
    # At the epoch's end: the name is the epoch value, and the last step value is still there.
    assert {k: v for k, v in rec.epoch[0].items() if k.startswith("metric")} == {
        "metric": 1.5,
        "metric_epoch": 1.5,
        "metric_step": 3.0,
    }
    # Next epoch: step values again, last epoch's value kept under name_epoch.
    assert {k: v for k, v in rec.batch[5].items() if k.startswith("metric")} == {
        "metric": 11.0,
        "metric_step": 11.0,
        "metric_epoch": 1.5,
    }
    assert rec.epoch[1]["metric"] == rec.epoch[1]["metric_epoch"] == 11.5
    assert floats(trainer.callback_metrics)["metric_epoch"] == 11.5


# -- reduce_fx --------------------------------------------------------------------------------------------
VALUES = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]


class ReduceSystem(TinySystem):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        v = torch.tensor(VALUES[batch_idx])
        for fx in ("mean", "sum", "max", "min"):
            self.log(f"r_{fx}", v, on_step=False, on_epoch=True, reduce_fx=fx)
        self.log("r_median", v, on_step=False, on_epoch=True, reduce_fx=torch.median)
        self.log("r_custom", v, on_step=False, on_epoch=True, reduce_fx=lambda t: (t**2).sum())
        return super().training_step(batch, batch_idx)


def test_reduce_fx_epoch_values(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path)
    trainer.fit(ReduceSystem(), make_loader(64, 8))
    expected = {
        "r_mean": sum(VALUES) / 8,
        "r_sum": sum(VALUES),
        "r_max": max(VALUES),
        "r_min": min(VALUES),
        "r_median": sorted(VALUES)[3],  # torch.median takes the lower middle value
        "r_custom": sum(v * v for v in VALUES),
    }
    got = floats(trainer.callback_metrics)
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    _, rows = read_metrics(trainer)
    epoch_row = next(r for r in rows if r.get("r_mean"))
    assert {k: float(epoch_row[k]) for k in expected} == pytest.approx(expected)


# -- batch sizes -------------------------------------------------------------------------------------------
class CountingSystem(TinySystem):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        self.log("x_mean", x.mean())  # batch size taken from the batch
        self.log("weighted", float(batch_idx), batch_size=batch_idx + 1)
        self.log("batches", 1.0, reduce_fx="sum")


def test_epoch_mean_is_the_sample_mean(tmp_path: Path) -> None:
    system = CountingSystem(features=1)
    trainer = quiet_trainer(tmp_path)
    # 10 samples in batches of 4, 4, 2: the mean of batch means would be (1.5 + 5.5 + 8.5) / 3.
    (result,) = trainer.validate(system, counting_loader(10, 4), verbose=False)
    assert result["batches"] == 3.0
    assert result["x_mean"] == pytest.approx(4.5)
    assert result["weighted"] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3) / 6)


class DictBatchSystem(TinySystem):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("v", batch["x"].mean())


def test_batch_size_inferred_from_a_dict_batch(tmp_path: Path) -> None:
    data = [{"name": f"s{i}", "x": torch.tensor([float(i)])} for i in range(10)]
    loader = DataLoader(data, batch_size=4)
    (result,) = quiet_trainer(tmp_path).validate(DictBatchSystem(), loader, verbose=False)
    assert result["v"] == pytest.approx(4.5)


# -- prog_bar, logger=False, log_dict, plain numbers, sync_dist ---------------------------------------------
class OptionsSystem(TinySystem):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # train_loss, prog_bar=True
        self.log("secret", loss * 0 + 7.0, logger=False)
        self.log_dict({"d_a": loss * 0 + 1.0, "d_b": 2}, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # val_loss, prog_bar=True
        self.log("py_int", 3)
        self.log("py_float", 2.5)
        self.log("np_float", np.float64(1.25))
        self.log("np_int", np.int32(4))
        self.log("np_0d", np.array(0.5))
        self.log("synced", torch.tensor(6.0), sync_dist=True, sync_dist_group=None, rank_zero_only=True)


def test_prog_bar_logger_false_log_dict_and_plain_values(tmp_path: Path) -> None:
    rec = Recorder()
    trainer = quiet_trainer(tmp_path, log_every_n_steps=1, num_sanity_val_steps=0, callbacks=[rec])
    trainer.fit(OptionsSystem(), make_loader(32, 8), make_loader(16, 8))

    # progress bar: floats, only prog_bar keys
    assert set(rec.pbar[0]) == {"train_loss", "d_a", "d_b"}
    assert all(type(v) is float for v in rec.pbar[0].values())
    assert rec.pbar[0]["d_b"] == 2.0
    final = trainer.progress_bar_metrics
    assert "val_loss" in final
    assert "secret" not in final and "py_int" not in final
    assert all(type(v) is float for v in final.values())

    header, _ = read_metrics(trainer)
    assert "secret" not in header
    assert {"train_loss", "d_a", "d_b", "val_loss", "py_int", "np_0d", "synced"} <= set(header)
    assert "secret" not in trainer.logged_metrics

    got = floats(trainer.callback_metrics)
    assert got["secret"] == 7.0
    assert {k: got[k] for k in ("py_int", "py_float", "np_float", "np_int", "np_0d", "synced")} == {
        "py_int": 3.0,
        "py_float": 2.5,
        "np_float": 1.25,
        "np_int": 4.0,
        "np_0d": 0.5,
        "synced": 6.0,
    }


def test_progress_bar_metrics_keep_step_values_after_fit(tmp_path: Path) -> None:
    """After fit, the last step values logged with prog_bar=True stay in progress_bar_metrics,
    as they stay in callback_metrics."""
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(OptionsSystem(), make_loader(32, 8), make_loader(16, 8))
    assert {"train_loss", "d_a", "d_b"} <= set(trainer.callback_metrics)
    final = trainer.progress_bar_metrics
    assert {"train_loss", "val_loss", "d_a", "d_b"} <= set(final)
    assert final["d_b"] == 2.0


def test_log_dict_rejects_a_non_mapping(tmp_path: Path) -> None:
    class Bad(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log_dict([("a", 1.0)])  # type: ignore[arg-type]
            return super().training_step(batch, batch_idx)

    with pytest.raises(LoggingError, match=r"log_dict.*mapping.*list"):
        quiet_trainer(tmp_path).fit(Bad(), make_loader(16, 8))


# -- several validation dataloaders ---------------------------------------------------------------------------
class TwoLoaderSystem(TinySystem):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, _ = batch
        self.log("val_x", x.mean())
        self.log(f"plain_{dataloader_idx}", x.mean(), add_dataloader_idx=False)


def test_add_dataloader_idx(tmp_path: Path) -> None:
    system = TwoLoaderSystem(features=1)
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(system, counting_loader(8, 4), [counting_loader(4, 2), counting_loader(10, 4)])

    got = floats(trainer.callback_metrics)
    assert got["val_x/dataloader_idx_0"] == pytest.approx(1.5)
    assert got["val_x/dataloader_idx_1"] == pytest.approx(4.5)
    assert got["plain_0"] == pytest.approx(1.5)
    assert got["plain_1"] == pytest.approx(4.5)
    assert "val_x" not in got
    header, _ = read_metrics(trainer)
    assert {"val_x/dataloader_idx_0", "val_x/dataloader_idx_1", "plain_0", "plain_1"} <= set(header)

    results = trainer.validate(system, [counting_loader(4, 2), counting_loader(10, 4)], verbose=False)
    assert results == [
        pytest.approx({"val_x/dataloader_idx_0": 1.5, "plain_0": 1.5, "plain_1": 4.5}),
        pytest.approx({"val_x/dataloader_idx_1": 4.5, "plain_0": 1.5, "plain_1": 4.5}),
    ]


# -- values are detached tensors, and logging does not sync ---------------------------------------------------------
_SYNCING = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Make every tensor-to-Python conversion raise while the block runs."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("self.log converted a tensor to a Python value (a host-device sync)")

    saved = {name: torch.Tensor.__dict__.get(name) for name in _SYNCING}
    for name in _SYNCING:
        setattr(torch.Tensor, name, forbidden)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, old)


class NoSyncSystem(TinySystem):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        with no_host_sync():
            self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True)
            self.log_dict({"twice": loss * 2})
        return loss


class StoreWatcher(fulmen.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bool, bool]] = []

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        entry = trainer.metrics.stores["train"].entries["loss"]
        tensors = isinstance(entry.value, torch.Tensor) and all(isinstance(v, torch.Tensor) for v in entry.values)
        detached = entry.value.grad_fn is None and all(v.grad_fn is None for v in entry.values)
        self.seen.append((trainer.global_step, tensors, detached, "loss_step" in trainer.logged_metrics))


def test_logged_values_are_detached_tensors_until_the_log_interval(tmp_path: Path) -> None:
    watcher = StoreWatcher()
    trainer = quiet_trainer(tmp_path, log_every_n_steps=3, callbacks=[watcher])
    trainer.fit(NoSyncSystem(), make_loader(40, 8))  # 5 steps
    assert [s[:3] for s in watcher.seen] == [(step, True, True) for step in range(1, 6)]
    # Nothing reaches the loggers before the first interval (after the batch hooks of global step 3).
    assert [s[3] for s in watcher.seen] == [False, False, False, True, True]
    assert isinstance(trainer.callback_metrics["loss"], torch.Tensor)
    _, rows = read_metrics(trainer)
    assert [s for s, _ in column(rows, "loss_step")] == [2]


# -- errors ------------------------------------------------------------------------------------------------------------
class LogInStep(TinySystem):
    def __init__(self, action: Any) -> None:
        super().__init__()
        self.action = action

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.action(self, batch_idx)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (lambda s, i: s.log("vec", torch.ones(2, 2)), r"self\.log\('vec', value\).*scalar.*shape \(2, 2\)"),
        (lambda s, i: s.log("text", "hello"), r"self\.log\('text', value\).*number.*got str"),
        (lambda s, i: s.log("none", None), r"self\.log\('none', value\).*got NoneType"),
        (
            lambda s, i: s.log("flip", 1.0, prog_bar=i == 0),
            r"self\.log\('flip'.*prog_bar=True before, prog_bar=False now",
        ),
        (lambda s, i: s.log("off", 1.0, on_step=False, on_epoch=False), r"self\.log\('off'.*on_step=False, on_epoch=False"),
        (lambda s, i: s.log("fx", 1.0, reduce_fx="median"), r"self\.log\('fx'.*reduce_fx='median'.*'mean', 'sum'"),
        (lambda s, i: s.log("fx", 1.0, reduce_fx=3), r"reduce_fx=3"),
    ],
)
def test_bad_calls_raise_logging_error(tmp_path: Path, action: Any, match: str) -> None:
    with pytest.raises(LoggingError, match=match):
        quiet_trainer(tmp_path).fit(LogInStep(action), make_loader(16, 8))


def test_log_in_configure_optimizers_says_where_logging_works(tmp_path: Path) -> None:
    class LogsTooEarly(TinySystem):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            self.log("lr", 0.1)
            return super().configure_optimizers()

    with pytest.raises(LoggingError, match=r"self\.log\('lr'.*_step methods"):
        quiet_trainer(tmp_path).fit(LogsTooEarly(), make_loader(16, 8))


def test_log_without_a_trainer_warns_once() -> None:
    system = TinySystem()
    with pytest.warns(FulmenWarning, match="not attached to a Trainer") as record:
        system.log("a", 1.0)
        system.log("b", torch.tensor(2.0))
        system.log_dict({"c": 3.0})
    assert len([w for w in record if issubclass(w.category, FulmenWarning)]) == 1
