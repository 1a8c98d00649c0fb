"""The audit trail of a run's checkpoints: an append-only, hash-chained ``checkpoints.jsonl``.

Every checkpoint written with ``write_checkpoint(..., audit_dir=run_dir)`` adds one line to
``run_dir/checkpoints.jsonl``::

    {"file": "checkpoints/epoch=0-step=2.ckpt", "step": 2, "epoch": 0, "time": "2025-...Z",
     "metrics": {"val_loss": 0.25}, "digest": "<tensor digest>", "state_digest": "<tensor digest without
     ckpt['audit']>", "file_sha256": "<sha256 of the file>", "size": 1234, "prev": "<sha256 of the previous line's text>"}

``file`` is relative to the run folder when the checkpoint is inside it (else absolute);
``prev`` is ``"0" * 64`` on the first line. The checkpoint itself also holds ``file``, ``time``,
``metrics`` and ``prev`` (under ``ckpt["audit"]``, covered by its digest), so a line whose
checkpoint is still on disk cannot be edited without the edit showing, even the last line.
``state_digest`` (absent from lines written by older fulmen versions) is the content digest
without that audit record: two deterministic runs of the same program share it.

Two other kinds of line share the chain: a recorded file that is not a checkpoint
(``record_artifact``: ``"artifact"`` instead of ``"file"``), and a digest of the weights taken
along the run (``record_weights``, written by ``fulmen.callbacks.WeightDigests``)::

    {"weights": 50, "epoch": 0, "digest": "<tensor_digest of system.state_dict()>", "time": "...Z", "prev": "..."}

``read_log`` returns the checkpoint lines only; ``read_artifacts`` and ``read_weight_digests`` the others.

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

``fulmen.checkpoint.verify`` checks a run folder against its log (``verify_run``, ``describe_run``,
``Problem``: what ``fulmen verify`` runs; its docstring lists the problems it finds and what the chain
cannot show). Those names are also importable from here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

import torch

from fulmen.utils.files import file_sha256  # (the audit log's file digests; importable from here too)

AUDIT_FILE = "checkpoints.jsonl"
AUDIT_HOME_ENV = "FULMEN_AUDIT_HOME"
FOLDER_FILE = "folder.txt"  # beside a log kept outside its run folder: that folder's path
AUDIT_KEY = "audit"
GENESIS = "0" * 64
CHECKPOINT_EXTENSIONS = (".ckpt", ".pt", ".pth")
_FIELDS = ("file", "step", "epoch", "time", "metrics", "digest", "file_sha256", "size", "prev")
ARTIFACT_KEY = "artifact"  # the line of a recorded file that is not a checkpoint (record_artifact)
_ARTIFACT_FIELDS = (ARTIFACT_KEY, "kind", "time", "file_sha256", "size", "prev")
# Held from reading the log's last line to appending the line that links to it, so that a line
# appended from another thread of this process (WeightDigests hashes in the background) never
# slips between a checkpoint's record and its line, which would fork the chain.
LOG_LOCK = threading.RLock()
WEIGHTS_KEY = "weights"  # the line of a digest of the weights taken along the run (record_weights)
_WEIGHTS_FIELDS = (WEIGHTS_KEY, "epoch", "digest", "time", "prev")



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
            if _is_artifact(entry) or _is_weights(entry):
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
        block, data = 1 << 12, b""  # most lines are shorter; doubled for a longer one
        pos = end
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            block = min(block * 2, 1 << 20)
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
    state_digest: str | None = None,
) -> str:
    """Append the line for a checkpoint written with ``record`` (from ``new_record``) and return
    the new head hash. One ``write`` with ``O_APPEND``, then fsync."""
    entry: dict[str, Any] = {
        "file": record["file"],
        "step": step,
        "epoch": epoch,
        "time": record["time"],
        "metrics": record["metrics"],
        "digest": digest,
    }
    if state_digest is not None:
        entry["state_digest"] = state_digest
    entry.update(file_sha256=file_sha256, size=size, prev=record["prev"])
    return _append_line(audit_dir, entry)


def record_weights(audit_dir: str | os.PathLike[str], *, step: int, epoch: int, digest: str, sync: bool = True) -> str:
    """Append a digest of the weights at optimizer step ``step`` to ``audit_dir``'s log (in the
    same hash chain as the checkpoints; the log is created when the run has none yet):
    ``{"weights": step, "epoch": ..., "digest": ..., "time": ..., "prev": ...}``. Returns the new
    head hash. The caller (``fulmen.callbacks.WeightDigests``) writes from global rank 0 only.
    ``sync=False`` leaves out the fsync (the line is in the operating system's cache at once; the
    next fsynced line, or ``sync_log``, makes it durable)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    entry = {
        WEIGHTS_KEY: int(step),
        "epoch": int(epoch),
        "digest": str(digest),
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }
    with LOG_LOCK:
        entry["prev"] = _head_or_genesis(_log_path(audit_dir))
        return _append_line(audit_dir, entry, sync=sync)


