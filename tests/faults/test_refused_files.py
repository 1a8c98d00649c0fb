"""Bad files at every entry point that reads a checkpoint: random bytes, a truncated checkpoint, a
malicious pickle (zip and plain). Each is refused in one line that says what the file is and why,
nothing in it runs, no run folder is made, and no message suggests ``weights_only=False`` (torch's
own advice for a refused file, which is exactly what runs an attacker's code).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.systems import TinyData, TinySystem, make_loader

import fulmen
from fulmen import cli
from fulmen.checkpoint import CheckpointFileError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
#: torch's advice ("Re-running `torch.load` with `weights_only` set to `False` will likely
#: succeed") and any other way of saying "load it with weights_only=False".
ADVICE = re.compile(r"weights_only`?\s*(?:=|set to|to)\s*`?False", re.IGNORECASE)
KINDS = ("random", "truncated", "malicious", "malicious_pickle")
#: What each refusal says the file is.
SAYS = {
    "random": r"not a PyTorch checkpoint",
    "truncated": r"damaged PyTorch checkpoint \(truncated",
    "malicious": r"names posix\.system.*Do not load this file",
    "malicious_pickle": r"names posix\.system.*Do not load this file",
}


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real fulmen checkpoint."""
    folder = tmp_path_factory.mktemp("good")
    trainer = quiet(folder, max_steps=2)
    trainer.fit(TinySystem(), make_loader(32))
    trainer.save_checkpoint(folder / "good.ckpt")
    return (folder / "good.ckpt").read_bytes()


def bad_file(kind: str, folder: Path, good: bytes, marker: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "malicious":  # torch's own zip format, the payload among the hyperparameters
        torch.save({"state_dict": {}, "hyper_parameters": {"lr": Payload(marker)}}, path)
    else:  # a plain pickle, as an attacker would write one
        with open(path, "wb") as f:
            pickle.dump({"state_dict": {}, "x": Payload(marker)}, f, protocol=2)
    return path


def quiet(root: Path, **kwargs: Any) -> fulmen.Trainer:
    flags: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": 1,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return fulmen.Trainer(**{**flags, **kwargs})


def run_folders(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir()] if root.exists() else []


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the CLI changes in this process (sys.path, seed variables, cwd) stays in the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "0")
    monkeypatch.setenv("FULMEN_SEED_WORKERS", "0")
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_python_entry_points_refuse_in_one_line(kind: str, tmp_path: Path, good: bytes) -> None:
    marker = tmp_path / "PWNED"
    path = bad_file(kind, tmp_path, good, marker)
    root = tmp_path / "runs"
    entry_points: dict[str, Callable[[], Any]] = {
        "Trainer.fit": lambda: quiet(root).fit(TinySystem(), make_loader(), ckpt_path=path),
        "Trainer.validate": lambda: quiet(root).validate(TinySystem(), make_loader(), ckpt_path=path),
        "Trainer.test": lambda: quiet(root).test(TinySystem(), make_loader(), ckpt_path=path),
        "Trainer.predict": lambda: quiet(root).predict(TinySystem(), make_loader(), ckpt_path=path),
        "System.load_from_checkpoint": lambda: TinySystem.load_from_checkpoint(path),
        "DataModule.load_from_checkpoint": lambda: TinyData.load_from_checkpoint(path),
        "load_checkpoint": lambda: load_checkpoint(path),
    }
    for name, call in entry_points.items():
        with pytest.raises(CheckpointFileError) as caught:
            call()
        err = caught.value
        shown = "".join(traceback.format_exception(err))  # what the user sees, chained errors included
        assert not ADVICE.search(shown), f"{name}: {shown}"
        message = str(err)
        assert "\n" not in message and message.startswith(f"Refused to load {str(path)!r}: "), (name, message)
        assert re.search(SAYS[kind], message), (name, message)
        assert not marker.exists(), name
        assert run_folders(root) == [], f"{name} left {run_folders(root)}"
    if kind.startswith("malicious"):  # the payload is live: an unrestricted load would have run it
        with open(path, "rb") as f:
            pickle.load(f) if kind == "malicious_pickle" else torch.load(f, weights_only=False)
        assert marker.exists()


def cli_config(tmp_path: Path) -> str:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "runs"),
        },
        "model": {"class_path": "helpers.systems.TinySystem"},
        "data": {"class_path": "helpers.systems.TinyData", "init_args": {"n": 16}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_folder_with(tmp_path: Path, predictions: Path) -> Path:
    """A run folder for `fulmen report` whose predictions.pt is the bad file."""
    run = tmp_path / "report_run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train_loss\n0,0,1.0\n0,1,0.5\n")
    (run / "predictions.pt").write_bytes(predictions.read_bytes())
    return run


@pytest.mark.parametrize("kind", KINDS)
def test_cli_commands_refuse_in_one_line_exit_2(
    kind: str, tmp_path: Path, good: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("jsonargparse")
    marker = tmp_path / "PWNED"
    path = bad_file(kind, tmp_path, good, marker)
    config = cli_config(tmp_path)
    commands = [[stage, "--config", config, "--ckpt_path", str(path)] for stage in cli.STAGES]
    if kind == "random":  # the same refusal where best/last resolve to the file (a damaged last.ckpt)
        folder = tmp_path / "runs" / "fulmen_logs" / "version_0" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(path.read_bytes())
        commands.append(["test", "--config", config, "--ckpt_path", "last"])
    commands.append(["export", str(path), "--to", str(tmp_path / "out" / "model.safetensors")])
    commands.append(["report", str(run_folder_with(tmp_path, path))])
    capsys.readouterr()
    for argv in commands:
        before = run_folders(tmp_path / "runs")
        status = cli.main(argv)
        out, err = capsys.readouterr()
        assert status == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith(f"fulmen {argv[0]}: ") and re.search(SAYS[kind], err), (argv, err)
        assert not ADVICE.search(out + err), (argv, out + err)
        assert not marker.exists(), argv
        assert run_folders(tmp_path / "runs") == before, argv  # no run folder made
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    assert not (tmp_path / "report_run" / "report").exists()


def test_verify_reports_the_files_without_running_or_advising(tmp_path: Path, good: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    # `fulmen verify` reports damaged checkpoints of a run (exit 1): never by loading them unsafely.
    marker = tmp_path / "PWNED"
    trainer = quiet(tmp_path / "runs", max_steps=2)
    trainer.fit(TinySystem(), make_loader(32))
    folder = Path(trainer.log_dir) / "checkpoints"
    (ckpt,) = folder.glob("*.ckpt")
    for kind in KINDS:
        ckpt.write_bytes(bad_file(kind, tmp_path, good, marker).read_bytes())
        assert cli.main(["verify", trainer.log_dir]) == 1
        out, err = capsys.readouterr()
        assert not ADVICE.search(out + err), out + err
        assert not marker.exists()


def test_a_real_process_prints_one_line(tmp_path: Path, good: bytes) -> None:
    pytest.importorskip("jsonargparse")
    marker = tmp_path / "PWNED"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    evil = bad_file("malicious", tmp_path, good, marker)
    cut = bad_file("truncated", tmp_path, good, marker)
    for argv in (
        ["export", str(evil), "--to", str(tmp_path / "m.safetensors")],
        ["test", "--config", cli_config(tmp_path), "--ckpt_path", str(cut)],
    ):
        done = subprocess.run([sys.executable, "-m", "fulmen", *argv], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2, done.stderr[-3000:]
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
        assert done.stderr.startswith(f"fulmen {argv[0]}: Refused to load ")
        assert not ADVICE.search(done.stdout + done.stderr)
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()
