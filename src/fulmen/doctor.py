"""``fulmen.doctor``: run one batch through every stage a system defines and say, in plain words,
what would go wrong in a real run.

The checks (each gives one or more ``Finding`` objects, ``"ok"``, ``"warning"`` or ``"problem"``):

- the training data: a dataloader is found, is not empty, and shuffles; validation data does
  not shuffle; the training and validation sets do not share samples (the first samples of each
  are hashed, within a time budget);
- ``training_step`` returns a finite scalar loss that requires grad (or a dict with ``"loss"``);
- after backward of one training batch, every parameter that requires grad has a gradient
  (parameters without one are named; all-zero and non-finite gradients are reported too);
- each batch reaches the step on the device the system runs on;
- the model is in train mode in ``training_step`` and in eval mode in ``validation_step``,
  ``test_step`` and ``predict_step`` (a step that switches modes is named);
- every metric that a callback or scheduler monitors (``ModelCheckpoint``, ``EarlyStopping``,
  ``ReduceLROnPlateau``) is logged somewhere in the stages that ran;
- any exception a hook raises, with where it was raised.

Nothing is written to disk (no loggers, no checkpoints) and the system is left as it was found:
weights and buffers bitwise, gradients, ``requires_grad`` flags, train/eval modes, device and
dtype, and the random number generators. No optimizer steps; ``configure_optimizers`` is called
to check it (and, with manual optimization, its optimizers' ``step``/``zero_grad`` do nothing).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import sys
import textwrap
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from fulmen.datamodule import DataModule
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["Finding", "Report", "doctor"]

LEVELS = ("problem", "warning", "ok")

#: How many samples of each of the train and validation sets the overlap check hashes, and the
#: seconds it may spend doing so.
OVERLAP_SAMPLES = 2000
OVERLAP_SECONDS = 10.0


@dataclass(frozen=True)
class Finding:
    """One result of ``doctor``: ``level`` is ``"ok"``, ``"warning"`` or ``"problem"``; ``check``
    names the check (``"data"``, ``"loss"``, ``"gradients"``, ``"device"``, ``"modes"``,
    ``"monitor"``, ``"overlap"``, ``"hooks"``); ``explanation`` says why it matters and the fix."""

    level: str
    title: str
    explanation: str = ""
    check: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Finding(level={self.level!r}): expected one of {', '.join(map(repr, LEVELS))}.")

    def __str__(self) -> str:
        return f"{self.level}: {self.title}"


class Report:
    """What ``doctor`` found. ``str(report)`` is the printed report."""

    def __init__(self, system_name: str, device: str, findings: list[Finding]) -> None:
        self.system_name = system_name
        self.device = device
        self.findings = list(findings)

    @property
    def problems(self) -> list[Finding]:
        """Findings that break training or make its results wrong."""
        return [f for f in self.findings if f.level == "problem"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that are often mistakes, but may be on purpose."""
        return [f for f in self.findings if f.level == "warning"]

    @property
    def passed(self) -> list[Finding]:
        """The checks that found nothing wrong."""
        return [f for f in self.findings if f.level == "ok"]

    @property
    def ok(self) -> bool:
        """True when there are no problems (warnings allowed)."""
        return not self.problems

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __repr__(self) -> str:
        return (
            f"Report({self.system_name}: {len(self.problems)} problem(s), {len(self.warnings)} warning(s), "
            f"{len(self.passed)} ok)"
        )

    def __str__(self) -> str:
        n_p, n_w = len(self.problems), len(self.warnings)
        lines = [
            f"fulmen doctor: {self.system_name} on {self.device}: {n_p} problem{'s' * (n_p != 1)}, "
            f"{n_w} warning{'s' * (n_w != 1)}, {len(self.passed)} ok",
            "",
        ]
        tags = {"problem": "PROBLEM", "warning": "WARNING", "ok": "ok"}
        for level in LEVELS:
            for f in self.findings:
                if f.level != level:
                    continue
                lines.append(f"{tags[level]:<8} {f.title}")
                if f.explanation and level != "ok":
                    for para in f.explanation.split("\n"):
                        lines.extend(textwrap.wrap(para, 92, initial_indent=" " * 9, subsequent_indent=" " * 9) or [""])
        return "\n".join(lines)


