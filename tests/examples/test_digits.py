"""The main job: examples/digits.py trains to >= 95% test accuracy and leaves its files behind."""

from __future__ import annotations

import csv
import glob
import os
import runpy
import sys
from typing import Any

import pytest
import torch

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "digits.py")


def test_digits_example_trains_and_reports(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    root = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["digits.py", "--root", str(root)])
    namespace = runpy.run_path(EXAMPLE, run_name="not_main")
    metrics = namespace["main"]()
    out = capsys.readouterr().out

    assert metrics["test_acc"] >= 0.95
    assert f"test_acc  = {metrics['test_acc']:.4f}" in out
    assert f"test_loss = {metrics['test_loss']:.4f}" in out

    run_dir = root / "fulmen_logs" / "version_0"
    assert f"logs        : {run_dir}" in out
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_acc = [float(r["val_acc"]) for r in rows if r.get("val_acc")]
    assert len(val_acc) == 30  # one validation per epoch
    assert any(r.get("test_acc") for r in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert len(events.Scalars("val_acc")) == 30
    assert events.Scalars("train_loss")[-1].value < events.Scalars("train_loss")[0].value

    (ckpt_path,) = glob.glob(str(run_dir / "checkpoints" / "*.ckpt"))
    assert f"checkpoint  : {ckpt_path}" in out
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["epoch"] == 29 and ckpt["hyper_parameters"]["hidden"] == 128
    restored = namespace["DigitsClassifier"].load_from_checkpoint(ckpt_path)
    assert not restored.training

    # The report: epoch times, learning rates and test-set predictions feed an HTML page with PNGs.
    with open(run_dir / "epoch_times.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(30))
    assert len([r for r in rows if r.get("lr-AdamW")]) == 30  # LearningRateMonitor, once per epoch
    predictions = torch.load(run_dir / "predictions.pt", weights_only=True)
    assert predictions["probs"].shape == (270, 10) and predictions["inputs"].shape == (270, 8, 8)
    accuracy = (predictions["probs"].argmax(1) == predictions["targets"]).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
    report = run_dir / "report" / "index.html"
    assert f"report      : {report}" in out
    pngs = {"curves_loss.png", "curves_acc.png", "lr.png", "epoch_times.png", "confusion_matrix.png", "top_losses.png"}
    assert {p.name for p in report.parent.glob("*.png")} == pngs
    page = report.read_text(encoding="utf-8")
    for name in pngs:
        assert f'data-file="{name}"' in page
        assert (report.parent / name).stat().st_size > 10_000
