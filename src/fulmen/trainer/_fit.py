"""The training loop: ``Trainer.fit`` -> ``run_fit`` -> ``_train_epoch`` -> ``training_step``.

One step is: fetch, move to device, ``training_step``, backward, optimizer step, zero grad, and
the hooks in between (only those someone overrides). Nothing here synchronises host and device
per step: the loss is checked for NaN/inf, and logged values are converted, once per
``log_every_n_steps`` and at epoch ends.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from math import isfinite
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.errors import DataError, FlagError, HookReturnError, NonFiniteLossError, warn_once
from fulmen.logging._store import MetricStore, first_nonfinite
from fulmen.trainer._data import (
    as_loader_list,
    check_train_loader,
    limited_batches,
    loader_length,
    prepare_loader,
    request_loaders,
)
from fulmen.trainer._eval import batch_mover, check_not_empty, run_evaluation
from fulmen.trainer._hooks import call_hooks, overrides
from fulmen.trainer._optim import parse_optimizers, step_schedulers

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def run_fit(trainer: Trainer, system: System, train_loaders: Any, val_loaders: Any) -> None:
    from fulmen.system import System as _System

    cfg = trainer._cfg
    hooks = trainer._hooks
    assert hooks is not None
    if not overrides(system, "training_step", _System):
        raise NotImplementedError(
            f"{type(system).__name__} has no training_step. Define training_step(self, batch, batch_idx) "
            f"returning the loss."
        )
    if not system.automatic_optimization:
        raise NotImplementedError(
            f"{type(system).__name__}.automatic_optimization is False, but manual optimization is not part of "
            f"this version of fulmen yet. Leave it True and return the loss from training_step."
        )
    optimizers, schedulers = parse_optimizers(system.configure_optimizers())
    if len(optimizers) > 1:
        raise HookReturnError(
            f"configure_optimizers returned {len(optimizers)} optimizers; with automatic optimization fulmen "
            f"steps one. Put all parameters in one optimizer (parameter groups can have their own settings)."
        )
    trainer.optimizers, trainer.lr_scheduler_configs = optimizers, schedulers

    # Data: found and checked before any hook that starts training runs.
    train_loader = request_loaders("train", train_loaders, trainer.datamodule, system)
    if train_loader is None:
        raise DataError(
            "Trainer.fit found no training data: pass train_dataloaders=..., a datamodule with "
            "train_dataloader(), or define train_dataloader() on the system."
        )
    train_loader = prepare_loader(check_train_loader(train_loader), sequential=bool(cfg.overfit_batches))
    n_train = limited_batches("train", train_loader, cfg.limit_train_batches)
    if n_train == 0 and cfg.limit_train_batches != 0:
        raise DataError(
            f"The train dataloader is empty (len {len(train_loader)}): check the dataset's length and that "
            f"batch_size is not larger than the dataset with drop_last=True."
        )
    trainer.num_training_batches = n_train
    has_val_step = overrides(system, "validation_step", _System)
    vals = [prepare_loader(v) for v in as_loader_list("val", request_loaders("val", val_loaders, trainer.datamodule, system))]
    if vals and not has_val_step:
        warn_once(
            f"Validation data was given but {type(system).__name__} has no validation_step, so validation is "
            f"skipped. Define validation_step(self, batch, batch_idx) to use it.",
            key="val-data-no-step",
        )
        vals = []
    trainer.num_val_batches = [limited_batches("val", v, cfg.limit_val_batches) for v in vals]
    check_not_empty("val", vals, trainer.num_val_batches)
    val_every = _val_every(trainer, n_train) if vals and sum(trainer.num_val_batches) > 0 else 0

    if trainer.is_global_zero and trainer.loggers and getattr(system, "_log_hyperparams", True):
        params = {**(trainer.datamodule.hparams if trainer.datamodule is not None else {}), **system.hparams}
        for lg in trainer.loggers:
            lg.log_hyperparams(params)

    hooks.call("on_fit_start")
    if val_every and cfg.num_sanity_val_steps > 0:  # not when limit_val_batches=0 turned validation off
        trainer.num_sanity_val_batches = [min(n, cfg.num_sanity_val_steps) for n in trainer.num_val_batches]
        trainer.sanity_checking = True
        rng = _RNGState()  # the sanity check must not change the random numbers training draws
        try:
            hooks.call("on_sanity_check_start")
            run_evaluation(trainer, system, "val", vals, trainer.num_sanity_val_batches, sanity=True)
            hooks.call("on_sanity_check_end")
        finally:
            trainer.sanity_checking = False
            rng.restore()

    store = trainer._stores["train"]
    trainer._live = [store]
    system._log_store = store
    if not system.training:
        # A system left in eval mode (e.g. by load_from_checkpoint) is switched to training; a
        # system in training mode keeps the modes of its submodules, so layers the user froze
        # with .eval() stay frozen.
        system.train()
    # The store is cleared before on_train_start and after each epoch, so values logged in
    # on_train_start count towards the first epoch.
    store.reset()
    _epoch_defaults(store, True)
    hooks.call("on_train_start")
    deadline = time.monotonic() + cfg.max_time if cfg.max_time is not None else None
    while not _finished(trainer, deadline):
        epoch = trainer.current_epoch
        trainer._live = [store]
        _epoch_defaults(store, True)
        hooks.call("on_train_epoch_start")
        _epoch_defaults(store, False)
        validate_this_epoch = bool(val_every) and (
            cfg.check_val_every_n_epoch is None or (epoch + 1) % cfg.check_val_every_n_epoch == 0
        )
        ran = _train_epoch(trainer, system, train_loader, n_train, vals if validate_this_epoch else None, val_every, deadline)
        if validate_this_epoch and isinstance(cfg.val_check_interval, float) and ran and not _stopping(trainer, deadline, hard_only=True):
            if ran % val_every:  # the last batch was not a validation batch already
                run_evaluation(trainer, system, "val", vals, trainer.num_val_batches)
        store.epoch_end_reached = True
        _epoch_defaults(store, True)
        hooks.call("on_train_epoch_end")
        trainer._send_to_loggers(store.epoch_view(only="logger"), max(trainer.global_step - 1, 0))
        trainer._kept_callback.update(store.callback_view())
        trainer._kept_pbar.update(_pbar_epoch_values(store))
        step_schedulers(trainer.lr_scheduler_configs, "epoch", epoch + 1, trainer.callback_metrics)
        trainer.current_epoch = epoch + 1
        store.reset()
    trainer._live = []
    system._log_store = None
    hooks.call("on_train_end")
    hooks.call("on_fit_end")


def _train_epoch(
    trainer: Trainer,
    system: System,
    loader: Any,
    n_batches: int | float,
    vals: list[Any] | None,
    val_every: int,
    deadline: float | None,
) -> int:
    """One pass over the training data; returns the number of batches run."""
    cfg = trainer._cfg
    hooks = trainer._hooks
    assert hooks is not None
    store: MetricStore = trainer._stores["train"]
    strategy = trainer.strategy
    # Bound once per epoch, so the step below does no attribute or dict lookups for them.
    batch_start, batch_end = hooks.on_train_batch_start, hooks.on_train_batch_end  # type: ignore[attr-defined]
    before_backward, after_backward = hooks.on_before_backward, hooks.on_after_backward  # type: ignore[attr-defined]
    before_step, before_zero = hooks.on_before_optimizer_step, hooks.on_before_zero_grad  # type: ignore[attr-defined]
    training_step = system.training_step
    optimizer = trainer.optimizers[0]
    backward, optimizer_step = strategy.step_functions(optimizer)
    check_each_loss = strategy.host_reads_are_cheap  # CPU: read each loss; else check per window
    forward_ctx = strategy.precision.forward_context
    plain_forward = not strategy.precision.needs_forward_context
    move = batch_mover(trainer, system)
    zero_grad = optimizer.zero_grad
    step_scheds = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]

    def metrics_now() -> dict[str, Any]:  # built only when a ReduceLROnPlateau scheduler steps
        return trainer.callback_metrics

    log_every = cfg.log_every_n_steps
    stop_step = cfg.max_steps if cfg.max_steps != -1 else sys.maxsize
    val_on_steps = vals is not None and cfg.check_val_every_n_epoch is None  # int interval across epochs

    # On an accelerator, reading a loss waits for the device: this log window's losses are kept
    # and checked for NaN/inf together at the window's end (one wait per window).
    losses: list[Tensor] = []
    where: list[int] = []  # their batch indices
    # A whole epoch iterates the loader itself: islice would stop before the sampler's generator
    # finishes, and a shuffling sampler would then draw different orders in later epochs.
    batches = loader if n_batches >= loader_length(loader) else itertools.islice(loader, int(n_batches))
    global_step = trainer.global_step
    ran = 0
    ended_by_hook = False  # on_train_batch_start returned -1
    for batch_idx, batch in enumerate(batches):
        ran = batch_idx + 1
        if move is not None:
            batch = move(batch, 0)
        store.new_batch(batch)
        if batch_start and call_hooks(batch_start, batch, batch_idx):
            ran = batch_idx
            ended_by_hook = True
            break
        if plain_forward:
            out = training_step(batch, batch_idx)
        else:
            with forward_ctx():
                out = training_step(batch, batch_idx)
        loss = out if type(out) is Tensor else _loss_of(out, system)
        if loss is not None:
            if loss.ndim or not loss.requires_grad:
                loss = _check_loss(loss, system)
            if check_each_loss:
                if not isfinite(loss.item()):  # no device wait on the CPU
                    _raise_nonfinite(trainer, loss, global_step, batch_idx)
            else:
                losses.append(loss.detach())
                where.append(batch_idx)
            if before_backward:
                call_hooks(before_backward, loss)
            backward(loss)
            if after_backward:
                call_hooks(after_backward)
            if before_step:
                call_hooks(before_step, optimizer)
            optimizer_step()
            if before_zero:
                call_hooks(before_zero, optimizer)
            zero_grad(set_to_none=True)
            global_step += 1
            trainer.global_step = global_step
            if step_scheds:
                step_schedulers(step_scheds, "step", global_step, metrics_now)
        if batch_end:
            if loss is not None:  # as in Lightning: {"loss": <detached>, **the other keys returned}
                detached = loss.detach()
                out = {"loss": detached} if type(out) is Tensor else {**out, "loss": detached}
            call_hooks(batch_end, out, batch, batch_idx)
        if loss is not None and global_step % log_every == 0:
            _check_losses(trainer, losses, where, global_step)
            trainer._send_to_loggers(store.step_view(only="logger", only_updated=True), global_step - 1)
            store.clear_updated()
        if vals is not None and (
            (global_step % val_every == 0 and loss is not None) if val_on_steps else (batch_idx + 1) % val_every == 0
        ):
            run_evaluation(trainer, system, "val", vals, trainer.num_val_batches)
        if global_step >= stop_step or trainer.should_stop or (deadline is not None and time.monotonic() >= deadline):
            if _stopping(trainer, deadline):
                break
    _check_losses(trainer, losses, where, global_step)
    if ran == 0 and n_batches != 0 and not ended_by_hook:
        raise DataError(
            "The train dataloader produced no batches this epoch (an empty iterable dataset?). Check that the "
            "dataset yields data."
        )
    return ran


def _loss_of(out: Any, system: System) -> Tensor | None:
    """The loss inside ``training_step``'s return value (a dict with "loss", or None to skip)."""
    if out is None:
        return None
    if isinstance(out, dict):
        if "loss" not in out:
            raise HookReturnError(
                f"{type(system).__name__}.training_step returned a dict without a 'loss' key (keys: "
                f"{sorted(map(str, out))}). Put the loss to optimize under 'loss'."
            )
        loss = out["loss"]
        if isinstance(loss, Tensor):
            return loss
        got = type(loss).__name__
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned {{'loss': <{got}>}}; the loss must be a scalar tensor "
            f"that requires grad, computed from the model's outputs."
        )
    raise HookReturnError(
        f"{type(system).__name__}.training_step returned {type(out).__name__}; expected a scalar loss tensor, a dict "
        f"with a 'loss' key, or None to skip the batch."
    )


