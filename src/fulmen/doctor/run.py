"""How ``fulmen.doctor`` runs: the real loop, one batch per stage, inside a sandbox.

1. ``fulmen._sandbox.Sandbox`` takes the system's state; ``quiet_trainer`` gives a Trainer on the
   user's device and precision that writes nothing and runs one batch of each stage.
2. ``fulmen.doctor.probe`` installs its instruments (the step probes, the data sources) and the
   ``DoctorProbe`` callback.
3. ``Trainer.fit`` runs. When it stops on an exception, the probe's phase says where (setup, the
   data, ``configure_optimizers``, a hook...), and the doctor goes on as far as the real loop lets it:
   a fit refused for its validation data runs again without it, one refused for what
   ``configure_optimizers`` returned runs again with a stand-in optimizer, and when training could
   not run, ``Trainer.validate`` checks validation.
4. The data are checked from what the sources recorded (their findings go before the run's).
5. The monitored metrics are checked against what the runs logged; ``Trainer.test`` and
   ``Trainer.predict`` run when the system has those steps and data.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch

from fulmen._sandbox import Sandbox
from fulmen.doctor.checks_data import check_data
from fulmen.doctor.checks_model import check_batch_device, check_modes, check_monitors
from fulmen.doctor.probe import DoctorProbe, LoaderSource, StepProbe
from fulmen.doctor.report import Findings, Report, shorten

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["run_doctor"]

#: What the fit's one batch per stage is.
_RUN = {
    "max_epochs": 1,
    "limit_train_batches": 1,
    "limit_val_batches": 1,
    "limit_test_batches": 1,
    "limit_predict_batches": 1,
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
}

#: Where an exception out of fit was raised, by the probe's phase: (what raised, the check).
_FIT_WHERE = {
    "setup": ("setup('fit')", "hooks"),
    "optimizers": ("configure_optimizers", "loss"),
    "fit start": ("on_fit_start", "hooks"),
    "train-hooks": ("The training batch (hooks around training_step)", "hooks"),
    "batch": ("The training batch (hooks around training_step)", "hooks"),
    "validation": ("The validation batch (its hooks)", "hooks"),
    "epoch end": ("on_train_epoch_end / on_train_end", "hooks"),
    "fit end": ("on_fit_end", "hooks"),
    "teardown": ("teardown('fit')", "hooks"),
}


def run_doctor(system: System, datamodule: Any, train: Any, val: Any, trainer: Trainer | None) -> Report:
    """``doctor``'s run (arguments checked there): the report, the system left as it was."""
    from fulmen import errors
    from fulmen.system import System as _System
    from fulmen.trainer._hooks import overrides

    out = Findings()
    device = "cpu"
    warned = set(errors._warned)
    target = system
    pending_model = overrides(system, "configure_model", _System) and not system.__dict__.get("_model_configured")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if pending_model:
                # configure_model builds or wraps layers once; run it on a copy so the system
                # the user holds is not changed (a later fit runs it as usual).
                target = copy.deepcopy(system)
            with Sandbox(target, datamodule, trainer) as sandbox:
                doc = _Doctor(target, datamodule, train, val, sandbox, out)
                device = str(doc.device)
                doc.run()
        except Exception as err:
            out.failed("doctor", err)
        finally:
            errors._warned.clear()  # the runs use up no warning: a real run still shows it
            errors._warned.update(warned)
    _report_warnings(out, caught)
    return Report(type(system).__name__, device, out.items)


