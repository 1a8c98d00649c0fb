"""The audit trail of a run's checkpoints: an append-only, hash-chained ``checkpoints.jsonl``.

Every checkpoint written with ``write_checkpoint(..., audit_dir=run_dir)`` adds one line to
``run_dir/checkpoints.jsonl``::

    {"file": "checkpoints/epoch=0-step=2.ckpt", "step": 2, "epoch": 0, "time": "2025-...Z",
     "metrics": {"val_loss": 0.25}, "digest": "<tensor digest>", "file_sha256": "<sha256 of the file>",
     "size": 1234, "prev": "<sha256 of the previous line's text>"}

``file`` is relative to the run folder when the checkpoint is inside it (else absolute);
``prev`` is ``"0" * 64`` on the first line. The checkpoint itself also holds ``file``, ``time``,
``metrics`` and ``prev`` (under ``ckpt["audit"]``, covered by its digest), so a line whose
checkpoint is still on disk cannot be edited without the edit showing, even the last line.

**Where the log is.** ``fulmen.Trainer`` keeps it in the run folder. ``fulmen.lightning.Trainer``
keeps it outside the folders the program chose (``audit_dir=OutsideLog(run_dir)``), so a checkpoint
folder holds only checkpoints (the run folder holds Lightning's files and fulmen's run record): in ``audit_home()/<key>/checkpoints.jsonl``, where
``audit_home()`` is ``$FULMEN_AUDIT_HOME`` (default ``$XDG_STATE_HOME/fulmen/audit``, i.e.
``~/.local/state/fulmen/audit``) and ``<key>`` the first 16 hex digits of the SHA-256 of the run
folder's real path; a ``folder.txt`` beside it names the folder. A log already in the run folder
is continued there. The readers below (``verify_run``, ``read_log``, ``chain_head``) look in the
run folder first, then in that place; ``find_run`` finds the run folder of a checkpoint folder.
A run folder moved elsewhere keeps its log under the old path's key: pass ``log=`` (``fulmen
verify --log``).

``verify_run(run_dir)`` checks the folder against its log:

- ``history_rewritten``: a line is not valid JSON, its ``prev`` is not the hash of the line before
  it (a line was edited, removed or inserted), or it disagrees with what its checkpoint recorded;
- ``modified``: a checkpoint's bytes (``file_sha256``) or its content (tensor digest) changed;
- ``truncated``: a checkpoint is shorter than when it was written;
- ``unreadable``: it no longer loads (``torch.load(weights_only=True)``);
- ``removed_out_of_order``: a checkpoint is missing that rotation cannot have removed. Rotation
  (``ModelCheckpoint`` keeping the newest or the top k) deletes a file only after a newer
  checkpoint has been written to the same folder, so **the newest entry of each folder must
  exist**; older files may be gone. An entry whose path a later entry wrote again is checked
  only through that later entry (the file was replaced, e.g. ``last.ckpt``);
- ``unknown_checkpoint``: a checkpoint (a dict with a ``state_dict``, or a bare ``state_dict``)
  the log does not name, in the run folder, its ``checkpoints/`` folder, or a folder inside the
  run folder that the log records checkpoints in (not recursive, and not folders outside the run,
  which other runs may share). The message says which: fulmen's checkpointing did not write it (it
  holds no audit record: added by hand, or saved by other code); fulmen wrote it here right after
  the log's last line (the run was killed between writing it and logging it, or that line was
  removed); fulmen wrote it here after an earlier line (its own line was removed); or fulmen wrote
  it for another log (copied from another run). A symbolic or hard link to a logged checkpoint,
  or a byte-identical copy of one (``ModelCheckpoint(save_last=True)``), counts as that checkpoint;
- ``unknown_file``: a ``.ckpt``/``.pt``/``.pth`` file there that is not a checkpoint (it does not
  load with ``weights_only=True``, or holds something else) and that fulmen did not record;
- ``missing_log``: there is no log, yet checkpoints fulmen wrote (with an audit record) are in
  the folder (the log was deleted, or the folder copied or moved; or the run was killed between
  writing its first checkpoint and logging it); or ``log=`` / ``expected_head=`` asked for one.

Files fulmen writes into a run folder that are not checkpoints: those with another extension
(``metrics.csv``, ``hparams.yaml``, ``run.json``, ``config.yaml``, TensorBoard events, profiler
reports and traces, ``report/``, the ``code/`` snapshot) are never taken for checkpoints; one
with a checkpoint's extension (``predictions.pt`` from ``fulmen.report.save_predictions``) is
recorded in the log when it is written (``record_artifact``: a line with ``"artifact"`` instead
of ``"file"``, in the same chain), and then checked (``modified``, ``truncated``) while it is on
disk. A folder with no log and no checkpoint file has no problems: the run has written no
checkpoint yet.

What the chain cannot show: someone who rewrites the whole log and re-saves the checkpoints
consistently (there is no secret key), or who removes the last line together with its file.
Keep the head hash that ``fulmen verify`` prints (or ``chain_head``) somewhere else to detect
those too: ``verify_run(run_dir, expected_head=...)``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fulmen.checkpoint.integrity import DIGEST_KEY, stored_digest, tensor_digest

AUDIT_FILE = "checkpoints.jsonl"
AUDIT_HOME_ENV = "FULMEN_AUDIT_HOME"
FOLDER_FILE = "folder.txt"  # beside a log kept outside its run folder: that folder's path
AUDIT_KEY = "audit"
GENESIS = "0" * 64
CHECKPOINT_EXTENSIONS = (".ckpt", ".pt", ".pth")
_FIELDS = ("file", "step", "epoch", "time", "metrics", "digest", "file_sha256", "size", "prev")
ARTIFACT_KEY = "artifact"  # the line of a recorded file that is not a checkpoint (record_artifact)
_ARTIFACT_FIELDS = (ARTIFACT_KEY, "kind", "time", "file_sha256", "size", "prev")


@dataclass(frozen=True)
class Problem:
    """One thing ``verify_run`` found wrong: ``kind`` (see the module docstring), the file it is
    about (as the log names it, or the path found on disk) and a message for people."""

    kind: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.file}: {self.message}"


# -- writing -------------------------------------------------------------------------------------------
def audit_home() -> str:
    """The per-user folder for audit logs kept outside run folders: ``$FULMEN_AUDIT_HOME``, else
    ``$XDG_STATE_HOME/fulmen/audit``, else ``~/.local/state/fulmen/audit``."""
    home = os.environ.get(AUDIT_HOME_ENV)
    if home:
        return os.path.abspath(os.path.expanduser(home))
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(state), "fulmen", "audit")


def outside_log_dir(run_dir: str | os.PathLike[str]) -> str:
    """The folder under ``audit_home()`` that holds the log of ``run_dir`` when it is kept outside
    it: named by the SHA-256 of the folder's real path (first 16 hex digits)."""
    real = os.path.realpath(os.fspath(run_dir))
    key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(audit_home(), key)


