"""SIGTERM and SIGINT (Ctrl-C): stop a run between two training steps, with nothing lost.

``kill``, ``scancel``, Kubernetes, ``timeout`` and most schedulers stop a process with SIGTERM;
Ctrl-C sends SIGINT. While a run is inside its training loop, fulmen's handler only notes the
signal; the loop reads that note once per batch (one attribute read: ``trainer.loop.preempted``) and,
after the batch that is running, fulmen

1. writes ``interrupted.ckpt`` with every step trained, into the first ``ModelCheckpoint``'s
   ``dirpath`` (``<run folder>/checkpoints`` without one, also with ``enable_checkpointing=False``),
   where ``fit(ckpt_path="last")`` finds it;
2. flushes and finalises every logger with the status ``"interrupted"``;
3. prints one line saying what it saved and how to resume;
4. exits non-zero: ``Terminated`` (a ``SystemExit``, status 143) for SIGTERM, ``KeyboardInterrupt``
   (status 130, as Python's own Ctrl-C) for SIGINT. Both can be caught; in a notebook the cell
   stops and the kernel lives on.

With several processes the ranks agree at the log interval (``log_every_n_steps``) and all stop
after the same step. The handler is set again for each run and removed when it ends; after the
first signal the previous handling is back, so a second signal stops the process at once.

Outside the training loop (setting up, the sanity check, after the last epoch, and in
``validate``/``test``/``predict``) there is no training state to save: the run stops at once
with the same exit status and "interrupted" loggers (with several processes, exactly as it would
without fulmen).

fulmen only replaces the default handlers: a script that set its own SIGTERM or SIGINT handler
keeps it. ``FULMEN_SIGNAL_HANDLING=0`` in the environment turns this off altogether. Under SLURM
with auto-requeue (``fulmen.runtime.slurm``) SIGTERM requeues the job instead; Ctrl-C is handled
here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from fulmen.run_dir import checkpoints_folder, newest, stop_checkpoints

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

#: The environment variable that turns the handling off (``0``, ``false``, ``no`` or ``off``).
ENV_VAR = "FULMEN_SIGNAL_HANDLING"
#: The checkpoint written when a signal stops a fit.
CHECKPOINT_NAME = "interrupted.ckpt"
#: What the process exits with: 128 + the signal's number, as a shell reports a process it ended.
EXIT_STATUS: dict[int, int] = {signal.SIGTERM: 143, signal.SIGINT: 130}

_stopping = False


def handling_enabled(env: Any = None) -> bool:
    """False when ``FULMEN_SIGNAL_HANDLING`` turns the handling off."""
    env = os.environ if env is None else env
    return str(env.get(ENV_VAR, "1")).strip().lower() not in ("0", "false", "no", "off")


def stopping() -> bool:
    """True once this process began stopping for a signal (fulmen's launcher then expects its
    other processes to exit with the same status, not as failures)."""
    return _stopping


class Terminated(SystemExit):
    """SIGTERM stopped the run: a ``SystemExit`` with status 143, so shells and schedulers see that
    the run did not finish. ``checkpoint`` is the file written at the stop (None when there was
    nothing to save); ``message`` the line fulmen printed."""

    def __init__(self, message: str, checkpoint: str | None = None) -> None:
        super().__init__(EXIT_STATUS[signal.SIGTERM])
        self.message = message
        self.checkpoint = checkpoint
        self.signal = signal.SIGTERM
        self._fulmen_stop = True


def _stop_error(signum: int, message: str, checkpoint: str | None) -> BaseException:
    """The exception a stop raises: ``Terminated`` for SIGTERM; for SIGINT a plain
    ``KeyboardInterrupt`` (Python exits with status 130 only for that exact class; a subclass
    would exit with 1), carrying ``message``, ``checkpoint`` and ``signal`` like ``Terminated``."""
    if signum == signal.SIGTERM:
        return Terminated(message, checkpoint)
    err = KeyboardInterrupt(message)
    err.message, err.checkpoint, err.signal = message, checkpoint, signal.Signals(signum)  # type: ignore[attr-defined]
    err._fulmen_stop = True  # type: ignore[attr-defined]
    return err


def is_stop(err: BaseException | None) -> bool:
    """True for the exception fulmen raised to stop a run on a signal."""
    return getattr(err, "_fulmen_stop", False) is True


def _is_default(signum: int, handler: Any) -> bool:
    return handler is signal.SIG_DFL or (signum == signal.SIGINT and handler is signal.default_int_handler)


def _deliver(signum: int, previous: Any, frame: Any) -> None:
    """Handle ``signum`` as it would have been without fulmen."""
    if callable(previous):
        previous(signum, frame)  # signal.default_int_handler: KeyboardInterrupt
    else:
        signal.raise_signal(signum)  # SIG_DFL (restored): the default action, the process ends


class StopHandler:
    """Installed by ``Trainer._run`` for each run, over the default SIGTERM and SIGINT handlers
    only; ``uninstall`` puts the previous ones back."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._previous: dict[int, Any] = {}
        self._parent = os.getppid()
        #: The signal's name when one arrived inside the training loop and the loop did not stop
        #: for it (it came after the last batch); ``finish`` then stops the process.
        self.pending: str | None = None

    def install(self) -> None:
        if not handling_enabled() or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if _is_default(signum, current):  # a handler of the script's own (or SIG_IGN) stays
                signal.signal(signum, self._handle)
                self._previous[signum] = current

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:  # (one set since then stays)
                signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.uninstall()  # a second signal is handled as without fulmen: at once
        trainer = self.trainer
        name = signal.Signals(signum).name
        if os.environ.get("FULMEN_LAUNCHED") == "1" and os.getppid() != self._parent:
            # A process of fulmen's launcher whose rank 0 is gone (the signal is its death signal):
            # there is nobody left to agree with.
            _deliver(signum, previous, frame)
            return
        if trainer.state.stage == "fit" and trainer.metrics.training:
            # Inside the training loop (validation included): the loop stops after this batch.
            self.pending = name
            trainer.request_stop(name)
            return
        if trainer.world_size > 1:
            _deliver(signum, previous, frame)  # the other processes could not follow: as without fulmen
            return
        raise _stop_error(signum, _at_once_message(trainer, name, signum), None)

    def finish(self) -> None:
        """After a run that ended normally: a signal that came inside the training loop after its
        last batch stops the process now (the run finished first)."""
        name, self.pending = self.pending, None
        if name is None:
            return
        signum = signal.Signals[name]
        if self.trainer.world_size > 1:  # (the others may not have had it: as without fulmen)
            _deliver(signum, signal.getsignal(signum), None)  # (the handler from before the run is back)
            return
        message = (
            f"[fulmen] {name} received as the fit was ending: it finished first (its checkpoints and logs are "
            f"written); exit status {EXIT_STATUS[signum]}."
        )
        err = _stop_error(signum, message, None)
        announce(self.trainer, err)
        raise err


