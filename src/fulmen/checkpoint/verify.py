"""Checking a run folder against its audit log (``checkpoints.jsonl``, written by
``fulmen.checkpoint.audit``): ``verify_run`` and ``describe_run``, what ``fulmen verify`` runs.
Both are also importable from ``fulmen.checkpoint.audit``.

``verify_run(run_dir)`` checks the folder against its log:

- ``history_rewritten``: a line is not valid JSON, its ``prev`` is not the hash of the line before
  it (a line was edited, removed or inserted), or it disagrees with what its checkpoint recorded;
- ``modified``: a checkpoint's bytes (``file_sha256``), its content (tensor digest) or, where the
  line records one, its state digest changed;
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
checkpoint yet. Lines with a digest of the weights taken along the run (``"weights"``, written by
``fulmen.callbacks.WeightDigests``) name no file: they are checked as links of the chain only.

What the chain cannot show: someone who rewrites the whole log and re-saves the checkpoints
consistently (there is no secret key), or who removes the last line together with its file.
Keep the head hash that ``fulmen verify`` prints (or ``chain_head``) somewhere else to detect
those too: ``verify_run(run_dir, expected_head=...)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fulmen.checkpoint.audit import (
    _ARTIFACT_FIELDS,
    _FIELDS,
    _WEIGHTS_FIELDS,
    ARTIFACT_KEY,
    AUDIT_FILE,
    AUDIT_KEY,
    CHECKPOINT_EXTENSIONS,
    GENESIS,
    _display_path,
    _inside,
    _is_artifact,
    _is_checkpoint_entry,
    _is_weights,
    _line_hash,
    _log_path,
    _parse_lines,
    chain_head,
    file_sha256,
    outside_log_dir,
)
from fulmen.checkpoint.integrity import DIGEST_KEY, digests, stored_digest, tensor_digest, with_file_digest


@dataclass(frozen=True)
class Problem:
    """One thing ``verify_run`` found wrong: ``kind`` (see the module docstring), the file it is
    about (as the log names it, or the path found on disk) and a message for people."""

    kind: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.file}: {self.message}"



def _load(path: str) -> Any:
    """The checkpoint at ``path``, with the digest from its zip comment at ``"digest"`` (see
    ``fulmen.checkpoint.integrity.with_file_digest``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # files mmap cannot read
    return with_file_digest(ckpt, path)


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
        digest, state = digests(ckpt)
        stored = stored_digest(ckpt)
        if digest != entry.get("digest"):
            modified.append(f"its content digest is {digest}, the log recorded {entry.get('digest')}")
        elif stored is not None and stored[1] != digest:
            modified.append(f"the digest stored inside it ({stored[1]}) does not match its content")
        elif "state_digest" in entry and entry["state_digest"] != state:
            modified.append(f"its state digest is {state}, the log recorded {entry.get('state_digest')}")
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


def _rotation_folder(path: str) -> str:
    """The folder ``ModelCheckpoint`` rotates ``path`` in: its own, or for the ``meta.ckpt`` of a
    sharded checkpoint folder (FSDP) the folder holding that folder."""
    from fulmen.runtime.fsdp import META_FILE

    folder = os.path.dirname(path)
    return os.path.dirname(folder) if os.path.basename(path) == META_FILE else folder


def _check_shard_folders(latest: dict[str, tuple[int, dict[str, Any]]]) -> list[Problem]:
    """Sharded checkpoint folders (FSDP): each logged ``meta.ckpt`` (checked as a file like any
    other) lists the folder's shard files with their SHA-256 and size; each must still match."""
    from fulmen.runtime.fsdp import META_FILE, check_shards

    problems: list[Problem] = []
    for path, (number, entry) in latest.items():
        if os.path.basename(path) != META_FILE or not os.path.isfile(path):
            continue
        try:
            meta = _load(path)
        except Exception:
            continue  # (reported as unreadable by _check_file)
        if not isinstance(meta, Mapping):
            continue
        shown = os.path.dirname(str(entry.get("file")))
        for name, kind, message in check_shards(os.path.dirname(path), meta):
            problems.append(
                Problem(
                    "modified" if kind == "missing" else kind,
                    f"{shown}/{name}",
                    f"a shard file of the sharded checkpoint {shown} (line {number} of the log): {message}",
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
    chain = _read_chain(data or b"")
    problems += chain.problems
    if data is not None and expected_head is not None and expected_head not in chain.hashes:
        problems.append(
            Problem("history_rewritten", AUDIT_FILE, f"no line of the log has the recorded head hash {expected_head}: the log was rewritten or cut")
        )
    # Recorded files that are not checkpoints (predictions): checked while on disk; deleting one is allowed.
    latest, logged_problems = _check_logged(run_dir, chain.entries, load)
    problems += logged_problems
    problems += _check_shard_folders(latest)
    recorded = {_resolve(run_dir, entry[ARTIFACT_KEY]): (number, entry) for number, entry in chain.artifacts}
    for path, (number, entry) in recorded.items():
        if os.path.isfile(path):
            problems.extend(_check_artifact(number, entry, path))
    unlogged = _unlogged(run_dir, latest, recorded, chain.hashes if data is not None else None, problems)
    if unlogged:  # checkpoints fulmen wrote, and no log: the log is what is missing
        problems.append(_missing_log(where, unlogged))
    problems.sort(key=lambda p: p.kind == "missing_log", reverse=True)  # the missing log first: it explains the rest
    return problems


@dataclass
class _Chain:
    """The log's lines as ``verify_run`` reads them: each line's hash, the checkpoint, artifact and
    weight-digest entries that parse (with their line numbers), and what is wrong with the chain."""

    hashes: list[str] = field(default_factory=list)
    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    artifacts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    weights: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _read_chain(data: bytes) -> _Chain:
    """Parse the log's bytes and check each line's link (``prev``) to the line before it."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    chain = _Chain()
    prev = GENESIS
    for number, raw in enumerate(lines, 1):
        expected, prev = prev, _line_hash(raw)
        chain.hashes.append(prev)
        try:
            entry = json.loads(raw)
            fields = _entry_fields(entry)
            if not isinstance(entry, dict) or any(k not in entry for k in fields):
                raise ValueError("not an entry with the fields " + ", ".join(fields))
        except ValueError as err:
            chain.problems.append(
                Problem("history_rewritten", AUDIT_FILE, f"line {number} is not a valid log entry ({err}): {raw[:120]!r}")
            )
            continue
        name = _entry_name(entry)
        if entry["prev"] != expected:
            chain.problems.append(
                Problem(
                    "history_rewritten",
                    name,
                    f"line {number}'s link to the line before it is broken: "
                    + ("the first line must have prev 0...0, so lines before it were removed" if number == 1 else f"line {number - 1} was edited, or lines between were removed or inserted"),
                )
            )
        kind = chain.artifacts if _is_artifact(entry) else chain.weights if _is_weights(entry) else chain.entries
        kind.append((number, entry))
    return chain


def _entry_fields(entry: Any) -> tuple[str, ...]:
    """The fields a log line of ``entry``'s kind must have."""
    if isinstance(entry, dict) and _is_artifact(entry):
        return _ARTIFACT_FIELDS
    if isinstance(entry, dict) and _is_weights(entry):
        return _WEIGHTS_FIELDS
    return _FIELDS


def _entry_name(entry: dict[str, Any]) -> str:
    """What a problem about a log line names: its file, or the step of a weight digest."""
    if _is_artifact(entry):
        return str(entry[ARTIFACT_KEY])
    if _is_weights(entry):
        return f"weights at step {entry['weights']}"
    return str(entry["file"])


def _resolve(run_dir: str, name: Any) -> str:
    """The real path of a file the log names (relative to the run folder, or absolute)."""
    p = os.path.join(run_dir, str(name)) if not os.path.isabs(str(name)) else str(name)
    return os.path.realpath(p)


def _file_id(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_logged(
    run_dir: str, entries: list[tuple[int, dict[str, Any]]], load: bool
) -> tuple[dict[str, tuple[int, dict[str, Any]]], list[Problem]]:
    """Per file, the last entry that wrote it; and the problems of those files: each one on disk
    checked (``_check_file``), and the newest of each folder must exist."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    newest_in_folder: dict[str, str] = {}
    for number, entry in entries:
        path = _resolve(run_dir, entry["file"])
        latest[path] = (number, entry)
        newest_in_folder[_rotation_folder(path)] = path
    newest = set(newest_in_folder.values())
    # A path that is now a hard link to a file logged later (save_last re-linking "last.ckpt" to
    # the newest checkpoint) holds that file's bytes: check it against the later entry.
    by_inode: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    for path, (number, entry) in latest.items():
        key = _file_id(path)
        if key is not None and (key not in by_inode or by_inode[key][0] < number):
            by_inode[key] = (number, entry)
    problems: list[Problem] = []
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
    return latest, problems


def _unlogged(
    run_dir: str,
    latest: dict[str, tuple[int, dict[str, Any]]],
    recorded: dict[str, tuple[int, dict[str, Any]]],
    hashes: list[str] | None,
    problems: list[Problem],
) -> list[_Unlogged]:
    """Look at the checkpoint files in the run's folders that the log does not name: add their
    problems to ``problems`` (placed against the log's ``hashes``), and return those fulmen wrote
    when there is no log (``hashes`` None) for ``_missing_log`` to report."""
    # Only folders of this run: a folder outside it may be shared with other runs.
    folders = {run_dir, os.path.join(run_dir, "checkpoints")}
    folders |= {os.path.dirname(p) for p in latest if _inside(run_dir, p)}
    inodes = {key for key in map(_file_id, latest) if key is not None}  # a hard link to a logged checkpoint is it
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
            elif hashes is not None:
                problems.append(_place(what, hashes))
            else:
                unlogged.append(what)
    return unlogged


def _missing_log(where: str, unlogged: list[_Unlogged]) -> Problem:
    """The ``missing_log`` problem of a run folder holding checkpoints fulmen wrote, without a log."""
    first = len(unlogged) == 1 and unlogged[0].here and unlogged[0].prev == GENESIS
    return Problem(
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
        names = {str(e.get(key)) for e in entries if (_is_artifact(e) if key == ARTIFACT_KEY else _is_checkpoint_entry(e))}
        return sorted(n for n in names if os.path.isfile(n if os.path.isabs(n) else os.path.join(run_dir, n)))

    checkpoints, files = on_disk("file"), on_disk(ARTIFACT_KEY)
    head = f"head {chain_head(run_dir, log=log_path)}"
    recorded = f"{len(files)} recorded file(s) on disk verified ({', '.join(files)})" if files else ""
    n_weights = sum(1 for e in entries if _is_weights(e))
    weights = f"{n_weights} weight digest(s) along the run" if n_weights else ""
    if not any(_is_checkpoint_entry(e) for e in entries):
        return ", ".join(x for x in (f"no checkpoint yet; {len(entries)} log entries", recorded, weights, head) if x)
    return ", ".join(
        x
        for x in (f"{len(entries)} log entries", f"{len(checkpoints)} checkpoint(s) on disk verified", recorded, weights, head)
        if x
    )