class OutsideLog(os.PathLike[str]):
    """A run folder whose new audit log is kept outside it, in ``outside_log_dir(run_dir)``
    (``fulmen.lightning``: the folders a Lightning program chose hold only Lightning's files).

    Pass it as ``audit_dir`` to ``write_checkpoint``; as a path it is the run folder, so entries
    still name checkpoints relative to it. A log already in the run folder is continued there.
    """

    __slots__ = ("run_dir",)

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = os.fspath(run_dir)

    def __fspath__(self) -> str:
        return self.run_dir

    def __repr__(self) -> str:
        return f"OutsideLog({self.run_dir!r})"


def _log_path(run_dir: str | os.PathLike[str]) -> str:
    """Where ``run_dir``'s log is: ``run_dir/checkpoints.jsonl`` when that exists, else the one kept
    for it under ``audit_home()`` when that exists; a new log goes into the run folder, or outside
    it for an ``OutsideLog``."""
    inside = os.path.join(os.fspath(run_dir), AUDIT_FILE)
    if os.path.exists(inside):
        return inside
    outside = os.path.join(outside_log_dir(run_dir), AUDIT_FILE)
    if isinstance(run_dir, OutsideLog) or os.path.exists(outside):
        return outside
    return inside


def log_file(run_dir: str | os.PathLike[str]) -> str | None:
    """The audit log of ``run_dir`` (in it, or kept for it under ``audit_home()``), or None."""
    path = _log_path(run_dir)
    return path if os.path.exists(path) else None