def doctor(
    system: System,
    datamodule: DataModule | None = None,
    *,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    trainer: Trainer | None = None,
    verbose: bool = True,
) -> Report:
    """Run one batch of each stage ``system`` defines and report what would go wrong.

    Data comes from the dataloaders given, else ``datamodule``, else the system's own
    ``*_dataloader`` hooks (as in ``Trainer.fit``). With ``trainer``, its device, precision and
    the metrics its callbacks monitor are used (the trainer itself does not run). The report is
    printed unless ``verbose=False``; it is returned either way. The system is left unchanged.
    """
    from fulmen.datamodule import DataModule
    from fulmen.system import System

    if not isinstance(system, System):
        raise TypeError(f"doctor(system, ...): expected a fulmen.System, got {type(system).__name__}.")
    if datamodule is not None and not isinstance(datamodule, DataModule):
        raise TypeError(f"doctor(..., datamodule=...): expected a fulmen.DataModule, got {type(datamodule).__name__}.")
    if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
        from fulmen.errors import DataError

        raise DataError("doctor() got both dataloaders and a datamodule; pass one of the two.")
    report = _Doctor(system, datamodule, train_dataloaders, val_dataloaders, trainer).run()
    if verbose and (trainer is None or trainer.is_global_zero):
        print(report)
    return report


