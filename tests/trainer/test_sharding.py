"""Splitting dataloaders between processes (``use_distributed_sampler``), without processes:
``shard_loader`` for given ranks, as every process computes it."""

from __future__ import annotations

import pytest
import torch
from helpers.systems import make_data
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    SequentialSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from fulmen.errors import FulmenWarning
from fulmen.trainer._data import ShardedSampler, set_sampler_epoch, shard_loader


def indices(loader: DataLoader, rank: int, world: int, kind: str) -> list[int]:
    sharded = shard_loader(loader, kind, world, rank)
    return list(sharded.sampler)


def test_evaluation_shares_cover_the_data_once() -> None:
    loader = DataLoader(make_data(11), batch_size=4)
    shares = [indices(loader, r, 3, "val") for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(11))
    assert [len(s) for s in shares] == [4, 4, 3]
    assert [len(shard_loader(loader, "val", 3, r).sampler) for r in range(3)] == [4, 4, 3]


def test_training_shares_are_padded_to_equal_length() -> None:
    loader = DataLoader(make_data(11), batch_size=4, shuffle=True)
    sharded = [shard_loader(loader, "train", 3, r) for r in range(3)]
    assert all(isinstance(s.sampler, DistributedSampler) for s in sharded)
    set_sampler_epoch(sharded[0], 0)
    shares = [list(s.sampler) for s in sharded]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set().union(*shares) == set(range(11))


def test_training_order_changes_with_the_epoch_and_follows_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_GLOBAL_SEED", "7")
    loader = DataLoader(make_data(64), batch_size=4, shuffle=True)
    a, b = shard_loader(loader, "train", 2, 0), shard_loader(loader, "train", 2, 0)
    set_sampler_epoch(a, 0)
    set_sampler_epoch(b, 0)
    first = list(a.sampler)
    assert first == list(b.sampler)  # every process computes the same permutation
    set_sampler_epoch(a, 1)
    assert list(a.sampler) != first
    assert a.sampler.seed == 7  # type: ignore[attr-defined]


def test_other_samplers_are_split_index_by_index() -> None:
    weights = torch.ones(10)
    loader = DataLoader(make_data(10), batch_size=2, sampler=WeightedRandomSampler(weights, 10, generator=torch.Generator().manual_seed(0)))
    sharded = shard_loader(loader, "train", 2, 1)
    assert isinstance(sharded.sampler, ShardedSampler)
    assert len(sharded.sampler) == 5 and sharded.batch_size == 2


def test_samplers_that_split_already_are_kept() -> None:
    data = make_data(10)
    own = DistributedSampler(data, num_replicas=2, rank=0, shuffle=False)
    loader = DataLoader(data, batch_size=2, sampler=own)
    assert shard_loader(loader, "train", 2, 0) is loader


def test_custom_batch_samplers_and_iterable_datasets_are_left_whole_with_a_warning() -> None:
    data = make_data(10)
    custom = DataLoader(data, batch_sampler=[[0, 1], [2, 3]])
    with pytest.warns(FulmenWarning, match="custom batch sampler"):
        assert shard_loader(custom, "train", 2, 0) is custom

    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from range(4)

    stream = DataLoader(Stream(), batch_size=2)
    with pytest.warns(FulmenWarning, match="IterableDataset"):
        assert shard_loader(stream, "val", 2, 1) is stream
    plain = DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 2, False))
    assert isinstance(shard_loader(plain, "val", 2, 1).sampler, ShardedSampler)
