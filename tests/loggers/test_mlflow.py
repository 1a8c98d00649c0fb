"""MLFlowLogger: runs written by fit and read back with MLflow's own client (file store and SQLite)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("mlflow")  # imported once for the whole module (it takes ~1 s)

from helpers.systems import TinySystem, make_loader
from mlflow.tracking import MlflowClient

import fulmen
from fulmen.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

SRC = Path(__file__).resolve().parents[2] / "src"

class HparamSystem(TinySystem):
    def __init__(self, lr: float = 0.05, optimizer: Any = None, note: str = "") -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        self.fail_at_step = -1  # not a hyperparameter: a resumed run has the same params

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def failing(step: int) -> HparamSystem:
    system = HparamSystem()
    system.fail_at_step = step
    return system


def make_trainer(root: Path, logger: Any, max_epochs: int = 2, **kwargs: Any) -> fulmen.Trainer:
    kwargs.setdefault("callbacks", [fulmen.ModelCheckpoint(monitor="val_loss", save_last=True)])
    return fulmen.Trainer(
        max_epochs=max_epochs,
        log_every_n_steps=2,
        default_root_dir=root,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, path))


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database, created once: creating one runs ~3 s of migrations."""
    db = tmp_path_factory.mktemp("sqlite") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # The logger allows MLflow's file store for the process; set, then removed, so it is undone after.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written to the working folder shows up (and stays in tmp_path)


def test_is_a_plain_logger_without_run_folder() -> None:
    logger = MLFlowLogger()
    assert isinstance(logger, Logger)
    assert not isinstance(logger, fulmen.loggers.FolderLogger)
    assert logger.log_dir is None  # trainer.log_dir stays with the file loggers / default_root_dir
    assert logger.name == "fulmen_logs"


def test_fit_logs_metrics_params_record_and_best_checkpoint_to_a_file_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    logger = MLFlowLogger(save_dir=store, experiment_name="exp", run_name="first", tags={"team": "vision"})
    trainer = make_trainer(tmp_path, logger)
    long_note = "x" * 7000
    trainer.fit(
        HparamSystem(optimizer={"name": "sgd", "betas": (0.9, 0.99)}, note=long_note),
        make_loader(),
        make_loader(),
    )

    assert logger.save_dir == str(store) and os.path.isdir(store)
    client = MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(logger.version)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.tags["team"] == "vision"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert run.data.params == {
        "lr": "0.05",
        "optimizer/name": "sgd",
        "optimizer/betas": "[0.9, 0.99]",
        "note": "x" * 6000,  # MLflow keeps 6000 characters of a param
    }

    # 8 batches x 2 epochs, every 2nd step logged, validation at each epoch end.
    train_loss = history(client, logger.version, "train_loss")
    assert [step for step, _ in train_loss] == [1, 3, 5, 7, 9, 11, 13, 15]
    val_loss = history(client, logger.version, "val_loss")
    assert [step for step, _ in val_loss] == [7, 15]
    assert val_loss[-1][1] == pytest.approx(trainer.callback_metrics["val_loss"].item())
    assert {value for _, value in history(client, logger.version, "epoch")} == {0.0, 1.0}

    # The run record and the best checkpoint, as files identical to the local ones.
    best = trainer.checkpoint_callback.best_model_path
    assert artifacts(client, logger.version) == ["checkpoints", "run.json"]
    assert artifacts(client, logger.version, "checkpoints") == [f"checkpoints/{os.path.basename(best)}"]
    local = Path(client.download_artifacts(logger.version, "run.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text()) == json.loads(Path(trainer.log_dir, "run.json").read_text())
    ckpt = client.download_artifacts(
        logger.version, f"checkpoints/{os.path.basename(best)}", str(tmp_path / "dl")
    )
    assert Path(ckpt).read_bytes() == Path(best).read_bytes()
    assert not os.listdir(tmp_path / "cwd")


def test_sqlite_store_keeps_artifacts_next_to_the_database(tmp_path: Path, sqlite_template: Path) -> None:
    db = tmp_path / "db" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(sqlite_template, db)
    uri = f"sqlite:///{db}"
    logger = MLFlowLogger(tracking_uri=uri, experiment_name="sql", log_checkpoints="all")
    callback = fulmen.ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    trainer = make_trainer(tmp_path, logger, max_epochs=3, callbacks=[callback])
    trainer.fit(HparamSystem(), make_loader(), make_loader())

    assert logger.save_dir is None and logger.tracking_uri == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.version)
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.05"
    assert len(history(client, logger.version, "train_loss")) == 12
    kept = sorted(os.path.basename(p) for p in (*callback.best_k_models, callback.last_model_path))
    assert len(kept) == 3
    # "all": each checkpoint as it was written, also the one top-k deleted later (epoch 0's).
    uploaded = [p.split("/", 1)[1] for p in artifacts(client, logger.version, "checkpoints")]
    assert set(kept) < set(uploaded) and len(uploaded) == 4
    assert sorted(uploaded) == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "epoch=2-step=24.ckpt", "last.ckpt"]
    assert run.info.artifact_uri.startswith((tmp_path / "db" / "mlartifacts").as_uri())
    assert (tmp_path / "db" / "mlartifacts").is_dir()
    assert not os.listdir(tmp_path / "cwd")  # not MLflow's default ./mlruns for SQLite


