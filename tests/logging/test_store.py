"""MetricStore, the buffer behind ``self.log``: keys, settings, reductions and the views."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fulmen.errors import LoggingError
from fulmen.logging._store import (
    _COMPACT_EVERY,
    MetricStore,
    batch_size_of,
    first_nonfinite,
    to_float,
)


def log(store: MetricStore, name: str, value, *, prog_bar=False, logger=True, on_step=None, on_epoch=None,
        reduce_fx="mean", enable_graph=False, batch_size=None, add_dataloader_idx=True) -> None:
    store.log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, batch_size, add_dataloader_idx)


def test_stage_defaults() -> None:
    train, val = MetricStore("train"), MetricStore("val")
    log(train, "a", 1.0)
    log(val, "b", 2.0)
    assert (train.entries["a"].on_step, train.entries["a"].on_epoch) == (True, False)
    assert (val.entries["b"].on_step, val.entries["b"].on_epoch) == (False, True)
    assert train.step_view() == {"a": 1.0}
    assert train.epoch_view() == {}
    assert val.step_view() == {}
    assert val.epoch_view() == {"b": torch.tensor(2.0)}


@pytest.mark.parametrize(
    ("fx", "expected"),
    [("mean", 2.5), ("sum", 10.0), ("max", 4.0), ("min", 1.0), ("avg", 2.5), (torch.mean, 2.5), (torch.max, 4.0)],
)
def test_reductions(fx, expected: float) -> None:
    store = MetricStore("val")
    for v in (3.0, 1.0, 4.0, 2.0):
        log(store, "x", torch.tensor(v), reduce_fx=fx)
    assert store.epoch_view()["x"].item() == pytest.approx(expected)


def test_callable_reduction_gets_all_values() -> None:
    store = MetricStore("val")
    seen = []

    def fx(values: torch.Tensor) -> torch.Tensor:
        seen.append(values.clone())
        return values.median()

    for v in (5.0, 1.0, 3.0, 9.0, 7.0):
        log(store, "x", torch.tensor(v), reduce_fx=fx)
    assert store.epoch_view()["x"].item() == 5.0
    assert seen[0].tolist() == [5.0, 1.0, 3.0, 9.0, 7.0]


def test_mean_is_weighted_by_batch_size_given_or_inferred() -> None:
    store = MetricStore("val")
    log(store, "given", 1.0, batch_size=3)
    log(store, "given", 5.0, batch_size=1)
    assert store.epoch_view()["given"].item() == pytest.approx((1.0 * 3 + 5.0) / 4)

    store = MetricStore("val")
    for value, rows in ((2.0, 6), (8.0, 2)):
        store.new_batch({"x": torch.zeros(rows, 3), "label": "ignored"})
        log(store, "inferred", value)
    assert store.epoch_view()["inferred"].item() == pytest.approx((2.0 * 6 + 8.0 * 2) / 8)


def test_batch_size_of_nested_batches() -> None:
    assert batch_size_of(torch.zeros(5, 2)) == 5
    assert batch_size_of(torch.tensor(3.0)) == 1
    assert batch_size_of(["text", (torch.zeros(7),)]) == 7
    assert batch_size_of({"meta": None, "x": torch.zeros(4, 1)}) == 4
    assert batch_size_of("no tensors") is None
    assert batch_size_of([1, 2]) is None


def test_values_stay_detached_tensors() -> None:
    store = MetricStore("train")
    w = torch.ones((), requires_grad=True)
    log(store, "loss", w * 2, on_epoch=True)
    entry = store.entries["loss"]
    assert isinstance(entry.value, torch.Tensor)
    assert entry.value.grad_fn is None and not entry.value.requires_grad
    assert all(isinstance(v, torch.Tensor) and v.grad_fn is None for v in entry.values)
    log(store, "graph", w * 3, enable_graph=True)
    assert store.entries["graph"].value.grad_fn is not None


def test_one_element_tensor_of_any_shape_becomes_0d() -> None:
    store = MetricStore("train")
    log(store, "x", torch.tensor([[4.0]]))
    assert store.entries["x"].value.shape == ()


def test_python_and_numpy_scalars() -> None:
    store = MetricStore("val")
    log(store, "i", 3)
    log(store, "f", 0.5)
    log(store, "np", np.float32(1.5))
    log(store, "npi", np.int64(7))
    log(store, "b", True)
    view = store.epoch_view()
    assert {k: v.item() for k, v in view.items()} == {"i": 3.0, "f": 0.5, "np": 1.5, "npi": 7.0, "b": 1.0}


def test_forked_names_and_views() -> None:
    store = MetricStore("train")
    log(store, "loss", torch.tensor(2.0), on_step=True, on_epoch=True, prog_bar=True)
    log(store, "loss", torch.tensor(4.0), on_step=True, on_epoch=True, prog_bar=True)
    log(store, "hidden", torch.tensor(1.0), logger=False)
    assert set(store.step_view()) == {"loss_step", "hidden"}
    assert set(store.step_view(only="logger")) == {"loss_step"}
    assert set(store.step_view(only="prog_bar")) == {"loss_step"}
    assert store.epoch_view() == {"loss_epoch": torch.tensor(3.0)}

    during = store.callback_view()
    assert {k: float(v) for k, v in during.items()} == {"loss": 4.0, "loss_step": 4.0, "hidden": 1.0}
    store.epoch_end_reached = True
    after = store.callback_view()
    assert {k: float(v) for k, v in after.items()} == {"loss": 3.0, "loss_epoch": 3.0, "loss_step": 4.0, "hidden": 1.0}


def test_only_updated_and_clear() -> None:
    store = MetricStore("train")
    log(store, "a", 1.0)
    log(store, "b", 2.0)
    store.clear_updated()
    log(store, "a", 3.0)
    assert store.step_view(only_updated=True) == {"a": 3.0}
    assert store.step_view() == {"a": 3.0, "b": 2.0}


def test_reset_drops_values_keeps_settings() -> None:
    store = MetricStore("val")
    log(store, "x", 1.0, prog_bar=True)
    store.reset()
    assert store.epoch_view() == {}
    with pytest.raises(LoggingError, match="prog_bar"):
        log(store, "x", 1.0, prog_bar=False)


def test_dataloader_suffix() -> None:
    store = MetricStore("val")
    for idx in (0, 1):
        store.dataloader_idx = idx
        log(store, "loss", float(idx + 1))
        log(store, f"own_{idx}", 5.0, add_dataloader_idx=False)
    assert {k: v.item() for k, v in store.epoch_view().items()} == {
        "loss/dataloader_idx_0": 1.0,
        "own_0": 5.0,
        "loss/dataloader_idx_1": 2.0,
        "own_1": 5.0,
    }
    per_loader = store.epoch_metrics_by_dataloader(2)
    assert set(per_loader[0]) == {"loss/dataloader_idx_0", "own_0", "own_1"}
    assert set(per_loader[1]) == {"loss/dataloader_idx_1", "own_0", "own_1"}


def test_forked_name_keeps_dataloader_suffix_last() -> None:
    store = MetricStore("val")
    store.dataloader_idx = 1
    log(store, "acc", 1.0, on_step=True, on_epoch=True)
    assert set(store.step_view()) == {"acc_step/dataloader_idx_1"}
    assert set(store.epoch_view()) == {"acc_epoch/dataloader_idx_1"}


@pytest.mark.parametrize("fx", ["mean", "sum", "max", "min"])
def test_compaction_matches_direct_reduction(fx: str) -> None:
    rng = random.Random(0)
    values = [rng.uniform(-5, 5) for _ in range(3000)]
    sizes = [rng.randint(1, 64) for _ in range(3000)]
    store = MetricStore("val")
    for v, n in zip(values, sizes):
        log(store, "x", torch.tensor(v), reduce_fx=fx, batch_size=n)
    entry = store.entries["x"]
    assert entry.agg is not None and len(entry.values) < _COMPACT_EVERY  # it did compact
    vals = np.array(values, dtype=np.float32).astype(np.float64)  # the logged tensors are float32
    w = np.array(sizes, dtype=np.float64)
    expected = {
        "mean": (vals * w).sum() / w.sum(),
        "sum": vals.sum(),
        "max": vals.max(),
        "min": vals.min(),
    }[fx]
    assert store.epoch_view()["x"].item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_errors_name_the_key_and_the_problem() -> None:
    store = MetricStore("train")
    with pytest.raises(LoggingError, match=r"self\.log\('vec'.*scalar.*shape \(3,\)"):
        log(store, "vec", torch.ones(3))
    with pytest.raises(LoggingError, match=r"self\.log\('s'.*number or a one-element tensor.*str"):
        log(store, "s", "high")
    with pytest.raises(LoggingError, match=r"self\.log\('x'.*on_step=False, on_epoch=False"):
        log(store, "x", 1.0, on_step=False, on_epoch=False)
    with pytest.raises(LoggingError, match=r"reduce_fx='median'.*'mean'"):
        log(store, "y", 1.0, reduce_fx="median")
    with pytest.raises(LoggingError, match="non-empty string"):
        log(store, "", 1.0)
    log(store, "z", 1.0, prog_bar=True)
    with pytest.raises(LoggingError, match=r"self\.log\('z'.*prog_bar=True before, prog_bar=False now"):
        log(store, "z", 1.0, prog_bar=False)


def test_first_nonfinite_and_to_float() -> None:
    assert first_nonfinite([]) is None
    assert first_nonfinite([torch.tensor(1.0), torch.tensor(2.0)]) is None
    assert first_nonfinite([torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(float("nan"))]) == 1
    assert to_float(torch.tensor(2.5)) == 2.5
    assert to_float(3) == 3.0


@pytest.mark.parametrize(("fx", "expected"), [("mean", 2.0), ("sum", 6.0), ("max", 3.0), (torch.median, 2.0)])
def test_python_numbers_and_tensors_under_one_key(fx, expected: float) -> None:
    store = MetricStore("val")
    log(store, "acc", 1.0, reduce_fx=fx)  # e.g. a default when a batch has nothing to score
    log(store, "acc", torch.tensor(2.0), reduce_fx=fx)
    log(store, "acc", torch.tensor(3.0, dtype=torch.float64), reduce_fx=fx)
    assert store.epoch_view()["acc"].item() == pytest.approx(expected)


def test_compaction_with_one_batch_size_and_with_python_floats() -> None:
    store = MetricStore("val")
    for i in range(2500):
        log(store, "t", torch.tensor(float(i % 7)), batch_size=16)
        log(store, "f", float(i % 5))
    assert store.entries["t"].agg is not None and store.entries["f"].agg is not None
    assert store.epoch_view()["t"].item() == pytest.approx(sum(i % 7 for i in range(2500)) / 2500)
    assert store.epoch_view()["f"].item() == pytest.approx(sum(i % 5 for i in range(2500)) / 2500)


@pytest.mark.gpu  # runs with `pytest -m gpu` on a GPU machine
def test_logging_and_compaction_on_cuda_never_wait_for_the_gpu() -> None:
    dev = torch.device("cuda", 0)
    rng = random.Random(1)
    values = [rng.uniform(0, 1) for _ in range(3000)]
    sizes = [rng.choice((8, 16, 3)) for _ in range(3000)]
    on_gpu = torch.tensor(values, device=dev).unbind()
    store = MetricStore("train")
    store.default_on_epoch = True
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (v, n) in enumerate(zip(on_gpu, sizes)):
            store.new_batch(torch.empty(n, 2, device=dev))
            log(store, "loss", v * 1.0)  # batch size from the batch
            log(store, "mixed", v if i % 2 else 0.5, reduce_fx="max")
        assert store.entries["loss"].agg is not None  # compaction ran inside the loop
    finally:
        torch.cuda.set_sync_debug_mode("default")
    vals = np.array(values, dtype=np.float32).astype(np.float64)
    w = np.array(sizes, dtype=np.float64)
    assert store.epoch_view()["loss_epoch"].item() == pytest.approx((vals * w).sum() / w.sum(), rel=1e-6)
    assert store.epoch_view()["mixed_epoch"].item() == pytest.approx(max(0.5, float(vals[1::2].max())), rel=1e-6)
