"""WandbLogger: offline W&B runs written by fit and read back with W&B's own reader
(``wandb leet inspect --json``, which decodes the run's ``.wandb`` transaction log)."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("wandb")  # imported once for the whole module

import wandb
from helpers.systems import TinySystem, make_loader

import fulmen
from fulmen.loggers import CSVLogger, Logger, WandbLogger

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _wandb_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """W&B's own folders (settings, artifact staging, cache) inside tmp_path; offline; quiet."""
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written to the working folder shows up (and stays in tmp_path)
    yield
    wandb.finish()


class HparamSystem(TinySystem):
    def __init__(self, lr: float = 0.05, width: int = 4) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        self.fail_at_step = -1

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


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


def run_folders(save_dir: Path) -> list[Path]:
    return sorted((save_dir / "wandb").glob("offline-run-*"))


def inspect(run_dir: Path) -> list[dict[str, Any]]:
    """The run's records as W&B's own reader prints them (one JSON object per record)."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r[kind] for r in records if r["type"] == kind]


def history(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(h["item"]["trainer/global_step"], h["item"][key]) for h in of_type(records, "history") if key in h["item"]]


def csv_history(path: Path, key: str) -> list[tuple[int, float]]:
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def md5_b64(path: str | Path) -> str:
    return base64.b64encode(hashlib.md5(Path(path).read_bytes()).digest()).decode()


def test_is_a_plain_logger_without_run_folder() -> None:
    logger = WandbLogger(offline=True)
    assert isinstance(logger, Logger) and not isinstance(logger, fulmen.loggers.FolderLogger)
    assert logger.log_dir is None  # trainer.log_dir stays with the file loggers / default_root_dir
    assert logger.name == "fulmen_logs"
    assert fulmen.WandbLogger is WandbLogger


def test_fit_logs_metrics_against_global_step_and_hyperparameters(tmp_path: Path) -> None:
    logger = WandbLogger(offline=True, save_dir=tmp_path / "wb", name="first", tags=["digits"])
    csv_logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, [logger, csv_logger])
    trainer.fit(HparamSystem(lr=0.05, width=4), make_loader(), make_loader())
    run_id = logger.version
    wandb.finish()

    (folder,) = run_folders(tmp_path / "wb")
    assert folder.name.endswith(f"-{run_id}")
    records = inspect(folder)
    (run,) = of_type(records, "run")
    assert run["run_id"] == run_id and run["project"] == "fulmen_logs"
    assert run["display_name"] == "first" and run["tags"] == ["digits"]
    config: dict[str, Any] = {}
    for c in of_type(records, "config"):
        config.update(c["update"])
    assert config["lr"] == 0.05 and config["width"] == 4
    # Every metric is plotted against trainer/global_step (declared with define_metric).
    metrics = {m.get("name") or m.get("glob_name"): m for m in of_type(records, "metric")}
    assert metrics["*"]["step_metric"] == "trainer/global_step"
    # The same values and steps as the CSV logger wrote beside it.
    csv_path = Path(csv_logger.log_dir) / "metrics.csv"
    for key in ("train_loss", "val_loss"):
        got, expected = history(records, key), csv_history(csv_path, key)
        assert [s for s, _ in got] == [s for s, _ in expected] and len(got) >= 2, key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), key
    assert [s for s, _ in history(records, "train_loss")] == [1, 3, 5, 7, 9, 11, 13, 15]
    # The run record names the W&B run, so the local run folder and the W&B run can be matched.
    record = json.loads((Path(csv_logger.log_dir) / "run.json").read_text())
    described = {lg["class"].rsplit(".", 1)[1]: lg for lg in record["loggers"]}
    assert described["WandbLogger"]["version"] == run_id and described["WandbLogger"]["name"] == "fulmen_logs"
    assert described["CSVLogger"]["log_dir"] == csv_logger.log_dir
    (exit_record,) = of_type(records, "exit")
    assert exit_record.get("exit_code", 0) == 0


def test_a_successful_run_stays_open_for_test_in_the_same_process(tmp_path: Path) -> None:
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    trainer = make_trainer(tmp_path, logger, max_epochs=1)
    system = HparamSystem()
    trainer.fit(system, make_loader(), make_loader())
    trainer.test(system, make_loader())
    wandb.finish()
    (folder,) = run_folders(tmp_path)  # one run for fit and test
    records = inspect(folder)
    assert len(history(records, "train_loss")) == 4 and len(history(records, "test_loss")) == 1


def test_resume_from_checkpoint_continues_the_same_run(tmp_path: Path) -> None:
    first = WandbLogger(offline=True, save_dir=tmp_path)
    system = HparamSystem()
    system.fail_at_step = 10  # after the epoch-0 checkpoint (last.ckpt)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, first).fit(system, make_loader(), make_loader())
    run_id = first.version

    second = WandbLogger(offline=True, save_dir=tmp_path)  # a new logger: told nothing of the run
    trainer = make_trainer(tmp_path, second)
    trainer.fit(HparamSystem(), make_loader(), make_loader(), ckpt_path="last")
    assert second.version == run_id
    wandb.finish()

    before, after = (inspect(f) for f in run_folders(tmp_path))  # W&B writes a resumed run's part apart
    assert [r["run_id"] for r in (*of_type(before, "run"), *of_type(after, "run"))] == [run_id, run_id]
    assert of_type(after, "run")[0].get("resume") is True
    assert of_type(before, "exit")[0]["exit_code"] == 1  # the failed part is marked failed
    assert of_type(after, "exit")[0].get("exit_code", 0) == 0
    assert [s for s, _ in history(before, "train_loss")] == [1, 3, 5, 7, 9]
    assert [s for s, _ in history(after, "train_loss")] == [9, 11, 13, 15]  # from the epoch-0 checkpoint on


@pytest.mark.parametrize("log_model", [True, "all"])
def test_log_model_logs_checkpoints_as_model_artifacts(tmp_path: Path, log_model: Any) -> None:
    class Worse(HparamSystem):  # the validation loss rises each epoch: the best is epoch 0's
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(float(self.current_epoch)))

    logger = WandbLogger(offline=True, save_dir=tmp_path, log_model=log_model)
    ckpt = fulmen.ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer = make_trainer(tmp_path, logger, max_epochs=3, callbacks=[ckpt])
    trainer.fit(Worse(), make_loader(), make_loader())
    run_id = logger.version
    wandb.finish()

    artifacts = of_type(inspect(run_folders(tmp_path)[0]), "artifact")
    assert {a["name"] for a in artifacts} == {f"model-{run_id}"} and {a["type"] for a in artifacts} == {"model"}
    names = [json.loads(a["metadata"])["original_filename"] for a in artifacts]
    best = os.path.basename(ckpt.best_model_path)
    assert best.startswith("epoch=0")
    if log_model == "all":  # each checkpoint as it was written: epoch 0's best, then last.ckpt each epoch
        assert names == [best, "last.ckpt", "last.ckpt", "last.ckpt"]
    else:  # at the end: what the callback keeps
        assert names == [best, "last.ckpt"]
    for a in artifacts:
        meta = json.loads(a["metadata"])
        assert meta["ModelCheckpoint"]["monitor"] == "val_loss" and meta["ModelCheckpoint"]["save_top_k"] == 1
        assert ("best" in a["aliases"]) == (meta["original_filename"] == best) and "latest" in a["aliases"]
        (entry,) = a["manifest"]["contents"]
        assert entry["path"] == "model.ckpt"
        # W&B staged a copy of the file as it was then; the best one is still the file on disk.
        assert entry["digest"] == md5_b64(entry["local_path"])
        if meta["original_filename"] == best:
            assert entry["digest"] == md5_b64(ckpt.best_model_path) and meta["score"] == 0.0
    assert md5_b64(ckpt.last_model_path) == artifacts[-1]["manifest"]["contents"][0]["digest"]


def test_images_and_tables(tmp_path: Path) -> None:
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    logger.log_image("samples", [torch.rand(3, 8, 8), torch.rand(3, 8, 8)], step=3, caption=["a", "b"])
    logger.log_table("scores", columns=["name", "score"], data=[["x", 1.0]], step=4)
    with pytest.raises(ValueError, match="caption has 1 entries for 2 images"):
        logger.log_image("bad", [torch.rand(3, 8, 8)] * 2, caption=["a"])
    wandb.finish()
    rows = [h["item"] for h in of_type(inspect(run_folders(tmp_path)[0]), "history")]
    images = next(r for r in rows if "samples._type" in r)
    assert images["samples._type"] == "images/separated" and images["samples.captions"] == ["a", "b"]
    assert images["trainer/global_step"] == 3
    for name in images["samples.filenames"]:
        png = run_folders(tmp_path)[0] / "files" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = next(r for r in rows if "scores._type" in r)
    assert table["scores._type"] == "table-file" and table["trainer/global_step"] == 4


def test_a_run_started_by_the_user_is_reused_and_a_new_logger_starts_a_new_run(tmp_path: Path) -> None:
    own = wandb.init(project="sweep", dir=str(tmp_path), mode="offline")
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    assert logger.version == own.id and logger.experiment is own  # e.g. a W&B sweep agent's run
    wandb.finish()
    first = WandbLogger(offline=True, save_dir=tmp_path)
    first_id = first.version
    second = WandbLogger(offline=True, save_dir=tmp_path)  # the next trial of a loop in one process
    assert second.version != first_id
    assert wandb.run is not None and wandb.run.id == second.version
    wandb.finish()
    wandb.init(project="mine", dir=str(tmp_path), mode="offline")
    with pytest.raises(RuntimeError, match="another W&B run"):  # the user's run is never finished by a logger
        _ = WandbLogger(offline=True, save_dir=tmp_path, version="someother").version


def test_not_rank_zero_starts_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.runtime.distributed import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = WandbLogger(offline=True, save_dir=tmp_path)
    assert logger.version is None  # what save_checkpoint records on the other processes
    logger.experiment.log({"x": 1})  # a no-op on other ranks, as in Lightning
    logger.experiment.config.update({"lr": 0.1})  # chains too
    logger.finalize("success")
    assert not (tmp_path / "wandb").exists() and wandb.run is None


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="log_model='best'"):
        WandbLogger(log_model="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass one of the two"):
        WandbLogger(version="a", id="b")
    with pytest.raises(ValueError, match="pass one of the two"):
        WandbLogger(save_dir="a", dir="b")
    with pytest.raises(ValueError, match=r"WandbLogger\(resume=...\)"):
        WandbLogger(resume="must")


def test_importing_fulmen_and_an_unused_logger_does_not_import_wandb(tmp_path: Path) -> None:
    code = (
        "import sys, fulmen, fulmen.loggers\n"
        "from fulmen.loggers import WandbLogger\n"
        "logger = WandbLogger(offline=True)\n"
        "logger.finalize('success')\n"
        "assert 'wandb' not in sys.modules, 'wandb imported'\n"
        "sys.modules['wandb'] = None  # as if it were not installed\n"
        "try:\n"
        "    logger.experiment\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "WandbLogger needs the wandb package: pip install 'fulmen[wandb]'" in out.stdout


def test_lightning_import_paths_and_defaults(tmp_path: Path) -> None:
    import fulmen.lightning as L
    from fulmen.lightning.loggers import WandbLogger as LightningWandbLogger
    from fulmen.lightning.loggers.wandb import WandbLogger as FromModule

    assert LightningWandbLogger is FromModule and issubclass(FromModule, WandbLogger)
    logger = LightningWandbLogger(offline=True, log_model="all")
    assert logger.name == "lightning_logs" and logger.save_dir == "."  # Lightning's defaults
    trainer = L.Trainer(max_epochs=1, logger=logger, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinySystem(), make_loader(), make_loader())
    assert trainer.logger is logger and trainer.loggers == [logger]
    run_id = logger.version
    # Checkpoints where Lightning puts them for a W&B run: <save_dir>/<project>/<run id>/checkpoints
    assert os.path.abspath(trainer.checkpoint_callback.best_model_path) == os.path.abspath(
        os.path.join("lightning_logs", run_id, "checkpoints", "epoch=0-step=8.ckpt")
    )
    wandb.finish()
    (folder,) = run_folders(Path.cwd())  # ./wandb, as with Lightning
    records = inspect(folder)
    assert of_type(records, "run")[0]["project"] == "lightning_logs"
    assert {a["name"] for a in of_type(records, "artifact")} == {f"model-{run_id}"}
    assert LightningWandbLogger(dir="elsewhere").save_dir == "elsewhere"


def test_a_relative_save_dir_follows_the_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ = WandbLogger(offline=True, save_dir=".").version  # W&B's service process starts here (if not before)
    wandb.finish()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)  # a notebook or script that changes folder between runs
    logger = WandbLogger(offline=True, save_dir=".")
    logger.log_metrics({"a": 1.0}, step=0)
    wandb.finish()
    (folder,) = run_folders(other)  # the whole run, transaction log included, is in the new folder
    assert history(inspect(folder), "a") == [(0, 1.0)]


def test_the_cli_adds_a_wandb_logger_by_class_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from fulmen import cli

    monkeypatch.setattr(sys, "path", list(sys.path))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_epochs": 1, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "runs")},
                "model": {"class_path": "helpers.systems.TinySystem"},
                "data": {"class_path": "helpers.systems.TinyData"},
            }
        )
    )
    argv = ["fit", "--config", str(config), "--trainer.logger+=fulmen.loggers.CSVLogger"]
    argv += ["--trainer.logger.save_dir", str(tmp_path / "runs")]
    argv += ["--trainer.logger+=fulmen.loggers.WandbLogger", "--trainer.logger.offline", "true"]
    argv += ["--trainer.logger.project", "cli"]
    run = cli.run_cli(argv)
    wandb_logger = run.trainer.loggers[1]
    assert isinstance(wandb_logger, WandbLogger) and wandb_logger.name == "cli"
    run_id = wandb_logger.version
    wandb.finish()
    (folder,) = run_folders(tmp_path / "runs")  # the trainer's default_root_dir
    records = inspect(folder)
    assert of_type(records, "run")[0]["run_id"] == run_id and history(records, "val_loss")
    saved = yaml.safe_load((Path(run.trainer.log_dir) / "config.yaml").read_text())
    assert saved["trainer"]["logger"][1]["class_path"] == "fulmen.loggers.WandbLogger"
