"""examples/fairness.py: trained, tested with a bias audit that finds the injected disparity,
exported to ONNX and .pt2 (each checked), served over HTTP with the eager model's outputs, and
reported with the audit's section."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "fairness.py")


def test_fairness_example_trains_exports_serves_and_audits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["fairness.py", "--root", str(tmp_path / "runs"), "--epochs", "4"])
    summary = runpy.run_path(EXAMPLE, run_name="not_main")["main"]()
    out = capsys.readouterr().out
    run_dir = Path(summary["run_dir"])

    assert summary["test_acc"] > 0.85
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["task"] == "binary" and {g["group"] for g in audit["groups"]} == {"0", "1"}
    rates = {g["group"]: g["metrics"]["selection_rate"]["value"] for g in audit["groups"]}
    # The label's logit was raised by 0.8 for group 1: the model approves group 1 more often.
    assert rates["1"] - rates["0"] > 0.1
    assert audit["disparities"]["demographic_parity_difference"] == pytest.approx(rates["1"] - rates["0"], abs=1e-9)
    assert "demographic_parity_difference" in out

    for suffix in ("onnx", "pt2"):
        card = json.loads((run_dir / f"model.{suffix}.json").read_text())
        assert card["check"]["passed"] and card["check"]["max_abs_diff"] <= card["check"]["atol"]
        assert card["source"]["run_dir"] == str(run_dir.resolve())
    assert summary["served_max_abs_diff"] <= 1e-6
    page = (run_dir / "report" / "index.html").read_text()
    assert "Bias audit" in page