class _Doctor:
    def __init__(self, system: System, datamodule: Any, train: Any, val: Any, sandbox: Sandbox, out: Findings) -> None:
        from fulmen.system import System as _System
        from fulmen.trainer._hooks import overrides

        self.system, self.datamodule, self.sandbox, self.out = system, datamodule, sandbox, out
        steps = ("training_step", "validation_step", "test_step", "predict_step")
        self.has = {name: overrides(system, name, _System) for name in steps}
        self.probe = probe = DoctorProbe(system, out, sandbox)
        self.quiet = self._quiet_trainer([probe])
        self.device = probe.device = self.quiet.strategy.root_device
        self.sources = {
            kind: LoaderSource(kind, given, datamodule, system)
            for kind, given in (("train", train), ("val", val), ("test", None), ("predict", None))
        }
        for source in self.sources.values():
            source.probe = probe
            source.install(sandbox)
        for name, has in self.has.items():
            if has:
                step = probe.steps[name] = StepProbe(system, name, contain=name in ("training_step", "validation_step"))
                step.install(sandbox)
        if "training_step" in probe.steps:
            probe.steps["training_step"].after = probe.after_training_step
        if "validation_step" in probe.steps:
            probe.steps["validation_step"].after = probe.after_validation_step
        self.stand_in = False  # configure_optimizers gives a stand-in optimizer (after a refusal)
        sandbox.patch(system, "configure_optimizers", self._configure_optimizers(system.configure_optimizers))
        if not self.has["training_step"]:  # (reported) a stand-in skips every batch: the rest is checked
            sandbox.patch(system, "training_step", _no_training_step)

    def _quiet_trainer(self, callbacks: list[Any]) -> Trainer:
        try:
            return self.sandbox.quiet_trainer(callbacks, same_rules=False, **_RUN)
        except Exception:  # the user's device or precision is not available here
            cpu = {**_RUN, "precision": "32-true", "accelerator": "cpu"}
            return self.sandbox.quiet_trainer(callbacks, same_rules=False, **cpu)

    def run(self) -> None:
        from fulmen import errors

        # (training_step returning None, or skipped by the doctor, is reported in the doctor's words)
        errors._warned.add(f"nothing-optimized-{type(self.system).__name__}")
        if not self.has["training_step"]:
            self.out.add(
                "problem",
                "loss",
                f"{type(self.system).__name__} has no training_step",
                "Trainer.fit needs training_step(self, batch, batch_idx) returning the loss.",
            )
        data_at = len(self.out)
        if self._fit() != "setup":  # (after a failed setup the data were not asked for)
            data = Findings()
            train, val = self.sources["train"], self.sources["val"]
            train_value = train.value if train.error is None else None
            check_data(data, self.system, train_value, train.error, val.loaders(), val.error, self.has)
            self.out.insert(data_at, data)
        self._check_monitors()
        for stage, kind in (("test", "test"), ("predict", "predict")):
            if self.has[f"{kind}_step"] and self.sources[kind].exists:
                self._eval_run(stage)

    # -- fit -----------------------------------------------------------------------------------------
    def _fit(self) -> str:
        """The real fit, again without what the loop refused (validation data, an optimizer), and a
        validation when training could not run; the phase the fit failed in ("" if it did not)."""
        train, val = self.sources["train"], self.sources["val"]
        # Without validation_step the validation data are still asked for and checked, not given to the loop.
        val.off = not self.has["validation_step"]
        phase = "skipped"
        if train.exists:
            for _ in range(3):
                phase = self._fit_once()
                if phase == "val data" and not val.off:
                    val.off = True  # refused: again without validation data
                elif phase == "optimizers" and not self.stand_in:
                    self.stand_in = True  # refused what configure_optimizers returned: again with a stand-in
                else:
                    break
                self.sandbox.reset()
        step = self.probe.steps.get("validation_step")
        if phase in ("skipped", "train data", "train-hooks", "batch") and step is not None and not step.calls:
            if val.exists and val.error is None:  # training could not run: validation is still checked
                val.off = False
                self._eval_run("validate")
        return phase

    def _fit_once(self) -> str:
        """One ``Trainer.fit``; the phase it failed in ("" when it finished)."""
        probe = self.probe
        probe.begin("fit")
        try:
            self.quiet.fit(self.system, datamodule=self.datamodule)
        except Exception as err:
            return self._fit_failed(err)
        finally:
            probe.finish_validation()
        return ""

    def _fit_failed(self, err: Exception) -> str:
        """Report what stopped the fit; the phase it was raised in."""
        probe = self.probe
        if probe.error is not None and probe.error is not err:  # an exception, then teardown raised too
            phase = self._fit_error(probe.error, probe.error_phase)
            self._fit_error(err, "teardown")
            return phase
        phase = probe.error_phase if probe.error is err else probe.phase  # (on_exception saw it)
        if phase != "teardown" and _raised_in(err, self.quiet, ("teardown",)):
            phase = "teardown"
        return self._fit_error(err, phase)

    def _fit_error(self, err: BaseException, phase: str) -> str:
        """Report ``err``, raised in ``phase``; returns the phase ("train-hooks" for a hook before
        the first batch, so the validation is still checked)."""
        probe, out = self.probe, self.out
        if phase in ("train data", "val data"):
            source = self.sources[phase.split()[0]]
            if not _empty(source):  # (an empty dataloader is the data check's to report)
                source.error = source.error or err
            return phase
        if phase == "batch" and probe.step_failed:
            return phase  # the failed training_step is reported; what followed it is not
        if phase == "train":
            if _raised_in(err, self.quiet):
                phase = "train-hooks"
            elif _is_data_error(err):  # the loop: the train dataloader gave no batch
                out.add(
                    "problem",
                    "data",
                    "The train dataloader yields no batches",
                    "Its iterator stopped before the first batch: check that the dataset yields data.",
                )
                return phase
            else:
                out.failed("Loading the first training batch", err, "data")
                return phase
        where, check = _FIT_WHERE.get(phase, ("fit", "hooks"))
        if phase != "validation" or not probe.validation_step_failed():
            out.failed(where, err, check)
        if phase == "validation":
            probe.finish_validation(failed=True)
        return phase

    # -- the other stages ------------------------------------------------------------------------------
    def _eval_run(self, stage: str) -> None:
        """``Trainer.validate`` / ``test`` / ``predict`` of one batch, and the checks of its step."""
        probe, quiet, system, dm = self.probe, self.quiet, self.system, self.datamodule
        step_name = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}[stage]
        step = probe.steps[step_name]
        probe.begin(stage)
        try:
            if stage == "predict":
                quiet.predict(system, datamodule=dm, return_predictions=False)
            else:
                getattr(quiet, stage)(system, datamodule=dm, verbose=False)
        except Exception as err:
            self._eval_failed(stage, step, err)
        if stage == "validate":
            probe.finish_validation()
        elif step.calls:
            check_batch_device(self.out, step_name, step, self.device)
            check_modes(self.out, step_name, step, expect_training=False)

    def _eval_failed(self, stage: str, step: StepProbe, err: Exception) -> None:
        probe = self.probe
        if probe.error is not None and probe.error is not err:  # an exception, then teardown raised too
            self._eval_error(stage, step, probe.error, probe.error_phase)
            self._eval_error(stage, step, err, "teardown")
        else:
            self._eval_error(stage, step, err, probe.error_phase if probe.error is err else probe.phase)

    def _eval_error(self, stage: str, step: StepProbe, err: BaseException, phase: str) -> None:
        if phase == "val data":
            source = self.sources["val"]
            if not _empty(source):
                source.error = source.error or err
        elif err is step.error:
            self.out.failed(step.name, err)
        elif phase in ("setup", "teardown") or _raised_in(err, self.quiet, ("teardown",)):
            self.out.failed(f"{'setup' if phase == 'setup' else 'teardown'}({stage!r})", err)
        elif stage == "validate":
            if not self.probe.validation_step_failed():  # (what follows a failed step is not reported)
                self.out.failed("The validation batch (its hooks)", err)
            self.probe.finish_validation(failed=True)
        else:
            self.out.failed(f"The {stage} batch (its data or hooks)", err)

    # -- monitored metrics -------------------------------------------------------------------------------
    def _check_monitors(self) -> None:
        user = self.sandbox.trainer
        callbacks: list[Any] = list(user.callbacks) if user is not None else []
        try:
            callbacks += self.sandbox.own_callbacks()
        except Exception as err:
            self.out.failed("configure_callbacks", err)
        monitors = [(type(cb).__name__, cb.monitor) for cb in callbacks if isinstance(getattr(cb, "monitor", None), str)]
        monitors = [(owner, name) for owner, name in monitors if name] + self.probe.scheduler_monitors
        if monitors:
            check_monitors(self.out, monitors, self.probe.logged, self.probe.ran)

    # -- configure_optimizers ------------------------------------------------------------------------------
    def _configure_optimizers(self, configure: Any) -> Any:
        """``configure_optimizers`` as the runs call it: its failure is reported and a stand-in
        optimizer (learning rate 0) takes its place, so the training batch is still checked; so it
        does after the loop refused what it returned."""

        def configure_optimizers() -> Any:
            self.probe.set_phase("optimizers")
            if not self.stand_in:
                try:
                    return configure()
                except NotImplementedError as err:  # none defined: fit itself would refuse
                    if not self.system.automatic_optimization:
                        self.out.failed("configure_optimizers", err, "loss")
                except Exception as err:
                    self.out.failed("configure_optimizers", err, "loss")
            params = list(self.system.parameters())
            return torch.optim.SGD(params or [torch.nn.Parameter(torch.zeros(()))], lr=0.0)

        return configure_optimizers


