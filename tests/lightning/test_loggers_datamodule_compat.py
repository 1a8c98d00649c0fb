"""fulmen.lightning's CSV and TensorBoard loggers and LightningDataModule: the public API Lightning
programs use (``experiment``, optional ``step``/``params``, Lightning's file layout, ``from_datasets``,
``str(datamodule)``, ...), checked on the files written and read back."""

from __future__ import annotations

import argparse
import csv
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.lightning.loggers import CSVLogger, TensorBoardLogger
from fulmen.lightning.loggers.csv_logs import ExperimentWriter


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def regression_data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def quiet_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    return L.Trainer(default_root_dir=root, **kwargs)


# -- CSVLogger -------------------------------------------------------------------------------------


def test_csv_experiment_is_an_experiment_writer_holding_pending_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    writer = logger.experiment
    assert isinstance(writer, ExperimentWriter) and writer is logger.experiment
    assert (writer.NAME_METRICS_FILE, writer.NAME_HPARAMS_FILE) == ("metrics.csv", "hparams.yaml")
    assert writer.metrics_file_path == os.path.join(logger.log_dir, "metrics.csv")

    logger.log_metrics({"loss": torch.tensor(0.5)})  # step left out, a tensor value
    assert writer.metrics == [{"step": 0, "loss": 0.5}]
    assert not os.path.exists(writer.metrics_file_path)
    logger.log_metrics({"loss": 0.25})  # second call: flushed
    assert writer.metrics == []
    assert read_csv(writer.metrics_file_path)[1] == [{"loss": "0.5", "step": "0"}, {"loss": "0.25", "step": "1"}]


def test_csv_columns_are_lightnings_sorted_names_and_widen_with_new_metrics(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"b": 2, "a": 1}, step=0)
    assert read_csv(logger.experiment.metrics_file_path)[0] == ["a", "b", "step"]

    logger.log_metrics({"c": 3, "a": 4, "epoch": 0.0}, step=1)  # new names: the file is rewritten
    header, rows = read_csv(logger.experiment.metrics_file_path)
    assert header == ["a", "b", "c", "epoch", "step"]
    assert rows == [
        {"a": "1", "b": "2", "c": "", "epoch": "", "step": "0"},
        {"a": "4", "b": "", "c": "3", "epoch": "0", "step": "1"},
    ]
    logger.log_metrics({"a": 5}, step=2)  # known names: appended under the same header
    header, rows = read_csv(logger.experiment.metrics_file_path)
    assert header == ["a", "b", "c", "epoch", "step"] and rows[-1]["a"] == "5" and len(rows) == 3


def test_csv_log_hyperparams_without_params_writes_the_file(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name=None)
    logger.log_hyperparams()
    assert os.path.normpath(logger.root_dir) == str(tmp_path)
    assert yaml.safe_load((tmp_path / "version_0" / "hparams.yaml").read_text()) == {}
    logger.log_hyperparams(argparse.Namespace(lr=0.1))
    logger.log_hyperparams({"layer": torch.nn.BatchNorm1d})
    saved = yaml.safe_load((tmp_path / "version_0" / "hparams.yaml").read_text())
    assert saved == {"lr": 0.1, "layer": "torch.nn.modules.batchnorm.BatchNorm1d"}
    assert logger.experiment.hparams["lr"] == 0.1


def test_csv_explicit_version_replaces_an_earlier_metrics_file_with_a_warning(tmp_path: Path) -> None:
    old = tmp_path / "exp" / "version_0" / "metrics.csv"
    old.parent.mkdir(parents=True)
    old.write_text("step,loss\n0,9.0\n")
    logger = CSVLogger(tmp_path, name="exp", version=0)
    with pytest.warns(UserWarning, match=r"Experiment logs directory .* exists and is not empty"):
        _ = logger.experiment
    assert not old.exists()
    logger.log_metrics({"loss": 1.0}, step=3)
    logger.save()
    assert read_csv(old)[1] == [{"loss": "1.0", "step": "3"}]


def test_csv_run_resumed_by_fulmen_keeps_its_earlier_rows(tmp_path: Path) -> None:
    data = DataLoader(regression_data(), batch_size=8)
    first = quiet_trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    first.fit(Regressor(), data)
    last = first.checkpoint_callback.last_model_path or first.checkpoint_callback.best_model_path
    assert last

    logger = CSVLogger(tmp_path)  # no version given: the resumed run continues in version_0
    second = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Experiment logs directory")
        second.fit(Regressor(), data, ckpt_path=last)
    assert logger.log_dir == first.logger.log_dir
    _, rows = read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert sorted({r["epoch"] for r in rows if r["train_loss"]}) == ["0", "1"]


