"""Request batching for ``fulmen serve``: concurrent requests run as one batch.

Each request (a list of input arrays, rows first) waits in a queue. A single worker task takes
the first waiting request, then keeps taking more until the batch holds ``max_batch_size`` rows
or ``max_wait_ms`` has passed since the first arrived; it stacks their arrays (``np.concatenate``
on the rows), runs the model once in a worker thread (so the event loop keeps accepting
requests meanwhile), and splits the outputs back by each request's rows. A request is never
split: one larger than ``max_batch_size`` runs alone. Requests whose other dimensions differ
(a dynamic sequence length) cannot stack and run in separate batches.

The counters (``stats``) say how well it batches: requests, batches run, rows, largest batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RunFn = Callable[[list[np.ndarray]], tuple[list[np.ndarray], Any]]


@dataclass
class _Item:
    arrays: list[np.ndarray]
    future: asyncio.Future[tuple[list[np.ndarray], Any]]

    @property
    def rows(self) -> int:
        return int(self.arrays[0].shape[0])

    @property
    def key(self) -> tuple[Any, ...]:
        return tuple((a.dtype.str, a.shape[1:]) for a in self.arrays)


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    rows: int = 0
    largest_batch_rows: int = 0
    largest_batch_requests: int = 0
    errors: int = 0
    model_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class Batcher:
    """Stacks concurrent ``submit`` calls into batches of ``run``; start it inside the event loop."""

    run: RunFn
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    batchable: bool = True
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: list[_Item] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fulmen-serve-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        """Run one request's arrays (through a batch); its outputs, with its rows only."""
        future: asyncio.Future[tuple[list[np.ndarray], Any]] = asyncio.get_running_loop().create_future()
        self.stats.requests += 1
        await self._queue.put(_Item(arrays, future))
        return await future

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._held:
            return self._held.pop(0)
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait() if not self._queue.empty() else None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Item]:
        first = await self._next(None)
        assert first is not None
        batch, rows = [first], first.rows
        if not self.batchable:
            return batch
        deadline = time.monotonic() + self.max_wait_ms / 1000.0
        skipped: list[_Item] = []
        while rows < self.max_batch_size:
            item = await self._next(deadline - time.monotonic())
            if item is None:
                break
            if item.key != first.key or rows + item.rows > self.max_batch_size:
                skipped.append(item)  # runs in a later batch, first in line
                continue
            batch.append(item)
            rows += item.rows
        self._held[:0] = skipped
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            stacked = [np.concatenate(parts) if len(batch) > 1 else parts[0] for parts in zip(*(i.arrays for i in batch))]
            started = time.perf_counter()
            try:
                outputs, structure = await loop.run_in_executor(self._executor, self.run, stacked)
                _check_rows(outputs, sum(i.rows for i in batch))
            except Exception as err:  # the model failed: every request of the batch hears why
                self.stats.errors += 1
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                self._count(batch, time.perf_counter() - started)
            self._split(batch, outputs, structure)

    def _count(self, batch: list[_Item], seconds: float) -> None:
        rows = sum(i.rows for i in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.model_seconds += seconds
        self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, rows)
        self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(batch))

    @staticmethod
    def _split(batch: list[_Item], outputs: list[np.ndarray], structure: Any) -> None:
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result(([o[start:end] for o in outputs], structure))
            start = end


class ModelOutputError(RuntimeError):
    """The model's outputs do not have one row per input row, so they cannot be split."""


def _check_rows(outputs: list[np.ndarray], rows: int) -> None:
    for i, out in enumerate(outputs):
        if out.ndim == 0 or out.shape[0] != rows:
            raise ModelOutputError(
                f"output {i} has shape {list(out.shape)} for a batch of {rows} rows: the served model must return "
                f"one row per input row (serve_postprocess may reshape per request)"
            )
