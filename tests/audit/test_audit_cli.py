"""`fulmen audit RUN_DIR|CKPT --data ... --group-by ATTR | --groups FILE.npy`, end to end in a process."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.systems import quiet_trainer

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fitted run of ``audit_systems.Classifier`` whose module sits in the working folder."""
    shutil.copy(os.path.join(HERE, "audit_systems.py"), tmp_path / "audit_systems.py")
    monkeypatch.chdir(tmp_path)
    from audit_systems import Classifier, GroupData

    trainer = quiet_trainer(tmp_path / "runs", max_epochs=2)
    trainer.fit(Classifier(), datamodule=GroupData())
    return trainer.log_dir


def fulmen(*args, cwd):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "fulmen", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_audit_of_a_run_folder(run_dir, tmp_path):
    done = fulmen("audit", run_dir, "--data", "audit_systems:GroupData", "--group-by", "group", "--bootstrap", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bias audit (binary, 240 samples)" in done.stdout
    assert "g1: n=80" in done.stdout and "equalized_odds_difference" in done.stdout
    audit = json.loads(Path(os.path.join(run_dir, "audit.json")).read_text(encoding="utf-8"))
    assert audit["system"] == "audit_systems.Classifier" and audit["bootstrap"] == 50
    assert os.path.samefile(audit["checkpoint"], glob.glob(os.path.join(run_dir, "checkpoints", "*.ckpt"))[0])
    verified = fulmen("verify", run_dir, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_audit_of_a_checkpoint_with_groups_from_a_file(run_dir, tmp_path):
    ckpt = glob.glob(os.path.join(run_dir, "checkpoints", "*.ckpt"))[0]
    np.save(tmp_path / "groups.npy", np.array([i % 4 for i in range(240)]))
    done = fulmen(
        "audit", ckpt, "--data", "audit_systems:GroupData", "--groups", "groups.npy", "--system",
        "audit_systems:Classifier", "--min-group-size", "70", "--task", "binary", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    audit = json.loads(Path(os.path.join(run_dir, "audit.json")).read_text(encoding="utf-8"))  # the checkpoint's run
    assert {g["group"]: (g["size"], g["small"]) for g in audit["groups"]} == {str(i): (60, True) for i in range(4)}
    assert "4 group(s) with fewer than min_group_size=70 samples: '0' (60), '1' (60)" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group-by", "sex"], "group column 'sex' is missing from the batch (batch 0 has keys ['group', 'x', 'y'])"),
        (["--groups", "short.npy"], "misaligned lengths: groups has 10 values but the dataset has 240 samples"),
        (["--group-by", "group", "--system", "audit_systems:Nope"], "audit_systems has no Nope"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(run_dir, tmp_path, args, message):
    np.save(tmp_path / "short.npy", np.arange(10))
    done = fulmen("audit", run_dir, "--data", "audit_systems:GroupData", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not os.path.exists(os.path.join(run_dir, "audit.json"))


def test_a_run_folder_without_a_record_needs_system(tmp_path, run_dir):
    os.remove(os.path.join(run_dir, "run.json"))
    done = fulmen("audit", run_dir, "--data", "audit_systems:GroupData", "--group-by", "group", cwd=tmp_path)
    assert done.returncode == 2
    assert "has no run.json naming the system: pass --system package.module:Class" in done.stderr


def test_a_run_folder_is_audited_at_its_best_checkpoint(tmp_path, monkeypatch, capsys):
    shutil.copy(os.path.join(HERE, "audit_systems.py"), tmp_path / "audit_systems.py")
    monkeypatch.chdir(tmp_path)
    from audit_systems import Classifier, GroupData

    import fulmen
    from fulmen.cli import main

    best = fulmen.ModelCheckpoint(monitor="val_loss", mode="max", save_top_k=1, save_last=True)  # the worst epoch: not the last
    trainer = quiet_trainer(tmp_path / "runs", max_epochs=3, callbacks=[best])
    trainer.fit(Classifier(), datamodule=GroupData())
    assert best.best_model_path and not best.best_model_path.endswith("last.ckpt")
    assert main(["audit", trainer.log_dir, "--data", "audit_systems:GroupData", "--group-by", "group", "--bootstrap", "0"]) == 0
    audit = json.loads(Path(os.path.join(trainer.log_dir, "audit.json")).read_text(encoding="utf-8"))
    assert os.path.samefile(audit["checkpoint"], best.best_model_path)
    assert "wrote " in capsys.readouterr().out
