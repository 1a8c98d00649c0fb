"""SLURM's time limit: save, requeue, and resume where the run stopped.

Submit with a warning signal before the limit, and start Python with ``srun`` (which passes
the signal on)::

    #SBATCH --signal=USR1@120        # SIGUSR1 120 s before the time limit
    srun python train.py

When the signal arrives, fulmen finishes the current training step (with several processes, all
of them agree at the next log interval, ``log_every_n_steps``), writes
``hpc_ckpt_<n>.ckpt`` beside the run's other checkpoints, asks SLURM to queue the job again
(``scontrol requeue $SLURM_JOB_ID``) and exits. When the job starts again
(``SLURM_RESTART_COUNT`` >= 1), ``trainer.fit(system)`` without ``ckpt_path`` resumes from the
newest checkpoint of that run, exactly (see ``docs/checkpoints.md``).

Under SLURM this is on by default; ``FULMEN_SLURM_AUTO_REQUEUE=0`` turns it off and
``FULMEN_SLURM_REQUEUE_SIGNAL`` (``USR1`` by default) picks the signal. ``SIGTERM`` (what SLURM
sends at the limit without ``--signal``, or on preemption) is handled the same way. Ctrl-C
(SIGINT), and SIGTERM with auto-requeue off, stop the run as anywhere else
(``fulmen.runtime.signals``: a checkpoint, then exit 130 / 143).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


class Requeued(SystemExit):
    """Raised once the requeue checkpoint is written and SLURM was asked to requeue the job:
    the process exits with status 0 and SLURM starts the job again later."""


def in_slurm_job(env: Any = None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def auto_requeue_enabled(env: Any = None) -> bool:
    env = os.environ if env is None else env
    return in_slurm_job(env) and env.get("FULMEN_SLURM_AUTO_REQUEUE", "1") != "0"


def restarted(env: Any = None) -> bool:
    """True when SLURM started this job again after a requeue."""
    env = os.environ if env is None else env
    try:
        return in_slurm_job(env) and int(env.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


def requeue_signal(env: Any = None) -> signal.Signals:
    env = os.environ if env is None else env
    name = env.get("FULMEN_SLURM_REQUEUE_SIGNAL", "USR1").upper().removeprefix("SIG")
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise ValueError(
            f"FULMEN_SLURM_REQUEUE_SIGNAL={env['FULMEN_SLURM_REQUEUE_SIGNAL']!r} is not a signal name; use e.g. USR1, "
            f"USR2 or TERM (the one given to sbatch --signal)."
        ) from None


def job_id(env: Any = None) -> str:
    env = os.environ if env is None else env
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return str(env["SLURM_JOB_ID"])


class RequeueHandler:
    """Installed for the duration of a fit: the signal only sets a flag; the training loop acts
    on it between steps (so the checkpoint is consistent)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.signum = requeue_signal()
        self._previous: Any = None
        self._previous_term: Any = None
        self.installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        self._previous = signal.signal(self.signum, self._handle)
        if self.signum != signal.SIGTERM:
            # SIGTERM too: SLURM sends it at the time limit when no --signal was given, and when a
            # job is preempted; the run checkpoints between steps the same way before it is killed.
            self._previous_term = signal.signal(signal.SIGTERM, self._handle)
        self.installed = True
        # The signal may have come before fit (SLURM can send it while Python still imports torch):
        # a handler set at the top of the script that counts it in ``received`` hands it on here.
        if getattr(self._previous, "received", 0):
            self._previous.received = 0
            self._handle(self.signum, None)

    def uninstall(self) -> None:
        if self.installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            if previous == signal.SIG_DFL and self.signum in (signal.SIGUSR1, signal.SIGUSR2):
                # Once fit is over, the warning signal's default action would kill a process that
                # may have finished its work (SLURM then marks the job FAILED): ignore it instead.
                previous = signal.SIG_IGN
            signal.signal(self.signum, previous)
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)
                self._previous_term = None
            self.installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.trainer.request_stop("requeue")  # (fulmen.runtime.signals.stop_for_signal: requeue, not stop)


def latest_requeue_checkpoint(trainer: Trainer) -> str | None:
    """The newest ``hpc_ckpt_<n>.ckpt`` of the latest run, or None.

    A restarted job finds its requeue checkpoint through ``fit(ckpt_path="last")``, which asks the
    trainer's ``ModelCheckpoint`` callbacks; a trainer without one (``enable_checkpointing=False``)
    needs this instead. Does not choose a logger version (a fresh logger's stays unset)."""
    from fulmen.loggers.base import FolderLogger
    from fulmen.run_dir import checkpoints_folder, newest_requeue_checkpoint, newest_run

    folder_loggers = [lg for lg in trainer.loggers if isinstance(lg, FolderLogger)]
    if folder_loggers:
        logger = folder_loggers[0]
        run = logger.log_dir if logger.pinned_version is not None else newest_run(logger.root_dir)
        if run is None:
            return None
    else:
        run = trainer.log_dir
    return newest_requeue_checkpoint(checkpoints_folder(run))


def save_and_requeue(trainer: Trainer) -> None:
    """Write the requeue checkpoint, ask SLURM to requeue the job (rank 0), and exit."""
    from fulmen.runtime.signals import checkpoint_folder

    restart = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
    path = os.path.join(checkpoint_folder(trainer), f"hpc_ckpt_{restart}.ckpt")  # (where a stop's goes)
    trainer.save_checkpoint(path)
    trainer.strategy.checkpoint_io.finish()  # (asynchronous writes: on disk before the job is requeued)
    if trainer.is_global_zero:
        jid = job_id()
        # Said before `scontrol requeue`: SLURM ends this job as soon as it requeues it, which can be
        # before scontrol returns here (a line printed after it was sometimes lost).
        print(
            f"[fulmen] SLURM signal {signal.Signals(requeue_signal()).name} received: saved {path}; requeueing job "
            f"{jid}: it resumes from there when it starts again.",
            file=sys.stderr,
            flush=True,
        )
        try:
            result = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
            ok, detail = result.returncode == 0, (result.stderr or result.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            ok, detail = False, str(err)
        if not ok:
            print(
                f"[fulmen] `scontrol requeue {jid}` failed ({detail}): the job was not requeued. Resubmit it; "
                f"fit(ckpt_path='last') resumes from {path}.",
                file=sys.stderr,
                flush=True,
            )
    trainer.strategy.barrier("slurm-requeue")
    raise Requeued(0)