def _check_loss(loss: Tensor, system: System) -> Tensor:
    if loss.numel() != 1:
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned a loss of shape {tuple(loss.shape)}; it must be a scalar. "
            f"Reduce it first, e.g. loss.mean()."
        )
    if not loss.requires_grad:
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned a loss that does not require grad, so there is nothing "
            f"to backpropagate. Compute it from the model's outputs (not under torch.no_grad(), and not with "
            f".item() or .detach())."
        )
    return loss.reshape(())


def _check_losses(trainer: Trainer, losses: list[Tensor], where: list[int], global_step: int) -> None:
    """Raise if a loss in this window was NaN/inf, naming its step and batch; then clear the window."""
    bad = first_nonfinite(losses)  # host sync, once per log window
    if bad is not None:
        _raise_nonfinite(trainer, losses[bad], global_step - len(losses) + bad, where[bad], window=True)
    losses.clear()
    where.clear()


def _raise_nonfinite(trainer: Trainer, loss: Tensor, step: int, batch_idx: int, window: bool = False) -> None:
    how = (
        f" (On an accelerator, losses are checked every log_every_n_steps={trainer._cfg.log_every_n_steps} steps, "
        f"so training does not wait on the device each step.)"
        if window
        else ""
    )
    raise NonFiniteLossError(
        f"training_step returned a non-finite loss ({float(loss.item())}) at global step {step} (epoch "
        f"{trainer.current_epoch}, batch {batch_idx}). Common causes: a learning rate that is too high, NaN or "
        f"inf in the input data, or log/division of values that can be zero.{how}"
    )