def find_run(folder: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(run folder, log file)`` for the checkpoints in ``folder``: ``folder`` itself when it has a
    log, else the nearest folder above it whose log names a checkpoint inside ``folder`` (a
    ``checkpoints/`` folder inside a run folder). None when there is none."""
    start = os.path.realpath(os.fspath(folder))
    own = log_file(start)
    if own is not None:
        return start, own
    current = start
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
        log = log_file(current)
        if log is None:
            continue
        for entry in _parse_lines(log):
            if _is_artifact(entry):
                continue
            name = str(entry.get("file", ""))
            path = os.path.realpath(name if os.path.isabs(name) else os.path.join(current, name))
            if _inside(start, path):
                return current, log


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: str) -> bytes | None:
    """The last line of ``path`` (without its newline), read from the end; None for no file or an
    empty one."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        block, data = 1 << 16, b""
        pos = end
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            body = data[:-1] if data.endswith(b"\n") else data
            cut = body.rfind(b"\n")
            if cut >= 0:
                return body[cut + 1 :]
        return data[:-1] if data.endswith(b"\n") else data


def _inside(root: str, path: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)
    except ValueError:  # different drives
        return False


def _display_path(run_dir: str, path: str) -> str:
    """``path`` relative to ``run_dir`` when it is inside it, else absolute (``/`` separators)."""
    full = os.path.abspath(path)
    shown = os.path.relpath(full, os.path.abspath(run_dir)) if _inside(run_dir, full) else full
    return shown.replace(os.sep, "/")


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as JSON numbers (non-finite ones as the strings ``"nan"``, ``"inf"``, ``"-inf"``);
    values that are not one number are left out."""
    out: dict[str, Any] = {}
    for key in sorted(metrics or {}, key=str):
        value = (metrics or {})[key]
        try:
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        out[str(key)] = number if math.isfinite(number) else repr(number)
    return out


def new_record(audit_dir: str | os.PathLike[str], path: str | os.PathLike[str], metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint about to be written to ``path`` records of its own log line:
    ``file``, ``time``, ``metrics`` and ``prev`` (stored as ``ckpt["audit"]``)."""
    last = _last_line(_log_path(audit_dir))
    audit_dir = os.fspath(audit_dir)
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "file": _display_path(audit_dir, os.fspath(path)),
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "metrics": _plain_metrics(metrics),
        "prev": GENESIS if last is None else _line_hash(last),
    }


def append_entry(
    audit_dir: str | os.PathLike[str],
    record: Mapping[str, Any],
    *,
    step: Any,
    epoch: Any,
    digest: str,
    file_sha256: str,
    size: int,
) -> str:
    """Append the line for a checkpoint written with ``record`` (from ``new_record``) and return
    the new head hash. One ``write`` with ``O_APPEND``, then fsync."""
    entry = {
        "file": record["file"],
        "step": step,
        "epoch": epoch,
        "time": record["time"],
        "metrics": record["metrics"],
        "digest": digest,
        "file_sha256": file_sha256,
        "size": size,
        "prev": record["prev"],
    }
    return _append_line(audit_dir, entry)


