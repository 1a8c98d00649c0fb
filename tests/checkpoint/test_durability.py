"""Atomic, durable writes: a process killed while writing a large checkpoint leaves the previous
one intact, and resume picks that one up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen

SCRIPT = Path(__file__).parent.parent / "helpers" / "kill_while_writing.py"
SRC = Path(__file__).parent.parent.parent / "src"


def test_killed_while_writing_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-2000:]
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".last.ckpt")]
    assert leftovers  # it really died in the middle of the write
    from fulmen.checkpoint.io import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "last.ckpt")  # intact and verified
    assert ckpt["epoch"] == 0 and "ballast" not in ckpt["state_dict"]
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, enable_checkpointing=False)
    trainer.fit(TinySystem(), make_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert trainer.current_epoch == 2 and trainer.global_step == 16


def test_last_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path: Path) -> None:
    ckpt_cb = fulmen.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[ckpt_cb], logger=False)
    trainer.fit(TinySystem(), make_loader())
    newest = Path(ckpt_cb.last_model_path)
    with open(newest, "r+b") as f:  # damage the newest checkpoint
        f.seek(os.path.getsize(newest) // 2)
        f.write(b"\x00" * 64)
    resumed = quiet_trainer(tmp_path, max_epochs=4, callbacks=[ckpt_cb], logger=False)
    with pytest.warns(fulmen.FulmenWarning, match=r"could not be used.*resuming from .*epoch=1-step=16\.ckpt"):
        resumed.fit(TinySystem(), make_loader(), ckpt_path="last")
    assert resumed.ckpt_path is not None and resumed.ckpt_path.endswith("epoch=1-step=16.ckpt")
    assert resumed.current_epoch == 4 and resumed.global_step == 32
    assert torch.load(resumed.ckpt_path, weights_only=True)["epoch"] == 1


def test_a_checkpoint_written_outside_the_run_folder_is_logged_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing lands in the working directory: a checkpoint saved to a path of the user's
    choosing gets its audit entry in that folder."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    trainer = quiet_trainer(work / "root", logger=False, enable_checkpointing=False)
    trainer.fit(TinySystem(), make_loader())
    trainer.save_checkpoint(elsewhere / "model.ckpt")
    assert sorted(os.listdir(elsewhere)) == ["checkpoints.jsonl", "model.ckpt"]
    assert os.listdir(work) == []  # (default_root_dir/root was never needed either)
