"""``fulmen.run_dir.redirected``: inside a re-run by ``fulmen reproduce`` every output folder named
by an absolute path outside the work folder moves under ``<work folder>/_abs/``, so the original
run's folders are never written; ``original_path`` maps a re-run's paths back for comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.systems import TinySystem, make_loader

import fulmen
from fulmen.run_dir import REPRODUCE_ROOT_ENV, original_path, redirected


def test_outside_a_rerun_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPRODUCE_ROOT_ENV, raising=False)
    assert redirected(str(tmp_path / "runs")) == str(tmp_path / "runs")


def test_a_rerun_writes_nothing_where_the_original_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, work = tmp_path / "original", tmp_path / "work"
    original.mkdir()
    work.mkdir()
    monkeypatch.setenv(REPRODUCE_ROOT_ENV, str(work))
    monkeypatch.chdir(work)
    moved = work / "_abs" / str(original.resolve()).lstrip(os.sep)
    assert redirected(str(original)) == str(moved)
    assert redirected(str(work / "inside")) == str(work / "inside")  # already inside: kept
    assert redirected("relative/dir") == "relative/dir"  # relative to the re-run's folder: kept
    trainer = fulmen.Trainer(
        max_epochs=1,
        default_root_dir=original,
        logger=fulmen.CSVLogger(original / "logs"),
        callbacks=[fulmen.callbacks.ModelCheckpoint(dirpath=original / "ckpts")],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinySystem(), make_loader(n=16))
    assert list(original.iterdir()) == []  # nothing written into the original's folders
    assert list((moved / "ckpts").glob("*.ckpt")) and (moved / "logs").is_dir()
    assert original_path(str(moved / "ckpts" / "a.ckpt"), str(work), str(work), "/orig/cwd") == str(
        original.resolve() / "ckpts" / "a.ckpt"
    )
    assert original_path(str(work / "runs" / "x"), str(work), str(work), "/orig/cwd") == "/orig/cwd/runs/x"
    assert original_path("/elsewhere/x", str(work), str(work), "/orig/cwd") == "/elsewhere/x"
