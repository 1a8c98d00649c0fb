"""Logs that read as one run across a kill and a resume: what a checkpoint records about the
loggers, and what ``fit(ckpt_path=...)`` does with it.

A checkpoint is written at a point of the run where some rows have gone to the loggers and some
have not. Before it is written every logger is flushed (``Logger.save``), so a ``kill -9`` after
the checkpoint loses no row logged before it, and each logger's ``log_position()`` is recorded.
The checkpoint's ``"logs"`` entry also keeps what is due but not yet sent:

- ``pending``: the rows the loop sends right after the hook that wrote the checkpoint. A
  ``ModelCheckpoint(every_n_train_steps=N)`` saves in ``on_train_batch_end``, before that batch's
  step row (logged at ``global_step - 1``) is sent; a checkpoint written in ``on_train_epoch_end``
  comes before the epoch's row. The resumed run sends them first, so there is no hole.
- ``train_metrics``: the training stage's logged values inside an epoch (the step values waiting
  for the next log interval, the epoch accumulation of ``on_epoch=True`` keys), per process, so
  that the epoch's row after a resume covers the whole epoch.

On resume, each logger continuing its run (same version) gets ``resume_at(step, position)`` and
forgets what the stopped run logged after the checkpoint: the resumed run logs it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer


def flush_loggers(trainer: Trainer) -> None:
    """Every logger's buffered rows to disk (global rank 0, where loggers write)."""
    if trainer.is_global_zero:
        for lg in trainer.loggers:
            lg.save()


def checkpoint_logs(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint's ``"logs"`` entry (after ``flush_loggers``). Host syncs for the pending
    values: a checkpoint is written rarely."""
    from fulmen.logging._store import to_floats

    positions = []
    if trainer.is_global_zero:
        positions = [{"logger": type(lg).__name__, "position": lg.log_position()} for lg in trainer.loggers]
    store = trainer.metrics.stores["train"]
    pending: list[dict[str, Any]] = []
    train_metrics = None
    phase = trainer.loop.phase
    training = trainer.state.stage == "fit" and trainer.metrics.training
    step = max(trainer.global_step - 1, 0)
    if training and phase == "batch" and trainer.global_step >= trainer.metrics.next_log:
        # Saved after the optimizer step of a batch whose step row is due, before the loop sends it.
        due = store.step_view(only="logger", only_updated=True)
        if due:
            pending.append({"metrics": to_floats(due), "step": step})
            trainer.metrics.flush_after_next_send()  # the loop's next row (that one): on disk at once
    elif training and phase == "epoch_end":
        # Saved in on_train_epoch_end, before the loop sends the epoch's row (no checkpoint is
        # written between that row and the end of the phase).
        epoch_row = store.epoch_view(only="logger")
        if epoch_row:
            pending.append({"metrics": to_floats(epoch_row), "step": step})
            trainer.metrics.flush_after_next_send()
    if training and phase in ("batch", "validation"):
        train_metrics = store.state_dict(sent=bool(pending))
    return {"positions": positions, "pending": pending, "train_metrics": train_metrics}


def resume_loggers(trainer: Trainer, ckpt: dict[str, Any] | None) -> None:
    """``fit(ckpt_path=...)``: each logger that goes on with the checkpoint's run (its version is
    the one recorded) gets ``resume_at``, with its recorded position."""
    if not ckpt:
        return
    versions = ckpt.get("logger_versions") or []
    positions = (ckpt.get("logs") or {}).get("positions") or []
    from fulmen.trainer.state import LoopState

    step = max(LoopState.from_checkpoint(ckpt).global_step - 1, 0)
    for i, (lg, saved) in enumerate(zip(trainer.loggers, versions)):
        if lg.pinned_version != saved:
            continue  # a logger of another run (or a new version): nothing of its own to forget
        entry = positions[i] if i < len(positions) and isinstance(positions[i], dict) else {}
        position = entry.get("position") if entry.get("logger") == type(lg).__name__ else None
        lg.resume_at(step, position)


def replay_pending(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """The rows that were due when the checkpoint was written, sent now (before anything else the
    resumed run logs), as the stopped run would have sent them next."""
    for row in (ckpt.get("logs") or {}).get("pending") or []:
        trainer.metrics.send(dict(row["metrics"]), int(row["step"]))


def restore_train_metrics(trainer: Trainer, state: dict[str, Any] | None) -> None:
    """The training stage's logged values as they were at the checkpoint (a resume inside an epoch)."""
    if state:
        trainer.metrics.stores["train"].load_state_dict(state)

