"""What ``fulmen.doctor`` watches while the real loop runs one batch of each stage.

- ``DoctorProbe``: a ``fulmen.Callback`` on the doctor's quiet Trainer. Its hooks run just before
  the system's (callbacks come first), so it knows which part of the run the system is in (its
  ``phase``: where an exception comes from), checks the gradients before the optimizer step, reads
  the metrics logged (``trainer.callback_metrics``), and makes the optimizers' ``step`` and
  ``zero_grad`` do nothing (the doctor takes no optimizer step).
- ``StepProbe``: wraps a step method (``training_step``, ...) on the system's instance, for what
  only the call itself shows: the batch as the step gets it, the train/eval mode of every submodule
  at entry, during the forward and at exit, and what the step returned or raised. A failure of
  ``training_step`` or ``validation_step`` is kept and the loop gets None (it skips the batch), so
  the rest of the run is still checked, as when a step returns None.
- ``LoaderSource``: wraps the hook a run gets one kind of data from (the datamodule's or the
  system's ``*_dataloader``, or, for dataloaders passed to ``doctor``, one that returns them), to
  keep what it returned or raised for the data checks and to mark the phase.

Everything is installed with ``Sandbox.patch`` and removed when the doctor is done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fulmen.callbacks.base import Callback
from fulmen.doctor.checks_model import (
    check_batch_device,
    check_gradients,
    check_loss,
    check_modes,
    devices_of,
)
from fulmen.doctor.report import Findings

if TYPE_CHECKING:
    from fulmen._sandbox import Sandbox
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["DoctorProbe", "LoaderSource", "StepProbe"]

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}


class StepProbe:
    """One step method of the system as the loop calls it (see the module docstring); the first
    call is recorded, ``after(probe, output)`` then decides what the loop gets back."""

    def __init__(self, system: nn.Module, name: str, contain: bool = False) -> None:
        self.system, self.name, self.contain = system, name, contain
        self.after: Callable[[StepProbe, Any], Any] | None = None
        self.calls = 0
        self.finished = False
        self.error: Exception | None = None
        self.batch_devices: set[torch.device] = set()
        self.entry: dict[str, bool] = {}
        self.ran: dict[str, bool] = {}
        self.exit: dict[str, bool] = {}
        self.reported_device = False

    def install(self, sandbox: Sandbox) -> None:
        sandbox.patch(self.system, self.name, self.wrap(getattr(self.system, self.name)))

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # (the loop reads the step's signature: batch_idx, dataloader_idx)
        def probed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls > 1:
                return fn(*args, **kwargs)
            return self._first(fn, args, kwargs)

        return probed

    def _first(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.batch_devices = devices_of(args[0] if args else kwargs.get("batch"))
        modules = list(self.system.named_modules())
        self.entry = {n: m.training for n, m in modules}
        handles = [m.register_forward_pre_hook(self._recorder(n)) for n, m in modules]
        output: Any = None
        try:
            output = fn(*args, **kwargs)
            self.finished = True
        except Exception as err:
            self.error = err
            if not self.contain:
                raise
        finally:
            for h in handles:
                h.remove()
            self.exit = {n: m.training for n, m in self.system.named_modules()}
        return self.after(self, output) if self.after is not None else output

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any) -> None:
            self.ran.setdefault(name, module.training)

        return record


class LoaderSource:
    """The dataloaders of one ``kind`` the runs ask for (see the module docstring). ``value`` is
    what the hook returned, ``error`` what finding the data raised (the hook, or the loop refusing
    what it returned); with ``off`` the runs get none (``[]``)."""

    def __init__(self, kind: str, given: Any, datamodule: Any, system: System) -> None:
        from fulmen.datamodule import DataModule
        from fulmen.system import System
        from fulmen.trainer._hooks import overrides

        self.kind = kind
        self.owner: Any = None
        self.fn: Callable[[], Any] | None = None
        if given is not None:  # served by the system, in place of any hook of its own
            self.owner, self.fn = system, lambda: given
        else:
            for owner, base in ((datamodule, DataModule), (system, System)):
                if owner is not None and overrides(owner, _HOOK[kind], base):
                    self.owner, self.fn = owner, getattr(owner, _HOOK[kind])
                    break
        self.requested = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.off = False
        self.probe: DoctorProbe | None = None

    @property
    def exists(self) -> bool:
        return self.fn is not None

    def install(self, sandbox: Sandbox) -> None:
        if self.fn is not None:
            sandbox.patch(self.owner, _HOOK[self.kind], self._hook(self.fn))

    def _hook(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def requested(*args: Any, **kwargs: Any) -> Any:
            if self.probe is not None:
                self.probe.set_phase(f"{self.kind} data")
            if not self.requested:  # asked for once: a later run gets the same answer
                self.requested = True
                try:
                    self.value = fn(*args, **kwargs)
                except Exception as err:
                    self.error = err
                    if not self.off:
                        raise
            if self.off:
                return []
            if self.error is not None:
                raise self.error
            return self.value

        return requested

    def loaders(self) -> list[Any]:
        """The dataloaders it gave, as a list (validation may give several); ``[]`` on an error."""
        from fulmen.trainer._data import as_loader_list

        if self.value is None:
            return []
        if self.kind == "train":
            return [self.value]
        try:
            return as_loader_list(self.kind, self.value)
        except Exception:
            return []


class DoctorProbe(Callback):
    """The doctor's callback (see the module docstring); ``begin(stage)`` before each run."""

    def __init__(self, system: System, out: Findings, sandbox: Sandbox) -> None:
        self.system, self.out, self.sandbox = system, out, sandbox
        self.device = torch.device("cpu")  # (the Trainer's, once it is built)
        self.steps: dict[str, StepProbe] = {}
        #: Names the runs logged (``trainer.callback_metrics``), and which of fit's stages ran.
        self.logged: set[str] = set()
        self.ran: dict[str, bool] = {}
        #: ``(scheduler class name, metric)`` of each scheduler with a ``monitor`` in fit.
        self.scheduler_monitors: list[tuple[str, str]] = []
        self.begin("fit")

    def begin(self, stage: str) -> None:
        self.stage, self.phase = stage, "setup"
        self.error: BaseException | None = None  # the exception the run ended with (on_exception)
        self.error_phase = ""
        self.batch_started = self.step_failed = self.check_gradients_next = self.validated = False

    # -- where the run is ------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        if self.phase == "validation" and phase != "validation" and self.error is None:
            self.finish_validation()  # (after a failure: once the doctor has reported it)
        self.phase = phase

    def finish_validation(self, failed: bool = False) -> None:
        """Report the validation step as it ran (after the failure, when the run failed there)."""
        step = self.steps.get("validation_step")
        if step is None or not step.calls or self.validated:
            return
        self.validated = True
        if step.error is not None:
            self.out.failed("validation_step", step.error)
        self.ran["val"] = step.error is None and not failed
        check_batch_device(self.out, "validation_step", step, self.device)
        check_modes(self.out, "validation_step", step, expect_training=False)

    def validation_step_failed(self) -> bool:
        step = self.steps.get("validation_step")
        return step is not None and step.error is not None

    def _batch_done(self) -> None:
        step = self.steps.get("training_step")
        if self.phase == "batch" and step is not None and step.calls and not self.step_failed:
            self.ran["train"] = True

    def _read_logged(self, trainer: Trainer) -> None:
        self.logged.update(trainer.callback_metrics)

    # -- the steps ---------------------------------------------------------------------------------
    def after_training_step(self, step: StepProbe, output: Any) -> Any:
        """The checks of the first ``training_step``; the loop gets its output when it can
        backpropagate it (else None: the batch is skipped, as the loop skips a None)."""
        out, system = self.out, self.system
        if step.error is not None:
            self.step_failed = True
            out.failed("training_step", step.error, "loss")
            check_batch_device(out, "training_step", step, self.device)
            return None
        check_batch_device(out, "training_step", step, self.device)
        check_modes(out, "training_step", step, expect_training=True)
        if not system.automatic_optimization:
            if any(p.grad is not None for p in system.parameters()):
                check_gradients(out, system)
            else:
                out.add(
                    "warning",
                    "gradients",
                    "training_step computed no gradients",
                    "With manual optimization, training_step should call self.manual_backward(loss); no "
                    "parameter had a gradient after it ran.",
                )
            return output
        if check_loss(out, system, output) is None:
            return None
        self.check_gradients_next = True
        return output

    def after_validation_step(self, step: StepProbe, output: Any) -> Any:
        return None if step.error is not None else output

    # -- hooks -------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        self.set_phase("fit start")
        self.sandbox.keep_generators(trainer.train_dataloader, *trainer.val_dataloaders)
        for opt in trainer.optimizers:  # no optimizer steps: the weights stay as they are
            self.sandbox.patch(opt, "step", _no_step)
            self.sandbox.patch(opt, "zero_grad", _no_zero_grad)
        # The schedulers are not stepped either (one monitoring an unlogged metric would raise at the
        # epoch's end): their monitors are checked by the doctor instead.
        self.scheduler_monitors = [
            (type(cfg.scheduler).__name__, cfg.monitor) for cfg in trainer.lr_scheduler_configs if cfg.monitor
        ]
        trainer.lr_scheduler_configs = []

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self.set_phase("train")

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self.set_phase("train")

    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        self.set_phase("batch")
        self.batch_started = True

    def on_before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Any) -> None:
        if self.check_gradients_next and system.automatic_optimization:  # (after on_after_backward)
            self.check_gradients_next = False
            check_gradients(self.out, system)

    def on_train_batch_end(self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._read_logged(trainer)

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        self._batch_done()
        self.set_phase("validation")
        if self.stage != "fit":
            self.sandbox.keep_generators(*trainer.val_dataloaders)

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        self._read_logged(trainer)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        self._batch_done()
        step = self.steps.get("training_step")
        if self.phase == "batch" and step is not None and not step.calls:
            self.out.add(
                "warning",
                "hooks",
                "on_train_batch_start returned -1 for the first batch",
                "The Trainer ends the epoch there, before training_step runs; the training checks were skipped.",
            )
        self.set_phase("epoch end")
        self._read_logged(trainer)

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        self.set_phase("epoch end")
        self._read_logged(trainer)

    def on_fit_end(self, trainer: Trainer, system: System) -> None:
        self.set_phase("fit end")
        self._read_logged(trainer)

    def on_test_start(self, trainer: Trainer, system: System) -> None:
        self.set_phase("run")
        self.sandbox.keep_generators(*trainer.test_dataloaders)

    def on_predict_start(self, trainer: Trainer, system: System) -> None:
        self.set_phase("run")
        self.sandbox.keep_generators(*trainer.predict_dataloaders)

    def teardown(self, trainer: Trainer, system: System, stage: str) -> None:
        self.set_phase("teardown")

    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        self.error, self.error_phase = exception, self.phase
        self._read_logged(trainer)


def _no_step(closure: Callable[[], Any] | None = None) -> Any:
    return closure() if closure is not None else None


def _no_zero_grad(set_to_none: bool = True) -> None:
    return None
