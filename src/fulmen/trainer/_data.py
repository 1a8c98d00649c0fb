"""Finding the dataloaders for a stage, and how many batches of each the loops will run."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from torch.utils.data.distributed import DistributedSampler

from fulmen.errors import DataError, FlagError, FulmenWarning, warn_once
from fulmen.seed import seed_workers_requested, worker_init_fn

_HOOK = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}
_LIMIT = {
    "train": "limit_train_batches",
    "val": "limit_val_batches",
    "test": "limit_test_batches",
    "predict": "limit_predict_batches",
}


def request_loaders(kind: str, given: Any, datamodule: Any, system: Any) -> Any:
    """The dataloader(s) for ``kind``: those passed to the entry point, else the datamodule's
    hook, else the system's hook; None when nobody provides one."""
    from fulmen.datamodule import DataModule
    from fulmen.system import System
    from fulmen.trainer._hooks import overrides

    if given is not None:
        return given
    hook = _HOOK[kind]
    for owner, base in ((datamodule, DataModule), (system, System)):
        if owner is not None and overrides(owner, hook, base):
            loaders = getattr(owner, hook)()
            if loaders is None:
                raise DataError(
                    f"{type(owner).__name__}.{hook}() returned None; it should return a DataLoader"
                    f"{'' if kind == 'train' else ' or a list of them'}."
                )
            return loaders
    return None


def as_loader_list(kind: str, loaders: Any) -> list[Any]:
    """Evaluation stages take one dataloader or a list/tuple of them."""
    if loaders is None or (isinstance(loaders, (list, tuple)) and not loaders):
        return []  # an empty list: no dataloaders, so no validation in fit
    if isinstance(loaders, (list, tuple)) and loaders and all(_is_loader(x) for x in loaders):
        return list(loaders)
    if isinstance(loaders, dict):
        raise DataError(
            f"The {kind} dataloaders were given as a dict; pass a DataLoader or a list of DataLoaders "
            f"(the list position becomes dataloader_idx)."
        )
    if not isinstance(loaders, Iterable):
        raise DataError(_not_a_loader(kind, loaders))
    return [loaders]


def check_train_loader(loader: Any) -> Any:
    if isinstance(loader, (list, tuple)) and loader and all(_is_loader(x) for x in loader):
        raise DataError(
            f"Trainer.fit got {len(loader)} train dataloaders; fulmen trains on one. Combine the datasets "
            f"(torch.utils.data.ConcatDataset) or zip the loaders into one iterable."
        )
    if not isinstance(loader, Iterable):
        raise DataError(_not_a_loader("train", loader))
    return loader


def _not_a_loader(kind: str, given: Any) -> str:
    """The message for something that cannot be iterated given where a dataloader goes (a
    DataModule, a Dataset, a DataLoader class), with the fix for each."""
    from torch.utils.data import Dataset

    from fulmen.datamodule import DataModule

    got = type(given).__name__
    start = f"The {kind} dataloader must be a DataLoader or another iterable of batches, got {got}"
    if isinstance(given, DataModule):
        return (
            f"{start} (a fulmen.DataModule) in the {kind} dataloaders' place. Pass it alone, as "
            f"trainer.fit(system, datamodule=dm): it provides its own train and validation dataloaders."
        )
    if isinstance(given, Dataset):
        return (
            f"{start} (a Dataset, which gives single samples rather than batches). Wrap it: "
            f"DataLoader(dataset, batch_size=32{', shuffle=True' if kind == 'train' else ''})."
        )
    if isinstance(given, type):
        return f"{start} (the class {given.__name__} itself, not an instance). Create it first: {given.__name__}(...)."
    return f"{start}."


