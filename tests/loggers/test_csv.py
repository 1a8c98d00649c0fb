"""CSVLogger: version folders, the metrics.csv layout, buffering and hparams.yaml."""

from __future__ import annotations

import argparse
import csv
import enum
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fulmen.loggers import CSVLogger, FolderLogger, Logger


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_is_a_folder_logger() -> None:
    assert issubclass(CSVLogger, FolderLogger)
    assert issubclass(CSVLogger, Logger)


def test_versions_increment_and_folder_is_created_on_first_write(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, name="exp")
    assert first.version == 0
    assert first.log_dir == os.path.join(tmp_path, "exp", "version_0")
    assert not (tmp_path / "exp").exists()  # resolving the version creates nothing

    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    assert (tmp_path / "exp" / "version_0" / "metrics.csv").is_file()

    second = CSVLogger(tmp_path, name="exp")
    assert second.version == 1
    second.log_hyperparams({"lr": 0.1})
    assert (tmp_path / "exp" / "version_1" / "hparams.yaml").is_file()
    assert CSVLogger(tmp_path, name="exp").version == 2


def test_loggers_resolving_version_before_writing_share_the_folder(tmp_path: Path) -> None:
    a, b = CSVLogger(tmp_path), CSVLogger(tmp_path)
    assert a.version == b.version == 0  # what the trainer does before any logger writes
    a.log_metrics({"x": 1.0}, step=0)
    a.save()
    b.log_hyperparams({"seed": 1})
    assert a.log_dir == b.log_dir
    assert sorted(os.listdir(tmp_path / "fulmen_logs")) == ["version_0"]
    assert sorted(os.listdir(a.log_dir)) == ["hparams.yaml", "metrics.csv"]


def test_explicit_versions_and_empty_name(tmp_path: Path) -> None:
    assert CSVLogger(tmp_path, version=7).log_dir == os.path.join(tmp_path, "fulmen_logs", "version_7")
    assert CSVLogger(tmp_path, version="run-a").log_dir == os.path.join(tmp_path, "fulmen_logs", "run-a")
    assert CSVLogger(tmp_path, name="").log_dir == os.path.join(tmp_path, "version_0")


