"""The content digest of a checkpoint: the same value for the same tensors and data, however stored.

``sha256-tensors-v1`` (the value of ``ckpt["digest"]["algorithm"]``) is SHA-256 over a canonical
byte stream that walks the checkpoint:

- dicts (any Mapping) in the order of their encoded keys (the top-level ``"digest"`` entry is
  left out), lists and tuples in order, sets sorted by encoded element;
- ``None``, bools, ints, floats (``repr``), complex, strings (UTF-8), bytes, ``torch.dtype``,
  ``torch.device`` and ``torch.Size`` each under their own one-letter tag, with lengths, so no
  two different values give the same stream;
- a tensor as its dtype, shape and byte count, then the SHA-256 of each 16 MiB chunk of its
  bytes (C order, little-endian; bfloat16 and float8 as the integers of the same size; a GPU
  tensor is copied to the CPU; a sparse COO tensor as its coalesced indices and values; a
  quantized one as its integer values and quantization parameters). The chunk hashes of large
  tensors are computed on several threads (``hashlib`` releases the GIL), so the digest of a big
  model runs at a multiple of one core's SHA-256 throughput;
- anything else as its type's qualified name and ``repr`` (with ``at 0x...`` addresses removed).

The **state digest** (``state_digest``, ``digests``) is the same digest of a checkpoint without
its top-level ``"audit"`` record (when and after which log line it was written): equal for two
runs that reached the same state in different folders or at different times. ``digests``
computes both values in one walk, hashing each tensor's bytes once.

The digest does not depend on the file format, zip layout, pickle protocol, or on which
device the tensors were loaded to: ``tensor_digest(torch.load(path))`` equals the digest of the
dict that was saved.

**Where a file keeps it.** ``write_checkpoint`` computes the digest while the file is written and
stores it after the pickle, in the zip archive's comment: ``fulmen-digest:`` then
``{"algorithm":"sha256-tensors-v1","value":"<hex>"}`` (``digest_comment``, ``file_digest``); the
pickle's ``"digest"`` entry is ``COMMENT_MARKER`` (``{"algorithm": ..., "in": "zip-comment"}``),
so a file saved again without the comment is seen to have lost its digest. ``with_file_digest``
(used by ``load_checkpoint`` and ``fulmen verify``) puts the comment's record at
``ckpt["digest"]``. Files from older fulmen versions hold the record itself in the pickle; it is
read from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

DIGEST_ALGORITHM = "sha256-tensors-v1"
DIGEST_KEY = "digest"

_CHUNK = 16 << 20  # tensor bytes are hashed in chunks of this size (part of the definition)
_PARALLEL_MIN = 1 << 20  # chunks at least this large go to worker threads
_COPY_LIMIT = 1 << 30  # bytes of device-to-host copies held at once while hashing
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_NUMPY_OK: dict[torch.dtype, bool] = {}


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _num(n: int) -> bytes:
    return str(n).encode("ascii")


def _text(tag: bytes, s: str) -> bytes:
    data = s.encode("utf-8", "surrogatepass")
    return tag + _num(len(data)) + b":" + data


class _Stream:
    """The canonical stream, as bytes and the (pending) chunk hashes of tensor data."""

    def __init__(self, workers: int | None) -> None:
        self.parts: list[bytes | Future[bytes]] = []
        self._max_workers = workers if workers is not None else _workers()
        self._pool: ThreadPoolExecutor | None = None
        self._copies: list[tuple[int, list[Future[bytes]]]] = []
        self._copied = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- tensor data ------------------------------------------------------------------------------
    def data(self, buf: memoryview, copied: bool) -> None:
        n = len(buf)
        self.parts.append(b"#" + _num(max(1, -(-n // _CHUNK))) + b":")
        if n < _PARALLEL_MIN or self._max_workers == 1:
            for start in range(0, max(n, 1), _CHUNK):
                self.parts.append(hashlib.sha256(buf[start : start + _CHUNK]).digest())
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="fulmen-digest")
        futures = [self._pool.submit(_sha256, buf[start : start + _CHUNK]) for start in range(0, n, _CHUNK)]
        self.parts.extend(futures)
        if copied:  # a host copy of a device tensor: bound the memory held by pending copies
            self._copies.append((n, futures))
            self._copied += n
            while self._copied > _COPY_LIMIT and self._copies:
                size, done = self._copies.pop(0)
                for f in done:
                    f.result()
                self._copied -= size

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in self.parts:
            h.update(part if isinstance(part, bytes) else part.result())
        return h.hexdigest()


def _sha256(buf: memoryview) -> bytes:
    return hashlib.sha256(buf).digest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy when it is already one."""
    t = t.contiguous()
    ok = _NUMPY_OK.get(t.dtype)
    arr: np.ndarray[Any, Any] | None = None
    if ok is not False:
        try:
            arr = t.numpy()
            _NUMPY_OK[t.dtype] = True
        except (TypeError, RuntimeError):
            _NUMPY_OK[t.dtype] = False
    if arr is None:  # bfloat16, float8, complex32, bit types: the integers of the same size
        arr = t.view(_INT_OF_SIZE[t.element_size()]).numpy()
    arr = arr.reshape(-1)
    if sys.byteorder == "big" and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.view(np.uint8).data


