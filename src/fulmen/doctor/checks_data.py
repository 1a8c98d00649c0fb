"""``fulmen.doctor``'s checks of the data: where it comes from, empty or shuffled dataloaders, and
validation samples that are also training samples."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fulmen.doctor.report import Findings, count

__all__ = ["OVERLAP_SAMPLES", "OVERLAP_SECONDS", "check_loader", "check_overlap", "shuffles"]

#: How many samples of each of the train and validation sets the overlap check hashes, and the
#: seconds it may spend doing so.
OVERLAP_SAMPLES = 2000
OVERLAP_SECONDS = 10.0


def check_loader(out: Findings, kind: str, loader: Any) -> None:
    """Empty, and shuffled (train) or not (validation): ``kind`` is ``train``, ``val`` or ``val <i>``."""
    from fulmen.trainer._data import loader_length

    label = "train" if kind == "train" else "validation" + kind[3:]
    n = loader_length(loader)
    if n == 0:
        out.add(
            "problem",
            "data",
            f"The {label} dataloader is empty",
            f"len() of the {label} dataloader is 0: the dataset is empty, or batch_size is larger than the "
            f"dataset with drop_last=True.",
        )
        return
    shuffled = shuffles(loader)
    if kind == "train":
        if shuffled is False:
            out.add(
                "warning",
                "data",
                "The train dataloader does not shuffle",
                "Every epoch sees the batches in the same order (often sorted by class or source), which slows or "
                "biases training. Pass shuffle=True to the train DataLoader.",
            )
        else:
            out.add("ok", "data", f"The train dataloader has {count(n)} batches" + (" and shuffles" if shuffled else ""))
    else:
        if shuffled is True:
            out.add(
                "warning",
                "data",
                f"The {label} dataloader shuffles",
                "Validation metrics do not need it, and shuffling makes per-batch values and logged examples "
                "differ from run to run. Pass shuffle=False (the default) to the validation DataLoader.",
            )
        else:
            out.add("ok", "data", f"The {label} dataloader has {count(n)} batches and does not shuffle")


def check_overlap(out: Findings, train: Any, val: Any, label: str) -> None:
    """Validation samples that are training samples too (the same dataset, shared ``Subset``
    indices, or equal samples among the first ``OVERLAP_SAMPLES`` of each, hashed)."""
    ds_t, ds_v = getattr(train, "dataset", None), getattr(val, "dataset", None)
    if ds_t is None or ds_v is None:
        return
    fix = (
        "The validation score then measures memorisation, not generalisation. Split the data once into "
        "disjoint sets (e.g. torch.utils.data.random_split) and remove duplicates across them."
    )
    if ds_t is ds_v:
        out.add(
            "problem",
            "overlap",
            f"The train and {label} dataloaders read the same dataset",
            f"Both dataloaders wrap the same dataset object, so every validation sample is a training sample. {fix}",
        )
        return
    exact = _subset_overlap(ds_t, ds_v)
    if exact is not None:
        shared, checked, total = exact, len(ds_v), len(ds_v)
        scope = f"the {label} subset's indices with the training subset's"
    else:
        start = time.monotonic()
        hashes_v = _sample_hashes(ds_v, OVERLAP_SAMPLES, start + OVERLAP_SECONDS / 2)
        hashes_t = _sample_hashes(ds_t, OVERLAP_SAMPLES, start + OVERLAP_SECONDS) if hashes_v else None
        if not hashes_v or not hashes_t:
            return
        train_set = set(hashes_t)
        shared = sum(1 for h in hashes_v if h in train_set)
        checked, total = len(hashes_v), len(ds_v)
        scope = f"the first {len(hashes_t)} training and {checked} {label} samples"
    if shared == 0:
        out.add("ok", "overlap", f"No {label} sample found in the training set (checked {scope})")
        return
    level = "problem" if shared >= max(1, checked // 10) else "warning"
    part = "all" if shared == checked else f"{shared} of the {checked}"
    out.add(
        level,
        "overlap",
        f"{shared} {label} sample{'s' * (shared != 1)} also in the training set",
        f"Comparing {scope}{f' ({total} in all)' if total > checked else ''}, {part} "
        f"{'is' if shared == 1 else 'are'} identical to a training sample. {fix}",
    )


def shuffles(loader: Any) -> bool | None:
    """True / False when the loader's order is known to be random / fixed; None when unknown."""
    from torch.utils.data import (
        DataLoader,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
        SubsetRandomSampler,
        WeightedRandomSampler,
    )
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    sampler = loader.sampler
    inner = getattr(loader.batch_sampler, "sampler", None)  # a custom batch sampler may wrap one
    if inner is not None:
        sampler = inner
    if isinstance(sampler, (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)):
        return True
    if isinstance(sampler, DistributedSampler):
        return bool(sampler.shuffle)
    if isinstance(sampler, SequentialSampler):
        return False
    return None