def _val_every(trainer: Trainer, n_train: int | float) -> int:
    """Training batches between validations (steps, when ``check_val_every_n_epoch=None``)."""
    interval = trainer._cfg.val_check_interval
    if isinstance(interval, int):
        if trainer._cfg.check_val_every_n_epoch is not None and 0 < n_train < interval:
            raise FlagError(
                f"Trainer(val_check_interval={interval}) is more than the {n_train} training batches per epoch, so "
                f"validation would never run. Use an int <= {n_train}, a float fraction, or "
                f"check_val_every_n_epoch=None to count batches across epochs."
            )
        return interval
    if math.isinf(n_train):
        if interval != 1.0:
            raise FlagError(
                f"Trainer(val_check_interval={interval}): the train dataloader has no length, so a fraction of an epoch "
                f"is unknown. Use an int number of batches."
            )
        return 2**62  # validate at the end of the epoch only
    return max(1, int(n_train * interval))


class _RNGState:
    """The state of every random number generator a run uses (Python, NumPy, torch CPU and CUDA),
    taken when built and put back by ``restore``."""

    def __init__(self) -> None:
        import random

        import numpy as np
        import torch

        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        import random

        import numpy as np
        import torch

        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _epoch_defaults(store: MetricStore, epoch_hook: bool) -> None:
    """``self.log`` defaults: per step inside the batch loop, per epoch in the epoch hooks."""
    store.default_on_step, store.default_on_epoch = (False, True) if epoch_hook else (True, False)


