"""The training loop: ``Trainer.fit`` -> ``run_fit`` -> ``_train_epoch`` -> ``training_step``.

One step is: fetch, move to device, ``training_step``, backward, and every
``accumulate_grad_batches`` batches the optimizer step (clip, step, zero grad), with the hooks in
between (only those someone overrides). Nothing here synchronises host and device per step:
on accelerators the loss is checked for NaN/inf, and logged values are converted, once per
``log_every_n_steps`` and at epoch ends.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from fulmen.errors import DataError, FlagError, warn_once
from fulmen.logging._store import MetricStore
from fulmen.seed import RNGState
from fulmen.trainer._data import (
    as_loader_list,
    check_train_loader,
    empty_reason,
    limited_batches,
    loader_length,
    prepare_loader,
    request_loaders,
    set_sampler_epoch,
)
from fulmen.trainer._eval import add_device_note, batch_mover, check_not_empty, run_evaluation
from fulmen.trainer._hooks import call_hooks, overrides
from fulmen.trainer._loss import check_window
from fulmen.trainer._optim import LightningSchedules, setup_optimizers, step_schedulers
from fulmen.trainer._phase import Phase
from fulmen.trainer._resume import ResumePlan, loader_generators, restore_training_state
from fulmen.trainer._resume_checks import loader_facts
from fulmen.trainer._step import build_step
from fulmen.trainer._validate import check_precision_supported
from fulmen.trainer._where import note_batch_error

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def run_fit(
    trainer: Trainer,
    system: System,
    train_loaders: Any,
    val_loaders: Any,
    ckpt_path: str | None = None,
    ckpt: dict[str, Any] | None = None,
) -> None:
    """``Trainer.fit``'s run: setup, the sanity check, the epochs (``_train_epoch``), the end.

    A resumed fit (``ckpt_path``) restores the optimizer and loop states after ``on_fit_start`` and
    follows the resume plan made then (``fulmen.trainer._resume.ResumePlan``)."""
    cfg, loop, metrics = trainer.config, trainer.loop, trainer.metrics
    hooks = trainer._hooks
    assert hooks is not None
    _check_fit(trainer, system)
    # -- data, the checkpoint's weights, optimizers (data first, found and checked before any hook
    # runs, so that configure_optimizers can read trainer.estimated_stepping_batches) ----------------
    data, ckpt = _prepare(trainer, system, train_loaders, val_loaders, ckpt_path, ckpt)
    if trainer.is_global_zero and trainer.loggers and not cfg.fast_dev_run:  # a run folder to record into
        from fulmen.fingerprint import data_fingerprints
        from fulmen.record import write_run_record

        # Before any dataloader starts: git runs in subprocesses, and a worker forked while one
        # runs would inherit its pipes (a record written in a thread once hung a run that way).
        write_run_record(
            trainer.log_dir,
            system=system,
            trainer_flags=trainer.flags,
            datamodule=trainer.datamodule,
            precision=trainer.strategy.precision.name,
            config=trainer.run_config,
            loggers=trainer.loggers,
            data=data_fingerprints(trainer),
        )
    # One name logged by training and by validation would share one entry in callback_metrics and
    # the loggers: each new key is checked against the other stage's keys (once per key).
    store, val_store = metrics.stores["train"], metrics.stores["val"]
    store.peers, val_store.peers = (val_store,), (store,)
    # -- on_fit_start; a resumed fit's states and its plan; the sanity check ---------------------------
    hooks.call("on_fit_start")
    if trainer.rules.lightning_hook_calls:  # Lightning clears the module's gradients as the stage starts
        system.zero_grad()
    # Optimizer, scheduler and loop states after on_fit_start, as in Lightning: a callback may
    # rebuild what the saved optimizer state expects there (BaseFinetuning's parameter groups).
    plan = restore_training_state(trainer, system, ckpt, ckpt_path, data.n_train) if ckpt is not None and ckpt_path else None
    _sanity_check(trainer, system, data, resumed=plan is not None)
    # limit_train_batches=0: no training at all (the loop is skipped, as in Lightning); under
    # Lightning's rules also when the limits leave nothing to train (max_epochs=0, a resumed fit
    # that already reached them): no on_train_start / on_train_end then.
    if data.n_train == 0 or (trainer.rules.lightning and _finished(trainer, None)):
        hooks.call("on_fit_end")
        return
    # -- on_train_start; where the epochs begin ------------------------------------------------------
    _start_training(trainer, system, store)
    deadline = time.monotonic() + cfg.max_time if cfg.max_time is not None else None
    # Lightning's scheduler timing (LoopRules.lightning_scheduler_timing): built per epoch below.
    lightning_timing = trainer.rules.lightning_scheduler_timing and system.automatic_optimization
    loop.lightning_schedules = None
    loop.last_val_time = time.monotonic()  # a duration val_check_interval counts from here
    if plan is not None:  # resumed: hyperparameters that changed, then the end of the saved epoch or its rest
        plan.check_hparams(trainer, system)
        plan = plan.start_epochs(trainer, system, data.generators, lightning_timing)
    # -- the epochs ------------------------------------------------------------------------------------
    while not _finished(trainer, deadline):
        epoch = loop.epoch
        if cfg.reload_dataloaders_every_n_epochs and epoch and epoch % cfg.reload_dataloaders_every_n_epochs == 0:
            data = _FitData(trainer, system, train_loaders, val_loaders)
        metrics.live = [store]
        validate_this_epoch = bool(data.val_every) and (
            cfg.check_val_every_n_epoch is None or (epoch + 1) % cfg.check_val_every_n_epoch == 0
        )
        vals = data.vals if validate_this_epoch else None
        start, batches, validated = _enter_epoch(trainer, system, data, vals, plan)  # (the plan: first epoch only)
        plan = None
        loop.phase = Phase.BATCH
        _epoch_defaults(store, False)
        if lightning_timing and trainer.lr_scheduler_configs:
            last = int(data.n_train) - 1 if not math.isinf(data.n_train) else -1
            loop.lightning_schedules = LightningSchedules(trainer, system, trainer.lr_scheduler_configs, last)
        # autograd's anomaly mode names the op whose backward made NaN/inf (slow: only when asked)
        with torch.autograd.detect_anomaly(check_nan=True) if cfg.detect_anomaly else contextlib.nullcontext():
            ran = _train_epoch(trainer, system, batches, start, data.n_train, vals, data.val_every, deadline)
        _end_epoch(trainer, system, data, vals, ran > start, ran, validated, deadline)
    # -- the end -------------------------------------------------------------------------------------
    metrics.live = []
    system._log_store = None
    hooks.call("on_train_end")
    hooks.call("on_fit_end")


def _check_fit(trainer: Trainer, system: System) -> None:
    """What ``fit`` refuses or warns about before anything runs: no ``training_step``, flags
    manual optimization cannot honour, a precision the device lacks, no epoch limit."""
    from fulmen.system import System as _System

    cfg = trainer.config
    if not overrides(system, "training_step", _System):
        raise NotImplementedError(
            f"{type(system).__name__} has no training_step. Define training_step(self, batch, batch_idx) "
            f"returning the loss."
        )
    if not system.automatic_optimization and (cfg.accumulate_grad_batches != 1 or cfg.gradient_clip_val is not None):
        flags = ", ".join(
            f for f in (
                f"accumulate_grad_batches={cfg.accumulate_grad_batches}" if cfg.accumulate_grad_batches != 1 else "",
                f"gradient_clip_val={cfg.gradient_clip_val}" if cfg.gradient_clip_val is not None else "",
            ) if f
        )
        raise FlagError(
            f"{type(system).__name__} uses manual optimization (automatic_optimization = False), so gradient "
            f"accumulation and clipping are yours to do in training_step; remove Trainer({flags}) and use "
            f"self.clip_gradients(...) and your own step condition instead."
        )
    check_precision_supported(trainer.strategy.precision)
    if cfg.default_max_epochs and not any(cb.limits_time for cb in trainer.callbacks):
        if trainer.rules.lightning:  # Lightning's words and category, at every fit as there
            import warnings

            from fulmen.errors import PossibleUserWarning

            warnings.warn(
                "`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit, set "
                "`max_epochs=-1` (Trainer(max_epochs=None, max_steps=-1): training stops after 1000 epochs; set "
                "max_epochs, max_steps or max_time to choose).",
                PossibleUserWarning,
                stacklevel=5,
            )
        else:
            warn_once(
                "Trainer(max_epochs=None, max_steps=-1): training stops after 1000 epochs. Set max_epochs "
                "(or max_steps, or max_time) to choose.",
                key="max-epochs-default",
            )


def _prepare(
    trainer: Trainer,
    system: System,
    train_loaders: Any,
    val_loaders: Any,
    ckpt_path: str | None,
    ckpt: dict[str, Any] | None,
) -> tuple[_FitData, dict[str, Any] | None]:
    """The fit's data, the checkpoint's weights and callback states (when resuming), and the
    optimizers (built from the restored weights); returns the data and the checkpoint read."""
    from fulmen.system import System as _System

    cfg = trainer.config
    # Lightning requests the validation data inside the sanity check, whose random numbers do not
    # count, before the training data (and does not sanity check a resumed fit).
    lightning_calls = trainer.rules.lightning_hook_calls
    val_first = (
        lightning_calls
        and cfg.num_sanity_val_steps > 0
        and ckpt_path is None
        and cfg.limit_val_batches != 0
        and overrides(system, "validation_step", _System)
    )
    # (Lightning restores the checkpoint's module, callback and datamodule states before it asks
    # for data, so a datamodule's restored state shapes its dataloaders)
    data = _FitData(trainer, system, train_loaders, val_loaders, val_first=val_first) if not lightning_calls else None
    if ckpt_path is not None:  # weights and callback states first, as the optimizers are built from them
        ckpt = trainer._load_for_run(ckpt_path, system, ckpt)
    if data is None:
        data = _FitData(trainer, system, train_loaders, val_loaders, val_first=val_first)
    setup_optimizers(trainer, system)
    for opt in trainer.optimizers:  # gradients left from before fit must not leak into the first step
        for group in opt.param_groups:  # (cleared directly: not a zero_grad call of the run's own)
            for p in group["params"]:
                p.grad = None
    trainer.strategy.training_step_function(system)  # DDP wraps the system here, before the fit hooks
    return data, ckpt


def _sanity_check(trainer: Trainer, system: System, data: _FitData, resumed: bool) -> None:
    """``num_sanity_val_steps`` batches of each validation dataloader before training (not when
    limit_val_batches=0 turned validation off; Lightning does not sanity check a resumed fit)."""
    cfg, hooks = trainer.config, trainer._hooks
    assert hooks is not None
    if not data.val_every or cfg.num_sanity_val_steps <= 0 or (trainer.rules.lightning_hook_calls and resumed):
        return
    trainer.num_sanity_val_batches = [min(n, cfg.num_sanity_val_steps) for n in trainer.num_val_batches]
    trainer.sanity_checking = True
    rng = RNGState()  # the sanity check must not change the random numbers training draws
    try:
        hooks.call("on_sanity_check_start")
        run_evaluation(trainer, system, "val", data.vals, trainer.num_sanity_val_batches, sanity=True)
        hooks.call("on_sanity_check_end")
    finally:
        trainer.sanity_checking = False
        rng.restore()


def _start_training(trainer: Trainer, system: System, store: MetricStore) -> None:
    """The training stage's store live, the system in training mode, ``on_train_start``."""
    assert trainer._hooks is not None
    trainer.metrics.live = [store]
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
    trainer._hooks.call("on_train_start")


