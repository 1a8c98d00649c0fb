"""Fingerprints of a run's data: what the data *is*, recorded in ``run.json`` and checked on reproduce.

A fingerprint is a string ``"sha256:<64 hex digits>"``. Equal data gives equal fingerprints on
any machine, wherever the data lives; any change to the data gives a different one.

- ``fingerprint_files(*paths)``: files and folders. A folder is walked in sorted order (symbolic
  links followed, each real folder once); every file's name relative to the folder given, its
  size and the SHA-256 of its content enter the digest, so a renamed, added, removed or edited
  file changes it. Where the data lives does not: the paths given are not part of it, only their
  order and, inside folders, the relative names. Empty folders do not count.
- ``fingerprint_tensors(*tensors)``: torch tensors and NumPy arrays, by dtype, shape and bytes
  (the canonical encoding of checkpoint digests, ``fulmen.checkpoint.integrity.tensor_digest``).
- ``fingerprint(obj)``: either of the above chosen by type, for a ``TensorDataset`` (its tensors),
  a ``Subset`` of one (with its indices), a tensor or array, a path, or a list, tuple or dict of those.
- ``data_fingerprints(trainer)``: the ``"data"`` section of ``run.json``; ``compare_data`` lists
  the differences between two of them; ``check_reproduce_record`` raises ``DataError`` when the
  run named by ``FULMEN_REPRODUCE_RECORD`` (set by ``fulmen reproduce``) had other data.

Hashing large files is the slow part, so content digests are cached in
``$FULMEN_CACHE_DIR/file-sha256.json`` (default ``~/.cache/fulmen/``) keyed by absolute path,
size and modification time (ns): a file whose size and mtime are unchanged is not read again.
A file modified less than two seconds before it was hashed is not cached (a later write within
the file system's timestamp resolution could keep its mtime). The cache is written atomically
and ignored when it cannot be read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fulmen.utils.files import file_sha256

PREFIX = "sha256:"
CACHE_NAME = "file-sha256.json"
CACHE_FORMAT = 1
CACHE_LIMIT = 200_000  # entries kept; beyond it only the files of the latest call are kept
REPRODUCE_ENV = "FULMEN_REPRODUCE_RECORD"
NOT_IN_MEMORY = "not in memory: declare DataModule.fingerprint()"
_RACY_NS = 2_000_000_000


# -- files --------------------------------------------------------------------------------------------
def cache_path() -> str:
    """The file-digest cache: ``$FULMEN_CACHE_DIR/file-sha256.json``, default ``~/.cache/fulmen/``."""
    folder = os.environ.get("FULMEN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fulmen")
    return os.path.join(folder, CACHE_NAME)


def _read_cache(path: str) -> dict[str, list[Any]]:
    """The cached ``{absolute path: [size, mtime_ns, sha256 hex]}``; empty when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        files = data["files"] if data.get("format") == CACHE_FORMAT else {}
        return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 3}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_cache(path: str, files: dict[str, list[Any]]) -> None:
    """Replace the cache atomically (a temp file renamed over it); a failure is ignored."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_", suffix=".part")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": CACHE_FORMAT, "files": files}, f)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """``(relative name with '/', path)`` of every file under ``root``, in sorted order; symbolic
    links followed, each real folder visited once."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                yield os.path.relpath(path, root).replace(os.sep, "/"), path


def _listing(paths: tuple[Any, ...]) -> list[tuple[int, str, str]]:
    """``(argument index, relative name, path)`` of every file to hash; '' names a file given itself."""
    out: list[tuple[int, str, str]] = []
    for i, given in enumerate(paths):
        path = os.path.abspath(os.fspath(given))
        if os.path.isdir(path):
            out.extend((i, rel, p) for rel, p in _walk(path))
        elif os.path.isfile(path):
            out.append((i, "", path))
        else:
            raise FileNotFoundError(
                f"fingerprint_files: {os.fspath(given)!r} is not a file or folder; pass the files or folders "
                f"that hold the data (relative paths are read from {os.getcwd()!r})."
            )
    return out


def _content_digests(paths: list[str]) -> dict[str, tuple[int, str]]:
    """``{path: (size, sha256 hex)}``: from the cache when size and mtime match, hashed otherwise."""
    where = cache_path()
    cache = _read_cache(where)
    out: dict[str, tuple[int, str]] = {}
    todo: list[tuple[str, os.stat_result]] = []
    for path in dict.fromkeys(paths):
        st = os.stat(path)
        hit = cache.get(path)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns and isinstance(hit[2], str):
            out[path] = (st.st_size, hit[2])
        else:
            todo.append((path, st))
    if not todo:
        return out
    workers = min(8, len(todo), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="fulmen-fingerprint") as pool:
        hashes = list(pool.map(file_sha256, [p for p, _ in todo]))
    now, stored = time.time_ns(), 0
    for (path, st), sha in zip(todo, hashes):
        out[path] = (st.st_size, sha)
        if now - st.st_mtime_ns >= _RACY_NS:
            cache[path] = [st.st_size, st.st_mtime_ns, sha]
            stored += 1
    if len(cache) > CACHE_LIMIT:
        cache = {p: cache[p] for p in out if p in cache}
    if stored:
        _write_cache(where, cache)
    return out