# -- the run -----------------------------------------------------------------------------------------
class _Doctor:
    def __init__(self, system: System, datamodule: Any, train: Any, val: Any, trainer: Any) -> None:
        self.system, self.datamodule = system, datamodule
        self.given_train, self.given_val, self.user_trainer = train, val, trainer
        self.findings: list[Finding] = []
        self.generators: list[tuple[torch.Generator, Tensor]] = []
        self.logged: dict[str, set[str]] = {"train": set(), "val": set()}
        self.ran: dict[str, bool] = {}
        self.device = "cpu"

    def add(self, level: str, check: str, title: str, explanation: str = "") -> None:
        self.findings.append(Finding(level, title, explanation, check))

    def failed(self, where: str, err: BaseException, check: str = "hooks") -> None:
        self.add("problem", check, f"{where} raised {type(err).__name__}", f"{err}{_location(err)}")

    # -- orchestration -------------------------------------------------------------------------------
    def run(self) -> Report:
        from fulmen import errors
        from fulmen.seed import RNGState
        from fulmen.system import System
        from fulmen.trainer._hooks import overrides

        warned = set(errors._warned)
        rng = RNGState()
        target = self.system
        pending_model = overrides(self.system, "configure_model", System) and not self.system.__dict__.get(
            "_model_configured"
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if pending_model:
                    # configure_model builds or wraps layers once; run it on a copy so the system
                    # the user holds is not changed (a later fit runs it as usual).
                    target = copy.deepcopy(self.system)
                with _preserved(target, self.datamodule):
                    self._run_stages(target)
            except Exception as err:
                self.failed("doctor", err)
            finally:
                rng.restore()
                for g, state in self.generators:
                    g.set_state(state)
                errors._warned.clear()
                errors._warned.update(warned)
        self._report_warnings(caught)
        return Report(type(self.system).__name__, self.device, self.findings)

    def _report_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        from fulmen.errors import FulmenWarning

        seen: set[str] = set()
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, FulmenWarning):
                if text not in seen:
                    seen.add(text)
                    first = text.split(". ")[0].rstrip(".")
                    self.add("warning", "hooks", f"fulmen warned: {_shorten(first, 100)}", text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _quiet_trainer(self) -> Trainer:
        from fulmen.trainer.trainer import Trainer

        flags: dict[str, Any] = {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "max_epochs": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "limit_predict_batches": 1,
            "devices": 1,
            "strategy": "auto",
        }
        user = self.user_trainer
        if user is not None:
            flags["accelerator"] = user.strategy.root_device.type
            flags["precision"] = user._flags.get("precision", "32-true")
            flags["inference_mode"] = user._flags.get("inference_mode", True)
        try:
            return Trainer(**flags)
        except Exception:
            flags.pop("precision", None)
            flags["accelerator"] = "cpu"
            return Trainer(**flags)

    def _run_stages(self, system: System) -> None:
        from fulmen.system import System
        from fulmen.trainer._hooks import HookTable, overrides
        from fulmen.trainer.state import TrainerState

        quiet = self._quiet_trainer()
        self.device = str(quiet.strategy.root_device)
        quiet.system, quiet.datamodule = system, self.datamodule
        system.trainer = quiet
        if self.datamodule is not None:
            self.datamodule.trainer = quiet
        quiet._hooks = HookTable(quiet, system, [])  # the system's hooks only: no callback runs

        if not overrides(system, "training_step", System):
            self.add(
                "problem",
                "loss",
                f"{type(system).__name__} has no training_step",
                "Trainer.fit needs training_step(self, batch, batch_idx) returning the loss.",
            )
        quiet.state = TrainerState(stage="fit", status="running")
        if self._setup(quiet, system, "fit"):
            try:
                self._fit(quiet, system)
            finally:
                self._teardown(quiet, system, "fit")
        self._check_monitors(system, quiet)
        for stage, kind, step in (("test", "test", "test_step"), ("predict", "predict", "predict_step")):
            if not overrides(system, step, System) or not self._has_data(system, kind):
                continue
            quiet.state = TrainerState(stage=stage, status="running")
            if self._setup(quiet, system, stage):
                try:
                    self._eval_stage(quiet, system, stage, kind, step)
                finally:
                    self._teardown(quiet, system, stage)

    def _has_data(self, system: System, kind: str) -> bool:
        from fulmen.datamodule import DataModule
        from fulmen.system import System
        from fulmen.trainer._hooks import overrides

        hook = f"{kind}_dataloader"
        dm = self.datamodule
        return (dm is not None and overrides(dm, hook, DataModule)) or overrides(system, hook, System)

    def _setup(self, quiet: Trainer, system: System, stage: str) -> bool:
        try:
            quiet._setup_system(system, self.datamodule, stage, prepare=stage == "fit")
        except Exception as err:
            self.failed(f"setup({stage!r})", err)
            return False
        return True

    def _teardown(self, quiet: Trainer, system: System, stage: str) -> None:
        hooks = quiet._hooks
        assert hooks is not None
        try:
            if self.datamodule is not None:
                self.datamodule.teardown(stage)
            hooks.call("teardown", stage)
        except Exception as err:
            self.failed(f"teardown({stage!r})", err)

    # -- fit: data, one training batch, one validation batch ----------------------------------------------
    def _fit(self, quiet: Trainer, system: System) -> None:
        from fulmen.system import System
        from fulmen.trainer._data import as_loader_list, check_train_loader, loader_length, request_loaders
        from fulmen.trainer._hooks import overrides

        try:
            train = request_loaders("train", self.given_train, self.datamodule, system)
            if train is not None:
                train = check_train_loader(train)
        except Exception as err:
            self.failed("Finding the training data", err, "data")
            train = None
        if train is None and overrides(system, "training_step", System):
            self.add(
                "problem",
                "data",
                "No training data",
                "Pass train_dataloaders=..., a datamodule with train_dataloader(), or define train_dataloader() "
                "on the system.",
            )
        try:
            vals = as_loader_list("val", request_loaders("val", self.given_val, self.datamodule, system))
        except Exception as err:
            self.failed("Finding the validation data", err, "data")
            vals = []
        self._remember_generators(train, *vals)
        if vals and not overrides(system, "validation_step", System):
            self.add(
                "warning",
                "data",
                "Validation data but no validation_step",
                f"{type(system).__name__} has validation data but no validation_step, so fit skips validation. "
                f"Define validation_step(self, batch, batch_idx) (and log a metric there), or drop the validation data.",
            )
        if train is not None:
            self._check_loader("train", train)
        for i, v in enumerate(vals):
            self._check_loader("val" if len(vals) == 1 else f"val {i}", v)
        if train is not None and vals:
            for i, v in enumerate(vals):
                self._check_overlap(train, v, "validation" if len(vals) == 1 else f"validation {i}")

        if not system.automatic_optimization:
            self._manual_optimizers(quiet, system)
        else:
            try:
                from fulmen.trainer._optim import setup_optimizers

                setup_optimizers(quiet, system)
            except NotImplementedError:
                pass  # no configure_optimizers: other checks still run (fit itself would refuse)
            except Exception as err:
                self.failed("configure_optimizers", err, "loss")

        hooks = quiet._hooks
        assert hooks is not None
        try:
            hooks.call("on_fit_start")
        except Exception as err:
            self.failed("on_fit_start", err)
            return
        if train is not None and overrides(system, "training_step", System) and loader_length(train) != 0:
            quiet.train_dataloader, quiet.num_training_batches = train, 1
            self._train_batch(quiet, system, train, vals)
        elif vals:
            self._validate(quiet, system, vals)
        try:
            hooks.call("on_fit_end")
        except Exception as err:
            self.failed("on_fit_end", err)

    def _train_batch(self, quiet: Trainer, system: System, train: Any, vals: list[Any]) -> None:
        from fulmen.trainer._eval import batch_mover
        from fulmen.trainer._fit import _epoch_defaults
        from fulmen.trainer._hooks import call_hooks

        hooks = quiet._hooks
        assert hooks is not None
        store = quiet._stores["train"]
        try:
            batch = _first_batch(train)
        except Exception as err:
            self.failed("Loading the first training batch", err, "data")
            return
        if batch is _EMPTY:
            self.add(
                "problem",
                "data",
                "The train dataloader yields no batches",
                "Its iterator stopped before the first batch: check that the dataset yields data.",
            )
            return
        quiet._live = [store]
        system._log_store = store
        if not system.training:
            system.train()
        store.reset()
        _epoch_defaults(store, True)
        probe = _StepProbe(system)
        out: Any = None
        loss: Tensor | None = None
        try:
            move = batch_mover(quiet, system)
            if move is not None:
                batch = move(batch, 0)
            hooks.call("on_train_start")
            hooks.call("on_train_epoch_start")
            _epoch_defaults(store, False)
            store.new_batch(batch)
            if hooks.on_train_batch_start and call_hooks(hooks.on_train_batch_start, batch, 0):
                self.add(
                    "warning",
                    "hooks",
                    "on_train_batch_start returned -1 for the first batch",
                    "The Trainer ends the epoch there, before training_step runs; the training checks were skipped.",
                )
                return
            precision = quiet.strategy.precision
            step = probe.wrap(system.training_step)
            with precision.forward_context() if precision.needs_forward_context else _nothing():
                out = step(batch, 0)
            self._check_batch_device("training_step", probe, quiet)
            self._check_modes("training_step", probe, expect_training=True)
            if system.automatic_optimization:
                loss = self._check_loss(system, out)
                if loss is not None:
                    if hooks.on_before_backward:
                        call_hooks(hooks.on_before_backward, loss)
                    quiet.strategy.backward(loss)
                    if hooks.on_after_backward:
                        call_hooks(hooks.on_after_backward)
                    self._check_gradients(system)
            else:
                if any(p.grad is not None for p in system.parameters()):
                    self._check_gradients(system)
                else:
                    self.add(
                        "warning",
                        "gradients",
                        "training_step computed no gradients",
                        "With manual optimization, training_step should call self.manual_backward(loss); no "
                        "parameter had a gradient after it ran.",
                    )
            if hooks.on_train_batch_end:
                if system.automatic_optimization and loss is not None:
                    detached = loss.detach()
                    out = {"loss": detached} if isinstance(out, Tensor) else {**out, "loss": detached}
                call_hooks(hooks.on_train_batch_end, out, batch, 0)
            self.ran["train"] = True
        except Exception as err:
            if probe.calls and not probe.finished:
                self.failed("training_step", err, "loss")
                self._check_batch_device("training_step", probe, quiet)
            else:
                self.failed("The training batch (hooks around training_step)", err)
        finally:
            self.logged["train"].update(store.callback_view())
        if vals:
            self._validate(quiet, system, vals)
        try:
            store.epoch_end_reached = True
            _epoch_defaults(store, True)
            quiet._live = [store]
            system._log_store = store
            hooks.call("on_train_epoch_end")
            self.logged["train"].update(store.callback_view())
            quiet._live, system._log_store = [], None
            hooks.call("on_train_end")
        except Exception as err:
            self.failed("on_train_epoch_end / on_train_end", err)
        finally:
            quiet._live, system._log_store = [], None

    def _validate(self, quiet: Trainer, system: System, vals: list[Any]) -> None:
        from fulmen.system import System
        from fulmen.trainer._data import limited_batches, prepare_loader
        from fulmen.trainer._eval import run_evaluation
        from fulmen.trainer._hooks import overrides

        if not overrides(system, "validation_step", System):
            return
        try:
            loaders = [prepare_loader(v, kind="val", trainer=quiet) for v in vals]
            counts = [limited_batches("val", v, 1) for v in loaders]
        except Exception as err:
            self.failed("Preparing the validation data", err, "data")
            return
        if not any(counts):
            return
        probe = _StepProbe(system)
        with _patched(system, "validation_step", probe.wrap(system.validation_step)):
            try:
                run_evaluation(quiet, system, "val", loaders, counts)
                self.ran["val"] = True
            except Exception as err:
                where = "validation_step" if probe.calls and not probe.finished else "The validation batch (its hooks)"
                self.failed(where, err)
            finally:
                self.logged["val"].update(quiet._stores["val"].callback_view())
        if probe.calls:
            self._check_batch_device("validation_step", probe, quiet)
            self._check_modes("validation_step", probe, expect_training=False)

    def _eval_stage(self, quiet: Trainer, system: System, stage: str, kind: str, step_name: str) -> None:
        from fulmen.trainer._eval import run_eval_stage, run_predict

        probe = _StepProbe(system)
        with _patched(system, step_name, probe.wrap(getattr(system, step_name))):
            try:
                if kind == "predict":
                    run_predict(quiet, system, None, return_predictions=False)
                else:
                    run_eval_stage(quiet, system, stage, None)
            except Exception as err:
                where = step_name if probe.calls and not probe.finished else f"The {stage} batch (its data or hooks)"
                self.failed(where, err)
        if probe.calls:
            self._check_batch_device(step_name, probe, quiet)
            self._check_modes(step_name, probe, expect_training=False)

    def _manual_optimizers(self, quiet: Trainer, system: System) -> None:
        """Manual optimization: the optimizers exist (``self.optimizers()`` works) but neither step
        nor zero their gradients, so the gradients of every backward in the step add up."""
        from fulmen.trainer._optim import setup_optimizers

        try:
            setup_optimizers(quiet, system)
        except Exception as err:
            self.failed("configure_optimizers", err, "loss")
            return

        def no_step(closure: Callable[[], Any] | None = None) -> Any:
            return closure() if closure is not None else None

        def no_zero_grad(set_to_none: bool = True) -> None:
            return None

        for opt in quiet.optimizers:
            opt.step = no_step  # type: ignore[method-assign]
            opt.zero_grad = no_zero_grad  # type: ignore[method-assign]

    # -- the checks -----------------------------------------------------------------------------------
    def _check_loader(self, kind: str, loader: Any) -> None:
        from fulmen.trainer._data import loader_length

        label = "train" if kind == "train" else "validation" + kind[3:]
        n = loader_length(loader)
        if n == 0:
            self.add(
                "problem",
                "data",
                f"The {label} dataloader is empty",
                f"len() of the {label} dataloader is 0: the dataset is empty, or batch_size is larger than the "
                f"dataset with drop_last=True.",
            )
            return
        shuffles = _shuffles(loader)
        if kind == "train":
            if shuffles is False:
                self.add(
                    "warning",
                    "data",
                    "The train dataloader does not shuffle",
                    "Every epoch sees the batches in the same order (often sorted by class or source), which slows or "
                    "biases training. Pass shuffle=True to the train DataLoader.",
                )
            else:
                self.add("ok", "data", f"The train dataloader has {_count(n)} batches" + (" and shuffles" if shuffles else ""))
        else:
            if shuffles is True:
                self.add(
                    "warning",
                    "data",
                    f"The {label} dataloader shuffles",
                    "Validation metrics do not need it, and shuffling makes per-batch values and logged examples "
                    "differ from run to run. Pass shuffle=False (the default) to the validation DataLoader.",
                )
            else:
                self.add("ok", "data", f"The {label} dataloader has {_count(n)} batches and does not shuffle")

    def _check_overlap(self, train: Any, val: Any, label: str) -> None:
        ds_t, ds_v = getattr(train, "dataset", None), getattr(val, "dataset", None)
        if ds_t is None or ds_v is None:
            return
        fix = (
            "The validation score then measures memorisation, not generalisation. Split the data once into "
            "disjoint sets (e.g. torch.utils.data.random_split) and remove duplicates across them."
        )
        if ds_t is ds_v:
            self.add(
                "problem",
                "overlap",
                f"The train and {label} dataloaders read the same dataset",
                f"Both dataloaders wrap the same dataset object, so every validation sample is a training sample. {fix}",
            )
            return
        exact = _subset_overlap(ds_t, ds_v)
        if exact is not None:
            shared, checked, total = exact, len(ds_v), len(ds_v)
            scope = f"the {label} subset's indices with the training subset's"
        else:
            start = time.monotonic()
            hashes_v = _sample_hashes(ds_v, OVERLAP_SAMPLES, start + OVERLAP_SECONDS / 2)
            hashes_t = _sample_hashes(ds_t, OVERLAP_SAMPLES, start + OVERLAP_SECONDS) if hashes_v else None
            if not hashes_v or not hashes_t:
                return
            train_set = set(hashes_t)
            shared = sum(1 for h in hashes_v if h in train_set)
            checked, total = len(hashes_v), len(ds_v)
            scope = f"the first {len(hashes_t)} training and {checked} {label} samples"
        if shared == 0:
            self.add("ok", "overlap", f"No {label} sample found in the training set (checked {scope})")
            return
        level = "problem" if shared >= max(1, checked // 10) else "warning"
        part = "all" if shared == checked else f"{shared} of the {checked}"
        self.add(
            level,
            "overlap",
            f"{shared} {label} sample{'s' * (shared != 1)} also in the training set",
            f"Comparing {scope}{f' ({total} in all)' if total > checked else ''}, {part} "
            f"{'is' if shared == 1 else 'are'} identical to a training sample. {fix}",
        )

    def _check_loss(self, system: System, out: Any) -> Tensor | None:
        from fulmen.errors import HookReturnError
        from fulmen.trainer._loss import loss_of

        try:
            loss = loss_of(out, system)
        except HookReturnError as err:
            self.add("problem", "loss", "training_step does not return a loss", str(err))
            return None
        if loss is None:
            self.add(
                "warning",
                "loss",
                "training_step returned None for the first batch",
                "The Trainer skips a batch whose training_step returns None, so nothing is learned from it. Return "
                "the loss (a scalar tensor) or {'loss': loss}.",
            )
            return None
        if loss.numel() != 1:
            self.add(
                "problem",
                "loss",
                f"training_step returns a loss of shape {tuple(loss.shape)}",
                "The loss must be a scalar. Reduce it first, e.g. loss.mean().",
            )
            return None
        value = float(loss.detach().float().item())
        if not loss.requires_grad:
            self.add(
                "problem",
                "loss",
                "The loss does not require grad",
                "There is nothing to backpropagate: the loss was computed under torch.no_grad(), detached, made "
                "with .item(), or from tensors that are not parameters. Compute it from the model's outputs.",
            )
            return None
        if not math.isfinite(value):
            self.add(
                "problem",
                "loss",
                f"The loss is not finite ({value})",
                "training_step returned NaN or inf on the first batch, so training stops at once (or learns "
                "nothing). Common causes: NaN or inf in the input data, log or division of values that can be zero, "
                "uninitialised weights (torch.empty), or an overflow in half precision.",
            )
            return loss.reshape(())
        self.add("ok", "loss", f"training_step returns a finite loss ({value:.4g}) that requires grad")
        return loss.reshape(())

    def _check_gradients(self, system: System) -> None:
        named = [(n, p) for n, p in system.named_parameters() if p.requires_grad]
        if not named:
            self.add(
                "warning",
                "gradients",
                "No parameter requires grad",
                "Every parameter is frozen, so training changes nothing. Call requires_grad_(True) on the parts "
                "to train.",
            )
            return
        missing = [n for n, p in named if p.grad is None]
        with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
        zero: list[str] = []
        nonfinite: list[str] = []
        if with_grad:
            grads = [g.detach() for _, g in with_grad]
            maxabs = torch.stack([g.abs().max().float() if g.numel() else g.new_zeros((), dtype=torch.float32) for g in grads])
            finite = torch.stack([torch.isfinite(g).all() for g in grads])
            maxabs, finite = maxabs.cpu(), finite.cpu()  # host sync: once
            zero = [n for (n, _), m, f in zip(with_grad, maxabs.tolist(), finite.tolist()) if f and m == 0.0]
            nonfinite = [n for (n, _), f in zip(with_grad, finite.tolist()) if not f]
        if missing:
            self.add(
                "problem",
                "gradients",
                f"{_plural(len(missing), 'parameter')} {_verb(len(missing))} no gradient: {_names(missing)}",
                "The loss of a training batch does not depend on them, so the optimizer never changes them (and "
                "DDP fails with 'Expected to have finished reduction'). Use them in the loss, delete them, or freeze "
                "them with requires_grad_(False). Unused: " + ", ".join(missing),
            )
        if nonfinite:
            self.add(
                "problem",
                "gradients",
                f"{_plural(len(nonfinite), 'parameter')} {_verb(len(nonfinite))} a NaN or inf gradient: {_names(nonfinite)}",
                "An operation in the forward pass has an infinite derivative here (sqrt or log of 0, division by "
                "0). Add a small epsilon or clamp the input.",
            )
        if zero:
            self.add(
                "warning",
                "gradients",
                f"{_plural(len(zero), 'parameter')} {_verb(len(zero))} an all-zero gradient: {_names(zero)}",
                "They take part in the loss but their gradient for this batch is exactly zero: a branch multiplied "
                "by zero, dead ReLUs, or a clamp/step function. It may be this batch only; if not, they never train.",
            )
        if not missing and not nonfinite and not zero:
            self.add("ok", "gradients", f"All {len(named)} trainable parameter tensors get a gradient")

    def _check_batch_device(self, step: str, probe: _StepProbe, quiet: Trainer) -> None:
        if probe.reported_device:
            return
        probe.reported_device = True
        want = quiet.strategy.root_device
        wrong = sorted({str(d) for d in probe.batch_devices if not _same_device(d, want)})
        if wrong:
            self.add(
                "problem",
                "device",
                f"The batch reaches {step} on {', '.join(wrong)}, not on {want}",
                f"The model runs on {want}, so using this batch fails or copies it each step. A custom "
                f"transfer_batch_to_device / on_after_batch_transfer hook moves it elsewhere, or the batch holds "
                f"objects fulmen cannot move (give them a .to(device) method).",
            )
        elif probe.batch_devices:
            self.add("ok", "device", f"The batch reaches {step} on {want}")

    def _check_modes(self, step: str, probe: _StepProbe, expect_training: bool) -> None:
        want = "train" if expect_training else "eval"
        other = "eval" if expect_training else "train"
        entry, ran, exit_ = probe.entry, probe.ran, probe.exit
        if entry.get("", expect_training) != expect_training:
            self.add(
                "problem",
                "modes",
                f"The model is in {other} mode when {step} starts",
                f"The Trainer puts it in {want} mode before {step}; a hook that runs before the step switched it "
                f"(self.{other}() in on_{'train' if expect_training else 'validation'}_batch_start?).",
            )
            return
        if expect_training:
            # Submodules frozen in eval mode on purpose (before the step) are left alone.
            moved = [n for n, t in entry.items() if t and (ran.get(n, t) is False or exit_.get(n, t) is False)]
        else:
            moved = [n for n, t in entry.items() if not t and (ran.get(n, t) is True or exit_.get(n, t) is True)]
        if moved:
            where = "the whole model" if "" in moved else _names(moved)
            fix = (
                "Dropout then stays off and batch norm stops learning its statistics for the rest of training. "
                "Remove self.eval() from training_step (fulmen switches modes itself), or restore with self.train()."
                if expect_training
                else f"Dropout is then on and batch norm updates its running statistics during {step}, so the "
                f"metrics are noisy and evaluation changes the model. Remove self.train() from {step} (fulmen "
                f"switches modes itself)."
            )
            self.add("problem", "modes", f"{step} switches {where} to {other} mode", fix)
        else:
            self.add("ok", "modes", f"The model is in {want} mode during {step}")

    def _check_monitors(self, system: System, quiet: Trainer) -> None:
        monitors: list[tuple[str, str]] = []
        callbacks: list[Any] = list(self.user_trainer.callbacks) if self.user_trainer is not None else []
        try:
            extra = system.configure_callbacks() or []
            callbacks += [extra] if not isinstance(extra, (list, tuple)) else list(extra)
        except Exception as err:
            self.failed("configure_callbacks", err)
        for cb in callbacks:
            name = getattr(cb, "monitor", None)
            if isinstance(name, str) and name:
                monitors.append((type(cb).__name__, name))
        for cfg in quiet.lr_scheduler_configs:
            if cfg.monitor:
                monitors.append((type(cfg.scheduler).__name__, cfg.monitor))
        if not monitors:
            return
        logged = self.logged["train"] | self.logged["val"]
        seen: set[tuple[str, str]] = set()
        for owner, name in monitors:
            if (owner, name) in seen:
                continue
            seen.add((owner, name))
            if name in logged:
                self.add("ok", "monitor", f"{owner} monitors {name!r}, which is logged")
                continue
            if not self.ran.get("val") and not self.ran.get("train"):
                continue  # the stages that would log it failed: reported already
            close = difflib.get_close_matches(name, sorted(logged), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            have = ", ".join(sorted(logged)) or "nothing"
            no_val = "" if self.ran.get("val") else " Validation did not run (no validation data or validation_step)."
            self.add(
                "problem",
                "monitor",
                f"{owner} monitors {name!r}, which is never logged",
                f"One training and one validation batch logged: {have}.{hint}{no_val} Log it with "
                f"self.log({name!r}, value) (in validation_step for a validation metric), or change the monitor.",
            )

    def _remember_generators(self, *loaders: Any) -> None:
        from fulmen.trainer._resume import loader_generators

        for loader in loaders:
            if loader is None:
                continue
            for g in loader_generators(loader):
                if all(g is not h for h, _ in self.generators):
                    self.generators.append((g, g.get_state()))


# -- step probes: the batch and the modes as a step sees them -----------------------------------------
class _StepProbe:
    def __init__(self, system: nn.Module) -> None:
        self.system = system
        self.calls = 0
        self.finished = False
        self.batch_devices: set[torch.device] = set()
        self.entry: dict[str, bool] = {}
        self.ran: dict[str, bool] = {}
        self.exit: dict[str, bool] = {}
        self.reported_device = False

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls > 1:
                return fn(*args, **kwargs)
            self.finished = False
            self.batch_devices = _devices(args[0] if args else kwargs.get("batch"))
            modules = list(self.system.named_modules())
            self.entry = {n: m.training for n, m in modules}
            handles = [m.register_forward_pre_hook(self._recorder(n)) for n, m in modules]
            try:
                out = fn(*args, **kwargs)
                self.finished = True
                return out
            finally:
                for h in handles:
                    h.remove()
                self.exit = {n: m.training for n, m in self.system.named_modules()}

        return probed

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any) -> None:
            self.ran.setdefault(name, module.training)

        return record


@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    obj.__dict__[name] = value
    try:
        yield
    finally:
        if had:
            obj.__dict__[name] = old
        else:
            obj.__dict__.pop(name, None)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _preserved(system: nn.Module, datamodule: Any) -> Iterator[None]:
    """Put back what running the stages may change: parameter and buffer values (and their
    device and dtype), gradients, ``requires_grad``, modes, and the trainer references."""
    params: list[tuple[nn.Module, str, Tensor, Tensor | None]] = []
    buffers: list[tuple[nn.Module, str, Tensor, Tensor | None]] = []
    for module in system.modules():
        for name, param in module._parameters.items():
            if param is not None:
                params.append((module, name, param, _copy_out(param)))
        for name, buf in module._buffers.items():
            if buf is not None:
                buffers.append((module, name, buf, _copy_out(buf)))
    unique: list[Tensor] = list({id(t): t for _, _, t, _ in params}.values())
    grads = [(t, t.grad) for t in unique]
    flags = [(t, t.requires_grad) for t in unique]
    modes = [(m, m.training) for m in system.modules()]
    attrs = {k: system.__dict__.get(k) for k in ("_trainer", "_log_store", "_toggled")}
    dm_trainer = getattr(datamodule, "trainer", None)
    for t in unique:
        t.grad = None  # the step's gradients start from none, as after an optimizer step
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, t, saved in params:
                module._parameters[name] = t  # type: ignore[assignment]
                _copy_in(t, saved)
            for module, name, t, saved in buffers:
                module._buffers[name] = t
                _copy_in(t, saved)
        for t, g in grads:
            t.grad = g
        for t, flag in flags:
            t.requires_grad_(flag)
        for m, training in modes:
            m.training = training
        system.__dict__.update(attrs)
        if datamodule is not None:
            datamodule.trainer = dm_trainer


def _copy_out(t: Tensor) -> Tensor | None:
    if t.is_meta:
        return None
    return t.detach().to("cpu", copy=True)


def _copy_in(t: Tensor, saved: Tensor | None) -> None:
    if saved is None:
        return
    if t.device != saved.device or t.dtype != saved.dtype or t.shape != saved.shape:
        t.data = saved  # moved or converted (setup_module): back to the original device and dtype
    else:
        t.data.copy_(saved)


# -- helpers ------------------------------------------------------------------------------------------
_EMPTY = object()


def _first_batch(loader: Any) -> Any:
    it = iter(loader)
    try:
        return next(it, _EMPTY)
    finally:
        close = getattr(it, "_shutdown_workers", None)
        if callable(close):
            close()


def _devices(batch: Any) -> set[torch.device]:
    found: set[torch.device] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(obj, Tensor):
            found.add(obj.device)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj[:1000]:
                walk(v, depth + 1)
        elif is_dataclass(obj) and not isinstance(obj, type):
            for f in fields(obj):
                walk(getattr(obj, f.name, None), depth + 1)

    walk(batch, 0)
    return found


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _shuffles(loader: Any) -> bool | None:
    """True / False when the loader's order is known to be random / fixed; None when unknown."""
    from torch.utils.data import (
        DataLoader,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
        WeightedRandomSampler,
    )
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    sampler = loader.sampler
    inner = getattr(loader.batch_sampler, "sampler", None)  # a custom batch sampler may wrap one
    if inner is not None:
        sampler = inner
    if isinstance(sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)):
        return True
    if isinstance(sampler, DistributedSampler):
        return bool(sampler.shuffle)
    if isinstance(sampler, SequentialSampler):
        return False
    return None


def _subset_overlap(train: Any, val: Any) -> int | None:
    """Shared indices of two ``Subset``s of the same dataset (exact and cheap), else None."""
    from torch.utils.data import Subset

    if isinstance(train, Subset) and isinstance(val, Subset) and train.dataset is val.dataset:
        return len(set(map(int, train.indices)) & set(map(int, val.indices)))
    return None


class _Unhashable(Exception):
    pass


def _sample_hashes(dataset: Any, limit: int, deadline: float) -> list[bytes] | None:
    """Digests of the first ``limit`` samples of a map-style dataset (fewer when time runs out);
    None when the dataset cannot be indexed or a sample holds something that cannot be hashed."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    try:
        n = min(len(dataset), limit)
    except TypeError:
        return None
    out: list[bytes] = []
    try:
        for i in range(n):
            if out and time.monotonic() > deadline:
                break
            h = hashlib.blake2b(digest_size=16)
            _digest(dataset[i], h, 0)
            out.append(h.digest())
    except Exception:
        return None
    return out


def _digest(obj: Any, h: Any, depth: int) -> None:
    if depth > 8:
        raise _Unhashable
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, (bool, int, float, complex, str, bytes, type(None))):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h, depth + 1)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h, depth + 1)
        h.update(b"]")
    elif callable(getattr(obj, "tobytes", None)):  # NumPy arrays, NumPy scalars, PIL images
        h.update(f"{type(obj).__name__}{getattr(obj, 'shape', getattr(obj, 'size', ''))}".encode())
        h.update(obj.tobytes())
    else:
        raise _Unhashable


def _names(names: list[str], limit: int = 6) -> str:
    shown = [n or type(None).__name__ for n in names[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _verb(n: int) -> str:
    return "gets" if n == 1 else "get"


def _count(n: int | float) -> str:
    return "an unknown number of" if math.isinf(n) else str(n)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _location(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    import os

    skip = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))
    mine = [f for f in frames if not os.path.abspath(f.filename).startswith(skip)]
    f = (mine or frames)[-1]
    return f" (at {f.filename}:{f.lineno}, in {f.name})"


class _CallableModule(types.ModuleType):
    """``import fulmen.doctor`` binds the name ``fulmen.doctor`` to this module; calling it calls
    ``doctor`` so that ``fulmen.doctor(system)`` works whichever was imported first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Report:
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