def _enter_epoch(
    trainer: Trainer, system: System, data: _FitData, vals: list[Any] | None, plan: ResumePlan | None
) -> tuple[int, Any, bool]:
    """The epoch's one way in: from its start (``on_train_epoch_start``), or, in the first epoch
    of a fit resumed inside an epoch, where the checkpoint left it (``ResumePlan.enter_epoch``).
    Returns the first batch index, the batches, and whether the validation after the last batch
    done already ran."""
    set_sampler_epoch(data.train, trainer.current_epoch)  # DistributedSampler: this epoch's order, alike in every process
    if plan is not None:  # (its start hooks ran before the checkpoint)
        return plan.enter_epoch(trainer, system, data, vals)
    assert trainer._hooks is not None
    # The generators as this epoch starts decide its data order: kept for checkpoints.
    trainer.loop.begin_epoch(RNGState(data.generators))
    _epoch_defaults(trainer.metrics.stores["train"], True)
    trainer._hooks.call("on_train_epoch_start")
    n_train = data.n_train
    return 0, data.train if n_train >= loader_length(data.train) else itertools.islice(data.train, int(n_train)), False


def _end_epoch(
    trainer: Trainer,
    system: System,
    data: _FitData,
    vals: list[Any] | None,
    trained: bool,
    ran: int,
    validated: bool,
    deadline: float | None,
) -> None:
    """After the epoch's batches (``ran`` of them, counted from 0; ``trained``: some here): the
    epoch-end validation, ``on_train_epoch_end``, the epoch's values to the loggers, the
    epoch-interval schedulers; then the next epoch's number."""
    assert trainer._hooks is not None
    loop, metrics = trainer.loop, trainer.metrics
    store, epoch, timing = metrics.stores["train"], loop.epoch, loop.lightning_schedules
    # The epoch ran all its batches (or on_train_batch_start ended it): not cut by a limit.
    completed = ran >= data.n_train or not _stopping(trainer, deadline)
    if timing is not None:
        timing.after_loop(completed, trained)
    if vals and data.epoch_end_val and ran and not validated and not _stopping(trainer, deadline, True):
        if ran % data.val_every:  # the last batch was not a validation batch already
            run_evaluation(trainer, system, "val", vals, trainer.num_val_batches)
    if timing is not None:
        timing.flush()
    store.epoch_end_reached = True
    store.sync_epoch()  # sync_dist epoch values, reduced over the processes (nothing for one)
    _epoch_defaults(store, True)
    loop.phase = Phase.EPOCH_END
    trainer._hooks.call("on_train_epoch_end")
    store.sync_epoch()
    metrics.send(store.epoch_view(only="logger"), max(loop.global_step - 1, 0))
    metrics.keep(store, _pbar_epoch_values(store))
    if timing is not None:  # (Lightning: only a completed epoch steps them)
        if completed:
            step_schedulers(system, timing.epoch_late, "epoch", epoch + 1, lambda: trainer.callback_metrics)
        loop.lightning_schedules = None
    elif system.automatic_optimization:  # manual optimization steps its schedulers itself
        step_schedulers(system, trainer.lr_scheduler_configs, "epoch", epoch + 1, lambda: trainer.callback_metrics)
    loop.epoch = epoch + 1
    loop.phase = Phase.AFTER_EPOCH
    store.reset()