def _pbar_epoch_values(store: MetricStore) -> dict[str, float]:
    from fulmen.logging._store import to_floats

    values: dict[str, Any] = store.step_view(only="prog_bar")
    values.update(store.epoch_view(only="prog_bar"))
    return to_floats(values)


def _min_reached(trainer: Trainer) -> bool:
    """min_epochs counts completed epochs, so a stop request inside an epoch is honoured only once
    min_epochs epochs were completed before it."""
    cfg = trainer._cfg
    return trainer.current_epoch >= cfg.min_epochs and trainer.global_step >= cfg.min_steps


def _stopping(trainer: Trainer, deadline: float | None, hard_only: bool = False) -> bool:
    """Whether the run must stop now: max_steps and max_time always; ``should_stop`` once the
    minimums (min_epochs, min_steps) are met."""
    cfg = trainer._cfg
    if cfg.max_steps != -1 and trainer.global_step >= cfg.max_steps:
        return True
    if deadline is not None and time.monotonic() >= deadline:
        return True
    return not hard_only and trainer.should_stop and _min_reached(trainer)


def _finished(trainer: Trainer, deadline: float | None) -> bool:
    cfg = trainer._cfg
    if _stopping(trainer, deadline):
        return True
    return cfg.max_epochs != -1 and trainer.current_epoch >= cfg.max_epochs