def _tensor(stream: _Stream, t: torch.Tensor) -> None:
    t = t.detach()
    parts = stream.parts
    parts.append(b"T" + _text(b"", str(t.dtype)) + b"(" + b",".join(_num(s) for s in t.shape) + b")")
    if t.device.type == "meta":
        parts.append(b"m")
        return
    copied = t.device.type != "cpu"
    if copied:
        t = t.cpu()
    if t.layout == torch.sparse_coo:
        t = t.coalesce()
        parts.append(b"s")
        _tensor(stream, t.indices())
        _tensor(stream, t.values())
        return
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        parts.append(b"q" + _text(b"", str(t.qscheme())))
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            parts.append(_text(b"F", repr(float(t.q_scale()))) + _text(b"I", str(int(t.q_zero_point()))))
        else:
            _tensor(stream, t.q_per_channel_scales())
            _tensor(stream, t.q_per_channel_zero_points())
            parts.append(_text(b"I", str(int(t.q_per_channel_axis()))))
        t = t.int_repr()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    buf = _tensor_bytes(t)
    parts.append(b"n" + _num(len(buf)))
    stream.data(buf, copied)


def _key(value: Any) -> bytes:
    """The encoding of a dict key or set element."""
    if type(value) is str:
        return _text(b"S", value)
    if type(value) is int:
        return _text(b"I", str(value))
    sub = _Stream(workers=1)
    _walk(sub, value)
    return b"".join(p if isinstance(p, bytes) else p.result() for p in sub.parts)


def _walk(stream: _Stream, value: Any, top: bool = False) -> None:
    parts = stream.parts
    if value is None:
        parts.append(b"N")
    elif value is True or value is False:
        parts.append(b"B1" if value else b"B0")
    elif isinstance(value, torch.Tensor):
        _tensor(stream, value)
    elif isinstance(value, int):
        parts.append(_text(b"I", str(int(value))))
    elif isinstance(value, float):
        parts.append(_text(b"F", repr(float(value))))
    elif isinstance(value, str):
        parts.append(_text(b"S", str.__str__(value)))
    elif isinstance(value, Mapping):
        items = [(_key(k), v) for k, v in value.items() if not (top and k == DIGEST_KEY)]
        items.sort(key=lambda kv: kv[0])
        parts.append(b"D" + _num(len(items)) + b"{")
        for k, v in items:
            parts.append(k)
            _walk(stream, v)
        meta = getattr(value, "_metadata", None)  # module versions kept on state_dict OrderedDicts
        if isinstance(meta, Mapping):
            parts.append(b"M")
            _walk(stream, meta)
        parts.append(b"}")
    elif isinstance(value, torch.Size):
        parts.append(b"Z(" + b",".join(_num(s) for s in value) + b")")
    elif isinstance(value, (list, tuple)):
        parts.append((b"L" if isinstance(value, list) else b"U") + _num(len(value)) + b"[")
        for v in value:
            _walk(stream, v)
        parts.append(b"]")
    elif isinstance(value, (set, frozenset)):
        keys = sorted(_key(v) for v in value)
        parts.append(b"E" + _num(len(keys)) + b"[" + b"".join(keys) + b"]")
    elif isinstance(value, (bytes, bytearray)):
        parts.append(b"Y" + _num(len(value)) + b":" + bytes(value))
    elif isinstance(value, complex):
        parts.append(_text(b"C", repr(complex(value))))
    elif isinstance(value, torch.dtype):
        parts.append(_text(b"t", str(value)))
    elif isinstance(value, torch.device):
        parts.append(_text(b"v", str(value)))
    elif isinstance(value, np.ndarray) and value.dtype != object:
        arr = np.ascontiguousarray(value).reshape(-1)
        if sys.byteorder == "big" and arr.dtype.itemsize > 1:
            arr = arr.byteswap()
        parts.append(b"A" + _text(b"", arr.dtype.str) + b"(" + b",".join(_num(s) for s in value.shape) + b")")
        buf = arr.view(np.uint8).data
        parts.append(b"n" + _num(len(buf)))
        stream.data(buf, copied=False)
    else:
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        try:
            text = repr(value)
        except Exception:
            text = "<repr failed>"
        parts.append(_text(b"O", name) + _text(b"", _ADDRESS.sub("", text)))


