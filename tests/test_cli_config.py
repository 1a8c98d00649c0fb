"""``fulmen fit|validate|test|predict --config``: runs configured from YAML files and flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import fulmen
from fulmen import cli

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep what a run changes in this process (sys.path, the seed variables, cwd) to the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "0")
    monkeypatch.setenv("FULMEN_SEED_WORKERS", "0")
    monkeypatch.chdir(tmp_path)


def write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def base_config(tmp_path: Path, **trainer: Any) -> str:
    flags = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path / "runs"),
        **trainer,
    }
    return write(
        tmp_path / "base.yaml",
        {
            "trainer": flags,
            "model": {"class_path": "helpers.systems.TinySystem", "init_args": {"lr": 0.05}},
            "data": {"class_path": "helpers.systems.TinyData", "init_args": {"n": 32}},
        },
    )


def printed_config(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert cli.main([*argv, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_fit_from_yaml_saves_the_effective_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = base_config(tmp_path)
    argv = ["fit", "--config", config, "--trainer.callbacks+=fulmen.callbacks.EarlyStopping"]
    argv += ["--trainer.callbacks.monitor", "val_loss", "--trainer.callbacks.patience", "5"]
    run = cli.run_cli(argv)
    assert isinstance(run.system, fulmen.System) and run.trainer.current_epoch == 2
    assert run.system.hparams.lr == 0.05 and run.datamodule.hparams.n == 32
    (early,) = [cb for cb in run.trainer.callbacks if isinstance(cb, fulmen.callbacks.EarlyStopping)]
    assert early.monitor == "val_loss" and early.patience == 5

    run_dir = Path(run.trainer.log_dir)
    assert run_dir.parent.parent == tmp_path / "runs" and run.config_path == str(run_dir / "config.yaml")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == run.config
    # The saved file is the effective configuration: what --print_config shows for the same command.
    assert saved == printed_config(capsys, *argv)
    assert saved["trainer"]["callbacks"][0]["init_args"]["patience"] == 5
    assert json.loads((run_dir / "run.json").read_text())["config"] == saved


def test_flags_override_files_and_files_merge_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = base_config(tmp_path)
    second = write(tmp_path / "second.yaml", {"trainer": {"max_epochs": 5}, "model": {"init_args": {"lr": 0.2}}})
    cfg = printed_config(capsys, "fit", "--config", base, "--config", second)
    assert cfg["trainer"]["max_epochs"] == 5 and cfg["model"]["init_args"]["lr"] == 0.2
    assert cfg["trainer"]["enable_progress_bar"] is False and cfg["data"]["init_args"]["n"] == 32  # kept from base
    epochs = write(tmp_path / "epochs.yaml", {"trainer": {"max_epochs": 5}})
    cfg = printed_config(capsys, "fit", "--config", epochs, "--config", base)
    assert cfg["trainer"]["max_epochs"] == 2  # the later file wins
    cfg = printed_config(
        capsys, "fit", "--config", base, "--config", second, "--trainer.max_epochs", "7", "--model.init_args.lr", "0.3"
    )
    assert cfg["trainer"]["max_epochs"] == 7 and cfg["model"]["init_args"]["lr"] == 0.3
    assert cfg["seed_everything"] is None and cfg["ckpt_path"] is None


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", "--config", base_config(tmp_path), "--trainer.logger+=fulmen.CSVLogger"]
    argv += ["--trainer.logger.save_dir", str(tmp_path / "logs"), "--seed_everything", "3"]
    first = printed_config(capsys, *argv)
    assert first["trainer"]["logger"][0]["class_path"].endswith("CSVLogger")
    again = printed_config(capsys, "fit", "--config", write(tmp_path / "printed.yaml", first))
    assert again == first
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()  # printing runs nothing


def test_unknown_keys_name_the_key_and_close_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = base_config(tmp_path)

    def error(*args: str) -> str:
        assert cli.main(["fit", "--config", base, *args]) == 2
        return capsys.readouterr().err

    assert "unknown key 'trainer.max_epoch'" in error("--trainer.max_epoch", "3")
    assert "Did you mean 'max_epochs'" in error("--trainer.max_epoch", "3")
    err = error("--config", write(tmp_path / "b.yaml", {"trainer": {"max_epoch": 3}}))
    assert "unknown key 'trainer.max_epoch'" in err and "'max_epochs'" in err
    err = error("--model.init_args.lrr", "0.1")
    assert "unknown key 'model.init_args.lrr'" in err and "Did you mean 'lr'" in err
    err = error("--config", write(tmp_path / "c.yaml", {"modle": {"class_path": "x"}}))
    assert "unknown key 'modle'" in err and "Did you mean 'model'" in err
    err = error("--trainer.callbacks+=fulmen.callbacks.EarlyStopping", "--trainer.callbacks.monitr", "val_loss")
    assert "'init_args.monitr' of fulmen.callbacks.EarlyStopping in trainer.callbacks" in err
    assert "Did you mean 'monitor'" in err
    err = error("--model.class_path", "helpers.systems.TinySystme")
    assert "helpers.systems has no class 'TinySystme'. Did you mean 'TinySystem'" in err
    assert "trainer.max_epochs: expected int or null, got 'many'" in error("--trainer.max_epochs", "many")
    assert cli.main(["fit"]) == 2
    assert "no system given" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_validate_test_predict_with_ckpt_path(tmp_path: Path) -> None:
    base = base_config(tmp_path, callbacks=[{"class_path": "fulmen.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_last": True}}])
    fit = cli.run_cli(["fit", "--config", base, "--trainer.max_epochs", "3"])
    ckpt = fit.trainer.checkpoint_callback
    best, last = ckpt.best_model_path, ckpt.last_model_path
    assert best and last

    explicit = cli.run_cli(["validate", "--config", base, "--ckpt_path", best])
    assert explicit.stage == "validate" and explicit.trainer.log_dir != fit.trainer.log_dir
    assert os.path.isfile(Path(explicit.trainer.log_dir) / "config.yaml")
    weights = torch.load(best, weights_only=False)["state_dict"]
    assert torch.equal(explicit.system.layer.weight, weights["layer.weight"])
    # A fresh system (the config's lr differs) with the best weights: the same validation loss.
    tested = cli.run_cli(["test", "--config", base, "--ckpt_path", "best", "--model.init_args.lr", "0.5"])
    assert torch.equal(tested.system.layer.weight, weights["layer.weight"])
    assert tested.result[0]["test_loss"] == pytest.approx(explicit.result[0]["val_loss"])
    predicted = cli.run_cli(["predict", "--config", base, "--ckpt_path", "last"])
    assert torch.equal(predicted.system.layer.weight, fit.system.layer.weight)
    assert len(predicted.result) == 4 and predicted.result[0].shape == (8, 1)
    # Resuming a fit from its last checkpoint goes on in the same run folder.
    resumed = cli.run_cli(["fit", "--config", base, "--trainer.max_epochs", "4", "--ckpt_path", "last"])
    assert resumed.trainer.log_dir == fit.trainer.log_dir and resumed.trainer.current_epoch == 4
    assert yaml.safe_load(Path(resumed.config_path or "").read_text())["ckpt_path"] == "last"
    assert Path(resumed.config_path or "").name == "config-2.yaml"  # the first run's config is kept


def test_fit_ckpt_path_last_without_an_earlier_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = base_config(tmp_path)
    assert cli.main(["fit", "--config", base, "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "ckpt_path='last': no checkpoint of an earlier run was found under" in err and "Pass a path" in err
    # A validate run's version folder (no checkpoints) is no earlier fit to resume either.
    cli.run_cli(["validate", "--config", base])
    assert cli.main(["fit", "--config", base, "--ckpt_path", "last"]) == 2
    assert "no checkpoint of an earlier run" in capsys.readouterr().err
    off = base_config(tmp_path, enable_checkpointing=False, logger=False)
    assert cli.main(["fit", "--config", off, "--ckpt_path", "last"]) == 2
    assert "checkpointing is off: no ModelCheckpoint callback" in capsys.readouterr().err


def test_seed_everything(tmp_path: Path) -> None:
    base = base_config(tmp_path, logger=False, enable_checkpointing=False)
    a = cli.run_cli(["validate", "--config", base, "--seed_everything", "7"])
    b = cli.run_cli(["validate", "--config", base, "--seed_everything", "7"])
    assert a.config["seed_everything"] == 7 and torch.equal(a.system.layer.weight, b.system.layer.weight)
    drawn = cli.run_cli(["validate", "--config", base, "--seed_everything", "true"])
    assert isinstance(drawn.config["seed_everything"], int) and not isinstance(drawn.config["seed_everything"], bool)
    assert os.environ["FULMEN_GLOBAL_SEED"] == str(drawn.config["seed_everything"])
    none = cli.run_cli(["validate", "--config", base])
    assert none.config["seed_everything"] is None
    # No logger: the configurations go to default_root_dir, one file per different configuration.
    names = sorted(p.name for p in (tmp_path / "runs").glob("config*.yaml"))
    assert names == ["config-2.yaml", "config-3.yaml", "config.yaml"]


def test_help_lists_the_config_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(stage in out for stage in ("fit", "validate", "test", "predict", "verify", "doctor"))
    assert cli.main(["test", "--help"]) == 0
    assert "--trainer.max_epochs" in capsys.readouterr().out


def test_digits_yaml_through_the_command(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("tensorboard")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    config = str(ROOT / "examples" / "digits.yaml")

    def fulmen_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "fulmen.cli", *args, "--config", config, "--trainer.max_epochs", "3",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    fulmen_cmd("fit")
    run_dir = tmp_path / "runs" / "digits" / "fulmen_logs" / "version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "digits.DigitsClassifier" and saved["trainer"]["max_epochs"] == 3
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())  # TensorBoard too
    assert (run_dir / "code" / "digits.py").is_file()
    tested = fulmen_cmd("test", "--ckpt_path", "best")
    acc = float(re.search(r"test_acc\s*\|\s*([0-9.]+)", tested.stdout).group(1))  # type: ignore[union-attr]
    assert acc > 0.85, tested.stdout