def empty_reason(loader: Any) -> str:
    """Why a dataloader of length 0 makes no batch, and what to do (for the "empty" errors)."""
    dataset = getattr(loader, "dataset", None)
    batch_size = getattr(loader, "batch_size", None)
    try:
        n = len(dataset) if dataset is not None else None
    except TypeError:
        n = None
    if n is not None and batch_size and getattr(loader, "drop_last", False) and 0 < n < batch_size:
        return (
            f"its dataset has {n} samples, fewer than batch_size={batch_size}, and drop_last=True drops that last "
            f"incomplete batch, so no batch is left. Use drop_last=False or a batch_size <= {n}."
        )
    if n == 0:
        return "its dataset has 0 samples. Check the data path and any filtering that builds the dataset."
    return (
        "check the dataset's length and that batch_size is not larger than the dataset with drop_last=True."
    )


def _is_loader(obj: Any) -> bool:
    return isinstance(obj, DataLoader) or (isinstance(obj, Iterable) and hasattr(obj, "__len__") and hasattr(obj, "dataset"))


def loader_length(loader: Any) -> int | float:
    """``len(loader)``, or inf for iterables without a length (e.g. an IterableDataset)."""
    try:
        return len(loader)
    except TypeError:
        return math.inf


def limited_batches(kind: str, loader: Any, limit: int | float, *, flag: str | None = None) -> int | float:
    """How many batches of ``loader`` a stage runs under ``limit`` (an int, or a fraction)."""
    n = loader_length(loader)
    flag = flag or _LIMIT[kind]
    if isinstance(limit, int):
        return min(n, limit)
    if math.isinf(n):
        if limit in (0.0, 1.0):
            return n if limit == 1.0 else 0
        raise FlagError(
            f"Trainer({flag}={limit!r}): the {kind} dataloader has no length (an iterable dataset), so a "
            f"fraction cannot be taken of it. Pass an int number of batches instead."
        )
    batches = int(n * limit)
    if limit > 0 and n > 0 and batches == 0:
        raise FlagError(
            f"Trainer({flag}={limit!r}): {limit} of the {kind} dataloader's {n} batches is less than one batch. "
            f"Use a larger fraction or an int number of batches."
        )
    return batches


def prepare_loader(loader: Any, *, sequential: bool = False, kind: str = "train", trainer: Any = None) -> Any:
    """Give workers reproducible seeds (after ``seed_everything(workers=True)``); with
    ``sequential``, replace a shuffling sampler by a sequential one (``overfit_batches``); with
    several processes, give each its part of the data (see ``shard_loader``)."""
    sharded = False
    if trainer is not None and trainer.use_distributed_sampler:
        shard = trainer.strategy.distributed_sampler_kwargs
        if shard is not None and not (sequential and kind == "train"):
            loader = shard_loader(loader, kind, shard["num_replicas"], shard["rank"])
            sharded = True
    if not isinstance(loader, DataLoader):
        return loader
    if (
        sequential
        and not sharded
        and not isinstance(loader.sampler, SequentialSampler)
        and not isinstance(loader.dataset, IterableDataset)
    ):
        # Shuffling, or a sampler of the user's own: every epoch must see the same batches.
        message = (
            f"overfit_batches: the {kind} dataloader shuffles (its sampler is a {type(loader.sampler).__name__}); "
            f"fulmen runs it in order with a SequentialSampler so every epoch sees the same batches. (In "
            f"Lightning's words: You requested to overfit but enabled {kind} dataloader shuffling. We are turning "
            f"off the {kind} dataloader shuffling for you.)"
        )
        if trainer is not None and trainer.rules.lightning:  # (Lightning warns at every fit)
            import warnings

            warnings.warn(message, FulmenWarning, stacklevel=2)
        else:
            warn_once(message, key=f"overfit-shuffle-{kind}")
        loader = with_sampler(loader, SequentialSampler(loader.dataset))  # type: ignore[arg-type]
    if loader.num_workers > 0 and loader.worker_init_fn is None and seed_workers_requested():
        loader.worker_init_fn = worker_init_fn
    return loader


