"""Walking nested batches: lists, tuples, namedtuples, dicts and dataclasses."""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor


def apply_to_tensors(data: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Return ``data`` with ``fn`` applied to every tensor inside it; containers are rebuilt."""
    return _apply(data, fn, None)


def _apply(data: Any, fn: Callable[[Tensor], Any], other: Callable[[Any], Any] | None) -> Any:
    """``apply_to_tensors``; ``other``, when given, maps each non-container leaf (tensors excluded)."""
    if isinstance(data, Tensor):
        return fn(data)
    if other is not None and not isinstance(data, dict) and callable(getattr(data, "to", None)):
        return other(data)  # a batch class with its own .to() (e.g. a tokenizer's encoding) moves itself
    if isinstance(data, Mapping):
        items = {k: _apply(v, fn, other) for k, v in data.items()}
        if isinstance(data, defaultdict):
            return type(data)(data.default_factory, items)
        try:
            return type(data)(items)  # type: ignore[call-arg]  # keeps OrderedDict and user dict types
        except TypeError:
            return items
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_apply(v, fn, other) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_apply(v, fn, other) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        # A shallow copy with each field replaced: not dataclasses.replace, which would run
        # __init__ and __post_init__ again (normalising twice, or failing on InitVar fields).
        out = copy.copy(data)
        for f in dataclasses.fields(data):
            object.__setattr__(out, f.name, _apply(getattr(data, f.name), fn, other))
        return out
    return data if other is None else other(data)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` to ``device``; objects with a ``.to`` method move themselves.

    Copies to an accelerator are non-blocking: a pinned-memory batch then overlaps with compute,
    and a pageable one is copied synchronously as usual.
    """
    # Non-blocking copies only to CUDA: copies to MPS that do not wait have given wrong values.
    non_blocking = device.type == "cuda"

    def move(t: Tensor) -> Tensor:
        return t.to(device, non_blocking=non_blocking)

    if isinstance(batch, Tensor):
        return move(batch)
    if type(batch) in (tuple, list) and all(type(t) is Tensor for t in batch):  # the common (x, y) batch
        return type(batch)(move(t) for t in batch)
    return _apply(batch, move, partial(_move_object, device=device))


def _move_object(obj: Any, device: torch.device) -> Any:
    """An object with its own ``to`` (a batch class, a graph, ...) moves itself; ``to`` may move
    it in place and return None."""
    if isinstance(obj, (str, bytes, int, float, type)) or obj is None:
        return obj
    to = getattr(obj, "to", None)
    if not callable(to):
        return obj
    moved = to(device)
    return obj if moved is None else moved
