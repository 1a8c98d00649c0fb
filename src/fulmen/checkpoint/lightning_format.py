"""Checkpoints shared with PyTorch Lightning 2.x, in both directions.

fulmen's checkpoint layout and Lightning's overlap (``state_dict``, ``hyper_parameters``,
``optimizer_states``, ``lr_schedulers``, ``callbacks``, ``epoch``, ``global_step``) and differ in
a few places. This module holds the whole translation, so neither the loop nor the callbacks
know about Lightning's layout:

- **Reading a file Lightning wrote** (``add_fulmen_keys``, used wherever a checkpoint is read for
  a run): fulmen's keys are added beside Lightning's, which stay as they are. The loop position
  comes from Lightning's progress counters (``loops["fit_loop"]``), the datamodule's state from the
  entry under its class name, the loss-scaler state from ``MixedPrecision``. Lightning stores no
  random number generator states and no data position: a checkpoint written at an epoch's end
  resumes exactly; one written inside an epoch continues after the batches already trained (a
  warning says what cannot be restored).
- **Writing for Lightning** (``add_lightning_keys`` and ``lightning_loops``, chosen when a
  ``fulmen.lightning.Trainer`` writes a checkpoint): ``pytorch-lightning_version``, the loop
  progress as Lightning's loops record it (beside fulmen's own entries in ``loops``), the
  datamodule's state under its class name, ``MixedPrecision``, ``hparams_name``, and the scores in
  ``EarlyStopping``/``ModelCheckpoint`` states as tensors (Lightning's callbacks call tensor
  methods on them). Everything stays plain data that ``torch.load(weights_only=True)`` reads.

A checkpoint Lightning wrote carries no content digest (fulmen's files always do, see
``fulmen.checkpoint.integrity``): it is read with ``weights_only=True`` as every checkpoint is,
and the user is told once that it could not be checked (``note_undigested``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fulmen.errors import warn_once

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

#: The key that marks a checkpoint in Lightning's layout (Lightning's loader requires it).
VERSION_KEY = "pytorch-lightning_version"
#: Written when fulmen.lightning has no ``__version__`` to offer: the Lightning release whose
#: checkpoint layout fulmen writes (no migration of Lightning's applies to it).
LAYOUT_VERSION = "2.6.6"
#: Lightning's precision plugin for ``16-mixed`` / ``bf16-mixed`` stores its loss scaler under its
#: class name.
_MIXED = "MixedPrecision"
_OLD_SCALER = "native_amp_scaling_state"  # Lightning 1.x


def written_by_lightning(ckpt: Mapping[str, Any]) -> bool:
    """True for a checkpoint Lightning wrote (Lightning's version key, no fulmen version)."""
    return VERSION_KEY in ckpt and "fulmen_version" not in ckpt


def note_undigested(ckpt: Mapping[str, Any], path: str) -> None:
    """Tell the user once per file that a checkpoint Lightning wrote could not be checked."""
    if not written_by_lightning(ckpt):
        return
    warn_once(
        f"{path!r} was written by PyTorch Lightning {ckpt.get(VERSION_KEY)} and carries no content digest, so "
        f"fulmen cannot check that it is unchanged since it was written (fulmen's own checkpoints record one). "
        f"It was read as every checkpoint is, with torch.load(weights_only=True): tensors and plain data only, "
        f"nothing in it can run code. The checkpoints fulmen writes from here on carry a digest.",
        key=f"lightning-undigested-{path}",
    )


# -- Lightning -> fulmen ----------------------------------------------------------------------------------
def _counts(progress: Any, part: str = "current") -> dict[str, int]:
    values = progress.get(part) if isinstance(progress, Mapping) else None
    return {k: int(v) for k, v in values.items()} if isinstance(values, Mapping) else {}


def lightning_position(fit_loop: Mapping[str, Any]) -> tuple[int, int, str]:
    """Where a fit continues from Lightning's ``loops["fit_loop"]``: ``(epoch, batches_done, phase)``
    in the terms of ``fulmen.trainer._resume`` (the phase says what is left of that batch).

    - written once the epoch's batches were done (``on_train_epoch_end``, or after the epoch's last
      batch): the next epoch starts afresh, as Lightning continues (its epoch-interval schedulers
      were stepped at the last batch, before the checkpoint was written);
    - written in ``on_train_batch_end`` inside an epoch: after that batch (the validation due after
      it still runs, as in the uninterrupted run);
    - written in ``on_validation_end`` inside an epoch: with the next batch;
    - written in ``on_train_epoch_start``, or between epochs: that epoch from its start.
    """
    epochs = _counts(fit_loop.get("epoch_progress"))
    ready, started = epochs.get("ready", 0), epochs.get("started", 0)
    processed, completed = epochs.get("processed", 0), epochs.get("completed", 0)
    if processed > completed:  # the epoch's batches are done; saved in its end hooks
        return processed, 0, "after_epoch"
    if ready <= processed or started < ready:  # between epochs, or in on_train_epoch_start
        return completed, 0, "epoch_start" if ready > processed else "after_epoch"
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    done = _counts(batches)
    b = done.get("processed", 0)
    if b <= 0:
        return completed, 0, "epoch_start"
    if batches.get("is_last_batch"):
        # The epoch's last batch ran: Lightning goes on with the next epoch (its epoch-interval
        # schedulers were stepped at that batch), and so does fulmen.
        return completed + 1, 0, "after_epoch"
    saved_in_batch_end = done.get("completed", b) < b  # Lightning counts the batch complete after its hooks
    return completed, b, "batch" if saved_in_batch_end else "validation"


def add_fulmen_keys(ckpt: dict[str, Any], datamodule: Any, path: str, resume: bool = True) -> None:
    """Give a checkpoint Lightning wrote the entries fulmen reads, beside Lightning's (in place).

    Nothing happens for any other checkpoint. ``datamodule`` (the run's, or None) decides which
    class-named entry holds the datamodule's state; ``resume`` (a fit continues from the file) adds
    the loop position, with a warning when it lies inside an epoch.
    """
    if not written_by_lightning(ckpt):
        return
    if datamodule is not None and "datamodule" not in ckpt:
        name = type(datamodule).__qualname__
        if isinstance(ckpt.get(name), Mapping):
            ckpt["datamodule"] = ckpt[name]
    if "precision" not in ckpt:
        scaler = ckpt.get(_MIXED, ckpt.get(_OLD_SCALER))
        if isinstance(scaler, Mapping) and scaler:
            ckpt["precision"] = {"scaler": dict(scaler)}
    loops = ckpt.get("loops")
    if not resume:
        return
    if not isinstance(loops, dict):
        loops = {}
        ckpt["loops"] = loops
    if "phase" in loops:
        return
    fit_loop = loops.get("fit_loop")
    if isinstance(fit_loop, Mapping):
        epoch, batches_done, phase = lightning_position(fit_loop)
    else:  # no loop state (a weights-only file): the epoch after the one it was written in
        epoch, batches_done, phase = int(ckpt.get("epoch", 0)), 0, "after_epoch"
    loops.update(
        {
            "epoch": epoch,
            "global_step": int(ckpt.get("global_step", 0)),
            "batches_done": batches_done,
            "phase": phase,
            "epoch_start_rng": None,
        }
    )
    if batches_done > 0:
        warn_once(
            f"Resuming from {path!r}, which PyTorch Lightning wrote in the middle of epoch {epoch} (after "
            f"{batches_done} batches). Lightning stores neither the random number generators nor the data "
            f"loader's position: fulmen continues with batch {batches_done} of a new pass over the data, skipping "
            f"the first {batches_done} batches (Lightning itself would start the data again from the first batch). "
            f"With a fixed order (shuffle=False) that is the data the interrupted run had left; with shuffle=True "
            f"it is part of a new permutation, and random numbers (dropout, augmentation) differ from an "
            f"uninterrupted run. Gradients accumulated but not yet stepped were not saved. Resume from a "
            f"checkpoint written at an epoch's end to continue exactly.",
            key=f"lightning-mid-epoch-{path}",
        )


# -- fulmen -> Lightning ---------------------------------------------------------------------------------
def _version() -> str:
    import sys

    module = sys.modules.get("fulmen.lightning")
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else LAYOUT_VERSION


def _score(value: Any) -> Any:
    """A score as Lightning's callbacks keep it: a tensor (they call ``.to``/``isfinite`` on it)."""
    if isinstance(value, bool) or value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float64)  # float64: the saved number exactly
    return value


