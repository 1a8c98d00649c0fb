"""examples/search_digits.py: a short Optuna search beats the digits example's default settings."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "search_digits.py")


def test_search_beats_the_default_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    level = optuna.logging.get_verbosity()
    monkeypatch.setattr(sys, "argv", ["search_digits.py", "--root", str(tmp_path), "--trials", "6", "--epochs", "4"])
    namespace = runpy.run_path(EXAMPLE, run_name="not_main")
    try:
        result = namespace["main"]()
    finally:
        optuna.logging.set_verbosity(level)
    out = capsys.readouterr().out

    # the best of 6 seeded trials x 4 epochs has a lower validation loss than hidden=128, lr=2e-3
    assert result["best_value"] < result["default_value"]
    assert set(result["best_params"]) == {"lr", "hidden"}
    assert f"best params : {result['best_params']}" in out
    assert f"best val_loss    = {result['best_value']:.4f}" in out
    assert f"default val_loss = {result['default_value']:.4f}" in out

    study = result["study"]
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.COMPLETE in states
    assert all(t.intermediate_values for t in study.trials)  # every trial reported val_loss per epoch
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 4 for t in pruned)

    # the study is on disk: reloading it gives the same trials
    db = tmp_path / "fulmen-optuna.db"
    assert db.is_file()
    stored = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    assert stored.best_params == result["best_params"]
    # each trial logged into its own folder under <root>/search
    assert len(list((tmp_path / "search").glob("version_*/metrics.csv"))) == 7  # 6 trials + the default run