def fingerprint_files(*paths: str | os.PathLike[str]) -> str:
    """The fingerprint of these files and folders (see the module docstring): ``"sha256:<hex>"``."""
    if not paths:
        raise TypeError("fingerprint_files() needs at least one file or folder")
    listing = _listing(paths)
    digests = _content_digests([p for _, _, p in listing])
    h = hashlib.sha256(b"fulmen-files-v1\n")
    for i, rel, path in listing:
        size, sha = digests[path]
        h.update(json.dumps([i, rel, size, sha]).encode("utf-8") + b"\n")
    h.update(json.dumps(["end", len(paths)]).encode("utf-8"))
    return PREFIX + h.hexdigest()


# -- tensors and datasets -----------------------------------------------------------------------------
def fingerprint_tensors(*tensors: Any) -> str:
    """The fingerprint of torch tensors and NumPy arrays (dtype, shape and bytes, in order):
    ``"sha256:<hex>"``, the checkpoint digest (``tensor_digest``) of their list."""
    import numpy as np
    import torch

    from fulmen.checkpoint.integrity import tensor_digest

    for t in tensors:
        if not isinstance(t, (torch.Tensor, np.ndarray)) or (isinstance(t, np.ndarray) and t.dtype == object):
            raise TypeError(
                f"fingerprint_tensors: expected torch tensors or NumPy arrays of numbers, got {type(t).__name__}; "
                "use fulmen.fingerprint.fingerprint(...) for datasets, paths and containers."
            )
    return PREFIX + tensor_digest(list(tensors))


def _combine(kind: str, value: Any) -> str:
    """A fingerprint of a structure of fingerprints (tagged with what it is)."""
    from fulmen.checkpoint.integrity import tensor_digest

    return PREFIX + tensor_digest(["fulmen-fingerprint-v1", kind, value])


def in_memory(dataset: Any) -> bool:
    """Whether ``fingerprint`` can read ``dataset`` itself: a TensorDataset or a Subset of one."""
    from torch.utils.data import Subset, TensorDataset

    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorDataset)