def sync_log(audit_dir: str | os.PathLike[str]) -> None:
    """fsync ``audit_dir``'s log, when it has one: the lines appended with ``sync=False`` are then
    on disk."""
    path = _log_path(audit_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    }
    with LOG_LOCK:
        entry["prev"] = _head_or_genesis(_log_path(run_dir))
        return _append_line(run_dir, entry)


def _head_or_genesis(log: str) -> str:
    last = _last_line(log)
    return GENESIS if last is None else _line_hash(last)


def _append_line(audit_dir: str | os.PathLike[str], entry: Mapping[str, Any], sync: bool = True) -> str:
    """Append ``entry`` as one JSON line to ``audit_dir``'s log (one ``write`` with ``O_APPEND``,
    then fsync unless ``sync`` is False) and return its hash."""
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
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        from fulmen.utils.files import fsync_dir

        fsync_dir(log_dir)
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


def _is_weights(entry: Mapping[str, Any]) -> bool:
    return WEIGHTS_KEY in entry and "file" not in entry


def _is_checkpoint_entry(entry: Mapping[str, Any]) -> bool:
    return not _is_artifact(entry) and not _is_weights(entry)


def read_log(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The checkpoint entries of ``run_dir``'s ``checkpoints.jsonl`` (in it, or kept for it under
    ``audit_home()``; ``log`` names the file explicitly) that parse (no checks; see ``verify_run``).
    The lines of recorded files that are not checkpoints (``read_artifacts``) and of weight
    digests (``read_weight_digests``) are left out."""
    lines = _parse_lines(os.fspath(log) if log is not None else _log_path(run_dir))
    return [e for e in lines if _is_checkpoint_entry(e)]


def read_weight_digests(run_dir: str | os.PathLike[str], log: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The weight digests recorded along the run (``record_weights``), in log order (which is
    step order within one fit): ``{"weights": step, "epoch", "digest", "time", "prev"}`` each;
    no checks (``verify_run`` checks the chain through them)."""
    lines = _parse_lines(os.fspath(log) if log is not None else _log_path(run_dir))
    return [e for e in lines if _is_weights(e)]


def read_artifacts(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The lines of ``run_dir``'s log that record files other than checkpoints (``record_artifact``)."""
    return [e for e in _parse_lines(os.fspath(log) if log is not None else _log_path(run_dir)) if _is_artifact(e)]


def chain_head(run_dir: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> str | None:
    """SHA-256 of the log's last line: record it elsewhere to detect a later rewrite of the log."""
    last = _last_line(os.fspath(log) if log is not None else _log_path(run_dir))
    return None if last is None else _line_hash(last)


def __getattr__(name: str) -> Any:
    # verify_run, describe_run and Problem moved to fulmen.checkpoint.verify; still importable from here.
    if name in ("verify_run", "describe_run", "Problem"):
        from fulmen.checkpoint import verify

        return getattr(verify, name)
    raise AttributeError(f"module 'fulmen.checkpoint.audit' has no attribute {name!r}")