def with_sampler(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    """A copy of ``loader`` that draws indices from ``sampler``."""
    if type(loader.batch_sampler) is not BatchSampler:
        warn_once(
            f"The dataloader uses a custom batch sampler ({type(loader.batch_sampler).__name__}); fulmen "
            f"cannot replace its sampler and keeps it as it is.",
            key=f"custom-batch-sampler-{type(loader.batch_sampler).__name__}",
        )
        return loader
    return rebuild_loader(loader, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last)


def rebuild_loader(loader: DataLoader[Any], **batching: Any) -> DataLoader[Any]:
    """A new DataLoader over ``loader``'s dataset with its settings (workers, collate, pinning,
    seeds) and the given batching: ``batch_size``/``sampler``/``drop_last`` or ``batch_sampler``."""
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
        **batching,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs)


class ShardedSampler(Sampler[Any]):
    """Rank ``rank``'s share of another sampler's indices: every ``num_replicas``-th one.

    ``pad=True`` (training) repeats indices from the start so every process gets the same count,
    as ``DistributedSampler`` does (processes must take the same number of steps);
    ``pad=False`` (evaluation) leaves no duplicates, so shares may differ by one.
    All processes must draw the same order from the inner sampler (the same seed).
    """

    def __init__(self, sampler: Any, num_replicas: int, rank: int, pad: bool) -> None:
        self.sampler, self.num_replicas, self.rank, self.pad = sampler, num_replicas, rank, pad

    def __iter__(self) -> Iterator[Any]:
        indices = list(self.sampler)
        if self.pad and indices:
            total = -(-len(indices) // self.num_replicas) * self.num_replicas
            while len(indices) < total:
                indices += indices[: total - len(indices)]
        return iter(indices[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.pad:
            return -(-n // self.num_replicas)
        return max(0, -(-(n - self.rank) // self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        inner = getattr(self.sampler, "set_epoch", None)
        if inner is not None:
            inner(epoch)


def shard_loader(loader: Any, kind: str, num_replicas: int, rank: int) -> Any:
    """``loader`` with each process drawing its own part of the data (``use_distributed_sampler``).

    Training: a shuffling or sequential sampler becomes a ``DistributedSampler`` (shuffled by the
    seed of ``seed_everything`` and the epoch, padded to equal shares); any other sampler is split
    by ``ShardedSampler`` with padding. Evaluation and prediction: split without duplicates.
    A sampler that already splits (a ``DistributedSampler``) is kept, as are iterable datasets
    (their iterator must yield each process's part itself).
    """
    if not isinstance(loader, DataLoader):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        warn_once(
            f"The {kind} dataloader wraps an IterableDataset: fulmen cannot split it between the {num_replicas} "
            f"processes, so each process reads all of it unless the dataset yields its own part (use "
            f"torch.distributed.get_rank() and get_world_size() in its __iter__).",
            key=f"shard-iterable-{kind}",
        )
        return loader
    sampler = loader.sampler
    if isinstance(sampler, (DistributedSampler, ShardedSampler)):
        return loader
    if type(loader.batch_sampler) is not BatchSampler:
        warn_once(
            f"The {kind} dataloader uses a custom batch sampler ({type(loader.batch_sampler).__name__}): fulmen "
            f"cannot split it between the {num_replicas} processes, so each process reads all of it. Make the "
            f"batch sampler yield each process's part, or use a sampler with batch_size instead.",
            key=f"shard-batch-sampler-{kind}",
        )
        return loader
    new: Sampler[Any]
    if kind == "train" and type(sampler) in (RandomSampler, SequentialSampler) and not (
        isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None)
    ):
        seed = int(os.environ.get("FULMEN_GLOBAL_SEED", "0") or 0)
        new = DistributedSampler(
            loader.dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=isinstance(sampler, RandomSampler),
            seed=seed,
            drop_last=False,
        )
    else:
        new = ShardedSampler(sampler, num_replicas, rank, pad=kind == "train")
    return with_sampler(loader, new)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch(epoch)`` on the loader's sampler (and batch sampler) where they have it, so a
    ``DistributedSampler`` shuffles differently each epoch, and alike in every process."""
    seen: set[int] = set()
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        fn = getattr(obj, "set_epoch", None)
        if fn is not None and id(obj) not in seen:
            seen.add(id(obj))
            fn(epoch)
