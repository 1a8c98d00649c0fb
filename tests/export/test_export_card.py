"""The model card against the run that made it: digests, audit head, command, metrics; and
``fulmen verify CARD.json`` OK, then failing after the file or the run's log is changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fulmen.checkpoint import chain_head, load_checkpoint, state_digest
from fulmen.export import check_card, export_checkpoint, inspect_card
from tests.export.export_systems import MLP, loader
from tests.helpers.systems import quiet_trainer

ROOT = Path(__file__).resolve().parents[2]


def train(root: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) of a real two-epoch fit."""
    trainer = quiet_trainer(root, max_epochs=2)
    trainer.fit(MLP(hidden=12), loader(), loader())
    run = Path(trainer.log_dir)
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    return run, ckpt


def fulmen(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "fulmen", *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train(tmp_path_factory.mktemp("runs"))


def test_the_card_records_the_checkpoint_and_its_run(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, ckpt = trained
    card = export_checkpoint(ckpt, tmp_path / "model.pt2")
    loaded = load_checkpoint(ckpt)
    with open(run / "run.json") as f:
        record = json.load(f)
    source = card["source"]
    assert source["checkpoint"] == str(ckpt.resolve())
    assert source["content_digest"] == loaded["digest"]["value"]
    assert source["state_digest"] == state_digest(loaded)
    assert (source["step"], source["epoch"]) == (loaded["global_step"], loaded["epoch"]) == (8, 1)
    assert source["run_dir"] == os.path.realpath(run) and source["audit_head"] == chain_head(run)
    assert source["command"] == record["command"] and source["system"] == record["system"]
    assert source["system"] == "tests.export.export_systems.MLP"
    assert card["hyperparameters"] == record["hyperparameters"] == {"features": 8, "hidden": 12, "example": True}
    metrics = {k: float(v) for k, v in loaded["callback_metrics"].items()}
    assert card["metrics"] == pytest.approx(metrics) and set(metrics) == {"train_loss", "val_loss"}
    data = (tmp_path / "model.pt2").read_bytes()
    assert card["model"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert check_card(tmp_path / "model.pt2.json") == []


def test_verify_a_card_then_after_the_file_is_edited(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, ckpt = trained
    out = tmp_path / "model.onnx"
    done = fulmen("export", str(ckpt), "--to", str(out))  # the system class from run.json
    assert done.returncode == 0, done.stderr
    assert "largest difference" in done.stdout and "rtol=0.0001, atol=1e-05" in done.stdout
    ok = fulmen("verify", str(out) + ".json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK {out}.json: model.onnx (onnx, sha256 ")
    data = bytearray(out.read_bytes())
    data[-1] ^= 1
    out.write_bytes(bytes(data))
    bad = fulmen("verify", str(out) + ".json")
    assert bad.returncode == 1
    assert f"the model file {out} changed after export" in bad.stdout


def test_verify_a_card_after_the_run_log_is_rewritten(tmp_path: Path) -> None:
    run, ckpt = train(tmp_path / "runs")
    export_checkpoint(ckpt, tmp_path / "model.safetensors", verbose=False)
    card = str(tmp_path / "model.safetensors.json")
    assert fulmen("verify", card).returncode == 0
    log = run / "checkpoints.jsonl"
    lines = log.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["metrics"]["val_loss"] = 0.0  # a better-looking history
    log.write_text("\n".join([*lines[:-1], json.dumps(entry, separators=(",", ":"))]) + "\n")
    bad = fulmen("verify", card)
    assert bad.returncode == 1
    assert f"no line of {log} has the recorded audit head" in bad.stdout and "rewritten" in bad.stdout


def test_a_changed_or_missing_checkpoint_is_a_problem_a_missing_run_a_note(tmp_path: Path) -> None:
    run, ckpt = train(tmp_path / "runs")
    export_checkpoint(ckpt, tmp_path / "model.safetensors", verbose=False)
    card = tmp_path / "model.safetensors.json"
    saved = ckpt.read_bytes()
    ckpt.unlink()
    assert check_card(card) == [f"the source checkpoint {ckpt.resolve()} is gone from its run folder {run.resolve()}"]
    ckpt.write_bytes(saved)
    assert check_card(card) == []
    other = torch.load(ckpt, weights_only=True)
    other["state_dict"]["net.0.bias"] += 1
    torch.save(other, ckpt)  # its stored digest no longer matches its content
    (problem,) = check_card(card)
    assert problem.startswith(f"the source checkpoint {ckpt.resolve()} does not load intact")
    shutil.rmtree(run)  # only the model and its card were shipped
    problems, notes = inspect_card(card)
    assert problems == [] and len(notes) == 1 and notes[0].startswith("not checked: the source checkpoint")
    shipped = fulmen("verify", str(card))
    assert shipped.returncode == 0 and "not checked" in shipped.stdout
