"""``fulmen.doctor`` checks through the real loop (``Trainer.fit`` with its probe callback), not a copy of it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import doctor_cases as cases

import fulmen
from fulmen.doctor import doctor

SRC = Path(fulmen.__file__).resolve().parent


def test_doctor_runs_trainer_fit_and_the_system_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.trainer import _fit

    fits: list[Any] = []
    real = _fit.run_fit

    def counting(trainer: Any, system: Any, *args: Any, **kwargs: Any) -> None:
        fits.append(trainer)
        real(trainer, system, *args, **kwargs)

    monkeypatch.setattr(_fit, "run_fit", counting)
    calls: list[str] = []

    class Hooked(cases.Healthy):
        def on_train_epoch_end(self) -> None:
            calls.append("on_train_epoch_end")
            self.log("epoch_metric", torch.tensor(1.0))

        def on_validation_epoch_end(self) -> None:
            calls.append(f"on_validation_epoch_end {self.trainer.state.stage}")

        def configure_callbacks(self) -> Any:
            return [fulmen.EarlyStopping(monitor="epoch_metric")]

    system = Hooked()
    report = doctor(system, verbose=False)
    assert report.ok and not report.warnings, str(report)
    assert "EarlyStopping monitors 'epoch_metric', which is logged" in [f.title for f in report.passed]
    assert len(fits) == 1 and fits[0].loggers == [] and fits[0].checkpoint_callback is None
    assert calls == ["on_validation_epoch_end fit", "on_train_epoch_end"]
    # every probe and stand-in removed again (a fit marks configure_model as done: it has none)
    assert set(system.__dict__) - {"_model_configured"} == set(Hooked().__dict__)
    assert system._trainer is None and system._log_store is None


def test_validation_is_checked_when_training_cannot_run() -> None:
    class Broken(cases.Healthy):
        def on_train_start(self) -> None:
            raise RuntimeError("train start broke")

    report = doctor(Broken(), verbose=False)
    assert [f.title for f in report.problems] == ["The training batch (hooks around training_step) raised RuntimeError"]
    assert "The model is in eval mode during validation_step" in [f.title for f in report.passed]


def test_doctor_and_tuner_write_no_private_trainer_attribute() -> None:
    """They change the run only through the Trainer's public attributes and their callbacks."""
    written: list[str] = []
    for path in [*sorted((SRC / "doctor").glob("*.py")), *sorted((SRC / "tuner").glob("*.py")), SRC / "_sandbox.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Assign, ast.AugAssign)):
                continue
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Attribute) and t.attr.startswith("_") and isinstance(t.value, ast.Name):
                    if t.value.id in ("trainer", "quiet", "system", "pl_module"):
                        written.append(f"{path.name}: {t.value.id}.{t.attr}")
    assert written == []


def test_ctrl_c_stops_doctor_at_once_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    monkeypatch.chdir(tmp_path)

    class Interrupted(cases.Healthy):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C were pressed during the step
            return super().training_step(batch, batch_idx)

    system = Interrupted()
    weights = {k: v.clone() for k, v in system.state_dict().items()}
    with pytest.raises(KeyboardInterrupt):
        doctor(system, verbose=False)
    assert os.listdir(tmp_path) == []  # no interrupted.ckpt: a fit's signal handling is off in the sandbox
    assert all(torch.equal(v, weights[k]) for k, v in system.state_dict().items())
    assert "configure_callbacks" not in system.__dict__ and "training_step" not in system.__dict__
