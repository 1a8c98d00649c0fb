"""The phases of ``Trainer._run``, the context manager around every entry point's run: what is
set up before the setup hooks (``start``), what follows them (``after_setup``), what a failure
records (``failed``) and how the run closes after teardown (``finish``).

``Trainer._run`` calls them in order; none of them is on the stack while the loop runs (the
context manager's body has returned at its ``yield``), so the frames from ``Trainer.fit`` to
``training_step`` do not include them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.errors import HookReturnError
from fulmen.trainer._hooks import HookTable
from fulmen.trainer._where import note_run_error
from fulmen.trainer.state import TrainerState

if TYPE_CHECKING:
    from fulmen.runtime.signals import StopHandler
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def start(trainer: Trainer, stage: str, system: System, datamodule: Any) -> HookTable:
    """Before the setup hooks: the processes, the run's state and metric stores, the system's
    callbacks, the hook table, the profiler and the loggers (their versions agreed by all ranks)."""
    trainer.strategy.setup_environment()  # other processes started, process group joined
    trainer.state = TrainerState(stage=stage, status="running")
    trainer.system, trainer.datamodule = system, datamodule
    trainer.metrics.start_run(system)  # (empty: metrics describe the current run, as in Lightning)
    trainer.should_stop = False
    system.trainer = trainer
    if datamodule is not None:
        datamodule.trainer = trainer
    _add_system_callbacks(trainer, system)
    system._on_run_setup()
    trainer._hooks = hooks = HookTable(trainer, system, trainer.callbacks)
    for cb in trainer.callbacks:  # self.log / self.log_dict in a callback's hooks: the system's
        if not hasattr(type(cb), "log"):
            cb.__dict__["log"] = system.log
        if not hasattr(type(cb), "log_dict"):
            cb.__dict__["log_dict"] = system.log_dict
    if trainer.profiler is not None:
        trainer.profiler.setup(stage, trainer.log_dir if trainer.loggers else None)
    for lg in trainer.loggers:
        lg.attach(trainer)
    # Versions are resolved before any logger creates its folder, by rank 0 for all ranks.
    versions = [lg.version if trainer.is_global_zero else None for lg in trainer.loggers]
    if trainer.world_size > 1 and trainer.loggers:
        versions = trainer.strategy.broadcast(versions)
        for lg, version in zip(trainer.loggers, versions):
            if version is not None:
                lg.pin_version(version)
    return hooks


def _add_system_callbacks(trainer: Trainer, system: System) -> None:
    """``configure_callbacks``: the system's callbacks replace the Trainer's of the same type."""
    extra = system.configure_callbacks() or []
    extra = [extra] if isinstance(extra, Callback) else list(extra)
    if any(not isinstance(c, Callback) for c in extra):
        raise HookReturnError(
            f"{type(system).__name__}.configure_callbacks must return a fulmen.Callback or a list of them, got "
            f"{', '.join(type(c).__name__ for c in extra)}."
        )
    if extra:
        replaced = {type(c) for c in extra}
        trainer.callbacks = [c for c in trainer.callbacks if type(c) not in replaced] + extra


def after_setup(trainer: Trainer, system: System, datamodule: Any) -> None:
    """After the setup hooks: gradient clipping's settings, the accumulation, and the
    hyperparameters (and graph) to the loggers."""
    from fulmen.system import System
    from fulmen.trainer._hooks import overrides

    trainer._clips_gradients = trainer.config.gradient_clip_val is not None or overrides(
        system, "configure_gradient_clipping", System
    )
    # Lightning passes configure_gradient_clipping its values by keyword, None when not given.
    algorithm = trainer.flags.get("gradient_clip_algorithm")
    trainer._clip_kwargs = (
        {
            "gradient_clip_val": trainer.flags.get("gradient_clip_val"),
            "gradient_clip_algorithm": algorithm.lower() if isinstance(algorithm, str) else algorithm,
        }
        if trainer.rules.lightning_hook_calls
        else None
    )
    trainer.accumulate_grad_batches = trainer.config.accumulate_grad_batches
    if trainer.is_global_zero and trainer.loggers:
        # The system's and the datamodule's hyperparameters, each unless its
        # save_hyperparameters(logger=False) kept them out; nothing when both did.
        dm_params = datamodule.hparams if getattr(datamodule, "_log_hyperparams", False) else {}
        params = {**dm_params, **(system.hparams if system._log_hyperparams else {})}
        for lg in trainer.loggers:
            if system._log_hyperparams or dm_params:
                lg.log_hyperparams(params)
            lg.log_graph(system)


def failed(trainer: Trainer, hooks: HookTable, err: BaseException) -> None:
    """A run that raised: its status, which hook raised and where (unless a loop said so), then
    ``on_exception``; the caller re-raises ``err``."""
    trainer.state.status = "interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
    note_run_error(err, trainer)
    hooks.call("on_exception", err)
    # Pending checkpoint writes (asynchronous) finish before the error propagates; one that
    # failed is told, not raised over this error.
    lost = trainer.strategy.checkpoint_io.abandon()
    trainer.strategy.checkpoint_io.release()
    if lost is not None and lost is not err and hasattr(err, "add_note"):
        err.add_note(f"fulmen: a background checkpoint write also failed: {type(lost).__name__}: {lost}")


def finish_writes(trainer: Trainer) -> None:
    """The end of a run that did not raise: wait for the pending checkpoint writes and run what
    waited for them (a failed write raises here, as it would have in a synchronous save), then
    free the snapshot buffers; with several processes, nobody goes on before rank 0's files are
    on disk."""
    io = trainer.strategy.checkpoint_io
    if not io.asynchronous:
        return
    io.finish()
    io.release()  # the snapshot buffers are not kept between runs
    if trainer.world_size > 1:
        trainer.strategy.barrier("fulmen-checkpoint-writes")


def finish(trainer: Trainer, stop: StopHandler) -> None:
    """After teardown (even when it raised): the profiler's summary, the signal handlers put
    back, the loggers finalised with the run's status, and a signal's one line after them."""
    from fulmen.runtime import signals

    if trainer.profiler is not None:
        trainer.profiler.describe(trainer.is_global_zero)
        trainer.profiler.teardown()
    status = {"finished": "success", "interrupted": "interrupted"}.get(trainer.state.status, "failed")
    stop.uninstall()
    for lg in trainer.loggers if trainer.is_global_zero else ():
        lg.finalize(status)
    signals.announce(trainer, sys.exc_info()[1])  # a signal's stop: its one line, after the loggers
