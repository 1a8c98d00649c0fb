"""What a bias audit measures: the system's outputs, the targets and each sample's group, gathered
by one pass over a dataloader in eval mode without gradients.

Batches are ``(x, y, ...)`` tuples/lists or dicts. The inputs of a dict batch are under ``"x"``,
``"input"`` or ``"inputs"`` (unless the system overrides ``predict_step``, which then receives the
whole batch); its targets under one of ``TARGET_KEYS``. The groups are either a field of the batch
(a dict key such as ``"group"``, or a tuple position such as ``2``) or one value per sample of the
dataset, aligned through the dataset indices each batch was drawn from (so a shuffling loader
works too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fulmen.errors import DataError

#: The keys a dict batch's targets are looked up under, in this order.
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
#: The keys a dict batch's inputs are looked up under (when ``forward`` is called).
INPUT_KEYS = ("x", "input", "inputs")


class AuditError(DataError):
    """Input a bias audit cannot use (no targets, a group column missing, misaligned groups, an
    unknown task); the message says what was expected, what was found and what to do."""


@dataclass
class Collected:
    """One pass over the data: outputs ``(n, k)`` floats or ``(n,)`` labels, targets ``(n, ...)``
    and groups ``(n,)`` as strings (JSON keys)."""

    outputs: np.ndarray
    targets: np.ndarray
    groups: np.ndarray


def _targets(batch: Any, batch_idx: int) -> Any:
    if isinstance(batch, dict):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
        raise AuditError(
            f"batch {batch_idx} is a dict with keys {sorted(map(str, batch))} and no targets: a bias audit looks for "
            f"them under {', '.join(repr(k) for k in TARGET_KEYS)}; add one of these keys to the batch."
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise AuditError(
        f"batch {batch_idx} is a {type(batch).__name__} and no targets were found in it: a bias audit expects "
        f"(x, y, ...) tuples or dicts with a 'y'/'target'/'label' key; make the test dataloader yield one of these."
    )


def _inputs(batch: Any) -> Any:
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise AuditError(
            f"a dict batch with keys {sorted(map(str, batch))} has no inputs under {', '.join(map(repr, INPUT_KEYS))}: "
            f"add one, or override predict_step(batch, batch_idx) to say what the system predicts from a batch."
        )
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _field(batch: Any, key: str | int, batch_idx: int) -> Any:
    """The group field ``key`` of a batch, or an AuditError naming what the batch has."""
    if isinstance(batch, dict):
        if key in batch:
            return batch[key]
        raise AuditError(
            f"group column {key!r} is missing from the batch (batch {batch_idx} has keys {sorted(map(str, batch))}): "
            f"add it to the batch, or pass the groups as an array aligned with the dataset."
        )
    if isinstance(key, int) and isinstance(batch, (tuple, list)) and -len(batch) <= key < len(batch):
        return batch[key]
    raise AuditError(
        f"group column {key!r} is missing from the batch (batch {batch_idx} is a {type(batch).__name__}"
        f"{f' of {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}): a field of the batch is a key of a "
        f"dict batch or a position in a tuple batch; else pass the groups as an array aligned with the dataset."
    )


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.float16, torch.bfloat16) else value).numpy()
    return np.asarray(value)


def _predict(system: Any, batch: Any, batch_idx: int) -> Any:
    from fulmen.system import System
    from fulmen.trainer._hooks import overrides
    from fulmen.utils.apply import move_to_device

    batch = move_to_device(batch, system.device)
    if overrides(system, "predict_step", System):
        return system.predict_step(batch, batch_idx)
    return system(_inputs(batch))


def _is_field(groups: Any) -> bool:
    return isinstance(groups, (str, int)) and not isinstance(groups, bool)


def collect(system: Any, dataloader: Any, groups: Any) -> Collected:
    """Run ``system`` over ``dataloader`` (eval mode, no grad; its mode is restored after) and gather
    outputs, targets and groups; raises AuditError for data it cannot use."""
    loader, indices = (dataloader, None) if _is_field(groups) else _recording(dataloader)
    outputs, targets, fields = [], [], []
    was_training = system.training
    system.eval()
    try:
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                y = _targets(batch, batch_idx)
                if _is_field(groups):
                    fields.append(_numpy(_field(batch, groups, batch_idx)).reshape(-1))
                out = _predict(system, batch, batch_idx)
                outputs.append(_numpy(out))
                targets.append(_numpy(y))
    finally:
        system.train(was_training)
    if not outputs:
        raise AuditError("the dataloader yielded no batches: a bias audit needs the test data; check the dataloader.")
    out, tgt = np.concatenate(outputs), np.concatenate(targets)
    if len(out) != len(tgt):
        raise AuditError(f"the system gave {len(out)} outputs for {len(tgt)} targets: one output row per sample expected.")
    group = np.concatenate(fields) if fields else _aligned(groups, indices, len(out), dataloader)
    if len(group) != len(out):
        raise AuditError(
            f"misaligned lengths: the group column has {len(group)} values for {len(out)} samples; give one group "
            f"value per sample in each batch."
        )
    return Collected(out, tgt, np.asarray([str(g) for g in group.tolist()], dtype=object))


def _recording(dataloader: Any) -> tuple[Any, list[list[int]] | None]:
    """The loader rebuilt to record the dataset indices of its batches (None when it cannot)."""
    from fulmen.trainer._eval import record_batch_indices

    loaders, records = record_batch_indices([dataloader])
    return (loaders[0], records[0]) if loaders[0] is not dataloader else (dataloader, None)


def _aligned(groups: Sequence[Any] | np.ndarray, indices: list[list[int]] | None, n: int, loader: Any) -> np.ndarray:
    """One group per collected sample, from values aligned with the dataset's indices."""
    values = _numpy(groups).reshape(-1) if not isinstance(groups, (list, tuple)) else np.asarray(list(groups), dtype=object)
    dataset = getattr(loader, "dataset", None)
    size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    if size is not None and len(values) != size:
        raise AuditError(
            f"misaligned lengths: groups has {len(values)} values but the dataset has {size} samples; give one group "
            f"value per dataset index (groups[i] is the group of dataset[i])."
        )
    if indices is None:  # no batch sampler (an IterableDataset): the order of iteration
        if len(values) != n:
            raise AuditError(
                f"misaligned lengths: groups has {len(values)} values but the dataloader gave {n} samples; give one "
                f"group value per sample, in the order the dataloader yields them."
            )
        return values
    order = [i for batch in indices for i in batch]
    if len(order) != n:
        raise AuditError(f"the dataloader drew {len(order)} dataset indices for {n} samples: cannot align the groups.")
    return values[np.asarray(order, dtype=np.int64)]