def _subset_overlap(train: Any, val: Any) -> int | None:
    """Shared indices of two ``Subset``s of the same dataset (exact and cheap), else None."""
    from torch.utils.data import Subset

    if isinstance(train, Subset) and isinstance(val, Subset) and train.dataset is val.dataset:
        return len(set(map(int, train.indices)) & set(map(int, val.indices)))
    return None


class _Unhashable(Exception):
    pass


def _sample_hashes(dataset: Any, limit: int, deadline: float) -> list[bytes] | None:
    """Digests of the first ``limit`` samples of a map-style dataset (fewer when time runs out);
    None when the dataset cannot be indexed or a sample holds something that cannot be hashed."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    try:
        n = min(len(dataset), limit)
    except TypeError:
        return None
    out: list[bytes] = []
    try:
        for i in range(n):
            if out and time.monotonic() > deadline:
                break
            h = hashlib.blake2b(digest_size=16)
            _digest(dataset[i], h, 0)
            out.append(h.digest())
    except Exception:
        return None
    return out


def _digest(obj: Any, h: Any, depth: int) -> None:
    if depth > 8:
        raise _Unhashable
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, (bool, int, float, complex, str, bytes, type(None))):
        h.update(f"{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h, depth + 1)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h, depth + 1)
        h.update(b"]")
    elif callable(getattr(obj, "tobytes", None)):  # NumPy arrays, NumPy scalars, PIL images
        h.update(f"{type(obj).__name__}{getattr(obj, 'shape', getattr(obj, 'size', ''))}".encode())
        h.update(obj.tobytes())
    else:
        raise _Unhashable


def check_data(
    out: Findings, system: Any, train: Any, train_error: Any, vals: list[Any], val_error: Any, has: dict[str, bool]
) -> None:
    """The data section of the report: the training data (``train``, None when there is none, and
    ``train_error``, what finding it raised) and the validation data (``vals``, ``val_error``);
    ``has`` says which steps the system defines."""
    if train_error is not None:
        out.failed("Finding the training data", train_error, "data")
    if train is None and has["training_step"]:
        out.add(
            "problem",
            "data",
            "No training data",
            "Pass train_dataloaders=..., a datamodule with train_dataloader(), or define train_dataloader() "
            "on the system.",
        )
    if val_error is not None:
        out.failed("Finding the validation data", val_error, "data")
    if vals and not has["validation_step"]:
        out.add(
            "warning",
            "data",
            "Validation data but no validation_step",
            f"{type(system).__name__} has validation data but no validation_step, so fit skips validation. "
            f"Define validation_step(self, batch, batch_idx) (and log a metric there), or drop the validation data.",
        )
    if train is not None:
        check_loader(out, "train", train)
    for i, v in enumerate(vals):
        check_loader(out, "val" if len(vals) == 1 else f"val {i}", v)
    if train is not None and vals:
        for i, v in enumerate(vals):
            check_overlap(out, train, v, "validation" if len(vals) == 1 else f"validation {i}")