def record_artifact(run_dir: str | os.PathLike[str], path: str | os.PathLike[str], *, kind: str) -> str | None:
    """Record a file that fulmen wrote into a run folder and that is not a checkpoint (``kind``
    says what it is, e.g. ``"predictions"`` for ``fulmen.report.save_predictions``): one line
    ``{"artifact": <path>, "kind": ..., "time": ..., "file_sha256": ..., "size": ..., "prev": ...}``
    in the run's log, in the same hash chain. ``verify_run`` then knows the file and checks that
    its bytes are still the recorded ones. Returns the new head hash. The log is created when the
    run has none yet (a run that writes no checkpoint, or none so far). Under ``torch.distributed``
    only global rank 0 records (it is the one that writes checkpoints; two processes appending at
    once would fork the chain) and None is returned elsewhere."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None
    path = os.fspath(path)
    st = os.stat(path)
    now = datetime.datetime.now(datetime.timezone.utc)
    entry = {
        "artifact": _display_path(os.fspath(run_dir), path),
        "kind": str(kind),
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "file_sha256": file_sha256(path),
        "size": st.st_size,
        "prev": _head_or_genesis(_log_path(run_dir)),
    }
    return _append_line(run_dir, entry)


def _head_or_genesis(log: str) -> str:
    last = _last_line(log)
    return GENESIS if last is None else _line_hash(last)


def _append_line(audit_dir: str | os.PathLike[str], entry: Mapping[str, Any]) -> str:
    """Append ``entry`` as one JSON line to ``audit_dir``'s log (one ``write`` with ``O_APPEND``,
    then fsync) and return its hash."""
    path = _log_path(audit_dir)
    log_dir = os.path.dirname(path)
    audit_dir = os.fspath(audit_dir)
    line = json.dumps(dict(entry), separators=(",", ":"), ensure_ascii=True).encode("ascii")
    outside = os.path.abspath(log_dir) != os.path.abspath(audit_dir)
    os.makedirs(log_dir, mode=0o700 if outside else 0o777, exist_ok=True)
    created = not os.path.exists(path)
    if created and outside:  # which folder this log belongs to, for people browsing audit_home()
        with open(os.path.join(log_dir, FOLDER_FILE), "w", encoding="utf-8") as f:
            f.write(os.path.realpath(audit_dir) + "\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the mode open() gives under the umask
    try:
        size_now = os.fstat(fd).st_size
        torn = b""
        if size_now:
            with open(path, "rb") as f:
                f.seek(size_now - 1)
                if f.read(1) != b"\n":
                    torn = b"\n"  # the previous write was cut off: keep its fragment on its own line
        data = torn + line + b"\n"
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        from fulmen.checkpoint.io import _fsync_dir

        _fsync_dir(log_dir)
    return _line_hash(line)


# -- reading ------------------------------------------------------------------------------------------
def _parse_lines(log: str) -> list[dict[str, Any]]:
    try:
        with open(log, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for raw in data.split(b"\n"):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _is_artifact(entry: Mapping[str, Any]) -> bool:
    return ARTIFACT_KEY in entry


def read_log(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The checkpoint entries of ``run_dir``'s ``checkpoints.jsonl`` (in it, or kept for it under
    ``audit_home()``; ``log`` names the file explicitly) that parse (no checks; see ``verify_run``).
    The lines of recorded files that are not checkpoints are left out (``read_artifacts``)."""
    return [e for e in _parse_lines(os.fspath(log) if log is not None else _log_path(run_dir)) if not _is_artifact(e)]


def read_artifacts(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The lines of ``run_dir``'s log that record files other than checkpoints (``record_artifact``)."""
    return [e for e in _parse_lines(os.fspath(log) if log is not None else _log_path(run_dir)) if _is_artifact(e)]


def chain_head(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> str | None:
    """SHA-256 of the log's last line: record it elsewhere to detect a later rewrite of the log."""
    last = _last_line(os.fspath(log) if log is not None else _log_path(run_dir))
    return None if last is None else _line_hash(last)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def _load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return torch.load(path, map_location="cpu", weights_only=True)  # files mmap cannot read


def _load_error(err: BaseException) -> str:
    """Why a file does not load, in one line (torch's own message for a refused pickle suggests an
    unsafe load; this one does not)."""
    import pickle

    if isinstance(err, pickle.UnpicklingError):
        return (
            "UnpicklingError: it holds Python objects other than tensors and plain containers, which a safe load "
            "(weights_only=True) refuses; loading it any other way can run code it contains"
        )
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def _describe(obj: Any) -> str:
    """What a loaded file holds, for a message: ``a dict with keys a, b, c`` or ``a Tensor``."""
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:6]]
        more = ", ..." if len(obj) > 6 else ""
        return f"a dict with keys {', '.join(keys)}{more}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def _is_checkpoint(obj: Any) -> bool:
    """A checkpoint (fulmen's, Lightning's, a ``{"state_dict": ...}``) or a bare ``state_dict``
    (tensors under parameter names: ``layer.weight``, or ``weight``/``bias`` of one module)."""
    if not isinstance(obj, Mapping) or not obj:
        return False
    if any(k in obj for k in ("state_dict", AUDIT_KEY, DIGEST_KEY)):
        return True
    names = [str(k) for k in obj]
    return all(isinstance(v, torch.Tensor) for v in obj.values()) and any(
        "." in n or n in ("weight", "bias") for n in names
    )