def test_default_store_under_default_root_dir_together_with_csv_and_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    csv_logger, ml, tb = CSVLogger(tmp_path), MLFlowLogger(log_checkpoints=False), TensorBoardLogger(tmp_path)
    trainer = make_trainer(tmp_path, [csv_logger, ml, tb])
    trainer.fit(HparamSystem(), make_loader(), make_loader())

    assert trainer.log_dir == csv_logger.log_dir == tb.log_dir  # the MLflow logger has no run folder
    assert ml.save_dir == str(tmp_path / "mlruns")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    assert client.get_run(ml.version).info.status == "FINISHED"
    with open(csv_logger.metrics_file, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    logged = history(client, ml.version, "train_loss")
    assert [step for step, _ in logged] == [int(r["step"]) for r in rows]
    assert [value for _, value in logged] == pytest.approx([float(r["train_loss"]) for r in rows])
    # The run record of the run folder (the CSV logger's); no checkpoints with log_checkpoints=False.
    assert artifacts(client, ml.version) == ["run.json"]
    assert os.path.isfile(os.path.join(trainer.log_dir, "run.json"))


@pytest.mark.parametrize(
    ("status", "expected"), [("success", "FINISHED"), ("failed", "FAILED"), ("interrupted", "KILLED")]
)
def test_finalize_sets_the_run_status(tmp_path: Path, status: str, expected: str) -> None:
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    logger.log_metrics({"loss": 1.5}, step=3)
    assert logger.experiment.get_run(logger.version).info.status == "RUNNING"
    logger.finalize(status)
    assert logger.experiment.get_run(logger.version).info.status == expected
    assert history(logger.experiment, logger.version, "loss") == [(3, 1.5)]


def test_unused_logger_creates_no_run(tmp_path: Path) -> None:
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    logger.finalize("success")
    assert not (tmp_path / "mlruns").exists()


def test_failed_fit_marks_the_run_failed(tmp_path: Path) -> None:
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    trainer = make_trainer(tmp_path, logger)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(failing(10), make_loader(), make_loader())
    run = logger.experiment.get_run(logger.version)
    assert run.info.status == "FAILED"
    assert max(step for step, _ in history(logger.experiment, logger.version, "train_loss")) == 9
    # What there is at the failure is uploaded: the record and the epoch-0 checkpoint.
    assert artifacts(logger.experiment, logger.version) == ["checkpoints", "run.json"]


def test_params_are_logged_once_and_a_changed_value_warns(tmp_path: Path) -> None:
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    logger.log_hyperparams({"lr": 0.1, "model": {"depth": 3, "act": None}, "bad:key": 1})
    logger.log_hyperparams({"lr": 0.1})  # the same again (a test after fit): fine
    with pytest.warns(fulmen.FulmenWarning, match="already has the param 'lr'"):
        logger.log_hyperparams({"lr": 0.2, "new": True})
    logger.finalize("success")
    params = logger.experiment.get_run(logger.version).data.params
    assert params == {"lr": "0.1", "model/depth": "3", "model/act": "None", "bad_key": "1", "new": "True"}


def test_explicit_run_id_continues_the_run(tmp_path: Path) -> None:
    first = MLFlowLogger(save_dir=tmp_path / "mlruns", tags={"phase": "a"})
    first.log_metrics({"loss": 2.0}, step=0)
    first.finalize("failed")

    again = MLFlowLogger(save_dir=tmp_path / "mlruns", run_id=first.version, tags={"phase": "b"})
    again.log_metrics({"loss": 1.0}, step=1)
    assert again.experiment.get_run(first.version).info.status == "RUNNING"
    again.finalize("success")
    run = again.experiment.get_run(first.version)
    assert again.version == first.version
    assert run.info.status == "FINISHED" and run.data.tags["phase"] == "b"
    assert history(again.experiment, first.version, "loss") == [(0, 2.0), (1, 1.0)]
    assert len(again.experiment.search_runs([run.info.experiment_id])) == 1

    with pytest.raises(ValueError, match="cannot continue the MLflow run 'nope'"):
        MLFlowLogger(save_dir=tmp_path / "mlruns", run_id="nope").log_metrics({"x": 1.0}, step=0)


def test_resume_from_checkpoint_continues_the_same_run(tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    # The first run stops with an error in epoch 1, after the epoch-0 checkpoint (last.ckpt).
    first = MLFlowLogger(save_dir=store)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, first).fit(failing(10), make_loader(), make_loader())
    client = MlflowClient(tracking_uri=store.as_uri())
    assert client.get_run(first.version).info.status == "FAILED"

    # A new Trainer and a new logger on the same store go on from last.ckpt, in the same run.
    second = MLFlowLogger(save_dir=store)
    trainer = make_trainer(tmp_path, second)
    trainer.fit(HparamSystem(), make_loader(), make_loader(), ckpt_path="last")
    assert second.version == first.version
    run = client.get_run(first.version)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    steps = [step for step, _ in history(client, first.version, "train_loss")]
    assert steps == [1, 3, 5, 7, 9, 9, 11, 13, 15]  # step 9 logged by both before the failure and after
    assert artifacts(client, first.version) == ["checkpoints", "run-2.json", "run.json"]


def test_not_rank_zero_creates_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.runtime.distributed import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    assert logger.version is None  # what save_checkpoint records on the other processes
    assert not (tmp_path / "mlruns").exists()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="pass one of the two"):
        MLFlowLogger(tracking_uri="sqlite:///x.db", save_dir="mlruns")
    with pytest.raises(ValueError, match="log_checkpoints='last'"):
        MLFlowLogger(log_checkpoints="last")  # type: ignore[arg-type]