def _lightning_callback_states(trainer: Trainer, states: dict[str, Any]) -> None:
    from fulmen.callbacks.checkpoint import ModelCheckpoint
    from fulmen.callbacks.early_stopping import EarlyStopping
    from fulmen.checkpoint.state import callback_states

    keys = list(callback_states(trainer.callbacks))  # the keys build_checkpoint used, in order
    for key, cb in zip(keys, trainer.callbacks):
        state = states.get(key)
        if not isinstance(state, dict):
            continue
        if isinstance(cb, EarlyStopping) and "best_score" in state:
            state["best_score"] = _score(state["best_score"])
        elif isinstance(cb, ModelCheckpoint):
            for field in ("best_model_score", "kth_value", "current_score"):
                if field in state:
                    state[field] = _score(state[field])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {p: _score(v) for p, v in state["best_k_models"].items()}


def add_lightning_keys(ckpt: dict[str, Any], trainer: Trainer, system: System) -> None:
    """Add what Lightning's loaders need to a checkpoint fulmen is writing (in place): the version
    key, the datamodule's state under its class name, the loss scaler under ``MixedPrecision``,
    ``hparams_name`` and tensor scores in the built-in callbacks' states. ``loops`` comes from
    ``lightning_loops`` (through ``fulmen.trainer._resume.loop_state``)."""
    ckpt[VERSION_KEY] = _version()
    if system.hparams and "hparams_name" not in ckpt:
        ckpt["hparams_name"] = getattr(system, "_hparams_name", None) or "kwargs"
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule.hparams and "datamodule_hparams_name" not in ckpt:
            ckpt["datamodule_hparams_name"] = getattr(datamodule, "_hparams_name", None) or "kwargs"
        state = ckpt.get("datamodule")
        name = type(datamodule).__qualname__
        if isinstance(state, dict) and state and name not in ckpt:
            ckpt[name] = state
    scaler = (ckpt.get("precision") or {}).get("scaler")
    if isinstance(scaler, dict) and scaler:
        ckpt[_MIXED] = scaler
    if isinstance(ckpt.get("callbacks"), dict):
        _lightning_callback_states(trainer, ckpt["callbacks"])