def _check_file(line: int, entry: dict[str, Any], path: str, load: bool) -> list[Problem]:
    shown = str(entry.get("file"))
    modified: list[str] = []
    problems: list[Problem] = []
    size = os.path.getsize(path)
    expected_size = entry.get("size")
    truncated = isinstance(expected_size, int) and size < expected_size
    if truncated:
        problems.append(
            Problem("truncated", shown, f"{size} bytes on disk, {expected_size} when written (line {line} of the log)")
        )
    else:
        actual = file_sha256(path)
        if actual != entry.get("file_sha256"):
            modified.append(
                f"its SHA-256 is {actual}, the log recorded {entry.get('file_sha256')} (line {line}); "
                f"size {size} bytes, {expected_size} when written"
            )
    ckpt: Any = None
    if load:
        try:
            ckpt = _load(path)
        except Exception as err:
            if not truncated:
                problems.append(Problem("unreadable", shown, f"torch.load(weights_only=True) fails: {_load_error(err)}"))
        else:
            if not isinstance(ckpt, Mapping):
                problems.append(Problem("unreadable", shown, f"it holds {_describe(ckpt)}, not a checkpoint dict"))
                ckpt = None
    if ckpt is not None:
        digest = tensor_digest(ckpt)
        stored = stored_digest(ckpt)
        if digest != entry.get("digest"):
            modified.append(f"its content digest is {digest}, the log recorded {entry.get('digest')}")
        elif stored is not None and stored[1] != digest:
            modified.append(f"the digest stored inside it ({stored[1]}) does not match its content")
    if modified:
        problems.append(Problem("modified", shown, "; ".join(modified)))
    elif ckpt is not None and isinstance(ckpt.get(AUDIT_KEY), Mapping):
        own = ckpt[AUDIT_KEY]
        differ = [(k, own.get(k)) for k in ("file", "time", "metrics", "prev") if own.get(k) != entry.get(k)]
        differ += [(k, ckpt[ck]) for k, ck in (("step", "global_step"), ("epoch", "epoch")) if ck in ckpt and ckpt[ck] != entry.get(k)]
        if differ:
            problems.append(
                Problem(
                    "history_rewritten",
                    shown,
                    f"line {line} of the log disagrees with what the checkpoint recorded about itself: "
                    + "; ".join(f"{k} is {entry.get(k)!r} in the log, {v!r} in the file" for k, v in differ),
                )
            )
    return problems


def _check_artifact(line: int, entry: dict[str, Any], path: str) -> list[Problem]:
    """A recorded file that is not a checkpoint: its bytes must be the recorded ones."""
    shown, what = str(entry.get(ARTIFACT_KEY)), f"the {entry.get('kind')} file recorded on line {line} of the log"
    size, expected_size = os.path.getsize(path), entry.get("size")
    if isinstance(expected_size, int) and size < expected_size:
        return [Problem("truncated", shown, f"{size} bytes on disk, {expected_size} when {what} was written")]
    actual = file_sha256(path)
    if actual != entry.get("file_sha256"):
        return [
            Problem(
                "modified",
                shown,
                f"its SHA-256 is {actual}, {entry.get('file_sha256')} when {what} was written; "
                f"size {size} bytes, {expected_size} then",
            )
        ]
    return []