STATE_EXCLUDED = ("audit",)  # top-level entries the state digest leaves out (besides "digest")


def _hex(parts: list[bytes | Future[bytes]]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.result())
    return h.hexdigest()


def _two_streams(stream: _Stream, ckpt: Mapping[Any, Any]) -> tuple[str, str]:
    """The content and state digests of a top-level mapping: each item is walked once into its
    own parts (a tensor's chunk hashes are shared by both streams), then the two streams are
    assembled, the second without the ``STATE_EXCLUDED`` items."""
    items = [(k, _key(k), v) for k, v in ckpt.items() if k != DIGEST_KEY]
    items.sort(key=lambda kv: kv[1])
    walked: list[tuple[bool, list[bytes | Future[bytes]]]] = []
    for k, enc, v in items:
        stream.parts = [enc]
        _walk(stream, v)
        walked.append((isinstance(k, str) and k in STATE_EXCLUDED, stream.parts))
    stream.parts = []
    meta = getattr(ckpt, "_metadata", None)
    tail: list[bytes | Future[bytes]] = []
    if isinstance(meta, Mapping):
        stream.parts = [b"M"]
        _walk(stream, meta)
        tail = stream.parts
    tail.append(b"}")
    kept = [parts for excluded, parts in walked if not excluded]
    content = [b"D" + _num(len(walked)) + b"{", *(p for _, parts in walked for p in parts), *tail]
    state = [b"D" + _num(len(kept)) + b"{", *(p for parts in kept for p in parts), *tail]
    return _hex(content), _hex(state)


def digests(ckpt: Any, *, workers: int | None = None) -> tuple[str, str]:
    """``(content digest, state digest)`` of ``ckpt`` in one walk, each tensor's bytes hashed once.

    The content digest is ``tensor_digest(ckpt)``. The state digest is the same digest of
    ``ckpt`` without its top-level ``"audit"`` record (the time it was written and its link to the
    audit log's previous line): two runs that trained the same weights, optimizer state and loop
    position have the same state digest, wherever and whenever they ran. For anything but a
    mapping both values are ``tensor_digest(ckpt)``.
    """
    stream = _Stream(workers)
    try:
        if not isinstance(ckpt, Mapping):
            _walk(stream, ckpt, top=True)
            value = stream.digest()
            return value, value
        return _two_streams(stream, ckpt)
    finally:
        stream.close()


def state_digest(ckpt: Mapping[str, Any], *, workers: int | None = None) -> str:
    """The state digest of a loaded checkpoint: its content digest leaving out ``"audit"`` and
    ``"digest"`` (see ``digests``); what ``write_checkpoint`` records as ``state_digest`` in the
    checkpoint's audit log line, and what two runs of the same deterministic program share."""
    return digests(ckpt, workers=workers)[1]


def tensor_digest(ckpt: Any, *, workers: int | None = None) -> str:
    """SHA-256 (hex) of ``ckpt``'s content in ``sha256-tensors-v1`` canonical order (see the module
    docstring), leaving out the top-level ``"digest"`` entry.

    ``workers`` caps the threads hashing large tensors (default: the usable CPU cores, up to 16).
    """
    stream = _Stream(workers)
    try:
        _walk(stream, ckpt, top=True)
        return stream.digest()
    finally:
        stream.close()


