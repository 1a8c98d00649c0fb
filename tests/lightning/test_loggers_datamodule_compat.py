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
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

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


def test_tensorboard_sub_dir_in_a_run_keeps_lightnings_layout(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path, sub_dir="tb")
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=logger, log_every_n_steps=1)
    trainer.fit(Regressor(lr=0.1), DataLoader(regression_data(), batch_size=8))
    run = tmp_path / "lightning_logs" / "version_0"
    assert trainer.log_dir == logger.log_dir == str(run / "tb")
    assert logger.run_dir == str(run)
    # Checkpoints in the version folder; hparams.yaml and the event files in sub_dir (as Lightning).
    assert trainer.checkpoint_callback.dirpath == str(run / "checkpoints")
    assert os.listdir(run / "checkpoints") and not (run / "tb" / "checkpoints").exists()
    assert yaml.safe_load((run / "tb" / "hparams.yaml").read_text()) == {"lr": 0.1}
    assert len(_events(str(run / "tb")).Scalars("train_loss")) == 2


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


def test_tensorboard_default_hp_metric_placeholder_as_lightning(tmp_path: Path) -> None:
    """Lightning's default_hp_metric=True: a fit logs hp_metric = -1 when it records the
    hyperparameters; a number given as metrics becomes hp_metric; default_hp_metric=False and
    fulmen's own TensorBoardLogger write no placeholder."""
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(tmp_path)
    quiet_trainer(tmp_path, max_epochs=1, logger=logger).fit(Regressor(lr=0.1), DataLoader(regression_data(), batch_size=8))
    assert [s.value for s in _events(logger.log_dir).Scalars("hp_metric")] == [-1.0]

    class NoHparams(Regressor):  # Lightning sends hyperparameters only after save_hyperparameters()
        def __init__(self) -> None:
            L.LightningModule.__init__(self)
            self.layer = torch.nn.Linear(4, 1)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    quiet = TensorBoardLogger(tmp_path / "quiet")
    quiet_trainer(tmp_path, max_epochs=1, logger=quiet).fit(NoHparams(), DataLoader(regression_data(), batch_size=8))
    assert "hp_metric" not in _events(quiet.log_dir).Tags()["scalars"]
    # ... but, as Lightning's logger does when it saves, an hparams.yaml of {} in its folder
    assert yaml.safe_load((Path(quiet.log_dir) / "hparams.yaml").read_text()) == {}

    scored = TensorBoardLogger(tmp_path / "scored")
    scored.log_hyperparams({"lr": 0.1}, 0.25)
    scored.finalize("success")
    assert [s.value for s in _events(scored.log_dir).Scalars("hp_metric")] == [0.25]

    for plain in (TensorBoardLogger(tmp_path / "off", default_hp_metric=False), fulmen.TensorBoardLogger(tmp_path / "core")):
        plain.log_hyperparams({"lr": 0.1})
        plain.log_metrics({"loss": 1.0}, step=0)
        plain.finalize("success")
        assert "hp_metric" not in _events(plain.log_dir).Tags()["scalars"]


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


# -- LightningDataModule ---------------------------------------------------------------------------


class Counting(Dataset[torch.Tensor]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i)])


class Stream(IterableDataset[torch.Tensor]):
    def __iter__(self) -> Any:
        return iter(torch.arange(6.0).reshape(6, 1))


def test_from_datasets_builds_the_loaders() -> None:
    train, val, test = Counting(8), [Counting(4), Stream()], {"a": Counting(2)}
    dm = L.LightningDataModule.from_datasets(train, val, test, batch_size=2, num_workers=0)
    assert isinstance(dm, L.LightningDataModule)
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and loader.dataset is train and loader.batch_size == 2
    torch.manual_seed(0)
    assert sorted(torch.cat(list(loader)).flatten().tolist()) == [float(i) for i in range(8)]
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # training data is shuffled
    val_loaders = dm.val_dataloader()
    assert [type(v.sampler).__name__ for v in val_loaders[:1]] == ["SequentialSampler"]
    assert torch.cat(list(val_loaders[1])).flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # not shuffled
    assert list(dm.test_dataloader()) == ["a"] and dm.test_dataloader()["a"].dataset is test["a"]
    assert dm.predict_dataloader() is None  # not given: the class's own hook

    with pytest.raises(TypeError, match=r"from_datasets\(train_dataset=...\): expected a torch.utils.data.Dataset"):
        L.LightningDataModule.from_datasets(DataLoader(train))


