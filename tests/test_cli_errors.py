"""Configuration errors of ``fulmen fit|validate|test|predict``: one line on stderr, exit status 2,
and no run folder left behind; ``--ckpt_path best|last`` names the file it resolved to (and so
does the Trainer, for ``ckpt_path="best"`` / ``"last"`` from Python)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.systems import TinySystem, make_loader

import fulmen
from fulmen import cli

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("jsonargparse")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "0")
    monkeypatch.setenv("FULMEN_SEED_WORKERS", "0")
    monkeypatch.chdir(tmp_path)


def config(tmp_path: Path, **trainer: Any) -> str:
    data = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": "runs",
            "callbacks": [
                {"class_path": "fulmen.callbacks.ModelCheckpoint", "init_args": {"monitor": "val_loss", "save_last": True}}
            ],
            **trainer,
        },
        "model": {"class_path": "helpers.systems.TinySystem"},
        "data": {"class_path": "helpers.systems.TinyData", "init_args": {"n": 16}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def folders(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs"
    return sorted(str(p.relative_to(tmp_path)) for p in runs.rglob("*")) if runs.exists() else []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["test", "--ckpt_path", "bset"], "ckpt_path 'bset': no such file. Pass the path of a checkpoint file, 'last'"),
        (["validate", "--ckpt_path", "nowhere/model.ckpt"], "ckpt_path 'nowhere/model.ckpt': no such file."),
        (["fit", "--ckpt_path", "lats"], "no such file."),
        (["predict", "--ckpt_path", "."], "ckpt_path '.' is a folder, not a checkpoint file"),
        (["test", "--ckpt_path", "best"], "ckpt_path='best': no checkpoint of an earlier run was found under"),
        (["fit", "--ckpt_path", "last"], "ckpt_path='last': no checkpoint of an earlier run was found under"),
        (["fit", "--trainer.max_epoch", "3"], "unknown key 'trainer.max_epoch'"),
    ],
)
def test_configuration_errors_are_one_line_exit_2_and_make_no_folder(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path)
    for _ in range(2):  # each time: no version_N folder piles up
        status = cli.main([argv[0], "--config", cfg, *argv[1:]])
        out, err = capsys.readouterr()
        assert status == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"fulmen {argv[0]}: ") and says in err, err
        assert out == ""
        assert folders(tmp_path) == []
    if argv[-1] == "bset":
        assert "Did you mean 'best'?" in err


def test_the_typo_from_the_issue_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    done = subprocess.run(
        [sys.executable, "-m", "fulmen", "test", "--config", config(tmp_path), "--ckpt_path", "bset"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fulmen test: ckpt_path 'bset': no such file. Pass the path of a checkpoint file, 'last' (the newest "
        "checkpoint of the latest run) or 'best' (its best, by the ModelCheckpoint's monitor). Did you mean 'best'?"
    ]
    assert folders(tmp_path) == []


def test_best_and_last_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    assert cli.main(["fit", "--config", cfg]) == 0
    ckpts = tmp_path / "runs" / "fulmen_logs" / "version_0" / "checkpoints"
    (best,) = (p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt")
    capsys.readouterr()
    assert cli.main(["test", "--config", cfg, "--ckpt_path", "best"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fulmen test: ckpt_path='best' is {os.path.join('runs', os.path.relpath(best, tmp_path / 'runs'))}"]
    assert cli.main(["validate", "--config", cfg, "--ckpt_path", "last"]) == 0
    assert capsys.readouterr().err.splitlines() == ["fulmen validate: ckpt_path='last' is runs/fulmen_logs/version_0/checkpoints/last.ckpt"]
    assert cli.main(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "[fulmen] ckpt_path='last': resuming from runs/fulmen_logs/version_0/checkpoints/last.ckpt" in lines


def test_trainer_names_the_file_best_and_last_resolve_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = fulmen.ModelCheckpoint(monitor="val_loss", save_last=True)
    trainer = fulmen.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
    )
    trainer.fit(TinySystem(), make_loader(16), make_loader(16))
    capsys.readouterr()
    trainer.test(dataloaders=make_loader(16), ckpt_path="best", verbose=False)
    assert capsys.readouterr().err.splitlines() == [f"[fulmen] ckpt_path='best': loading the weights of {checkpoint.best_model_path}"]
    trainer.validate(dataloaders=make_loader(16), ckpt_path=checkpoint.best_model_path, verbose=False)  # a path: nothing to say
    assert capsys.readouterr().err == ""
    again = fulmen.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[fulmen.ModelCheckpoint(monitor="val_loss", save_last=True)],
    )
    again.fit(TinySystem(), make_loader(16), make_loader(16), ckpt_path="last")
    assert f"[fulmen] ckpt_path='last': resuming from {checkpoint.last_model_path}" in capsys.readouterr().err.splitlines()