def stored_digest(ckpt: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(algorithm, value)`` recorded in ``ckpt["digest"]``, or None when it has none (or only
    ``COMMENT_MARKER``: the digest was in the zip comment of a file that no longer has it). Read
    a file with ``load_checkpoint`` (or ``with_file_digest``) to find the digest in its comment."""
    rec = ckpt.get(DIGEST_KEY)
    if rec is None or is_comment_marker(rec):  # (the marker: the file's zip comment, which is missing)
        return None
    if not isinstance(rec, Mapping) or not isinstance(rec.get("algorithm"), str) or not isinstance(rec.get("value"), str):
        return ("?", repr(rec)[:200])
    return rec["algorithm"], rec["value"]


# -- the digest in the file's zip comment ---------------------------------------------------------
ZIP_END = b"PK\x05\x06"  # the signature of a zip end-of-central-directory record
_ZIP_END_SIZE = 22  # its size without the comment
COMMENT_PREFIX = b"fulmen-digest:"  # then the digest record as JSON: {"algorithm": ..., "value": ...}
IN_COMMENT = "zip-comment"
# What the pickle of a file write_checkpoint wrote holds at "digest": where the digest is. A file
# loaded and saved again with torch.save keeps this but loses the comment, so the loss is seen.
COMMENT_MARKER = {"algorithm": DIGEST_ALGORITHM, "in": IN_COMMENT}


def digest_comment(value: str, algorithm: str = DIGEST_ALGORITHM) -> bytes:
    """The zip comment ``write_checkpoint`` gives a checkpoint file: ``fulmen-digest:`` and the
    digest record as compact JSON (``{"algorithm":"sha256-tensors-v1","value":"<hex>"}``)."""
    import json

    return (
        COMMENT_PREFIX + json.dumps({"algorithm": algorithm, "value": value}, separators=(",", ":")).encode()
    )


def zip_comment(path: str | os.PathLike[str]) -> tuple[bytes, int] | None:
    """The comment of the zip archive at ``path`` as ``(bytes on disk, length its record
    declares)``: the two differ when the file was cut short inside the comment. None when the file
    does not end with a zip end-of-central-directory record (not a zip archive, or cut shorter)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (_ZIP_END_SIZE + 0xFFFF)))
        tail = f.read()
    at = len(tail)
    while True:
        at = tail.rfind(ZIP_END, 0, at)
        if at < 0:
            return None
        if at + _ZIP_END_SIZE <= len(tail):
            length = int.from_bytes(tail[at + 20 : at + 22], "little")
            present = tail[at + _ZIP_END_SIZE :]
            if len(present) == length or (
                len(present) < length and present.startswith(COMMENT_PREFIX[: len(present)])
            ):
                return bytes(present), length
        at += 3  # (rfind's end is exclusive: look for an earlier start)


def is_comment_marker(record: Any) -> bool:
    """Whether ``record`` (a checkpoint's ``"digest"`` entry) says the digest is in the zip comment."""
    return isinstance(record, Mapping) and record.get("in") == IN_COMMENT and "value" not in record


def file_digest(path: str | os.PathLike[str]) -> Any:
    """The digest record ``write_checkpoint`` stored in the zip comment of the file at ``path``:
    ``{"algorithm": ..., "value": ...}``; a string saying what is wrong when the comment starts like
    one but does not parse or was cut short (``stored_digest`` then reports it as unreadable);
    None when the file has no such comment (an older fulmen file keeps its digest in the pickle)."""
    import json

    try:
        found = zip_comment(path)
    except OSError:
        return None
    if found is None or not found[0].startswith(COMMENT_PREFIX[: len(found[0])]) or found[1] == 0:
        return None
    comment, length = found
    if len(comment) < length:
        return f"cut short: {len(comment)} of its {length} bytes on disk"
    text = comment[len(COMMENT_PREFIX) :].decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        return text
    if (
        isinstance(record, dict)
        and isinstance(record.get("algorithm"), str)
        and isinstance(record.get("value"), str)
    ):
        return {"algorithm": record["algorithm"], "value": record["value"]}
    return text


def comment_cut_short(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` ends inside a zip comment (a file cut short by a few bytes)."""
    try:
        found = zip_comment(path)
    except OSError:
        return False
    return found is not None and len(found[0]) < found[1]


def with_file_digest(ckpt: Any, path: str | os.PathLike[str]) -> Any:
    """``ckpt`` (read from ``path``) with the digest from the file's zip comment put at
    ``ckpt["digest"]`` when its pickle holds none or only ``COMMENT_MARKER``, so code that reads
    ``ckpt["digest"]`` finds it wherever the file kept it. A digest in the pickle (files older
    fulmen wrote) is left as it is; so is the marker when the file has no comment."""
    if isinstance(ckpt, dict) and (DIGEST_KEY not in ckpt or is_comment_marker(ckpt[DIGEST_KEY])):
        record = file_digest(path)
        if record is not None:
            ckpt[DIGEST_KEY] = record
    return ckpt
