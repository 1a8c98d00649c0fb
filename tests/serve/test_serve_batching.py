"""The batcher of ``fulmen serve`` in one event loop: what it stacks, what it keeps apart, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from fulmen.serve.batching import Batcher, ModelOutputError

Calls = list[list[tuple[int, ...]]]


def row_sums(calls: Calls) -> Any:
    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        calls.append([a.shape for a in arrays])
        x = arrays[0]
        return [x.reshape(len(x), -1).sum(axis=1, keepdims=True)], ("tensor", 1)

    return run


async def _submit_all(batcher: Batcher, requests: list[list[np.ndarray]]) -> list[Any]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_stack_up_to_the_batch_size_and_split_back() -> None:
    calls: Calls = []
    requests = [[np.full((n, 3), float(i), dtype=np.float32)] for i, n in enumerate([1, 2, 3, 4, 5, 6])]
    results = asyncio.run(_submit_all(Batcher(row_sums(calls), max_batch_size=8, max_wait_ms=200), requests))
    for (x,), (outputs, _) in zip(requests, results):
        assert np.array_equal(outputs[0], x.sum(axis=1, keepdims=True))
    assert sum(shape[0][0] for shape in calls) == 21
    assert all(shape[0][0] <= 8 for shape in calls)
    assert len(calls) < len(requests)


def test_a_request_over_the_batch_size_runs_alone_and_other_shapes_run_apart() -> None:
    calls: Calls = []
    big = [np.ones((10, 3), dtype=np.float32)]
    wide = [np.ones((2, 5), dtype=np.float32)]
    small = [np.ones((2, 3), dtype=np.float32)]
    batcher = Batcher(row_sums(calls), max_batch_size=8, max_wait_ms=200)
    results = asyncio.run(_submit_all(batcher, [small, big, wide, small]))
    assert [r[0][0].ravel().tolist() for r in results] == [[3.0] * 2, [3.0] * 10, [5.0] * 2, [3.0] * 2]
    assert sorted(calls) == sorted([[(10, 3)], [(2, 5)], [(4, 3)]])
    assert batcher.stats.batches == 3 and batcher.stats.requests == 4 and batcher.stats.largest_batch_rows == 10


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        if (arrays[0] < 0).any():
            raise RuntimeError("negative input")
        return [arrays[0] * 2], ("tensor", 1)

    async def scenario() -> tuple[list[Any], Any]:
        batcher = Batcher(run, max_batch_size=8, max_wait_ms=50)
        batcher.start()
        try:
            first = await asyncio.gather(
                batcher.submit([-np.ones((1, 2))]), batcher.submit([np.ones((1, 2))]), return_exceptions=True
            )
            second = await batcher.submit([np.ones((1, 2))])
        finally:
            await batcher.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "negative input" in str(r) for r in first)
    assert np.array_equal(second[0][0], [[2.0, 2.0]])


def test_outputs_without_one_row_per_input_row_are_refused() -> None:
    def run(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], Any]:
        return [arrays[0].sum(keepdims=True)[0]], ("tensor", 1)

    results = asyncio.run(_submit_all(Batcher(run, max_wait_ms=0), [[np.ones((3, 2))]]))
    assert isinstance(results[0], ModelOutputError)
    with pytest.raises(ModelOutputError, match="one row per input row"):
        raise results[0]