def _at_once_message(trainer: Trainer, name: str, signum: int) -> str:
    stage = trainer.state.stage
    if stage != "fit":
        what = f"during {stage}: stopped ({stage} does not train: nothing to save)"
    elif trainer.sanity_checking:
        what = "during the sanity check, before training started: stopped, nothing trained or saved"
    else:
        what = (
            "while fit was outside its training loop (setting up or finishing): stopped without a new checkpoint "
            "(those already written are complete; resume with fit(ckpt_path=\"last\"))"
        )
    return f"[fulmen] {name} received {what}; exit status {EXIT_STATUS[signum]}."


def stop_for_signal(trainer: Trainer) -> None:
    """Called by the training loop at the batch boundary where the processes agreed to stop: the
    SLURM requeue (``fulmen.runtime.slurm``) or fulmen's stop for SIGTERM / SIGINT."""
    request = trainer.loop.stop_request
    if trainer.world_size > 1:  # (once, at the stop) which signal arrived, and where
        requests = trainer.strategy.all_gather_object(request)
        request = next((r for r in ("requeue", "SIGTERM", "SIGINT") if r in requests), None)
    if request is None or request == "requeue":
        from fulmen.runtime.slurm import save_and_requeue

        save_and_requeue(trainer)
    save_and_stop(trainer, signal.Signals[str(request)])


def checkpoint_folder(trainer: Trainer) -> str:
    """Where the stop checkpoint goes: the first ``ModelCheckpoint``'s ``dirpath``, else
    ``<trainer.log_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return str(callback.dirpath)
    return checkpoints_folder(trainer.log_dir)


def save_and_stop(trainer: Trainer, signum: signal.Signals) -> None:
    """Write ``interrupted.ckpt`` (every process takes part) and raise the stop."""
    global _stopping
    _stopping = True
    path: str | None = None
    if not trainer.fast_dev_run:
        path = os.path.join(checkpoint_folder(trainer), CHECKPOINT_NAME)
        trainer.save_checkpoint(path)
    trainer.strategy.checkpoint_io.finish()  # (asynchronous writes: on disk before the stop is announced)
    trainer.strategy.barrier("fulmen-signal-stop")
    done = trainer.loop.batches_done
    where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, {done} batch{'es' if done != 1 else ''} into it)"
    saved = (
        f"saved {path} with every step trained; resume with trainer.fit(..., ckpt_path=\"last\")"
        if path is not None
        else "nothing saved (fast_dev_run)"
    )
    message = f"[fulmen] {signum.name} received: stopped after {where}; {saved}; exit status {EXIT_STATUS[signum]}."
    raise _stop_error(signum, message, path)


def announce(trainer: Trainer, err: BaseException | None) -> None:
    """Print the stop's one line (on global rank 0), after the loggers are finalised. Python
    prints no traceback for ``Terminated`` (a ``SystemExit``); for the ``KeyboardInterrupt`` of a
    stop, the traceback of an uncaught one is left out too (the line says it all)."""
    if not is_stop(err) or getattr(err, "_fulmen_announced", False):
        return
    err._fulmen_announced = True  # type: ignore[union-attr]
    if trainer.is_global_zero:
        print(err.message, file=sys.stderr, flush=True)  # type: ignore[union-attr]
    if isinstance(err, KeyboardInterrupt):
        _quiet_excepthook()


_hook_installed = False


def _quiet_excepthook() -> None:
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not is_stop(value):
            previous(kind, value, tb)

    sys.excepthook = excepthook


def newest_stop_checkpoint(trainer: Trainer) -> str | None:
    """``fit(ckpt_path="last")`` without a ``ModelCheckpoint`` (``enable_checkpointing=False``):
    the newest stop checkpoint in ``<trainer.log_dir>/checkpoints``, or None."""
    return newest(stop_checkpoints(checkpoints_folder(trainer.log_dir)))
