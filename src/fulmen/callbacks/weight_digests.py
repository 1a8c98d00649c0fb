"""``WeightDigests``: a digest of the weights every N optimizer steps, in the run's audit log.

Two runs of the same deterministic program record the same digests; when they differ,
``fulmen reproduce`` names the first interval whose weights differ, so a divergence is located
to within N steps instead of to the next checkpoint. Each digest is a line of the run's
``checkpoints.jsonl``, in the same hash chain as its checkpoints (``fulmen verify`` checks it)::

    {"weights": 50, "epoch": 0, "digest": "<tensor_digest(system.state_dict())>", "time": "...Z", "prev": "..."}

The training thread only takes a copy of the weights: on CUDA into pinned host memory with
``non_blocking=True`` and a CUDA event recorded behind the copies (no host synchronisation); on
the CPU a clone. A background thread waits for the event and hashes the copy (``hashlib``
releases the GIL). The training thread appends the lines of finished digests at the next
interval, in step order, without an fsync each (one ``write``; the line is in the operating
system's cache at once). All pending digests are appended and the log fsynced before each
checkpoint is written, at the end of training, and when the run fails.
"""

from __future__ import annotations

import copy
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError, MisconfigurationError

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_NEVER = sys.maxsize  # the next step to record on a process that records none
_MAX_PENDING = 2  # copies waiting to be hashed before the training thread waits for the oldest


def _audit_dir(trainer: Trainer) -> str | os.PathLike[str]:
    """The run's audit log folder, as ``Trainer.save_checkpoint`` finds it for the run folder
    (kept outside it under Lightning's rules)."""
    run_dir = os.path.abspath(trainer.log_dir)
    if trainer.rules.audit_log_outside_run:
        from fulmen.checkpoint.audit import OutsideLog

        return OutsideLog(run_dir)
    return run_dir


def _host_copy(value: Any) -> tuple[Any, torch.device | None]:
    """A copy of one ``state_dict`` value that later steps cannot change, and the CUDA device
    when the copy is still in flight (pinned memory, ``non_blocking``)."""
    if not isinstance(value, torch.Tensor):
        return copy.deepcopy(value), None
    t = value.detach()
    if t.device.type == "cuda" and t.layout == torch.strided:
        buf = torch.empty_like(t, device="cpu", pin_memory=True)
        buf.copy_(t, non_blocking=True)
        return buf, t.device
    if t.device.type == "cpu":
        return t.clone(), None
    return t.to("cpu", copy=True), None  # meta stays meta; other devices copy synchronously


def snapshot(state: Mapping[str, Any]) -> tuple[OrderedDict[str, Any], torch.cuda.Event | None]:
    """A host copy of ``state`` (a ``state_dict``, with its ``_metadata``) with the same digest,
    and the CUDA event to wait for before reading it (None when it is complete already)."""
    out: OrderedDict[str, Any] = OrderedDict()
    device = None
    for key, value in state.items():
        out[key], on = _host_copy(value)
        device = on or device
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    event = None
    if device is not None:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
    return out, event


class WeightDigests(Callback):
    """Record ``tensor_digest(system.state_dict())`` in the run's audit log at step 0 and every
    ``every_n_steps`` optimizer steps (see the module docstring for the line and how it is kept
    off the critical path).

    Global rank 0 records (the weights are the same on every process under DDP); a resumed fit
    goes on at the next multiple of ``every_n_steps``. Everything pending is written at the end
    of training, when the run stops on an exception, and before each checkpoint is written, so
    the log holds the digests in step order before the checkpoint of the same step. Between
    intervals a step costs one integer comparison. Sharded weights (``strategy="fsdp"``) are not
    supported.
    """

    def __init__(self, every_n_steps: int = 100) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ArgumentError(
                f"WeightDigests(every_n_steps={every_n_steps!r}): expected a whole number of optimizer steps >= 1. "
                f"Pass e.g. every_n_steps=100."
            )
        self.every_n_steps = every_n_steps
        self._next = _NEVER
        self._audit_dir: str | os.PathLike[str] | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[int, int, Future[str]]] = deque()  # (step, epoch, digest being computed)
        self._unsynced = False  # lines appended without fsync since the last sync_log

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._next = _NEVER
        if not trainer.is_global_zero:
            return
        from fulmen.runtime.fsdp import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            raise MisconfigurationError(
                "WeightDigests needs the whole weights on global rank 0, got strategy='fsdp' (sharded weights). "
                "Remove WeightDigests from the callbacks, or train with strategy='ddp'."
            )
        self._audit_dir = _audit_dir(trainer)
        step = trainer.global_step
        if step == 0:  # the initial weights: a divergence in initialisation shows at step 0
            self._record(trainer, system)
        self._next = (step // self.every_n_steps + 1) * self.every_n_steps

    def on_train_batch_end(self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.loop.global_step < self._next:  # (the attribute, not the property: no call per step)
            return
        self._next = (trainer.global_step // self.every_n_steps + 1) * self.every_n_steps
        self._record(trainer, system)

    def on_save_checkpoint(self, trainer: Trainer, system: System, checkpoint: dict[str, Any]) -> None:
        self._finish()

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        self._finish()

    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        self._finish(raise_errors=False)

    def teardown(self, trainer: Trainer, system: System, stage: str) -> None:
        self._finish(raise_errors=False)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    # -- work ----------------------------------------------------------------------------------
    def _record(self, trainer: Trainer, system: System) -> None:
        """Copy the weights now and hash them in the background; append the lines of the digests
        already done (the training thread appends: a few system calls, where the background thread
        would hand the GIL back and forth at each)."""
        # Lines first, while the background thread is idle (after the submit it would take the GIL
        # at each of the append's system calls); raises what went wrong in the background.
        while self._pending and (self._pending[0][2].done() or len(self._pending) >= _MAX_PENDING):
            self._append(*self._pending.popleft())
        state, event = snapshot(system.state_dict())
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="fulmen-weight-digests")
        job = self._worker.submit(_digest, state, event)
        self._pending.append((trainer.global_step, trainer.current_epoch, job))

    def _append(self, step: int, epoch: int, job: Future[str]) -> None:
        from fulmen.checkpoint.audit import record_weights

        assert self._audit_dir is not None
        record_weights(self._audit_dir, step=step, epoch=epoch, digest=job.result(), sync=False)
        self._unsynced = True

    def _finish(self, raise_errors: bool = True) -> None:
        """Append the line of every pending digest, in step order, and fsync the log; with
        ``raise_errors``, raise the first error (else warn: the run is already failing)."""
        first: BaseException | None = None
        while self._pending:
            try:
                self._append(*self._pending.popleft())
            except Exception as err:
                first = first or err
        if self._unsynced and self._audit_dir is not None:
            from fulmen.checkpoint.audit import sync_log

            self._unsynced = False
            sync_log(self._audit_dir)
        if first is not None and raise_errors:
            raise first
        if first is not None:
            import warnings

            warnings.warn(f"WeightDigests could not record a digest of the weights: {first}", stacklevel=2)


def _digest(state: Mapping[str, Any], event: torch.cuda.Event | None) -> str:
    """The background thread's work: wait for the copy (CUDA), then hash it."""
    from fulmen.checkpoint.integrity import tensor_digest

    if event is not None:
        event.synchronize()
    return tensor_digest(state)