def test_from_datasets_passes_init_arguments() -> None:
    class Sized_(L.LightningDataModule):
        def __init__(self, root: str, batch_size: int = 1) -> None:
            super().__init__()
            self.root, self.batch_size = root, batch_size

    dm = Sized_.from_datasets(Counting(4), batch_size=4, num_workers=2, root="/data")
    assert (dm.root, dm.batch_size) == ("/data", 4)  # num_workers is not an argument: not passed
    assert dm.train_dataloader().num_workers == 2
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'root'"):
        Sized_.from_datasets(Counting(4))

    class Anything(L.LightningDataModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            self.kwargs = kwargs

    assert Anything.from_datasets(Counting(4), batch_size=5).kwargs == {"batch_size": 5, "num_workers": 0}


def test_from_datasets_trains_and_pickles(tmp_path: Path) -> None:
    import pickle

    data = regression_data()
    dm = L.LightningDataModule.from_datasets(data, data, batch_size=8)
    assert str(pickle.loads(pickle.dumps(dm))) == str(dm)

    class Validated(Regressor):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))

    model = Validated()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4 and "val_loss" in trainer.callback_metrics


def test_str_lists_the_dataloaders_and_dataset_sizes() -> None:
    class Data(L.LightningDataModule):
        def setup(self, stage: str) -> None:
            self.train = Counting(64)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train)

        def val_dataloader(self) -> list[DataLoader]:
            return [DataLoader(Counting(16)), DataLoader(Stream())]

    dm = Data()
    sep = os.linesep
    expected = "{Train dataloader: None}" + sep + "{Validation dataloader: 1. size=16 ; 2. size=NA}"
    assert str(dm) == expected + sep + "{Test dataloader: None}" + sep + "{Predict dataloader: None}"
    dm.setup("fit")
    assert str(dm).split(sep)[0] == "{Train dataloader: size=64}"  # (setup made the dataset)


class Kept(L.LightningDataModule):
    def __init__(self, batch_size: int = 8, log_it: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(logger=log_it)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(), batch_size=self.hparams.batch_size)


def test_datamodule_save_hyperparameters_logger_false(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path))
    trainer.fit(Regressor(lr=0.1), datamodule=Kept(batch_size=4, log_it=False))
    logged = yaml.safe_load(Path(trainer.logger.log_dir, "hparams.yaml").read_text())
    assert logged == {"lr": 0.1}  # the datamodule's stay out of the loggers...
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert ckpt["datamodule_hyper_parameters"] == {"batch_size": 4, "log_it": False}  # ...not the checkpoint

    class Quiet(Regressor):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__(lr)
            self.save_hyperparameters(logger=False)

    trainer = quiet_trainer(tmp_path / "b", max_epochs=1, logger=CSVLogger(tmp_path / "b"))
    trainer.fit(Quiet(), datamodule=Kept(batch_size=4))
    logged = yaml.safe_load(Path(trainer.logger.log_dir, "hparams.yaml").read_text())
    assert logged == {"batch_size": 4, "log_it": True}  # only the datamodule's


@pytest.mark.parametrize("per_node", [True, False])
def test_prepare_data_per_node_chooses_the_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_node: bool) -> None:
    calls: list[str] = []

    class Prepared(Kept):
        def prepare_data(self) -> None:
            calls.append("prepare")

    dm = Prepared()
    assert dm.prepare_data_per_node is True
    dm.prepare_data_per_node = per_node
    # As on the second machine of two: local rank 0 there, global rank 0 elsewhere.
    monkeypatch.setattr(fulmen.Trainer, "local_rank", property(lambda self: 0))
    monkeypatch.setattr(fulmen.Trainer, "is_global_zero", property(lambda self: False))
    trainer = quiet_trainer(tmp_path, max_steps=1, logger=False, enable_checkpointing=False)
    trainer.fit(Regressor(), datamodule=dm)
    assert calls == (["prepare"] if per_node else [])
