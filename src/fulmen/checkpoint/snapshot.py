"""A consistent copy of a checkpoint in host memory, taken at the save point, so training can go
on while the copy is written.

``Snapshots.take(ckpt)`` returns the same structure with every tensor copied to the host
(containers copied, plain values kept; anything else deep-copied). The buffers are kept and
reused by the next snapshot (one snapshot's worth of memory, allocated once): a tensor at the
same place in the checkpoint with the same shape and dtype is copied into the same buffer. On
CUDA the buffers are pinned and the copies are queued on the current stream without waiting for
them; ``Snapshot.ready()`` (called by the writer thread) waits for them.

Two saves at the same loop position (two ``ModelCheckpoint`` callbacks at one step) share the
tensors: a tensor whose memory and version counter (bumped by every in-place change) are those
of a tensor already copied at this position is not copied again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from typing import Any

import torch

_SMALL = 1 << 16  # host tensors below this many bytes are cloned into fresh memory, not pooled


class Snapshot:
    """A checkpoint in host memory (``ckpt``) and the device copies it waits for (``ready``)."""

    def __init__(self, ckpt: dict[str, Any], event: Any, nbytes: int) -> None:
        self.ckpt = ckpt
        self._event = event
        #: Bytes of tensor data in the snapshot.
        self.nbytes = nbytes

    def ready(self) -> None:
        """Wait until the device-to-host copies have landed (nothing to wait for on the CPU)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None


class Snapshots:
    """Takes snapshots into buffers reused from one save to the next."""

    def __init__(self) -> None:
        self._pool: dict[tuple[Any, ...], torch.Tensor] = {}
        self._used: set[tuple[Any, ...]] = set()
        # Tensors copied at the current position: key -> (source tensor, its copy). The source is
        # held so that its memory cannot be reused by another tensor while the entry exists.
        self._seen: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, tuple[Any, ...] | None]] = {}
        self._position: Hashable = object()
        #: Bytes held by the reusable buffers.
        self.pooled_bytes = 0
        #: The most bytes they held at once.
        self.peak_bytes = 0

    def take(
        self,
        ckpt: dict[str, Any],
        position: Hashable | None = None,
        before_reuse: Callable[[], None] | None = None,
    ) -> Snapshot:
        """Copy ``ckpt`` to host memory. ``position`` identifies the loop position (None: never
        shared with another save); ``before_reuse`` is called once before the first copy into a
        pooled buffer (the writer waits there for the write that still reads the buffers)."""
        if position is None or position != self._position:
            self._seen.clear()
            self._position = position if position is not None else object()
        self._used = set()
        state = _Walk(self, before_reuse)
        out = state.copy(ckpt, ())
        for key in [k for k in self._pool if k not in self._used]:  # (a layout that changed: freed)
            self.pooled_bytes -= _nbytes(self._pool.pop(key))
        self.peak_bytes = max(self.peak_bytes, self.pooled_bytes)
        event = None
        if state.cuda:
            event = torch.cuda.Event()
            event.record()
        return Snapshot(out, event, state.nbytes)

    def clear(self) -> None:
        self._pool.clear()
        self._seen.clear()
        self._used = set()
        self.pooled_bytes = 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Walk:
    def __init__(self, owner: Snapshots, before_reuse: Callable[[], None] | None) -> None:
        self.owner = owner
        self.before_reuse = before_reuse
        self.ids: dict[int, torch.Tensor] = {}  # one copy for a tensor object met twice (tied weights)
        self.cuda = False
        self.nbytes = 0

    def copy(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if isinstance(obj, (str, int, float, bool, bytes, type(None), torch.dtype, torch.device, torch.Size)):
            return obj
        if type(obj) is dict:
            return {k: self.copy(v, (*path, k)) for k, v in obj.items()}
        if type(obj) is list:
            return [self.copy(v, (*path, i)) for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return tuple(self.copy(v, (*path, i)) for i, v in enumerate(obj))
        if isinstance(obj, dict):  # OrderedDict and other dict types: same type, entries copied
            out = copy.copy(obj)
            for k, v in obj.items():
                out[k] = self.copy(v, (*path, k))
            return out
        return copy.deepcopy(obj)

    def tensor(self, t: torch.Tensor, path: tuple[Any, ...]) -> torch.Tensor:
        done = self.ids.get(id(t))
        if done is not None:
            return done
        owner = self.owner
        plain = type(t) is torch.Tensor or type(t) is torch.nn.Parameter
        if not plain or t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            out = t.detach().clone() if t.device.type == "cpu" else t.detach().to("cpu")
            self.ids[id(t)] = out
            self.nbytes += _nbytes(out) if out.layout == torch.strided else 0
            return out
        t = t.detach()
        key = (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device, t._version)
        seen = owner._seen.get(key)
        if seen is not None:
            out = seen[1]
            if seen[2] is not None:
                owner._used.add(seen[2])
            self.ids[id(t)] = out
            self.nbytes += _nbytes(out)
            return out
        n = _nbytes(t)
        on_device = t.device.type != "cpu"
        slot: tuple[Any, ...] | None = None
        if not on_device and n < _SMALL:
            out = t.clone(memory_format=torch.contiguous_format)
        else:
            slot = (path, t.dtype, tuple(t.shape), on_device)
            out_buf = owner._pool.get(slot)
            if out_buf is None:
                out_buf = torch.empty(
                    tuple(t.shape), dtype=t.dtype, pin_memory=on_device and torch.cuda.is_available()
                )
                owner._pool[slot] = out_buf
                owner.pooled_bytes += n
            elif self.before_reuse is not None:
                self.before_reuse()
                self.before_reuse = None
            owner._used.add(slot)
            out_buf.copy_(t, non_blocking=on_device)
            out = out_buf
            self.cuda = self.cuda or t.device.type == "cuda"
        owner._seen[key] = (t, out, slot)
        self.ids[id(t)] = out
        self.nbytes += n
        return out
