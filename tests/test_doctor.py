"""``fulmen.doctor``: one batch per stage, plain-language findings, and the system left as it was."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import doctor_cases as cases
from torch.utils.data import DataLoader, Subset

import fulmen
from fulmen.doctor import Finding, Report, _devices, _same_device, _shuffles, doctor


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor writes nothing: run each test in an empty folder and check it stays empty."""
    monkeypatch.chdir(tmp_path)
    yield
    assert os.listdir(tmp_path) == []


def snapshot(system: torch.nn.Module) -> dict[str, Any]:
    return {
        "tensors": {k: v.detach().clone() for k, v in system.state_dict(keep_vars=True).items()},
        "devices": {k: (v.device, v.dtype) for k, v in system.state_dict().items()},
        "modes": [(n, m.training) for n, m in system.named_modules()],
        "grads": {n: p.grad for n, p in system.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in system.named_parameters()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "trainer": system._trainer,
    }


def assert_unchanged(system: torch.nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(system)
    assert before["tensors"].keys() == after["tensors"].keys()
    for k, v in before["tensors"].items():
        now = after["tensors"][k]
        assert v.dtype == now.dtype and v.shape == now.shape, k
        assert torch.equal(v.reshape(-1).view(torch.uint8), now.reshape(-1).view(torch.uint8)), f"{k} changed"
    assert after["devices"] == before["devices"]
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for n, g in before["grads"].items():
        assert after["grads"][n] is g, f"gradient of {n} not restored"
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert after["python_rng"] == before["python_rng"]
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])
    assert after["trainer"] is before["trainer"]


def run(system: fulmen.System, **kwargs: Any) -> Report:
    before = snapshot(system)
    report = doctor(system, verbose=False, **kwargs)
    assert_unchanged(system, before)
    return report


def titles(findings: list[Finding]) -> str:
    return "\n".join(f"{f.title} | {f.explanation}" for f in findings)


def only_problem(report: Report, *words: str) -> Finding:
    assert len(report.problems) == 1, str(report)
    problem = report.problems[0]
    text = f"{problem.title} {problem.explanation}"
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    return problem


# -- a healthy system ----------------------------------------------------------------------------------
def test_healthy_system_has_no_problems(capsys: pytest.CaptureFixture[str]) -> None:
    system = cases.Healthy()
    torch.manual_seed(3)
    system.net[0].weight.grad = torch.full_like(system.net[0].weight, 7.0)  # left from before: kept
    system.net[1].eval()  # a submodule frozen on purpose stays frozen
    before = snapshot(system)
    report = doctor(system)
    assert_unchanged(system, before)
    assert report.ok and not report.problems and not report.warnings, str(report)
    checks = {f.check for f in report.passed}
    assert {"data", "overlap", "device", "modes", "loss", "gradients"} <= checks
    out = capsys.readouterr().out
    assert out.startswith("fulmen doctor: Healthy on cpu: 0 problems, 0 warnings")
    assert "The model is in train mode during training_step" in out
    assert "The model is in eval mode during validation_step" in out
    assert str(report) in out
    assert torch.equal(system.net[0].weight.grad, torch.full_like(system.net[0].weight, 7.0))


def test_healthy_with_datamodule_and_trainer() -> None:
    class NoData(cases.Healthy):
        train_dataloader = fulmen.System.train_dataloader  # type: ignore[assignment]
        val_dataloader = fulmen.System.val_dataloader  # type: ignore[assignment]

    trainer = fulmen.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[fulmen.ModelCheckpoint(monitor="val_loss"), fulmen.EarlyStopping(monitor="train_loss")],
    )
    report = run(NoData(), datamodule=cases.HealthyData(), trainer=trainer)
    assert report.ok, str(report)
    assert "ModelCheckpoint monitors 'val_loss', which is logged" in titles(report.passed)
    assert "EarlyStopping monitors 'train_loss', which is logged" in titles(report.passed)


def test_given_dataloaders() -> None:
    train = DataLoader(cases.regression_data(16, seed=5), batch_size=4, shuffle=True)
    val = DataLoader(cases.regression_data(8, seed=6), batch_size=4)
    report = run(cases.Healthy(), train_dataloaders=train, val_dataloaders=val)
    assert report.ok and not report.warnings, str(report)
    assert "has 4 batches and shuffles" in titles(report.passed)


