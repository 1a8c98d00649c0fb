"""Evaluation loops: validation (also inside fit), test, and predict.

``Trainer.validate``/``test``/``predict`` run with the system in eval mode under
``torch.inference_mode()`` (or ``torch.no_grad()`` with ``Trainer(inference_mode=False)``).
Validation inside ``fit`` (and its sanity check) always runs under ``torch.no_grad()``, as in
PyTorch Lightning: a tensor made there (a cache built on first use, a buffer) may be used by
training afterwards, and tensors made in inference mode cannot be saved for backward. Each
module's train/eval mode is restored exactly afterwards.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from fulmen.errors import DataError
from fulmen.logging._store import to_floats
from fulmen.trainer._data import (
    as_loader_list,
    empty_reason,
    limited_batches,
    loader_length,
    prepare_loader,
    request_loaders,
)
from fulmen.trainer._hooks import call_hooks, overrides
from fulmen.trainer._phase import Phase
from fulmen.trainer._validate import check_precision_supported
from fulmen.trainer._where import note_batch_error

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_HOOK_NAME = {"val": "validation", "test": "test", "predict": "predict"}
_STAGE_KIND = {"validate": "val", "test": "test", "predict": "predict"}
_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


#: How torch words a device mismatch (CUDA/CPU, MPS, meta; indexing; convolutions' type check).
_DEVICE_MISMATCH = re.compile(
    r"same device|at least two devices|not on the expected device|Expected object of device type|"
    r"Input type \(.*\) and weight type \(.*\) should be the same|on the same device as the indexed tensor",
    re.IGNORECASE,
)


def _devices(obj: Any, found: set[str], depth: int = 0) -> None:
    """The devices of the tensors in ``obj`` (a batch: nested lists, tuples, dicts, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        found.add(str(obj.device))
    elif depth > 8:
        return
    elif isinstance(obj, dict):
        for v in obj.values():
            _devices(v, found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _devices(v, found, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _devices(getattr(obj, f.name, None), found, depth + 1)


def device_mismatch_note(err: BaseException, trainer: Any, system: Any, batch: Any, where: str) -> str | None:
    """What to tell a user whose ``where`` (e.g. training_step) raised torch's device-mismatch error:
    the batch's devices, the model's, and where fulmen moves batches. None for other errors."""
    if not _DEVICE_MISMATCH.search(str(err)):
        return None
    batch_devices: set[str] = set()
    _devices(batch, batch_devices)
    model_devices = {str(t.device) for t in itertools.chain(system.parameters(), system.buffers())}
    name = type(system).__name__
    target = getattr(trainer, "device", None)

    def listed(devices: set[str]) -> str:
        return ", ".join(sorted(devices)) if devices else "none found"

    return (
        f"fulmen: a device mismatch in {name}.{where}: the batch's tensors are on {listed(batch_devices)}, the "
        f"system's parameters and buffers on {listed(model_devices)} (the Trainer's device is {target}). fulmen moves "
        f"each batch to the Trainer's device with {name}.transfer_batch_to_device, which reaches tensors in lists, "
        f"tuples, dicts and dataclasses and objects with a .to() method; override it for a batch type it cannot see "
        f"into. Tensors made inside the step need device=self.device (or torch.zeros_like(x), x.new_zeros(...)), "
        f"and a model kept in a plain attribute (a list, a dict) is not moved with the system: use nn.ModuleList or "
        f"nn.ModuleDict."
    )


def add_device_note(err: BaseException, trainer: Any, system: Any, batch: Any, where: str) -> None:
    """Add ``device_mismatch_note`` to ``err`` (only on the error path; the exception keeps its type)."""
    try:
        note = device_mismatch_note(err, trainer, system, batch, where)
    except Exception:  # the note must never hide the error itself
        return
    if note is not None and hasattr(err, "add_note") and note not in getattr(err, "__notes__", ()):
        err.add_note(note)


def batch_mover(trainer: Trainer, system: System) -> Callable[[Any, int], Any] | None:
    """The function that moves a batch to the device, or None when there is nothing to do
    (CPU run, default transfer hooks, full float32 precision): then the loop skips the call."""
    from fulmen.system import System as _System

    device = trainer.strategy.root_device
    precision = trainer.strategy.precision
    custom = any(overrides(system, h, _System) for h in _TRANSFER_HOOKS)
    if device.type == "cpu" and not custom and precision.dtype == torch.float32:
        return None
    if not custom and precision.dtype == torch.float32:
        from fulmen.utils.apply import move_to_device

        return lambda batch, dataloader_idx: move_to_device(batch, device)  # the default hooks, minus 3 calls
    before, transfer, after = system.on_before_batch_transfer, system.transfer_batch_to_device, system.on_after_batch_transfer
    convert = precision.convert_input

    def move(batch: Any, dataloader_idx: int) -> Any:
        batch = before(batch, dataloader_idx)
        batch = transfer(batch, device, dataloader_idx)
        return convert(after(batch, dataloader_idx))

    return move


class _WithoutDataloaderIdx:
    """Calls a batch hook declared without ``dataloader_idx`` (as PyTorch Lightning allows for one
    dataloader) without its last argument. Keeps the hook's owner and name for error notes."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        target = fn.func if isinstance(fn, partial) else fn
        self.__self__ = getattr(target, "__self__", None)
        self.__name__ = getattr(target, "__name__", repr(target))

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args[:-1])


def _takes(fn: Callable[..., Any], n: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): assume it fits
        return True
    return True


def batch_hooks(
    fns: tuple[Callable[..., Any], ...], n: int, single: bool = False
) -> tuple[Callable[..., Any], ...]:
    """The evaluation batch hooks, each callable with ``n`` arguments ending in ``dataloader_idx``.

    Checked once per run, not per batch: a hook written as ``on_validation_batch_end(self,
    outputs, batch, batch_idx)`` is called without ``dataloader_idx``. ``single`` (Lightning's
    rule for one dataloader): every hook that can do without ``dataloader_idx`` is called without
    it (its default applies)."""
    if single:
        return tuple(_WithoutDataloaderIdx(fn) if _takes(fn, n - 1) else fn for fn in fns)
    return tuple(fn if _takes(fn, n) or not _takes(fn, n - 1) else _WithoutDataloaderIdx(fn) for fn in fns)


def takes_batch_idx(fn: Callable[..., Any]) -> bool:
    """Whether a step takes ``batch_idx`` after ``batch`` (as Lightning decides: a second
    positional parameter of any name, ``*args``, or a parameter named ``batch_idx``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin, a C function): assume it does
        return True
    positional = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL or p.name == "batch_idx":
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def without_batch_idx(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(batch, *rest)`` called as ``step(batch, batch_idx, *rest)``: a step declared without
    ``batch_idx`` (``training_step(self, batch)``), chosen once per run."""

    def step(batch: Any, batch_idx: int, *rest: Any) -> Any:
        return fn(batch, *rest)

    return step


@contextmanager
def _eval_mode(system: System, name: str) -> Iterator[None]:
    """Eval mode for a ``name`` (validation, test, predict) loop; each module's mode restored
    after. A ``fulmen.lightning.LightningModule`` that overrides ``on_{name}_model_eval`` /
    ``on_{name}_model_train`` switches the modes itself instead."""
    custom = system._model_mode_hooks
    modes = [(m, m.training) for m in system.modules()]
    if custom and f"on_{name}_model_eval" in custom:
        to_eval = getattr(system, f"on_{name}_model_eval")
        if to_eval is not None:  # (set to None: not called, as in Lightning)
            to_eval()
    else:
        system.eval()
    try:
        yield
    finally:
        to_train = getattr(system, f"on_{name}_model_train", None) if custom and f"on_{name}_model_train" in custom else None
        if to_train is not None:
            to_train()
        else:
            for module, training in modes:
                module.training = training


def _limited(loader: Any, n: int | float) -> Any:
    # The loader itself when all of it runs, so its sampler finishes (and draws the same random
    # numbers as a plain loop over it would).
    return loader if n >= loader_length(loader) else itertools.islice(loader, int(n))


def _loaders_for(trainer: Trainer, system: System, kind: str, given: Any) -> tuple[list[Any], list[int | float]]:
    stage = {"val": "validate", "test": "test", "predict": "predict"}[kind]
    loaders = as_loader_list(kind, request_loaders(kind, given, trainer.datamodule, system))
    if not loaders:
        hook = f"{kind}_dataloader"
        raise DataError(
            f"Trainer.{stage} found no {_HOOK_NAME[kind]} data: pass dataloaders=..., a datamodule with {hook}(), "
            f"or define {hook}() on the system."
        )
    loaders = [prepare_loader(x, kind=kind, trainer=trainer) for x in loaders]
    counts = [limited_batches(kind, x, getattr(trainer.config, f"limit_{kind}_batches")) for x in loaders]
    setattr(trainer, f"{kind}_dataloaders", loaders)  # trainer.val_/test_/predict_dataloaders
    return loaders, counts


def check_not_empty(kind: str, loaders: list[Any], counts: list[int | float]) -> None:
    for i, (loader, n) in enumerate(zip(loaders, counts)):
        if n == 0 and getattr(loader, "__len__", None) is not None and len(loader) == 0:
            raise DataError(f"The {_HOOK_NAME[kind]} dataloader {i} is empty (len 0): {empty_reason(loader)}")


@dataclasses.dataclass(eq=False)
class _BatchLoop:
    """What an evaluation or predict batch loop needs, chosen once per run (not per batch)."""

    kind: str  # "val", "test" or "predict"
    name: str  # "validation", "test" or "predict"
    step: Callable[..., Any]
    move: Callable[[Any, int], Any] | None
    forward_ctx: Callable[[], Any] | None
    batch_start: tuple[Callable[..., Any], ...]
    batch_end: tuple[Callable[..., Any], ...]
    multi: bool
    profiler: Any
    store: Any = None  # evaluation: the metric store each batch logs into
    send_steps: bool = False  # evaluation: step values to the loggers after each batch
    results: list[list[Any]] | None = None  # predict with return_predictions: the outputs
    sanity: bool = False


def _batch_loop(trainer: Trainer, system: System, kind: str, loaders: list[Any]) -> _BatchLoop:
    """The step, batch mover, forward context and batch hooks of a ``kind`` loop."""
    hooks = trainer._hooks
    assert hooks is not None
    name = _HOOK_NAME[kind]
    step = getattr(system, f"{name}_step")
    if not takes_batch_idx(step):
        step = without_batch_idx(step)
    multi = len(loaders) > 1
    move = batch_mover(trainer, system)
    precision = trainer.strategy.precision
    forward_ctx = precision.forward_context if precision.needs_forward_context else None
    single = trainer.rules.lightning and not multi  # Lightning: no dataloader_idx for one dataloader
    batch_start = batch_hooks(hooks[f"on_{name}_batch_start"], 3, single)
    batch_end = batch_hooks(hooks[f"on_{name}_batch_end"], 4, single)
    profiler = trainer.profiler
    if profiler is not None:
        step = profiler.wrap(f"{name}_step", step)
        move = profiler.wrap("transfer_batch_to_device", move) if move is not None else None
    return _BatchLoop(kind, name, step, move, forward_ctx, batch_start, batch_end, multi, profiler)


def _run_batches(trainer: Trainer, system: System, loop: _BatchLoop, loaders: list[Any], counts: list[int | float]) -> Any:
    """Every batch of every dataloader: move, batch-start hooks, step, batch-end hooks (and the
    store's and predict's bookkeeping). Returns the last batch. An exception gets its note here,
    where the batch and dataloader indices are known (see ``_where``)."""
    step, move, forward_ctx, multi, store = loop.step, loop.move, loop.forward_ctx, loop.multi, loop.store
    batch_start, batch_end, send_steps, results = loop.batch_start, loop.batch_end, loop.send_steps, loop.results
    batch: Any = None
    # Which batch (None before the first dataloader's loop), for the note on an exception.
    dl_idx: int | None = None
    batch_idx: int | None = None
    try:  # (costs nothing until something raises)
        for dl_idx, (loader, n) in enumerate(zip(loaders, counts)):
            if store is not None:
                store.dataloader_idx = dl_idx if multi else None
            batches = _limited(loader, n)
            if loop.profiler is not None:
                batches = loop.profiler.iterate(f"{loop.kind}_dataloader_next", batches)
            batch_idx = -1
            for batch_idx, batch in enumerate(batches):
                if move is not None:
                    batch = move(batch, dl_idx)
                if store is not None:
                    store.new_batch(batch)
                if batch_start:
                    call_hooks(batch_start, batch, batch_idx, dl_idx)
                if forward_ctx is None:
                    out = step(batch, batch_idx, dl_idx) if multi else step(batch, batch_idx)
                else:
                    with forward_ctx():
                        out = step(batch, batch_idx, dl_idx) if multi else step(batch, batch_idx)
                if results is not None:
                    results[dl_idx].append(out)
                if batch_end:
                    call_hooks(batch_end, out, batch, batch_idx, dl_idx)
                if send_steps:
                    _send_step_values(trainer, store, dl_idx)
    except Exception as err:
        note_batch_error(err, trainer, loop.kind, batch_idx, dl_idx if multi else None, loop.sanity)
        if isinstance(err, RuntimeError):
            add_device_note(err, trainer, system, batch, f"{loop.name}_step")
        raise
    return batch


#: The batch of an exception raised inside ``_run_batches`` (which added its notes itself).
_IN_BATCHES: Any = object()


def _zero_grad_before_validation(trainer: Trainer, system: System) -> None:
    """Lightning frees the gradients before a validation that does not interrupt an accumulation group."""
    done, accumulate = trainer.loop.batches_done, trainer.accumulate_grad_batches
    zero = getattr(system, "on_validation_model_zero_grad", None)
    if zero is not None and (done % accumulate == 0 or done >= trainer.num_training_batches):
        zero()


def _end_evaluation_epoch(trainer: Trainer, store: Any, name: str, sanity: bool, send_steps: bool) -> None:
    """After the batches: the epoch values (synced over processes), the epoch-end hook, and
    (outside the sanity check) the loggers, callback metrics and progress bar metrics."""
    hooks = trainer._hooks
    assert hooks is not None
    store.dataloader_idx = None
    store.epoch_end_reached = True
    store.sync_epoch()  # sync_dist epoch values, reduced over the processes (nothing for one)
    hooks.call(f"on_{name}_epoch_end")
    store.sync_epoch()
    if not sanity:
        trainer.metrics.send(store.epoch_view(only="logger"), max(trainer.global_step - 1, 0))
        pbar: dict[str, Any] = store.step_view(only="prog_bar") if send_steps else {}
        pbar.update(store.epoch_view(only="prog_bar"))
        trainer.metrics.keep(store, pbar)


def run_evaluation(
    trainer: Trainer, system: System, kind: str, loaders: list[Any], counts: list[int | float], sanity: bool = False
) -> None:
    """One validation or test epoch over every dataloader (``kind`` is ``"val"`` or ``"test"``)."""
    hooks = trainer._hooks
    assert hooks is not None
    name = _HOOK_NAME[kind]
    store = trainer.metrics.stores[kind]
    store.reset()
    prev_store, prev_live, prev_phase = system._log_store, trainer.metrics.live, trainer.loop.phase
    trainer.loop.phase = Phase.SANITY if sanity else Phase.VALIDATION if kind == "val" else Phase(kind)
    trainer.metrics.live = [*prev_live, store]
    system._log_store = store
    loop = _batch_loop(trainer, system, kind, loaders)
    loop.store, loop.sanity = store, sanity
    loop.send_steps = store.eval_step_logging and not sanity  # Lightning: step values to the loggers per batch
    in_fit = trainer.state.stage == "fit"
    grad_off = torch.inference_mode if trainer.config.inference_mode and not in_fit else torch.no_grad
    batch: Any = None  # (for the device note of an error in a hook before or after the batches)
    if kind == "val" and in_fit and not sanity and trainer.rules.lightning_hook_calls:
        _zero_grad_before_validation(trainer, system)
    try:
        with _eval_mode(system, name):
            hooks.call(f"on_{name}_start")
            with grad_off():
                hooks.call(f"on_{name}_epoch_start")
                batch = _IN_BATCHES
                batch = _run_batches(trainer, system, loop, loaders, counts)
                _end_evaluation_epoch(trainer, store, name, sanity, loop.send_steps)
            hooks.call(f"on_{name}_end")
        trainer.loop.last_val_time = time.monotonic()  # a duration val_check_interval counts from here
    except Exception as err:  # (costs nothing until something raises)
        note_batch_error(err, trainer, kind, None, None, sanity)  # (none when _run_batches added one)
        if isinstance(err, RuntimeError) and batch is not _IN_BATCHES:
            add_device_note(err, trainer, system, batch, f"{name}_step")
        raise
    finally:
        store.dataloader_idx = None
        system._log_store = prev_store
        trainer.metrics.live = prev_live
        trainer.loop.phase = prev_phase
        if sanity:
            store.reset()


def _send_step_values(trainer: Trainer, store: Any, dl_idx: int) -> None:
    """After an evaluation batch (Lightning's rules): the step values it logged go to the loggers,
    at a step that counts this dataloader's batches in the run (without an ``"epoch"`` entry)."""
    n = store.logged_batches.get(dl_idx, 0)
    store.logged_batches[dl_idx] = n + 1
    values = store.step_view(only="logger", only_updated=True)
    if values:
        trainer.metrics.send(values, n, epoch=False)
    store.clear_updated()


def run_eval_stage(trainer: Trainer, system: System, stage: str, given: Any) -> list[dict[str, float]]:
    """``Trainer.validate`` / ``Trainer.test``: returns the epoch metrics of each dataloader."""
    from fulmen.system import System as _System

    kind = _STAGE_KIND[stage]
    step_name = f"{_HOOK_NAME[kind]}_step"
    check_precision_supported(trainer.strategy.precision)
    if not overrides(system, step_name, _System):
        raise NotImplementedError(
            f"Trainer.{stage} needs {type(system).__name__}.{step_name}(self, batch, batch_idx); it is not defined."
        )
    if trainer.rules.lightning_hook_calls and getattr(trainer.config, f"limit_{kind}_batches") == 0:
        return []  # the stage is off: Lightning does not ask for its data
    loaders, counts = _loaders_for(trainer, system, kind, given)
    check_not_empty(kind, loaders, counts)
    if kind == "val":
        trainer.num_val_batches = counts
    else:
        trainer.num_test_batches = counts
    if not any(counts):  # limit_*_batches=0 turns the stage off, hooks included
        return []
    run_evaluation(trainer, system, kind, loaders, counts)
    per_loader = trainer.metrics.stores[kind].epoch_metrics_by_dataloader(len(loaders))
    return [to_floats(m) for m in per_loader]


def run_predict(trainer: Trainer, system: System, given: Any, return_predictions: bool) -> list[Any] | None:
    """``Trainer.predict``: ``predict_step`` over every batch; outputs kept when asked."""
    hooks = trainer._hooks
    assert hooks is not None
    check_precision_supported(trainer.strategy.precision)
    loaders, counts = _loaders_for(trainer, system, "predict", given)
    check_not_empty("predict", loaders, counts)
    trainer.num_predict_batches = counts
    # The dataset indices of each batch, for callbacks that ask (a prediction writer): recorded
    # by the batch sampler, read by the callback as trainer.predict_batch_indices[dl][batch_idx].
    if any(getattr(cb, "needs_batch_indices", False) is True for cb in trainer.callbacks):
        loaders, trainer.predict_batch_indices = record_batch_indices(loaders)
        trainer.predict_dataloaders = loaders
    else:
        trainer.predict_batch_indices = []
    loop = _batch_loop(trainer, system, "predict", loaders)
    results: list[list[Any]] = [[] for _ in loaders]
    loop.results = results if return_predictions else None
    grad_off = torch.inference_mode if trainer.config.inference_mode else torch.no_grad
    batch: Any = None  # (for the device note of an error in a hook before or after the batches)
    try:  # (costs nothing until something raises)
        with _eval_mode(system, "predict"):
            hooks.call("on_predict_start")
            with grad_off():
                hooks.call("on_predict_epoch_start")
                batch = _IN_BATCHES
                batch = _run_batches(trainer, system, loop, loaders, counts)
                hooks.call("on_predict_epoch_end")
            hooks.call("on_predict_end")
    except Exception as err:
        note_batch_error(err, trainer, "predict", None)  # (none when _run_batches added one)
        if isinstance(err, RuntimeError) and batch is not _IN_BATCHES:
            add_device_note(err, trainer, system, batch, "predict_step")
        raise
    if not return_predictions:
        return None
    return results if loop.multi else results[0]


class _RecordingBatchSampler:
    """A batch sampler that remembers the indices of every batch it hands out (a loader with
    workers draws a few batches ahead, so the record is read by batch number)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.seen: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        self.seen.clear()
        for batch in self.batch_sampler:
            indices = list(batch)
            self.seen.append(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def record_batch_indices(loaders: list[Any]) -> tuple[list[Any], list[list[list[int]]]]:
    """Loaders that record their batches' dataset indices, and the lists they record into
    (empty for a loader without a batch sampler, such as one over an IterableDataset)."""
    from torch.utils.data import DataLoader, IterableDataset

    from fulmen.trainer._data import rebuild_loader

    out: list[Any] = []
    records: list[list[list[int]]] = []
    for loader in loaders:
        if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset) and loader.batch_sampler:
            recorder = _RecordingBatchSampler(loader.batch_sampler)
            out.append(rebuild_loader(loader, batch_sampler=recorder))
            records.append(recorder.seen)
        else:
            out.append(loader)
            records.append([])
    return out, records