def _progress(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
    return {"ready": ready, "started": started, "processed": processed, "completed": completed}


def _twice(current: dict[str, int], offset: int = 0) -> dict[str, Any]:
    return {"total": {k: v + offset for k, v in current.items()}, "current": dict(current)}


def lightning_loops(trainer: Trainer) -> dict[str, Any]:
    """Lightning's ``loops`` entry for where ``trainer`` is now, so that Lightning's
    ``Trainer.fit(ckpt_path=...)`` continues from the same position (fulmen's phases as in
    ``fulmen.trainer._resume``; see ``lightning_position`` for the reverse)."""
    epoch, step, b = trainer.current_epoch, trainer.global_step, int(trainer.loop.batches_done or 0)
    phase = trainer.loop.phase
    n = trainer.num_training_batches
    n_int = int(n) if isinstance(n, int) or (isinstance(n, float) and n != float("inf")) else 0
    last = n_int > 0 and b >= n_int
    stepped = step  # Lightning's logging step count (_batches_that_stepped)
    if phase == "epoch_end":  # in on_train_epoch_end: the epoch's batches are done
        epochs = _progress(epoch + 1, epoch + 1, epoch + 1, epoch)
        batches = _progress(b, b, b, b)
    elif phase in ("batch", "validation") and b > 0:  # inside the epoch, after batch b - 1
        epochs = _progress(epoch + 1, epoch + 1, epoch, epoch)
        if phase == "batch":  # Lightning counts the batch completed after on_train_batch_end
            batches = _progress(b, b, b, b - 1)
            stepped = max(step - 1, 0)  # and its logging step after that (added back on resume)
        else:
            batches = _progress(b, b, b, b)
    elif phase == "epoch_start":  # in on_train_epoch_start
        epochs = _progress(epoch + 1, epoch, epoch, epoch)
        batches, last = _progress(0, 0, 0, 0), False
    else:  # between epochs (after one, or before the first)
        epochs = _progress(epoch, epoch, epoch, epoch)
        batches = _progress(b, b, b, b)
    automatic = trainer.system is None or trainer.system.automatic_optimization
    accumulate = max(int(getattr(trainer, "accumulate_grad_batches", 1) or 1), 1)
    in_epoch = min(step, -(-batches["processed"] // accumulate))
    steps = {"total": {"ready": step, "completed": step}, "current": {"ready": in_epoch, "completed": in_epoch}}
    zero = {"total": {"ready": 0, "completed": 0}, "current": {"ready": 0, "completed": 0}}
    three = {part: {"ready": v["ready"], "started": v["ready"], "completed": v["completed"]} for part, v in steps.items()}
    validated = phase in ("validation", "epoch_end") and trainer.num_val_batches and not trainer.sanity_checking
    n_val = int(sum(trainer.num_val_batches)) if validated else 0
    empty = _progress(0, 0, 0, 0)
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
        "epoch_loop.batch_progress": {**_twice(batches, epoch * n_int), "is_last_batch": bool(last)},
        "epoch_loop.scheduler_progress": zero,
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {"step": steps, "zero_grad": three} if automatic else {"step": zero, "zero_grad": zero}
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": zero if automatic else steps,
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": {
            **_twice(_progress(n_val, n_val, n_val, n_val)),
            "is_last_batch": n_val > 0,
        },
        "epoch_progress": _twice(epochs),
    }
    evaluation = {"state_dict": {}, "batch_progress": {**_twice(empty), "is_last_batch": False}}
    return {
        "fit_loop": fit_loop,
        "validate_loop": evaluation,
        "test_loop": {"state_dict": {}, "batch_progress": {**_twice(empty), "is_last_batch": False}},
        "predict_loop": {"state_dict": {}, "batch_progress": _twice(empty)},
    }
