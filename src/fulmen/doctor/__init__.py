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

The batches go through the real loop: ``Trainer.fit`` (then ``validate`` when training cannot
run, ``test`` and ``predict``) of a quiet Trainer with one batch per stage and the doctor's probe
callback, inside ``fulmen._sandbox.Sandbox``. Nothing is written to disk (no loggers, no
checkpoints) and the system is left as it was found: weights and buffers bitwise, gradients,
``requires_grad`` flags, train/eval modes, device and dtype, and the random number generators. No
optimizer steps: the optimizers' ``step`` and ``zero_grad`` do nothing during the runs.

The package: ``run`` (the runs, and where a failure happened), ``probe`` (the callback and the
step and data probes), ``checks_data`` and ``checks_model`` (the checks), ``report`` (``Finding``,
``Report`` and their words).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from fulmen.doctor.checks_data import shuffles as _shuffles
from fulmen.doctor.checks_model import devices_of as _devices
from fulmen.doctor.checks_model import same_device as _same_device
from fulmen.doctor.report import LEVELS, Finding, Report

if TYPE_CHECKING:
    from fulmen.datamodule import DataModule
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["LEVELS", "Finding", "Report", "doctor"]
# (the helpers the tests use by their former names)
_ = (_devices, _same_device, _shuffles)


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
    from fulmen.doctor.run import run_doctor
    from fulmen.system import System

    if not isinstance(system, System):
        raise TypeError(f"doctor(system, ...): expected a fulmen.System, got {type(system).__name__}.")
    if datamodule is not None and not isinstance(datamodule, DataModule):
        raise TypeError(f"doctor(..., datamodule=...): expected a fulmen.DataModule, got {type(datamodule).__name__}.")
    if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
        from fulmen.errors import DataError

        raise DataError("doctor() got both dataloaders and a datamodule; pass one of the two.")
    report = run_doctor(system, datamodule, train_dataloaders, val_dataloaders, trainer)
    if verbose and (trainer is None or trainer.is_global_zero):
        print(report)
    return report


class _CallableModule(types.ModuleType):
    """``import fulmen.doctor`` binds the name ``fulmen.doctor`` to this module; calling it calls
    ``doctor`` so that ``fulmen.doctor(system)`` works whichever was imported first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Report:
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
