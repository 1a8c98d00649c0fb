"""The run record: run.json contents, git state of the user's code, and the code snapshot."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinyData, TinySystem

import fulmen
from fulmen import record
from fulmen.record import write_run_record

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

MODELS = '''
import fulmen
from torch import nn


class Net(fulmen.System):
    def __init__(self, width: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)
'''


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A user project: train.py and a package defining the system, importable, run as the script."""
    pkg = f"userpkg_{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "project"
    (repo / pkg / "sub").mkdir(parents=True)
    (repo / pkg / "__init__.py").write_text("")
    (repo / pkg / "models.py").write_text(MODELS)
    (repo / pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (repo / pkg / "data.txt").write_text("not python")
    (repo / "train.py").write_text("print('training')\n")
    monkeypatch.syspath_prepend(str(repo))
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py"), "--lr", "0.1"])
    module = importlib.import_module(f"{pkg}.models")
    yield repo, pkg, module.Net
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]


def read(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


FLAGS = {"max_epochs": 3, "precision": "32-true", "callbacks": [fulmen.Timer()], "default_root_dir": Path("/x")}


@needs_git
def test_run_json_in_a_git_repository(project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, pkg, Net = project
    git(repo, "init")
    git(repo, "add", ".")
    git(repo, "commit", "-m", "first")
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "1234")
    run_dir = tmp_path / "runs" / "version_0"

    start = time.perf_counter()
    path = write_run_record(run_dir, system=Net(width=3), trainer_flags=FLAGS, datamodule=TinyData(n=16))
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # typically well under 0.5 s; generous for a loaded test machine
    assert path == str(run_dir / "run.json")
    rec = read(path)
    assert rec["command"] == [str(repo / "train.py"), "--lr", "0.1"]
    assert rec["cwd"] == os.getcwd()
    assert rec["seed"] == 1234
    assert rec["system"] == f"{pkg}.models.Net"
    assert rec["hyperparameters"] == {"width": 3, "lr": 0.1}
    assert rec["datamodule"] == {"class": "helpers.systems.TinyData", "hyperparameters": {"n": 16, "batch_size": 8}}
    assert rec["trainer_flags"]["max_epochs"] == 3 and rec["trainer_flags"]["default_root_dir"] == "/x"
    assert isinstance(rec["trainer_flags"]["callbacks"][0], str)  # not plain: its repr
    assert rec["precision"] == "32-true"
    assert rec["versions"]["torch"] == str(torch.__version__) and rec["versions"]["fulmen"] == fulmen.__version__
    assert rec["versions"]["python"].count(".") == 2
    assert rec["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert rec["host"]["cpu_count"] == os.cpu_count() and rec["host"]["name"]
    assert isinstance(rec["host"]["devices"], list)
    assert rec["env"]["FULMEN_GLOBAL_SEED"] == "1234"
    assert rec["start_time"].endswith("Z")

    g = rec["git"]
    assert g["commit"] == git(repo, "rev-parse", "HEAD")
    assert g["branch"] == "main"
    assert g["dirty"] is False and g["diff"] is None
    assert os.path.realpath(g["root"]) == os.path.realpath(repo)

    code = rec["code"]
    copied = sorted(f["path"] for f in code["files"] if not f["path"].startswith("helpers/"))
    assert copied == sorted(["train.py", f"{pkg}/__init__.py", f"{pkg}/models.py", f"{pkg}/sub/__init__.py"])
    for f in code["files"]:
        data = (run_dir / "code" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
    assert (run_dir / "code" / pkg / "models.py").read_text() == MODELS
    # the datamodule's package (the test suite's helpers/) is copied too
    assert any(f["path"] == "helpers/systems.py" for f in code["files"])
    assert code["skipped"] == []


@needs_git
def test_dirty_tree_records_the_diff_and_a_second_record_does_not_overwrite(project: Any, tmp_path: Path) -> None:
    repo, pkg, Net = project
    git(repo, "init")
    git(repo, "add", ".")
    git(repo, "commit", "-m", "first")
    git(repo, "checkout", "-b", "experiment")
    with open(repo / pkg / "models.py", "a") as f:
        f.write("# tried a wider layer\n")
    (repo / "scratch.py").write_text("x = 1\n")
    run_dir = tmp_path / "run"
    first = read(write_run_record(run_dir, system=Net(), trainer_flags={}))
    g = first["git"]
    assert g["branch"] == "experiment" and g["dirty"] is True
    assert g["changed_files"] == [f"{pkg}/models.py"]
    assert g["untracked_files"] == ["scratch.py"]
    assert "+# tried a wider layer" in g["diff"] and g["diff_truncated"] is False

    second = write_run_record(run_dir, system=Net(), trainer_flags={}, seed=7)
    assert second == str(run_dir / "run-2.json")
    assert read(second)["seed"] == 7 and read(second)["code"]["dir"] == "code-2"
    assert (run_dir / "code-2" / "train.py").is_file()
    assert read(str(run_dir / "run.json")) == first


@needs_git
def test_diff_is_capped(project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _, Net = project
    git(repo, "init")
    git(repo, "add", ".")
    git(repo, "commit", "-m", "first")
    (repo / "train.py").write_text("x = 1\n" * 5000)
    monkeypatch.setattr(record, "DIFF_LIMIT", 1000)
    g = read(write_run_record(tmp_path / "run", system=Net(), trainer_flags={}))["git"]
    assert g["dirty"] is True and g["diff_truncated"] is True and len(g["diff"]) == 1000


def test_no_git_repository(project: Any, tmp_path: Path) -> None:
    _, _, Net = project
    rec = read(write_run_record(tmp_path / "run", system=Net(), trainer_flags={}))
    assert rec["git"] is None
    assert rec["code"]["files"]


def test_no_git_binary(project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, Net = project
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert read(write_run_record(tmp_path / "run", system=Net(), trainer_flags={}))["git"] is None


def test_code_snapshot_cap(project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, pkg, Net = project
    (repo / pkg / "big.py").write_text("# " + "x" * 5000 + "\n")
    monkeypatch.setattr(record, "CODE_LIMIT", 3000)
    code = read(write_run_record(tmp_path / "run", system=Net(), trainer_flags={}))["code"]
    assert code["bytes"] <= 3000
    assert [s["source"] for s in code["skipped"]] == [str(repo / pkg / "big.py")]
    assert "limit" in code["skipped"][0]["reason"]
    assert not (tmp_path / "run" / "code" / pkg / "big.py").exists()
    assert (tmp_path / "run" / "code" / pkg / "models.py").exists()


def test_installed_packages_and_scripts_are_not_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest as installed

    monkeypatch.setattr(sys, "argv", [installed.__file__])  # e.g. `python -m pytest`: a script in site-packages
    code = record.snapshot_code(str(tmp_path / "code"), [torch.nn.Linear(1, 1)])
    assert code["files"] == []
    assert sorted(s["source"] for s in code["skipped"]) == sorted([installed.__file__, os.path.dirname(torch.__file__)])
    assert {s["reason"] for s in code["skipped"]} == {"installed package"}


def test_unsaved_hyperparameters_are_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    class WithNet(TinySystem):
        def __init__(self, net: nn.Module, lr: float = float("nan")) -> None:
            fulmen.System.__init__(self)
            self.save_hyperparameters()

    monkeypatch.setattr(sys, "argv", ["-c"])
    # Described without a warning: the warning comes with the first checkpoint.
    rec = read(write_run_record(tmp_path, system=WithNet(nn.Linear(2, 2)), trainer_flags={"precision": "bf16-mixed"}))
    assert rec["hyperparameters"]["net"]["__fulmen_unsaved__"] == "torch.nn.Linear"
    assert rec["hyperparameters"]["lr"] == "nan"
    assert rec["precision"] == "bf16-mixed"
