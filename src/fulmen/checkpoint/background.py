"""How checkpoints reach the disk: now (``CheckpointIO``) or in the background (``AsyncCheckpointIO``).

``Trainer(checkpoint_io=AsyncCheckpointIO())`` (or ``checkpoint_io="async"``; under
``fulmen.lightning`` also Lightning's ``Trainer(plugins=[AsyncCheckpointIO()])``) makes every
checkpoint write asynchronous: at the save point the checkpoint is copied to host memory
(``fulmen.checkpoint.snapshot``), training goes on, and one writer thread does what a synchronous
save does (content digest, temporary file, fsync, rename, folder fsync, audit-log line), in the
order the saves were asked for.

What stays true:

- at most one snapshot exists: a save that needs the buffers still being written waits for that
  write (said once, with the write's duration, when it keeps happening);
- the file appears under its name only complete and fsynced, and its audit line only after that
  (``write_checkpoint`` does both, in the writer thread);
- what depends on a file being there (``last.ckpt`` as a link to it, deleting a checkpoint it
  pushed out of the top k) runs after it, in the same order (``then``); a killed process leaves
  the previous files as they were;
- a failed write (a full disk) stops the queue (nothing after it runs, so nothing is deleted)
  and is raised in the training thread at the next step boundary (``check``) or when the run
  ends (``finish``), as the same error a synchronous save raises;
- a fit, and a stop for a signal, end only after the pending writes are on disk (``finish``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from fulmen.checkpoint.snapshot import Snapshots


class CheckpointIO:
    """Synchronous checkpoint writes: ``save`` returns once the file is on disk (the default)."""

    #: True when writes happen in the background.
    asynchronous = False
    #: Set (by the writer thread) when the training thread has something to pick up: a failed
    #: write. The training loop reads this once per step.
    attention = False

    def save(
        self,
        ckpt: dict[str, Any],
        path: str | os.PathLike[str],
        *,
        audit_dir: Any = None,
        metrics: Mapping[str, Any] | None = None,
        position: Hashable | None = None,
    ) -> None:
        """Write ``ckpt`` to ``path`` (``fulmen.checkpoint.io.write_checkpoint``)."""
        from fulmen.checkpoint.io import write_checkpoint

        write_checkpoint(ckpt, path, audit_dir=audit_dir, metrics=metrics)

    def then(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every save asked for so far is on disk (now, here)."""
        fn()

    def done(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the training thread once every save asked for so far is on disk (now)."""
        fn()

    def check(self) -> None:
        """Raise a failed background write, and run the ``done`` functions whose writes finished
        (nothing to do here)."""

    def finish(self) -> None:
        """Wait for the pending writes; raise one that failed (nothing to do here)."""

    def abandon(self) -> BaseException | None:
        """After a failure elsewhere: wait for the pending writes; return (not raise) one that failed."""
        return None

    def release(self) -> None:
        """Free what was kept for the next save (the snapshot buffers); called when a run ends."""


class AsyncCheckpointIO(CheckpointIO):
    """Checkpoint writes in a background thread, with every guarantee of a synchronous save.

    ``warn_after``: say so (once) when this many saves in a row had to wait for the previous
    write, with the measured write time.
    """

    asynchronous = True

    def __init__(self, warn_after: int = 3) -> None:
        self.warn_after = warn_after
        self.attention = False
        self._snapshots = Snapshots()
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._error: BaseException | None = None
        self._ready: list[Callable[[], None]] = []
        self._atexit = False
        self._waits_in_a_row = 0
        self._warned = False
        #: Seconds the training thread spent in each ``save`` (the snapshot and any wait).
        self.blocked: list[float] = []
        #: Seconds from each save's request until its file was durable.
        self.durable: list[float] = []
        #: Seconds each background write took.
        self.write_times: list[float] = []

    # -- the training thread -------------------------------------------------------------------------
    def save(
        self,
        ckpt: dict[str, Any],
        path: str | os.PathLike[str],
        *,
        audit_dir: Any = None,
        metrics: Mapping[str, Any] | None = None,
        position: Hashable | None = None,
    ) -> None:
        """Copy ``ckpt`` to host memory and queue its write. ``position`` identifies the loop
        position (two saves at one position share the copied tensors)."""
        from fulmen.checkpoint.io import write_checkpoint

        start = time.perf_counter()
        self.check()
        waited = [False]

        def before_reuse() -> None:  # the buffers are still being written: wait for that write
            if self._pending:
                waited[0] = True
                self._wait()
                self.check()

        snap = self._snapshots.take(ckpt, position, before_reuse)
        self._note_wait(waited[0], os.fspath(path))
        metrics = dict(metrics) if metrics is not None else None

        def write() -> None:
            snap.ready()
            began = time.perf_counter()
            write_checkpoint(snap.ckpt, path, audit_dir=audit_dir, metrics=metrics)
            done = time.perf_counter()
            self.write_times.append(done - began)
            self.durable.append(done - start)

        self._submit(write)
        self.blocked.append(time.perf_counter() - start)

    def then(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the writer thread once every save asked for so far is on disk (skipped
        when one of them failed)."""
        self._submit(fn)

    def done(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the training thread (at the next step boundary, or when the run ends)
        once every save asked for so far is on disk (not when one of them failed)."""

        def ready() -> None:
            with self._lock:
                self._ready.append(fn)
            self.attention = True

        self._submit(ready)

    def check(self) -> None:
        """In the training thread: run the ``done`` functions whose writes finished, then raise
        the error of a failed background write (once)."""
        with self._lock:
            ready, self._ready = self._ready, []
            self.attention = self._error is not None
        for fn in ready:
            fn()
        if self._error is not None:
            err, self._error = self._error, None
            self.attention = False
            raise err

    def finish(self) -> None:
        """Wait for every pending write, then raise one that failed."""
        self._wait()
        self.check()

    def abandon(self) -> BaseException | None:
        self._wait()
        with self._lock:
            self._ready = []
        err, self._error = self._error, None
        self.attention = False
        return err

    @property
    def pending(self) -> int:
        """Saves and follow-ups queued or running."""
        return self._pending

    @property
    def pooled_bytes(self) -> int:
        """Host memory held by the snapshot buffers now (freed when a run ends)."""
        return self._snapshots.pooled_bytes

    @property
    def peak_pooled_bytes(self) -> int:
        """The most host memory the snapshot buffers held at once (one snapshot)."""
        return self._snapshots.peak_bytes

    def release(self) -> None:
        """Free the snapshot buffers (after waiting for the writes that use them)."""
        self._wait()
        self._snapshots.clear()

    # -- internals -----------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="fulmen-checkpoint-writer", daemon=True)
                self._thread.start()
                if not self._atexit:  # a script that ends with writes pending: they finish first
                    import atexit

                    atexit.register(self._wait)
                    self._atexit = True
        self._jobs.put(fn)

    def _wait(self) -> None:
        with self._idle:
            while self._pending:
                self._idle.wait()

    def _work(self) -> None:
        while True:
            fn = self._jobs.get()
            try:
                if self._error is None:  # after a failure nothing else runs (no file is deleted)
                    fn()
            except BaseException as err:  # handed to the training thread
                self._error = err
                self.attention = True
            finally:
                with self._idle:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def _note_wait(self, waited: bool, path: str) -> None:
        if not waited:
            self._waits_in_a_row = 0
            return
        self._waits_in_a_row += 1
        if self._waits_in_a_row >= self.warn_after and not self._warned:  # (once per run's writer)
            import warnings

            from fulmen.errors import FulmenWarning

            self._warned = True
            took = sorted(self.write_times)[len(self.write_times) // 2] if self.write_times else float("nan")
            warnings.warn(
                f"AsyncCheckpointIO: the last {self._waits_in_a_row} checkpoint saves (now {path!r}) each waited for "
                f"the previous write to finish: a write takes {took:.2f} s here, longer than the training between "
                f"two saves, so training stops for it anyway. Save less often (ModelCheckpoint(every_n_train_steps="
                f"...)) or to a faster disk.",
                FulmenWarning,
                stacklevel=5,
            )


def checkpoint_io_from_plugins(plugins: Any) -> CheckpointIO:
    """``Trainer(plugins=...)``: the checkpoint IO among Lightning-style plugins (a list, or one
    plugin). fulmen's only plugin is a ``CheckpointIO`` (``AsyncCheckpointIO()``); precision and
    cluster plugins are Trainer flags here (``precision=``, ``strategy=``)."""
    from fulmen.errors import FlagError

    given = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    found: CheckpointIO | None = None
    for plugin in given:
        if isinstance(plugin, type) and issubclass(plugin, CheckpointIO):
            raise FlagError(
                f"Trainer(plugins=[{plugin.__name__}]): got the class, not an instance; write "
                f"plugins=[{plugin.__name__}()]."
            )
        if not isinstance(plugin, CheckpointIO):
            raise FlagError(
                f"Trainer(plugins=[{plugin!r}]): fulmen takes one kind of plugin, fulmen.AsyncCheckpointIO() (checkpoints "
                f"written in the background); choose precision with Trainer(precision=...) and the cluster with "
                f"Trainer(strategy=...)."
            )
        if found is not None:
            raise FlagError("Trainer(plugins=[...]): two checkpoint IO plugins; give one.")
        found = plugin
    return found if found is not None else CheckpointIO()