def test_columns_epoch_step_then_metrics_in_first_seen_order(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train_loss": 0.5, "epoch": 0.0}, step=9)
    logger.log_metrics({"val_loss": 0.25, "train_loss": 0.4, "epoch": 1.0}, step=19)
    logger.log_metrics({"lr": 0.001}, step=20)  # no epoch key: empty epoch cell
    logger.save()

    header, rows = read_csv(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    assert header == ["epoch", "step", "train_loss", "val_loss", "lr"]
    assert rows == [
        {"epoch": "0", "step": "9", "train_loss": "0.5", "val_loss": "", "lr": ""},
        {"epoch": "1", "step": "19", "train_loss": "0.4", "val_loss": "0.25", "lr": ""},
        {"epoch": "", "step": "20", "train_loss": "", "val_loss": "", "lr": "0.001"},
    ]


def test_header_widens_when_a_new_metric_arrives_after_a_flush(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    path = tmp_path / "fulmen_logs" / "version_0" / "metrics.csv"
    logger.log_metrics({"loss": 1.0, "epoch": 0.0}, step=0)
    logger.log_metrics({"loss": 0.5, "epoch": 0.0}, step=1)
    assert read_csv(path)[0] == ["epoch", "step", "loss"]

    logger.log_metrics({"val_acc": 0.75, "epoch": 0.0}, step=1)  # same step: its own row
    header, rows = read_csv(path)
    assert header == ["epoch", "step", "loss", "val_acc"]
    assert [(r["step"], r["loss"], r["val_acc"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("1", "", "0.75"),
    ]
    # The rewrite goes through a temp file in the same folder; none may be left behind.
    assert sorted(os.listdir(path.parent)) == ["metrics.csv"]

    logger.log_metrics({"loss": 0.25}, step=2)  # known columns again: appended
    header, rows = read_csv(path)
    assert header == ["epoch", "step", "loss", "val_acc"]
    assert rows[-1] == {"epoch": "", "step": "2", "loss": "0.25", "val_acc": ""}
    assert len(rows) == 4


def test_rows_are_buffered_until_n_calls_or_save(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = tmp_path / "fulmen_logs" / "version_0" / "metrics.csv"
    logger.log_metrics({"loss": 3.0}, step=0)
    logger.log_metrics({"loss": 2.0}, step=1)
    assert not path.exists()

    logger.log_metrics({"loss": 1.0}, step=2)  # third call: flushed
    assert [r["step"] for r in read_csv(path)[1]] == ["0", "1", "2"]

    logger.log_metrics({"loss": 0.5}, step=3)
    assert len(read_csv(path)[1]) == 3  # buffered again
    logger.save()
    assert [r["step"] for r in read_csv(path)[1]] == ["0", "1", "2", "3"]
    logger.save()  # nothing pending: the file is unchanged
    assert len(read_csv(path)[1]) == 4


def test_finalize_writes_pending_rows(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": 0.1}, step=5)
    logger.finalize("success")
    _, rows = read_csv(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    assert rows == [{"epoch": "", "step": "5", "loss": "0.1"}]


def test_finalize_without_logging_creates_no_folder(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.finalize("failed")
    assert not (tmp_path / "fulmen_logs").exists()


def test_explicit_version_with_an_existing_file_keeps_its_rows(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"loss": 1.0, "epoch": 0.0}, step=0)
    first.finalize("interrupted")

    resumed = CSVLogger(tmp_path, version=0)
    resumed.log_metrics({"acc": 0.5, "epoch": 1.0}, step=10)
    resumed.save()
    header, rows = read_csv(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    assert header == ["epoch", "step", "loss", "acc"]
    assert rows == [
        {"epoch": "0", "step": "0", "loss": "1.0", "acc": ""},
        {"epoch": "1", "step": "10", "loss": "", "acc": "0.5"},
    ]


def test_flush_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_logs_every_n_steps"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)


class Color(enum.Enum):
    RED = "red"


def test_hparams_yaml_holds_plain_values(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(
        {
            "lr": torch.tensor(0.5),
            "weights": torch.tensor([1.0, 2.0]),
            "data_dir": Path("/data/mnist"),
            "batch_size": np.int64(32),
            "momentum": np.float64(0.9),
            "optimizer": torch.optim.SGD,
            "color": Color.RED,
            "layers": (64, 32),
            "model": {"hidden": 128, "act": "relu", "dropout": None},
            "args": argparse.Namespace(seed=3),
            "device": torch.device("cpu"),
        }
    )
    text = (tmp_path / "fulmen_logs" / "version_0" / "hparams.yaml").read_text()
    assert yaml.safe_load(text) == {
        "lr": 0.5,
        "weights": [1.0, 2.0],
        "data_dir": "/data/mnist",
        "batch_size": 32,
        "momentum": 0.9,
        "optimizer": "torch.optim.sgd.SGD",
        "color": "red",
        "layers": [64, 32],
        "model": {"hidden": 128, "act": "relu", "dropout": None},
        "args": {"seed": 3},
        "device": "device(type='cpu')",
    }


def test_hparams_calls_merge(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "seed": 1})
    logger.log_hyperparams({"lr": 0.2, "batch_size": 8})
    text = (tmp_path / "fulmen_logs" / "version_0" / "hparams.yaml").read_text()
    assert yaml.safe_load(text) == {"lr": 0.2, "seed": 1, "batch_size": 8}


def test_test_only_run_writes_hparams(tmp_path: Path) -> None:
    """Hyperparameters reach the loggers in every stage, not only in fit."""
    import yaml
    from helpers.systems import TinySystem, make_loader, quiet_trainer

    trainer = quiet_trainer(tmp_path)
    trainer.test(TinySystem(lr=0.25), make_loader(), verbose=False)
    with open(os.path.join(trainer.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f)["lr"] == 0.25