# -- one system per mistake ---------------------------------------------------------------------------------
def test_unused_layer_is_named() -> None:
    report = run(cases.UnusedLayer())
    problem = only_problem(report, "2 parameters get no gradient", "head.weight", "head.bias", "requires_grad_(False)")
    assert problem.check == "gradients"


def test_all_zero_gradient_is_a_warning() -> None:
    report = run(cases.ZeroGradient())
    assert report.ok
    assert "1 parameter gets an all-zero gradient: scale" in titles(report.warnings)


def test_eval_called_in_training_step() -> None:
    problem = only_problem(run(cases.EvalInTraining()), "training_step switches", "eval mode", "self.eval()")
    assert problem.check == "modes"


def test_train_called_in_validation_step() -> None:
    problem = only_problem(run(cases.TrainInValidation()), "validation_step switches", "train mode", "self.train()")
    assert problem.check == "modes"


def test_empty_train_loader() -> None:
    problem = only_problem(run(cases.EmptyTrain()), "train dataloader is empty", "drop_last=True")
    assert problem.check == "data"


def test_unshuffled_train_loader_warns() -> None:
    report = run(cases.UnshuffledTrain())
    assert report.ok
    assert "The train dataloader does not shuffle" in titles(report.warnings)
    assert "shuffle=True" in titles(report.warnings)


def test_shuffled_val_loader_warns() -> None:
    report = run(cases.ShuffledVal())
    assert report.ok
    assert "The validation dataloader shuffles" in titles(report.warnings)


def test_monitored_metric_not_logged() -> None:
    problem = only_problem(run(cases.MonitorNotLogged()), "ModelCheckpoint monitors 'val_acc'", "never logged", "val_loss")
    assert problem.check == "monitor"


def test_trainer_callback_monitor_typo_gets_a_suggestion() -> None:
    trainer = fulmen.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[fulmen.EarlyStopping(monitor="val_los")]
    )
    only_problem(run(cases.Healthy(), trainer=trainer), "EarlyStopping monitors 'val_los'", "Did you mean 'val_loss'?")


def test_scheduler_monitor_is_checked() -> None:
    class Plateau(cases.Healthy):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_accuracy"}}

    only_problem(run(Plateau()), "ReduceLROnPlateau monitors 'val_accuracy'", "never logged")


def test_overlapping_train_and_val_samples() -> None:
    problem = only_problem(run(cases.OverlappingData()), "16 validation samples also in the training set", "all are identical")
    assert problem.check == "overlap"


def test_same_dataset_and_overlapping_subsets() -> None:
    data = cases.regression_data(100, seed=0)

    class Same(cases.Healthy):
        def val_dataloader(self) -> DataLoader:
            return DataLoader(data, batch_size=8)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(data, batch_size=8, shuffle=True)

    only_problem(run(Same()), "read the same dataset")

    class Subsets(cases.Healthy):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(Subset(data, list(range(0, 60))), batch_size=8, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(Subset(data, list(range(58, 100))), batch_size=8)

    report = run(Subsets())
    assert report.ok, str(report)  # 2 of 42: a warning (a tenth or more would be a problem)
    assert "2 validation samples also in the training set" in titles(report.warnings)


def test_non_finite_loss() -> None:
    report = run(cases.NonFiniteLoss())
    assert "The loss is not finite (-inf)" in titles(report.problems)
    assert all(f.check in ("loss", "gradients") for f in report.problems), str(report)


def test_loss_without_grad() -> None:
    only_problem(run(cases.NoGradLoss()), "does not require grad", "torch.no_grad()")


def test_bad_return_value() -> None:
    class ReturnsDict(cases.Healthy):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"total": super().training_step(batch, batch_idx)}

    only_problem(run(ReturnsDict()), "does not return a loss", "'loss' key")


def test_batch_not_on_the_model_device() -> None:
    report = run(cases.BatchOnMeta())
    problems = [f for f in report.problems if f.check == "device"]
    assert problems and "reaches training_step on meta, not on cpu" in problems[0].title, str(report)
    assert "transfer_batch_to_device" in problems[0].explanation
    assert "The batch reaches validation_step on meta, not on cpu" in titles(report.problems)