def _no_training_step(batch: Any, batch_idx: int) -> None:
    return None


def _raised_in(err: BaseException, trainer: Trainer, names: tuple[str, ...] | None = None) -> bool:
    """Whether ``err`` was raised in a hook of the run (one of ``names``, when given)."""
    from fulmen.trainer._where import hooks_on_the_way

    hooks = [name for name, _ in hooks_on_the_way(err.__traceback__, trainer)]
    return bool(hooks) if names is None else bool(hooks) and hooks[0] in names


def _empty(source: LoaderSource) -> bool:
    """Whether the loop refused ``source``'s dataloaders for being empty (reported by the data check)."""
    from fulmen.trainer._data import loader_length

    return source.error is None and any(loader_length(v) == 0 for v in source.loaders())


def _is_data_error(err: BaseException) -> bool:
    from fulmen.errors import DataError

    return isinstance(err, DataError)


def _report_warnings(out: Findings, caught: list[warnings.WarningMessage]) -> None:
    """fulmen's warnings during the runs become findings; any other warning is shown as usual."""
    from fulmen.errors import FulmenWarning

    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, FulmenWarning):
            if text not in seen:
                seen.add(text)
                first = text.split(". ")[0].rstrip(".")
                out.add("warning", "hooks", f"fulmen warned: {shorten(first, 100)}", text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