def test_importing_fulmen_and_the_logger_does_not_import_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys, fulmen, fulmen.loggers\n"
        "from fulmen.loggers import MLFlowLogger\n"
        "logger = MLFlowLogger(save_dir='mlruns')\n"
        "logger.finalize('success')\n"
        "assert not [m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')], 'mlflow imported'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_failed_upload_warns_and_still_sets_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    trainer = SimpleNamespace(
        state=SimpleNamespace(stage="fit"), log_dir=str(tmp_path / "run"), checkpoint_callbacks=[]
    )
    logger = MLFlowLogger(save_dir=tmp_path / "mlruns")
    logger.attach(trainer)  # type: ignore[arg-type]
    logger.log_metrics({"loss": 1.0}, step=0)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(logger.experiment, "log_artifact", refuse)
    with pytest.warns(fulmen.FulmenWarning, match="disk full"):
        logger.finalize("success")
    assert logger.experiment.get_run(logger.version).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("log_model", "expected"),
    [
        (True, ["epoch=2-step=24.ckpt", "last.ckpt"]),  # what the callback keeps, when training ends
        ("all", ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "epoch=2-step=24.ckpt", "last.ckpt"]),
    ],
)
def test_lightning_log_model(tmp_path: Path, log_model: Any, expected: list[str]) -> None:
    from fulmen.lightning.loggers import MLFlowLogger as LightningMLFlowLogger

    logger = LightningMLFlowLogger(save_dir=os.fspath(tmp_path / "mlruns"), log_model=log_model)
    callback = fulmen.ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    make_trainer(tmp_path, logger, max_epochs=3, callbacks=[callback]).fit(HparamSystem(), make_loader(), make_loader())
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    assert os.path.basename(callback.best_model_path) == "epoch=2-step=24.ckpt"  # the loss fell each epoch
    assert [p.split("/", 1)[1] for p in artifacts(client, logger.version, "checkpoints")] == expected