def test_device_helpers() -> None:
    batch = {"x": torch.zeros(2, device="meta"), "rest": [torch.zeros(1), (torch.ones(1),)], "n": 3}
    assert _devices(batch) == {torch.device("meta"), torch.device("cpu")}
    assert _same_device(torch.device("cuda", 0), torch.device("cuda"))
    assert not _same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert not _same_device(torch.device("cpu"), torch.device("meta"))


def test_shuffle_detection() -> None:
    data = cases.regression_data(8, seed=0)
    assert _shuffles(DataLoader(data, shuffle=True)) is True
    assert _shuffles(DataLoader(data)) is False
    assert _shuffles([1, 2, 3]) is None


def test_exception_in_a_step_is_reported_with_its_place() -> None:
    report = run(cases.CrashingStep())
    problem = report.problems[0]
    assert problem.title == "training_step raised RuntimeError"
    assert "shape mismatch somewhere in my model" in problem.explanation
    assert "doctor_cases.py" in problem.explanation and "training_step" in problem.explanation


def test_manual_optimization_takes_no_step() -> None:
    report = run(cases.ManualOptimization())  # weights unchanged: the optimizer step did nothing
    assert report.ok and not report.warnings, str(report)
    assert "All 6 trainable parameter tensors get a gradient" in titles(report.passed)


def test_configure_model_runs_on_a_copy() -> None:
    class Lazy(cases.Healthy):
        def configure_model(self) -> None:
            self.extra = torch.nn.Linear(4, 4)

    system = Lazy()
    report = run(system)
    assert not hasattr(system, "extra") and "_model_configured" not in system.__dict__
    assert "extra.weight" in titles(report.problems)  # the copy's new layer is not used in the loss


def test_test_and_predict_steps_are_checked() -> None:
    class WithTest(cases.Healthy):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.train()
            self.log("test_loss", self(batch[0]).mean())

        def test_dataloader(self) -> DataLoader:
            return DataLoader(cases.regression_data(8, seed=2), batch_size=4)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            return self(batch[0])

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(cases.regression_data(8, seed=3), batch_size=4)

    report = run(WithTest())
    only_problem(report, "test_step switches", "train mode")
    assert "The model is in eval mode during predict_step" in titles(report.passed)


def test_validation_data_without_validation_step() -> None:
    class NoValStep(cases.Healthy):
        validation_step = fulmen.System.validation_step  # type: ignore[assignment]

    report = run(NoValStep())
    assert report.ok
    assert "Validation data but no validation_step" in titles(report.warnings)


def test_fulmen_warnings_become_findings() -> None:
    class StepOnly(cases.Healthy):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_step_loss", self(batch[0]).mean(), on_step=True, on_epoch=False)

    report = run(StepOnly())
    assert report.ok
    warned = [f for f in report.warnings if f.title.startswith("fulmen warned:")]
    assert len(warned) == 1 and "on_epoch=True" in warned[0].explanation, str(report)
    # doctor does not use up the warning: a real run still shows it
    from fulmen.errors import _warned

    assert not any("val_step_loss" in k for k in _warned)


def test_report_and_finding() -> None:
    findings = [
        Finding("ok", "fine"),
        Finding("problem", "broken", "because of this. Fix it so."),
        Finding("warning", "odd", "maybe on purpose"),
    ]
    report = Report("Sys", "cpu", findings)
    assert [f.title for f in report.problems] == ["broken"]
    assert [f.title for f in report.warnings] == ["odd"]
    assert not report.ok and len(report) == 3
    text = str(report)
    assert text.splitlines()[0] == "fulmen doctor: Sys on cpu: 1 problem, 1 warning, 1 ok"
    assert text.index("PROBLEM  broken") < text.index("WARNING  odd") < text.index("ok       fine")
    assert "         because of this. Fix it so." in text
    assert repr(report) == "Report(Sys: 1 problem(s), 1 warning(s), 1 ok)"
    with pytest.raises(ValueError, match="level"):
        Finding("error", "x")


def test_argument_checks_and_module_is_callable() -> None:
    import fulmen.doctor as doctor_module

    with pytest.raises(TypeError, match=r"fulmen\.System"):
        doctor(torch.nn.Linear(1, 1), verbose=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DataModule"):
        doctor(cases.Healthy(), object(), verbose=False)  # type: ignore[arg-type]
    report = doctor_module(cases.Healthy(), verbose=False)  # type: ignore[operator]
    assert isinstance(report, Report) and report.ok