def _scan(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [
        os.path.join(folder, n)
        for n in sorted(names)
        if n.endswith(CHECKPOINT_EXTENSIONS) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
    ]


@dataclass(frozen=True)
class _Unlogged:
    """A checkpoint file fulmen wrote (it holds an audit record) that the log does not name."""

    shown: str
    step: Any
    time: Any
    here: bool  # its record names this path
    prev: Any
    complete: bool  # its own digest matches its content


def _classify(run_dir: str, found: str, shown: str) -> Problem | _Unlogged:
    """Say what an unlogged ``.ckpt``/``.pt``/``.pth`` file is: not loadable or not a checkpoint
    (``unknown_file``), a checkpoint fulmen's checkpointing did not write (``unknown_checkpoint``),
    or one it wrote (``_Unlogged``, for the caller to place against the log)."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on a foreign file's pickle protocol: not ours to pass on
            warnings.simplefilter("ignore")
            obj = _load(found)
    except Exception as err:
        return Problem(
            "unknown_file",
            shown,
            f"fulmen recorded no file of this name, and it is not a checkpoint: it does not load with "
            f"torch.load(weights_only=True) ({_load_error(err)}). Move it out of the run folder: "
            f"fulmen verify checks every {'/'.join(CHECKPOINT_EXTENSIONS)} file in it",
        )
    if not _is_checkpoint(obj):
        return Problem(
            "unknown_file",
            shown,
            f"fulmen recorded no file of this name, and it is not a checkpoint (it holds {_describe(obj)}): "
            f"written by other code or added by hand. Move it out of the run folder: fulmen verify checks "
            f"every {'/'.join(CHECKPOINT_EXTENSIONS)} file in it",
        )
    own = obj.get(AUDIT_KEY)
    if not isinstance(own, Mapping):
        return Problem(
            "unknown_checkpoint",
            shown,
            "the log has no entry for this checkpoint, and fulmen's checkpointing did not write it (it holds no "
            "audit record of its own): added by hand or saved by other code",
        )
    name = str(own.get("file"))
    written = os.path.realpath(name if os.path.isabs(name) else os.path.join(run_dir, name))
    stored = stored_digest(obj)
    return _Unlogged(
        shown=shown,
        step=obj.get("global_step"),
        time=own.get("time"),
        here=written == os.path.realpath(found),
        prev=own.get("prev"),
        complete=stored is not None and stored[1] == tensor_digest(obj),
    )


def _place(found: _Unlogged, hashes: list[str]) -> Problem:
    """The problem of a checkpoint fulmen wrote that a (present) log does not name."""
    when = f"at step {found.step} ({found.time})"
    intact = "complete: its own digest matches its content" if found.complete else "its content no longer matches its own digest"
    if found.here and found.prev == (hashes[-1] if hashes else GENESIS):
        cause = (
            f"which fulmen wrote here {when} right after the log's last line ({intact}): the run stopped between "
            "writing it and logging it (killed), or the log's last line was removed"
        )
    elif found.here and found.prev in hashes:
        cause = (
            f"which fulmen wrote here {when} after line {hashes.index(found.prev) + 1} of the log ({intact}): "
            "its own line was removed from the log"
        )
    else:
        cause = (
            f"fulmen wrote it {when} for another log (it follows no line of this one; {intact}): it was copied "
            "here from another run or folder"
        )
    return Problem("unknown_checkpoint", found.shown, f"the log has no entry for this checkpoint, {cause}")


def verify_run(
    run_dir: str | os.PathLike[str],
    *,
    load: bool = True,
    expected_head: str | None = None,
    log: str | os.PathLike[str] | None = None,
) -> list[Problem]:
    """Check the run folder's checkpoints against ``checkpoints.jsonl``; no problems means it is intact.

    Re-hashes every checkpoint the log names that is still on disk (its file SHA-256 and, with
    ``load``, its tensor digest after ``torch.load(weights_only=True)``), and every other file the
    log records (``record_artifact``), checks the hash chain, and looks for missing and unknown
    checkpoints (rules in the module docstring). Files the log does not name are loaded (safely)
    to say what they are, also without ``load``. A folder with no log and no checkpoint file has
    no problems: the run has written no checkpoint yet (``describe_run`` says so).
    ``expected_head``: a head hash recorded earlier (``chain_head``); the log must still contain
    that line. ``log``: the log file, when it is not where ``write_checkpoint`` put it (the run
    folder, or for an ``OutsideLog`` the folder kept for it under ``audit_home()``), e.g. after the
    run folder was moved.
    """
    run_dir = os.path.realpath(os.fspath(run_dir))
    log_path = os.fspath(log) if log is not None else _log_path(run_dir)
    where = (
        f"{log_path} does not exist"
        if log is not None
        else f"{run_dir} has no {AUDIT_FILE}, and none is kept for it in {outside_log_dir(run_dir)}"
    )
    problems: list[Problem] = []
    try:
        with open(log_path, "rb") as f:
            data: bytes | None = f.read()
    except FileNotFoundError:
        data = None
        if log is not None or expected_head is not None:
            problems.append(Problem("missing_log", AUDIT_FILE, f"{where}, but a log was expected"))
    lines = (data or b"").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    prev = GENESIS
    hashes: list[str] = []
    entries: list[tuple[int, dict[str, Any]]] = []
    artifacts: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(lines, 1):
        expected, prev = prev, _line_hash(raw)
        hashes.append(prev)
        try:
            entry = json.loads(raw)
            fields = _ARTIFACT_FIELDS if isinstance(entry, dict) and _is_artifact(entry) else _FIELDS
            if not isinstance(entry, dict) or any(k not in entry for k in fields):
                raise ValueError("not an entry with the fields " + ", ".join(_FIELDS))
        except ValueError as err:
            problems.append(
                Problem("history_rewritten", AUDIT_FILE, f"line {number} is not a valid log entry ({err}): {raw[:120]!r}")
            )
            continue
        name = str(entry[ARTIFACT_KEY] if _is_artifact(entry) else entry["file"])
        if entry["prev"] != expected:
            problems.append(
                Problem(
                    "history_rewritten",
                    name,
                    f"line {number}'s link to the line before it is broken: "
                    + ("the first line must have prev 0...0, so lines before it were removed" if number == 1 else f"line {number - 1} was edited, or lines between were removed or inserted"),
                )
            )
        (artifacts if _is_artifact(entry) else entries).append((number, entry))
    if data is not None and expected_head is not None and expected_head not in hashes:
        problems.append(
            Problem("history_rewritten", AUDIT_FILE, f"no line of the log has the recorded head hash {expected_head}: the log was rewritten or cut")
        )

    def resolve(name: Any) -> str:
        p = os.path.join(run_dir, str(name)) if not os.path.isabs(str(name)) else str(name)
        return os.path.realpath(p)

    latest: dict[str, tuple[int, dict[str, Any]]] = {}  # per file: the last entry that wrote it
    newest_in_folder: dict[str, str] = {}
    for number, entry in entries:
        path = resolve(entry["file"])
        latest[path] = (number, entry)
        newest_in_folder[os.path.dirname(path)] = path

    newest = set(newest_in_folder.values())
    # A path that is now a hard link to a file logged later (save_last re-linking "last.ckpt" to
    # the newest checkpoint) holds that file's bytes: check it against the later entry.
    by_inode: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    for path, (number, entry) in latest.items():
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key not in by_inode or by_inode[key][0] < number:
            by_inode[key] = (number, entry)
    for path, (number, entry) in latest.items():
        if os.path.isfile(path):
            st = os.stat(path)
            number, entry = max((number, entry), by_inode.get((st.st_dev, st.st_ino), (number, entry)), key=lambda ne: ne[0])
            problems.extend(_check_file(number, entry, path, load))
        elif path in newest:
            problems.append(
                Problem(
                    "removed_out_of_order",
                    str(entry["file"]),
                    f"the newest checkpoint in its folder (line {number}) is missing; rotation only removes a file "
                    f"after a newer one is written beside it",
                )
            )

    # Recorded files that are not checkpoints (predictions): checked while on disk; deleting one is allowed.
    recorded: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, entry in artifacts:
        recorded[resolve(entry[ARTIFACT_KEY])] = (number, entry)
    for path, (number, entry) in recorded.items():
        if os.path.isfile(path):
            problems.extend(_check_artifact(number, entry, path))

    # Only folders of this run: a folder outside it may be shared with other runs.
    folders = {run_dir, os.path.join(run_dir, "checkpoints")}
    folders |= {os.path.dirname(p) for p in latest if _inside(run_dir, p)}
    inodes = set()  # a hard link to a logged checkpoint (e.g. a "last.ckpt") is that checkpoint
    for p in latest:
        try:
            st = os.stat(p)
            inodes.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    logged = {(e.get("size"), e.get("file_sha256")) for _, e in latest.values()}
    logged_sizes = {size for size, _ in logged}
    unlogged: list[_Unlogged] = []
    for folder in sorted(folders):
        for found in _scan(folder):
            st = os.stat(found)
            real = os.path.realpath(found)
            if real in latest or real in recorded or (st.st_dev, st.st_ino) in inodes:
                continue
            if st.st_size in logged_sizes and (st.st_size, file_sha256(found)) in logged:
                continue  # a byte-identical copy of a logged checkpoint (save_last without links)
            what = _classify(run_dir, found, _display_path(run_dir, found))
            if isinstance(what, Problem):
                problems.append(what)
            elif data is not None:
                problems.append(_place(what, hashes))
            else:
                unlogged.append(what)
    if unlogged:  # checkpoints fulmen wrote, and no log: the log is what is missing
        first = len(unlogged) == 1 and unlogged[0].here and unlogged[0].prev == GENESIS
        problems.append(
            Problem(
                "missing_log",
                AUDIT_FILE,
                f"{where}, yet fulmen wrote {len(unlogged)} checkpoint(s) here with an audit record "
                f"({', '.join(u.shown for u in unlogged[:5])}{', ...' if len(unlogged) > 5 else ''}): "
                + (
                    "the run was killed between writing its first checkpoint and logging it, the log was deleted, "
                    "or the folder was copied or moved from where it was written"
                    if first
                    else "the log was deleted, or the folder was copied or moved from where it was written"
                )
                + " (pass the log of a moved folder with --log FILE)",
            )
        )
    problems.sort(key=lambda p: p.kind == "missing_log", reverse=True)  # the missing log first: it explains the rest
    return problems


def describe_run(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> str:
    """What ``fulmen verify`` prints after ``OK <run_dir>:`` for a run ``verify_run`` passed: the
    number of log lines, the checkpoints and recorded files on disk, and the head hash; for a run
    with no checkpoint yet, that."""
    run_dir = os.path.realpath(os.fspath(run_dir))
    log_path = os.fspath(log) if log is not None else _log_path(run_dir)
    if not os.path.exists(log_path):
        return (
            f"no checkpoint yet, nothing to verify (the audit log {AUDIT_FILE} starts with the run's first checkpoint)"
        )
    entries = _parse_lines(log_path)

    def on_disk(key: str) -> list[str]:
        names = {str(e.get(key)) for e in entries if (key == ARTIFACT_KEY) == _is_artifact(e)}
        return sorted(n for n in names if os.path.isfile(n if os.path.isabs(n) else os.path.join(run_dir, n)))

    checkpoints, files = on_disk("file"), on_disk(ARTIFACT_KEY)
    head = f"head {chain_head(run_dir, log=log_path)}"
    recorded = f"{len(files)} recorded file(s) on disk verified ({', '.join(files)})" if files else ""
    if not any(not _is_artifact(e) for e in entries):
        return ", ".join(x for x in (f"no checkpoint yet; {len(entries)} log entries", recorded, head) if x)
    return ", ".join(
        x for x in (f"{len(entries)} log entries", f"{len(checkpoints)} checkpoint(s) on disk verified", recorded, head) if x
    )