def _train_epoch(
    trainer: Trainer,
    system: System,
    batches: Any,
    start: int,
    n_batches: int | float,
    vals: list[Any] | None,
    val_every: int,
    deadline: float | None,
) -> int:
    """One pass over the training data (``batches``, from batch index ``start`` on); returns the
    number of batches of the epoch done.

    Per batch: fetch, move to the device, ``on_train_batch_start``, ``training_step``, then the
    step built for this epoch (``fulmen.trainer._step``: backward and, ending an accumulation
    group, the optimizer step), ``on_train_batch_end``, and the bookkeeping: the log window, a
    signal, validation, the stop checks. Nothing here synchronises host and device."""
    # -- built once per epoch: the hook tables, the step, the forward -------------------------------
    cfg, loop, metrics = trainer.config, trainer.loop, trainer.metrics
    hooks = trainer._hooks
    assert hooks is not None
    store: MetricStore = metrics.stores["train"]
    batch_start, batch_end = hooks.on_train_batch_start, hooks.on_train_batch_end
    step_scheds = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
    timing: LightningSchedules | None = loop.lightning_schedules
    if timing is not None:  # Lightning's scheduler timing: two more entries in the batch hook dispatch
        step_scheds = timing.step_now
        if timing.late_steps:
            batch_start = (timing.before_batch, *batch_start)
        if timing.at_last_batch:
            batch_end = (timing.after_batch, *batch_end)
    parts, step = build_step(trainer, system, n_batches, start, step_scheds, outputs_needed=bool(batch_end))
    run = step.run
    training_step, forward_ctx, plain_forward = parts.training_step, parts.forward_ctx, parts.plain_forward
    grad_sync, accumulate, last_batch = parts.grad_sync, parts.accumulate, parts.last_batch
    losses, where = parts.losses, parts.where
    move = batch_mover(trainer, system)
    ckpt_io = trainer.strategy.checkpoint_io  # (asynchronous writes: a failure is raised between steps)
    if trainer.profiler is not None:  # the transfer and each fetch timed (only when profiling)
        move = trainer.profiler.wrap("transfer_batch_to_device", move) if move is not None else None
        batches = trainer.profiler.iterate("train_dataloader_next", batches)
    # -- when to log, validate and stop --------------------------------------------------------------
    log_every = cfg.log_every_n_steps
    next_log = metrics.next_log = (loop.global_step // log_every + 1) * log_every  # (kept for checkpoints)
    next_val = (loop.global_step // val_every + 1) * val_every if val_every else sys.maxsize
    # When a validation is due: 0 every val_every batches of the epoch, 1 every val_every steps
    # across epochs (check_val_every_n_epoch=None), 2 once val_time seconds have passed since the
    # last validation (a duration val_check_interval; one clock read per batch, no device wait).
    val_time = cfg.val_check_time
    val_mode = 2 if val_time is not None else 1 if cfg.check_val_every_n_epoch is None else 0
    stop_step = cfg.max_steps if cfg.max_steps != -1 else sys.maxsize
    ran, ended_early = start, False  # ended early: by on_train_batch_start returning -1, or a stop
    batch: Any = None
    batch_idx = start - 1  # (read only if the first fetch raises)
    # -- the batches ---------------------------------------------------------------------------------
    try:  # (costs nothing until something raises: then it gets a note saying where, see _where)
        for batch_idx, batch in enumerate(batches, start):
            loop.batches_done = ran = batch_idx + 1
            if move is not None:
                batch = move(batch, 0)
            store.batch, store.current_batch_size = batch, None  # (self.log finds the batch size in it)
            if batch_start and call_hooks(batch_start, batch, batch_idx):
                ran, ended_early = batch_idx, True
                break
            if grad_sync is not None:
                grad_sync((batch_idx + 1) % accumulate == 0 or batch_idx == last_batch)
            if plain_forward:
                out = training_step(batch, batch_idx)
            else:
                with forward_ctx():
                    out = training_step(batch, batch_idx)
            out = run(out, batch, batch_idx)  # backward and, ending a group, the optimizer step
            if batch_end:
                call_hooks(batch_end, out, batch, batch_idx)
            global_step = loop.global_step
            if global_step >= next_log:  # the log window: its losses checked, its step values sent
                check_window(trainer, losses, where)
                metrics.send(store.step_view(only="logger", only_updated=True), global_step - 1)
                store.clear_updated()
                next_log = metrics.next_log = (global_step // log_every + 1) * log_every
                if loop.watch_signal:  # SIGTERM, SIGINT, SLURM's warning: every process stops after the same step
                    loop.preempted = trainer.strategy.reduce_boolean_decision(loop.signalled, all=False)
            if ckpt_io.attention:  # a background checkpoint write finished its follow-ups, or failed
                ckpt_io.check()
            if loop.preempted:  # a signal: checkpoint (before this batch's validation), then stop or requeue
                from fulmen.runtime.signals import stop_for_signal

                stop_for_signal(trainer)
            if vals is not None and (
                (batch_idx + 1) % val_every == 0
                if val_mode == 0
                else global_step >= next_val
                if val_mode == 1
                else time.monotonic() - loop.last_val_time >= val_time  # type: ignore[operator]
            ):
                run_evaluation(trainer, system, "val", vals, trainer.num_val_batches)
                next_val = (global_step // val_every + 1) * val_every
            if global_step >= stop_step or loop.should_stop or (deadline is not None and _time_up(trainer, deadline)):
                if _stopping(trainer, deadline):
                    ended_early = True
                    break
    except Exception as err:
        note_batch_error(err, trainer, "train", batch_idx)
        if isinstance(err, RuntimeError):
            add_device_note(err, trainer, system, batch, "training_step")
        raise
    # -- the epoch's end: an unfinished accumulation group, the last log window -------------------
    step.finish(ran, ended_early)
    check_window(trainer, losses, where)
    if ran == 0 and n_batches != 0 and not ended_early:  # (ran counts from the resumed position)
        raise DataError(
            "The train dataloader produced no batches this epoch (an empty iterable dataset?). Check that the "
            "dataset yields data."
        )
    return ran


class _FitData:
    """The training and validation data of a fit, with their batch counts (requested again with
    ``reload_dataloaders_every_n_epochs``)."""

    def __init__(
        self, trainer: Trainer, system: System, train_loaders: Any, val_loaders: Any, val_first: bool = False
    ) -> None:
        """``val_first``: request the validation data first, the random state restored after it
        (where Lightning requests it: inside the sanity check, LoopRules.lightning_hook_calls)."""
        from fulmen.system import System as _System

        cfg = trainer.config
        raw_vals: Any = None
        if val_first:
            rng = RNGState()
            try:
                raw_vals = request_loaders("val", val_loaders, trainer.datamodule, system)
            finally:
                rng.restore()
        train = request_loaders("train", train_loaders, trainer.datamodule, system)
        if train is None:
            raise DataError(
                "Trainer.fit found no training data: pass train_dataloaders=..., a datamodule with "
                "train_dataloader(), or define train_dataloader() on the system."
            )
        self.train = prepare_loader(check_train_loader(train), sequential=bool(cfg.overfit_batches), trainer=trainer)
        self.generators = loader_generators(self.train)
        self.n_train = limited_batches("train", self.train, cfg.limit_train_batches)
        if self.n_train == 0 and cfg.limit_train_batches != 0:
            raise DataError(f"The train dataloader is empty (len {len(self.train)}): {empty_reason(self.train)}")
        has_step = overrides(system, "validation_step", _System)
        if not val_first and trainer.rules.lightning_hook_calls and (cfg.limit_val_batches == 0 or not has_step):
            # Lightning does not ask for validation data it will not use (it warns about data without a step)
            from fulmen.datamodule import DataModule

            given = val_loaders is not None or any(
                owner is not None and overrides(owner, "val_dataloader", base)
                for owner, base in ((trainer.datamodule, DataModule), (system, _System))
            )
            if given and not has_step:
                warn_once(
                    f"You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop "
                    f"({type(system).__name__} has no validation_step, so validation is skipped; define "
                    f"validation_step(self, batch, batch_idx) to use the data).",
                    key="val-data-no-step",
                )
        elif not val_first:
            raw_vals = request_loaders("val", val_loaders, trainer.datamodule, system)
        vals = [
            prepare_loader(v, kind="val", sequential=bool(cfg.overfit_batches), trainer=trainer)
            for v in as_loader_list("val", raw_vals)
        ]
        if vals and not has_step:
            warn_once(
                f"Validation data was given but {type(system).__name__} has no validation_step, so validation is "
                f"skipped. Define validation_step(self, batch, batch_idx) to use it.",
                key="val-data-no-step",
            )
            vals = []
        self.vals = vals
        trainer.train_dataloader, trainer.val_dataloaders = self.train, vals
        trainer.num_training_batches = self.n_train
        trainer.loop.describe_data(self.n_train, loader_facts(self.train))  # (for a resume to compare)
        trainer.num_val_batches = [limited_batches("val", v, cfg.limit_val_batches) for v in vals]
        check_not_empty("val", vals, trainer.num_val_batches)
        self.val_every = _val_every(trainer, self.n_train) if vals and sum(trainer.num_val_batches) > 0 else 0
        # A validation after the epoch's last batch when that batch was not a validation point:
        # a fraction of the epoch under fulmen's rules (the final weights are validated), and an
        # epoch of unknown length with val_check_interval=1.0; never with a duration.
        interval = cfg.val_check_interval
        self.epoch_end_val = (
            isinstance(interval, float)
            and cfg.val_check_time is None
            and (trainer.rules.val_fraction_epoch_end or interval == 1.0)
        )


def _val_every(trainer: Trainer, n_train: int | float) -> int:
    """Training batches between validations (steps, when ``check_val_every_n_epoch=None``)."""
    interval = trainer.config.val_check_interval
    if trainer.config.val_check_time is not None:  # a duration: the clock decides, not the batches
        return 2**62
    if isinstance(interval, int):
        if trainer.config.check_val_every_n_epoch is not None and 0 < n_train < interval:
            raise FlagError(
                f"Trainer(val_check_interval={interval}) is more than the {n_train} training batches per epoch, so "
                f"validation would never run (`val_check_interval` ({interval}) must be less than or equal to the "
                f"number of the training batches ({n_train})). Use an int <= {n_train}, a float fraction, or "
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


def _epoch_defaults(store: MetricStore, epoch_hook: bool) -> None:
    """``self.log`` defaults: per step inside the batch loop, per epoch in the epoch hooks."""
    store.default_on_step, store.default_on_epoch = (False, True) if epoch_hook else (True, False)


def _pbar_epoch_values(store: MetricStore) -> dict[str, Any]:
    values: dict[str, Any] = store.step_view(only="prog_bar")
    values.update(store.epoch_view(only="prog_bar"))
    return values


def _min_reached(trainer: Trainer) -> bool:
    """min_epochs counts completed epochs, so a stop request inside an epoch is honoured only once
    min_epochs epochs were completed before it."""
    cfg = trainer.config
    return trainer.loop.epoch >= cfg.min_epochs and trainer.loop.global_step >= cfg.min_steps


def _stopping(trainer: Trainer, deadline: float | None, hard_only: bool = False) -> bool:
    """Whether the run must stop now: max_steps and max_time always; ``should_stop`` once the
    minimums (min_epochs, min_steps) are met."""
    cfg = trainer.config
    if cfg.max_steps != -1 and trainer.loop.global_step >= cfg.max_steps:
        return True
    if deadline is not None and _time_up(trainer, deadline):
        return True
    return not hard_only and trainer.loop.should_stop and _min_reached(trainer)


def _time_up(trainer: Trainer, deadline: float) -> bool:
    """``max_time`` is spent; with several processes rank 0's clock decides for all of them (so all
    stop after the same step)."""
    up = time.monotonic() >= deadline
    return bool(trainer.strategy.broadcast(up)) if trainer.world_size > 1 else up


def _finished(trainer: Trainer, deadline: float | None) -> bool:
    cfg = trainer.config
    if _stopping(trainer, deadline):
        return True
    return cfg.max_epochs != -1 and trainer.loop.epoch >= cfg.max_epochs