def fingerprint(obj: Any) -> str:
    """The fingerprint of ``obj``: a ``TensorDataset`` (its tensors, as ``fingerprint_tensors``), a
    ``Subset`` (its dataset's fingerprint and its indices), a tensor or array, a ``str`` or
    ``os.PathLike`` (a file or folder, as ``fingerprint_files``), or a list, tuple or dict of
    these (the fingerprints of the items, with the keys of a dict)."""
    import numpy as np
    import torch
    from torch.utils.data import Subset, TensorDataset

    if isinstance(obj, TensorDataset):
        return fingerprint_tensors(*obj.tensors)
    if isinstance(obj, Subset):
        given = obj.indices
        indices = given.to(torch.int64) if isinstance(given, torch.Tensor) else torch.from_numpy(np.asarray(given, dtype=np.int64))
        return _combine("subset", [fingerprint(obj.dataset), indices])
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return fingerprint_tensors(obj)
    if isinstance(obj, (str, os.PathLike)):
        return fingerprint_files(obj)
    if isinstance(obj, Mapping):
        return _combine("dict", {str(k): fingerprint(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return _combine("list", [fingerprint(v) for v in obj])
    raise TypeError(
        f"fingerprint: cannot fingerprint a {type(obj).__module__}.{type(obj).__qualname__}; pass a "
        "TensorDataset, tensors or arrays, paths of files or folders, or a list or dict of these."
    )


# -- the record ---------------------------------------------------------------------------------------
def _declared(datamodule: Any, lenient: bool = False) -> dict[str, Any] | None:
    """The datamodule's entry: its class and what its ``fingerprint()`` declares."""
    from fulmen.errors import HookReturnError

    if datamodule is None:
        return None
    from fulmen.datamodule import DataModule

    name = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
    method = getattr(datamodule, "fingerprint", None)
    if lenient and getattr(type(datamodule), "fingerprint", None) is DataModule.fingerprint:
        method = None  # (fulmen.lightning: a datamodule whose class does not declare one is not asked, as under Lightning)
    value = method() if callable(method) else None
    if value is None:
        why = f"{type(datamodule).__name__}.fingerprint() returned None: override it to declare the data"
        return {"class": name, "fingerprint": None, "reason": why}
    ok = isinstance(value, str) or (
        isinstance(value, Mapping)
        and all(isinstance(k, str) and isinstance(v, (str, type(None))) for k, v in value.items())
    )
    if not ok:
        message = (
            f"{type(datamodule).__name__}.fingerprint() returned {repr(value)[:60]} (type {type(value).__name__}); "
            "expected a str (e.g. fulmen.fingerprint.fingerprint_files(self.data_dir)), a dict of str to str, or None."
        )
        if lenient:  # a LightningDataModule's own method of that name, written for something else
            from fulmen.errors import warn_once

            warn_once(message + " The run record holds no data fingerprint for it.", key="datamodule-fingerprint")
            return {"class": name, "fingerprint": None, "reason": message}
        raise HookReturnError(message)
    return {"class": name, "fingerprint": value if isinstance(value, str) else dict(value)}


def _loader_entry(loader: Any) -> dict[str, Any]:
    """A dataloader's entry: its dataset's class and, for data in memory, its fingerprint."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        why = f"no dataset to read in a {type(loader).__name__}: declare DataModule.fingerprint()"
        return {"dataset": None, "fingerprint": None, "reason": why}
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    if not in_memory(dataset):
        return {"dataset": name, "fingerprint": None, "reason": NOT_IN_MEMORY}
    try:
        return {"dataset": name, "fingerprint": fingerprint(dataset)}
    except Exception as err:  # an automatic fingerprint must not stop a run that declared nothing
        why = f"could not fingerprint it ({type(err).__name__}: {err}): declare DataModule.fingerprint()"
        return {"dataset": name, "fingerprint": None, "reason": why}


def data_fingerprints(trainer: Any) -> dict[str, Any]:
    """The ``"data"`` section of ``run.json`` for the fit ``trainer`` is running (its loaders prepared):
    ``{"datamodule": None | {"class", "fingerprint", ["reason"]}, "train": {"dataset", "fingerprint",
    ["reason"]}, "val": [{...}, ...]}``. A fingerprint is ``"sha256:<hex>"`` (the datamodule's may be
    a dict of them), or None (unknown) with the reason."""
    train = getattr(trainer, "train_dataloader", None)
    vals = getattr(trainer, "val_dataloaders", None) or []
    return {
        # (fulmen.lightning: a method of that name that is not a fingerprint warns instead of stopping the run)
        "datamodule": _declared(getattr(trainer, "datamodule", None), lenient=bool(getattr(trainer.rules, "lightning", False))),
        "train": _loader_entry(train) if train is not None else None,
        "val": [_loader_entry(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])],
    }


def _flat(label: str, entry: Any) -> dict[str, str | None]:
    """``{label: fingerprint}`` of one entry; a dict of fingerprints as ``label[key]`` each."""
    value = entry.get("fingerprint") if isinstance(entry, Mapping) else None
    if isinstance(value, Mapping):
        return {f"{label}[{k}]": v for k, v in value.items()}
    return {label: value}


def _now(entry: Any, value: str | None) -> str:
    """How a current fingerprint reads in a difference: itself, or why there is none."""
    if value is not None:
        return value
    if entry is None:
        return "no such entry"
    return f"unknown ({entry['reason']})" if isinstance(entry, Mapping) and entry.get("reason") else "none"


def _compare_entry(label: str, recorded: Any, current: Any) -> list[str]:
    """The differences of one entry; fingerprints recorded as None are not compared."""
    rec, cur = _flat(label, recorded), _flat(label, current)
    return [
        f"{key}: recorded {value}, now {_now(current, cur.get(key))}"
        for key, value in rec.items()
        if value is not None and cur.get(key) != value
    ]


def compare_data(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per difference between two ``"data"`` sections (``recorded`` first), naming the
    entry (``datamodule``, ``datamodule[key]``, ``train``, ``val[i]``) and both fingerprints. An entry
    recorded as None (unknown) is not compared; a validation dataloader the record does not have is
    a difference."""
    lines = _compare_entry("datamodule", recorded.get("datamodule"), current.get("datamodule"))
    lines += _compare_entry("train", recorded.get("train"), current.get("train"))
    rec_vals, cur_vals = list(recorded.get("val") or []), list(current.get("val") or [])
    for i in range(max(len(rec_vals), len(cur_vals))):
        if i >= len(rec_vals):
            lines.append(
                f"val[{i}]: not in the recorded run, now {_now(cur_vals[i], cur_vals[i].get('fingerprint'))}"
            )
        else:
            lines += _compare_entry(f"val[{i}]", rec_vals[i], cur_vals[i] if i < len(cur_vals) else None)
    return lines


def check_reproduce_record(current: Mapping[str, Any]) -> None:
    """When ``FULMEN_REPRODUCE_RECORD`` names the original run's ``run.json`` (``fulmen reproduce``
    sets it), raise ``DataError`` if its ``"data"`` section differs from ``current``. A record
    without one (an older fulmen) is not compared."""
    from fulmen.errors import DataError

    path = os.environ.get(REPRODUCE_ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{REPRODUCE_ENV}={path!r} cannot be read ({err}); point it at the original run's run.json, or unset "
            "it to train without comparing the data."
        ) from None
    recorded = record.get("data") if isinstance(record, Mapping) else None
    if not isinstance(recorded, Mapping):
        return
    differences = compare_data(recorded, current)
    if differences:
        raise DataError(
            f"The data differs from the run being reproduced ({path}): {'; '.join(differences)}. Restore the "
            "recorded data, or the re-run will not be bitwise equal to the original."
        )
