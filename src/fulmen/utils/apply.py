"""Walking nested batches: lists, tuples, namedtuples, dicts and dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor


def apply_to_tensors(data: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Return ``data`` with ``fn`` applied to every tensor inside it; containers are rebuilt."""
    if isinstance(data, Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        items = {k: apply_to_tensors(v, fn) for k, v in data.items()}
        try:
            return type(data)(items)  # type: ignore[call-arg]  # keeps OrderedDict, defaultdict-free mappings, user dict types
        except TypeError:
            return items
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_tensors(getattr(data, f.name), fn) for f in dataclasses.fields(data) if f.init
        }
        out = dataclasses.replace(data, **changes)
        for f in dataclasses.fields(data):  # fields outside __init__ are copied by hand
            if not f.init:
                object.__setattr__(out, f.name, apply_to_tensors(getattr(data, f.name), fn))
        return out
    return data


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` to ``device``; objects with a ``.to`` method move themselves.

    Copies to an accelerator are non-blocking: a pinned-memory batch then overlaps with compute,
    and a pageable one is copied synchronously as usual.
    """
    non_blocking = device.type != "cpu"

    def move(t: Tensor) -> Tensor:
        return t.to(device, non_blocking=non_blocking)

    if isinstance(batch, Tensor):
        return move(batch)
    if not isinstance(batch, (Mapping, list, tuple)) and not dataclasses.is_dataclass(batch):
        to = getattr(batch, "to", None)
        if callable(to):
            return to(device)
        return batch
    return apply_to_tensors(batch, move)