def test_csv_logger_writes_to_a_url_through_fsspec() -> None:
    fsspec = pytest.importorskip("fsspec")
    root = "memory://fulmen-csv-compat"
    fs, _ = fsspec.core.url_to_fs(root)
    first = CSVLogger(root)
    first.log_metrics({"loss": 0.5}, step=0)
    first.log_hyperparams({"lr": 0.1})
    first.save()
    path = os.path.join(first.log_dir, "metrics.csv")
    assert fs.isfile(path) and fs.cat_file(path).decode().splitlines() == ["loss,step", "0.5,0"]
    assert yaml.safe_load(fs.cat_file(os.path.join(first.log_dir, "hparams.yaml"))) == {"lr": 0.1}
    first.log_metrics({"acc": 1.0}, step=1)  # a new column: the file is written whole again
    first.save()
    assert fs.cat_file(path).decode().splitlines() == ["acc,loss,step", ",0.5,0", "1.0,,1"]
    assert CSVLogger(root).version == 1  # the versions on the URL are counted
    fs.rm("/fulmen-csv-compat", recursive=True)


def test_core_csv_logger_experiment_and_optional_step(tmp_path: Path) -> None:
    logger = fulmen.CSVLogger(tmp_path)
    assert type(logger.experiment).__name__ == "MetricsWriter"
    logger.log_metrics({"loss": 1.0})
    logger.log_metrics({"loss": 0.5})
    logger.save()
    header, rows = read_csv(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    assert header == ["epoch", "step", "loss"]  # fulmen's own layout stays
    assert [r["step"] for r in rows] == ["0", "1"]


# -- TensorBoardLogger -----------------------------------------------------------------------------


def _events(folder: str) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_subclass_name_and_version_make_log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")

    class Named(TensorBoardLogger):
        @property
        def name(self) -> str:
            return "name"

        @property
        def version(self) -> str:
            return "v"

    assert Named(tmp_path).log_dir == os.path.join(tmp_path, "name", "v")
    logger = Named(tmp_path, sub_dir="sub")
    assert logger.log_dir == os.path.join(tmp_path, "name", "v", "sub")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.finalize("success")
    assert yaml.safe_load((tmp_path / "name" / "v" / "sub" / "hparams.yaml").read_text()) == {"lr": 0.1}
    assert [(s.step, s.value) for s in _events(logger.log_dir).Scalars("loss")] == [(1, 2.0)]

    monkeypatch.setenv("FULMEN_TB_ROOT", str(tmp_path / "env"))
    assert Named("$FULMEN_TB_ROOT").log_dir == os.path.join(tmp_path, "env", "name", "v")
    assert Named("~/tb").log_dir == os.path.join(os.path.expanduser("~"), "tb", "name", "v")


def test_tensorboard_log_hyperparams_with_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    params = {"lr": 0.1, "args": argparse.Namespace(depth=3), "layer": torch.nn.Linear}
    logger.log_hyperparams(params, {"score": torch.tensor([0.5])})
    logger.log_hyperparams(argparse.Namespace(batch_size=8))
    logger.finalize("success")
    assert logger.hparams["batch_size"] == 8
    saved = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert saved == {"lr": 0.1, "args": {"depth": 3}, "layer": "torch.nn.modules.linear.Linear", "batch_size": 8}
    assert [(s.step, s.value) for s in _events(logger.log_dir).Scalars("score")] == [(0, 0.5)]


def test_tensorboard_log_graph_without_input_warns_at_each_call(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    model = Regressor()
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    for _ in range(2):
        with pytest.warns(UserWarning, match=r"Could not log computational graph to TensorBoard: The `model"):
            logger.log_graph(model)
    model.example_input_array = {"x": torch.zeros(1, 4)}
    with pytest.warns(UserWarning, match=r"can't be traced by TensorBoard"):
        logger.log_graph(model)
    logger.log_graph(model, torch.zeros(2, 4))  # given explicitly: the graph is added
    logger.finalize("success")
    assert _events(logger.log_dir).Tags()["graph"] is True


def test_tensorboard_public_names(tmp_path: Path) -> None:
    from fulmen.lightning.loggers.tensorboard import _TENSORBOARD_AVAILABLE

    assert _TENSORBOARD_AVAILABLE is True
    logger = TensorBoardLogger(tmp_path, name="exp", sub_dir="s")
    assert (logger.save_dir, logger.root_dir, logger.sub_dir) == (str(tmp_path), os.path.join(tmp_path, "exp"), "s")
    assert logger.group_separator == "/" and logger.NAME_HPARAMS_FILE == "hparams.yaml"
    assert logger._experiment is None
    logger.finalize("success")  # nothing logged: no folder
    assert not (tmp_path / "exp").exists()
