"""TensorBoardLogger: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("tensorboard")

from helpers.systems import make_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

import fulmen
from fulmen.errors import FulmenWarning
from fulmen.loggers import CSVLogger, TensorBoardLogger

SRC = Path(__file__).resolve().parents[2] / "src"


def load(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_scalars_are_written_into_log_dir(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="exp")
    logger.log_metrics({"train_loss": 1.0, "epoch": 0.0}, step=0)
    logger.log_metrics({"train_loss": 0.5, "epoch": 0.0}, step=10)
    logger.log_metrics({"val/acc": 0.75, "epoch": 1.0}, step=20)
    logger.save()

    log_dir = tmp_path / "exp" / "version_0"
    assert logger.log_dir == str(log_dir)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(log_dir))
    acc = load(logger.log_dir)
    assert sorted(acc.Tags()["scalars"]) == ["epoch", "train_loss", "val/acc"]
    assert [(s.step, s.value) for s in acc.Scalars("train_loss")] == [(0, 1.0), (10, 0.5)]
    assert [(s.step, s.value) for s in acc.Scalars("epoch")] == [(0, 0.0), (10, 0.0), (20, 1.0)]
    assert [(s.step, s.value) for s in acc.Scalars("val/acc")] == [(20, 0.75)]
    logger.finalize("success")


def test_versions_increment_and_nothing_is_created_before_use(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    assert first.version == 0
    assert not (tmp_path / "fulmen_logs").exists()
    first.log_metrics({"x": 1.0}, step=0)
    first.finalize("success")

    second = TensorBoardLogger(tmp_path)
    assert second.version == 1
    assert second.experiment is not None  # the writer creates the folder
    assert (tmp_path / "fulmen_logs" / "version_1").is_dir()
    second.finalize("success")

    unused = TensorBoardLogger(tmp_path)
    unused.finalize("success")
    assert sorted(os.listdir(tmp_path / "fulmen_logs")) == ["version_0", "version_1"]


def test_shares_the_version_folder_with_a_csv_logger(tmp_path: Path) -> None:
    tb, csv_logger = TensorBoardLogger(tmp_path), CSVLogger(tmp_path)
    assert tb.version == csv_logger.version == 0  # resolved before either writes
    tb.log_metrics({"loss": 1.0}, step=0)
    csv_logger.log_metrics({"loss": 1.0}, step=0)
    csv_logger.save()
    tb.finalize("success")
    assert tb.log_dir == csv_logger.log_dir
    assert sorted(os.listdir(tmp_path / "fulmen_logs")) == ["version_0"]
    assert "metrics.csv" in os.listdir(tb.log_dir)


def test_hparams_reach_the_hparams_plugin_and_yaml(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams(
        {
            "lr": torch.tensor(0.5),
            "optimizer": {"name": "adam", "betas": (0.9, 0.999)},
            "data_dir": Path("/data"),
            "use_amp": True,
            "layers": 3,
        }
    )
    logger.log_metrics({"loss": 0.1}, step=1)
    logger.finalize("failed")

    content = load(logger.log_dir).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    # Only the session summaries: an "experiment" summary would freeze the HPARAMS table's columns.
    assert set(content) == {hp_metadata.SESSION_START_INFO_TAG, hp_metadata.SESSION_END_INFO_TAG}

    start = hp_metadata.parse_session_start_info_plugin_data(content[hp_metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values == {
        "lr": 0.5,
        "optimizer/name": "adam",
        "optimizer/betas": "[0.9, 0.999]",  # not a scalar: shown as text
        "data_dir": "/data",
        "use_amp": True,
        "layers": 3.0,
    }
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE

    saved = yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text())
    assert saved == {
        "lr": 0.5,
        "optimizer": {"name": "adam", "betas": [0.9, 0.999]},
        "data_dir": "/data",
        "use_amp": True,
        "layers": 3,
    }


def test_an_interrupted_run_ends_its_session(tmp_path: Path) -> None:
    # Ctrl-C in a fit: the KeyboardInterrupt propagates (the plugin has no "aborted" status).
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.finalize("interrupted")
    content = load(logger.log_dir).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    end = hp_metadata.parse_session_end_info_plugin_data(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.status == getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_UNKNOWN)


def test_writer_kwargs_are_forwarded(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, filename_suffix=".fulmen")
    logger.log_metrics({"x": 2.0}, step=3)
    logger.finalize("success")
    (event_file,) = os.listdir(logger.log_dir)
    assert event_file.endswith(".fulmen")


def test_logging_after_finalize_reopens_the_writer(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"x": 2.0}, step=1)
    logger.finalize("success")
    assert [(s.step, s.value) for s in load(logger.log_dir).Scalars("x")] == [(0, 1.0), (1, 2.0)]


def test_tensorboard_is_imported_only_when_first_used() -> None:
    code = (
        "import sys, tempfile\n"
        "import fulmen.loggers.tensorboard as m\n"
        "print('torch.utils.tensorboard' in sys.modules, 'tensorboard' in sys.modules)\n"
        "m.TensorBoardLogger(tempfile.mkdtemp()).experiment\n"
        "print('torch.utils.tensorboard' in sys.modules)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_missing_tensorboard_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'fulmen\[tensorboard\]'"):
        logger.log_metrics({"x": 1.0}, step=0)
    with pytest.raises(ModuleNotFoundError, match="pip install tensorboard"):
        logger.log_hyperparams({"lr": 0.1})
    assert not (tmp_path / "fulmen_logs").exists()


class _GraphNet(fulmen.System):
    """Dropout and BatchNorm: tracing in train mode would draw random numbers and move the
    running statistics; the logger must leave both as they were."""

    def __init__(self, example: bool = True) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)
        )
        if example:
            self.example_input_array = torch.randn(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit_graph_net(root: Path, logger: TensorBoardLogger, example: bool = True) -> dict[str, torch.Tensor]:
    fulmen.seed_everything(3)
    system = _GraphNet(example)
    trainer = fulmen.Trainer(
        max_epochs=2, default_root_dir=root, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(system, make_loader(shuffle=True))
    return {k: v.clone() for k, v in system.state_dict().items()}


def test_log_graph_adds_the_traced_graph_and_leaves_the_run_unchanged(tmp_path: Path) -> None:
    with_graph = TensorBoardLogger(tmp_path / "a", log_graph=True)
    weights = _fit_graph_net(tmp_path / "a", with_graph)
    plain = _fit_graph_net(tmp_path / "b", TensorBoardLogger(tmp_path / "b"))
    for k in plain:  # the same run as without the graph, bit for bit
        assert torch.equal(weights[k], plain[k]), k
    graph = load(with_graph.log_dir).Graph()  # TensorBoard's GRAPHS tab reads this GraphDef
    ops = {node.op for node in graph.node}
    assert {"aten::linear", "aten::batch_norm"} <= ops, ops
    assert load(TensorBoardLogger(tmp_path / "b", version=0).log_dir).Tags()["graph"] is False


def test_log_graph_without_an_example_input_warns(tmp_path: Path) -> None:
    with pytest.warns(FulmenWarning, match="has no example_input_array; set self.example_input_array"):
        _fit_graph_net(tmp_path, TensorBoardLogger(tmp_path, log_graph=True), example=False)


def test_sub_dir_holds_the_event_files(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, sub_dir="train")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    run = tmp_path / "fulmen_logs" / "version_0"
    assert logger.log_dir == str(run)  # the run folder (checkpoints, hparams.yaml) stays
    assert (run / "hparams.yaml").is_file()
    assert [(s.step, s.value) for s in load(str(run / "train")).Scalars("loss")] == [(0, 1.0)]
