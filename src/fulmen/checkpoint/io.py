"""Writing checkpoints so a crash never leaves a half-written file, and reading them safely and checked.

``write_checkpoint`` computes the content digest on another thread while ``torch.save`` writes
the file, and stores it after the pickle, in the zip archive's comment
(``fulmen-digest:{"algorithm":"sha256-tensors-v1","value":"<hex>"}``; the pickle's ``"digest"``
entry says ``{"algorithm": ..., "in": "zip-comment"}``). ``load_checkpoint`` reads the comment
and returns the digest at ``ckpt["digest"]``; files from older fulmen versions keep the digest
inside the pickle and load as before.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, cast

import torch

from fulmen.checkpoint.integrity import (
    COMMENT_MARKER,
    DIGEST_ALGORITHM,
    DIGEST_KEY,
    ZIP_END,
    comment_cut_short,
    digest_comment,
    digests,
    is_comment_marker,
    stored_digest,
    tensor_digest,
    with_file_digest,
)
from fulmen.errors import CheckpointIntegrityError, warn_once
from fulmen.utils.files import fsync_dir

CHECKPOINT_FORMAT = 1
_ZIP_END_SIZE = 22  # a zip end-of-central-directory record without a comment


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages to disk, without waiting


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` just written at ``offset`` to disk now, so that the fsync at the end
    waits for little more than the last bytes (the kernel would otherwise start only when much of
    memory is dirty, or at the fsync). Nothing where the system has no ``sync_file_range``."""
    if _SYNC_FILE_RANGE is not None and nbytes > 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # (a failure only costs speed)


class _Writer:
    """The file object ``torch.save`` writes to for ``write_checkpoint``: bytes go straight to the
    file (small writes gathered), and with ``hash_file`` a thread reads back what is already
    written and hashes it (SHA-256) while the rest is still being written.

    Reading back from the page cache costs far less than SHA-256, so hashing adds little to the
    write, and the tail is hashed while the file is fsynced. With ``hold_tail`` the last 22 bytes
    written (the zip archive's end-of-central-directory record) are held back, so ``finish`` can
    give the archive a comment (the content digest, computed while the file was written).
    """

    _PIECE = 8 << 20  # hashed in pieces of this size, so the hash follows the write closely
    _SMALL = 1 << 20

    def __init__(self, path: str, hash_file: bool, hold_tail: bool) -> None:
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115
        self._keep = _ZIP_END_SIZE if hold_tail else 0
        self._sha = hashlib.sha256() if hash_file else None
        self._pending = bytearray()
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if hash_file:
            try:
                self._reader = open(path, "rb", buffering=0)  # noqa: SIM115
            except BaseException:
                self.file.close()
                raise
            self._thread = threading.Thread(target=self._hash, name="fulmen-file-sha256", daemon=True)
            self._thread.start()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        total = len(view)
        if total < self._SMALL:  # headers and small tensors: gathered, so the file sees few large writes
            self._pending += view
            if len(self._pending) >= self._SMALL:
                self._drain(self._keep)
            return total
        self._drain(0)
        keep = min(self._keep, total)
        self._write_through(view[: total - keep])
        self._pending += view[total - keep :]
        return total

    def _write_through(self, view: memoryview) -> None:
        pos, total = 0, len(view)
        while pos < total:
            n = self.file.write(view[pos : pos + self._PIECE]) or 0
            pos += n
            with self._cond:
                start = self._written
                self._written += n
                self._cond.notify()
            _start_writeback(self.file.fileno(), start, n)

    def _drain(self, keep: int) -> None:
        """Write what is gathered, all but its last ``keep`` bytes."""
        if len(self._pending) > keep:
            cut = len(self._pending) - keep
            self._write_through(memoryview(self._pending)[:cut])
            self._pending = self._pending[cut:]

    def flush(self) -> None:
        self._drain(self._keep)

    @property
    def empty(self) -> bool:
        """Nothing was written (``torch.save`` replaced by something that writes nothing, such as a
        test's mock): there is no archive to give a comment, and nothing to write again."""
        return self._written == 0 and not self._pending

    def archive_end(self) -> bool:
        """Whether the bytes held back are a zip end-of-central-directory record without a comment
        (what ``torch.save`` ends its file with), which ``finish`` can give one."""
        tail = self._pending[-_ZIP_END_SIZE:]
        return len(tail) == _ZIP_END_SIZE and tail[:4] == ZIP_END and tail[-2:] == b"\0\0"

    def _hash(self) -> None:
        assert self._sha is not None
        buf = memoryview(bytearray(self._PIECE))
        hashed = 0
        try:
            while True:
                with self._cond:
                    while self._written == hashed and not self._done:
                        self._cond.wait()
                    available = self._written - hashed
                    if available == 0:
                        return
                n = self._reader.readinto(buf[: min(available, self._PIECE)])
                if not n:
                    raise OSError("the checkpoint file was shorter than what was written to it")
                self._sha.update(buf[:n])
                hashed += n
        except BaseException as err:
            self._error = err

    def finish(self, comment: bytes | None = None) -> tuple[str | None, int]:
        """Give the archive ``comment`` (only after ``archive_end()`` said it can), write the rest,
        fsync the file while the last bytes are hashed; the file's SHA-256 (None without
        ``hash_file``) and size."""
        if comment is not None:
            if not self.archive_end() or len(comment) > 0xFFFF:
                raise ValueError("the file does not end with a zip end record that can take a comment")
            self._pending[-2:] = len(comment).to_bytes(2, "little")
            self._pending += comment
        self._drain(0)
        with self._cond:
            self._done = True
            self._cond.notify()
        os.fsync(self.file.fileno())
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return (self._sha.hexdigest() if self._sha is not None else None), self._written

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._reader.close()
        self.file.close()


# -- a full disk ----------------------------------------------------------------------------------
class DiskFullError(OSError):
    """Saving a checkpoint ran out of space (``errno`` ENOSPC, or EDQUOT for a quota). The message
    names the file, the bytes it needs and the bytes free on that filesystem, and whether the
    previous checkpoint is intact; ``path``, ``needed``, ``free`` and ``previous`` hold the same.
    The OSError that stopped the write is its ``__cause__``."""

    def __init__(
        self,
        code: int,
        message: str,
        path: str = "",
        needed: int | None = None,
        free: int | None = None,
        previous: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.path, self.needed, self.free, self.previous = path, needed, free, previous

    @classmethod
    def for_checkpoint(cls, obj: Any, path: str, cause: OSError) -> DiskFullError:
        folder = os.path.dirname(os.path.abspath(path))
        needed = _saved_size(obj)
        free = _free_bytes(folder)
        mount = _mount_point(folder)
        previous = path if os.path.isfile(path) else _newest_checkpoint(folder)
        quota = cause.errno == errno.EDQUOT
        what = "Disk quota exceeded" if quota else "No space left on device"
        need = f"it needs {_bytes(needed)}" if needed is not None else "its size is unknown"
        have = f"{_bytes(free)} are free on {mount}" if free is not None else f"the free space on {mount} is unknown"
        if quota:
            have += " (your quota may allow less)"
        if previous is None:
            kept = "No earlier checkpoint was in that folder; the partial file was removed."
        elif previous == path:
            kept = f"The previous {os.path.basename(path)} is intact (not replaced); the partial file was removed."
        else:
            kept = f"The previous checkpoint, {os.path.basename(previous)}, is intact; the partial file was removed."
        message = (
            f"{what} while saving the checkpoint {path!r}: {need}; {have}. {kept} Free space there, or write "
            f"checkpoints to a larger disk (ModelCheckpoint(dirpath=...), Trainer(default_root_dir=...))."
        )
        return cls(cause.errno or errno.ENOSPC, message, path, needed, free, previous)

    @classmethod
    def for_audit_log(cls, path: str, log: str, cause: OSError) -> DiskFullError:
        folder = os.path.dirname(os.path.abspath(log))
        free = _free_bytes(folder)
        have = f"{_bytes(free)} free on {_mount_point(folder)}" if free is not None else "the free space is unknown"
        message = (
            f"{os.strerror(cause.errno or errno.ENOSPC)} while appending to the audit log {log!r}: the checkpoint "
            f"{path!r} is complete on disk, but its line is missing from the log ({have}), so `fulmen verify` will "
            f"not know it. Free space there; the next checkpoint's line continues the log."
        )
        return cls(cause.errno or errno.ENOSPC, message, log, None, free, path)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT ``OSError`` behind ``err`` (torch.save reports a failed write as a
    RuntimeError, with the OSError as its context), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return e
        if isinstance(e, RuntimeError) and "No space left on device" in str(e):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        todo += [e.__cause__, e.__context__]
    return None


class _CountingSink:
    """A write-only file that keeps only the number of bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self) -> None:
        pass


def _saved_size(obj: Any) -> int | None:
    """The size of ``obj`` as ``torch.save`` writes it, serialised again into nothing (only after a
    failed save)."""
    sink = _CountingSink()
    try:
        torch.save(obj, cast(IO[bytes], sink))
    except Exception:
        return None
    return sink.size


def _free_bytes(folder: str) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _mount_point(folder: str) -> str:
    path = os.path.realpath(folder)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _newest_checkpoint(folder: str) -> str | None:
    """The newest complete checkpoint file in ``folder`` (not a temporary file), or None."""
    try:
        names = [n for n in os.listdir(folder) if n.endswith((".ckpt", ".pt", ".pth")) and not n.startswith(".")]
    except OSError:
        return None
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    return max(paths, key=os.path.getmtime) if paths else None


def _bytes(n: int) -> str:
    """``4,155,904 bytes (4.0 MiB)``."""
    value, unit = float(n), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{n:,} bytes" if unit == "bytes" else f"{n:,} bytes ({value:.1f} {unit})"


class _NoArchiveEnd(Exception):
    """The file ``torch.save`` wrote does not end with the zip record expected: the digest cannot
    go into its comment (``_write_digested`` then writes it the old way, inside the pickle)."""


def _save(
    obj: Any,
    path: str | os.PathLike[str],
    hash_file: bool,
    comment: Callable[[], bytes] | None = None,
) -> tuple[str, str | None, int]:
    """``atomic_save``; with ``hash_file`` also the SHA-256 of the file written and its size. With
    ``comment``, the zip archive gets the comment it returns, called once everything else is
    written (so it can wait for a digest computed meanwhile); ``_NoArchiveEnd`` when it cannot."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    sha: str | None = None
    try:
        if hash_file or comment is not None:
            writer = _Writer(tmp, hash_file, hold_tail=comment is not None)
            try:
                torch.save(obj, cast(IO[bytes], writer))
                if comment is not None and not writer.archive_end() and not writer.empty:
                    raise _NoArchiveEnd
                sha, size = writer.finish(comment() if comment is not None and not writer.empty else None)
            finally:
                writer.close()
        else:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, _NoArchiveEnd):
            raise
        full = _out_of_space(err)
        if full is not None:
            raise DiskFullError.for_checkpoint(obj, path, full) from full
        raise
    fsync_dir(folder)
    return path, sha, size


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """Save ``obj`` with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    The data goes to a temporary file in the same folder (on clusters the system temp folder is
    often another filesystem, where a rename is not atomic), is flushed and fsynced, then renamed
    over ``path``; the folder is fsynced so the rename itself survives a power cut.
    """
    return _save(obj, path, hash_file=False)[0]


def write_checkpoint(
    ckpt: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    audit_dir: str | os.PathLike[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    logged_as: str | os.PathLike[str] | None = None,
    placed: Callable[[], None] | None = None,
) -> str:
    """Write ``ckpt`` to ``path`` atomically with its content digest; return the digest.

    The digest (``sha256-tensors-v1``, see ``fulmen.checkpoint.integrity``) is computed on other
    threads while ``torch.save`` writes the file, and stored after the pickle, in the zip
    archive's comment (``fulmen-digest:{"algorithm": ..., "value": ...}``; the pickle holds
    ``{"algorithm": ..., "in": "zip-comment"}`` at ``"digest"``, so a file saved again without the
    comment is seen to have lost it); ``load_checkpoint`` puts it at ``ckpt["digest"]`` and checks it. (Should ``torch.save`` ever end its file
    differently, the digest is computed first and stored inside the pickle, as older fulmen did.)
    Once the file is written, sets ``ckpt["digest"] = {"algorithm": "sha256-tensors-v1", "value":
    <hex>}`` on the caller's dict. With ``audit_dir`` (the run folder), the checkpoint also
    records its own log entry under ``ckpt["audit"]`` (file, time, ``metrics``, the previous
    line's hash) and a line is appended to ``audit_dir/checkpoints.jsonl`` once the file is in
    place, with the SHA-256 of the file's bytes (hashed while it is written, the comment
    included), its size and its state digest (the content digest without the audit record,
    computed in the same walk: ``fulmen.checkpoint.integrity.digests``); see
    ``fulmen.checkpoint.audit``.

    ``logged_as``: the path the audit record names, when the file is moved there after it is
    written (a sharded checkpoint's ``meta.ckpt``, written in a temporary folder); ``placed``: run
    once the file is written, before the audit-log line (that move).
    """
    from fulmen.checkpoint import audit

    if audit_dir is None:
        return _write_digested(ckpt, path, None, placed=placed)[0]
    with audit.LOG_LOCK:  # no other line of this process between the record's prev and this line
        return _write_digested(ckpt, path, audit_dir, metrics, logged_as, placed)[0]


_DIGEST_WORKERS = 1  # threads hashing tensor bytes for the digest while torch.save writes
_comment_fails = False  # set when torch.save's file did not end as expected: digests go in the pickle


class _Digesting(threading.Thread):
    """``digests(ckpt)`` on a thread of its own, started at once."""

    def __init__(self, ckpt: Mapping[str, Any], workers: int) -> None:
        super().__init__(name="fulmen-digest-walk", daemon=True)
        self._ckpt, self._workers = ckpt, workers
        self._result: tuple[str, str] | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._result = digests(self._ckpt, workers=self._workers)
        except BaseException as err:
            self._error = err

    def result(self) -> tuple[str, str]:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _write_digested(
    ckpt: dict[str, Any],
    path: str | os.PathLike[str],
    audit_dir: str | os.PathLike[str] | None,
    metrics: Mapping[str, Any] | None = None,
    logged_as: str | os.PathLike[str] | None = None,
    placed: Callable[[], None] | None = None,
) -> tuple[str, str]:
    """``write_checkpoint``'s work: ``(content digest, state digest)``."""
    global _comment_fails
    from fulmen.checkpoint import audit

    record = None
    if audit_dir is not None:
        record = audit.new_record(audit_dir, logged_as if logged_as is not None else path, metrics)
        ckpt[audit.AUDIT_KEY] = record
    ckpt.pop(DIGEST_KEY, None)
    hash_file = record is not None
    written = None
    if not _comment_fails:
        ckpt[DIGEST_KEY] = dict(COMMENT_MARKER)  # in the pickle: "the digest is in the zip comment"
        job = _Digesting(ckpt, _DIGEST_WORKERS)  # reads the tensors while torch.save writes them
        try:
            written = _save(ckpt, path, hash_file, comment=lambda: digest_comment(job.result()[0]))
        except _NoArchiveEnd:
            _comment_fails = True
        finally:
            job.join()
        value, state = job.result()
        ckpt[DIGEST_KEY] = {"algorithm": DIGEST_ALGORITHM, "value": value}
    else:
        value, state = digests(ckpt)
        ckpt[DIGEST_KEY] = {"algorithm": DIGEST_ALGORITHM, "value": value}
    if written is None:  # the old way: the digest inside the pickle
        written = _save(ckpt, path, hash_file)
    _, sha, size = written
    if placed is not None:
        placed()
    if audit_dir is not None and record is not None and sha is not None:
        try:
            audit.append_entry(
                audit_dir,
                record,
                step=ckpt.get("global_step"),
                epoch=ckpt.get("epoch"),
                digest=value,
                state_digest=state,
                file_sha256=sha,
                size=size,
            )
        except OSError as err:
            if err.errno not in _FULL:
                raise
            named = logged_as if logged_as is not None else path
            raise DiskFullError.for_audit_log(os.fspath(named), audit._log_path(audit_dir), err) from err
    return value, state


# -- why a file was refused ------------------------------------------------------------------------
# torch.load's own errors advise re-running with weights_only=False, which is exactly what runs
# an attacker's code; fulmen says instead what the file is, why it was refused, and what to do.
# Its errors are raised ``from None`` (torch's error stays in ``__context__``, not printed).


class CheckpointFileError(Exception):
    """A checkpoint file fulmen refused to load (the base of the three below; each is also a
    subclass of the built-in type documented before it existed). ``path`` is the file."""

    path: str


class UnsafeCheckpointError(CheckpointFileError, pickle.UnpicklingError):
    """A file refused because loading it would create objects other than tensors and plain data,
    which could run code; ``names`` lists the classes and functions it names (read, never run)."""

    def __init__(self, message: str, path: str = "", names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.names = names


class UnreadableCheckpointError(CheckpointFileError, RuntimeError):
    """A file that is not a PyTorch checkpoint, or a damaged one. ``reason``: ``"empty"``,
    ``"not_a_checkpoint"``, ``"damaged"`` or ``"unreadable"`` (torch could not read it)."""

    def __init__(self, message: str, path: str = "", reason: str = "unreadable") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class IncompatibleCheckpointError(CheckpointFileError, ValueError):
    """A PyTorch file that is not a fulmen checkpoint (no ``state_dict``), or one written by a newer
    fulmen (a higher ``format``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


_ZIP_MAGIC = b"PK\x03\x04"
# Modules whose functions a pickle can call to run code (a class or function named by a file from
# these is never needed in a checkpoint). Nothing a file names is ever imported to check it.
_RISKY_MODULES = frozenset(
    (
        *("os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "importlib", "runpy"),
        *("socket", "pty", "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types", "functools"),
        *("operator", "webbrowser", "platform", "multiprocessing", "pdb", "timeit", "asyncio", "urllib", "http"),
        *("tempfile", "io", "_io", "signal", "commands", "popen2"),
    )
)
_DATA_MODULES = frozenset(("torch", "numpy", "collections", "copyreg", "_codecs"))
_TORCH_ADVICE = ("weights_only", "weights only", "documentation of torch.load", "file an issue", "can still be loaded")


def _allowed_globals() -> set[str]:
    """The ``module.name`` strings ``torch.load(weights_only=True)`` allows now (its defaults and
    ``torch.serialization.safe_globals``)."""
    try:
        from torch import _weights_only_unpickler as w

        return set(w._get_allowed_globals()) | set(w._get_user_allowed_globals())
    except Exception:  # private API: when it moves, nothing is treated as allowed but torch's own
        return set()


def _pickle_globals(path: str, limit: int = 64 << 20) -> list[str]:
    """The ``module.name`` of every class or function named by the pickles at the start of
    ``path`` (a legacy ``torch.save`` file holds several), read with ``pickletools``: nothing is
    imported or run."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    with open(path, "rb") as f:
        while f.tell() < limit:
            start = f.tell()
            if not f.read(1):
                break
            f.seek(start)
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        names.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings = [*strings[-1:], arg]
            except Exception:  # past the pickles (tensor bytes) or not a pickle at all
                break
    return list(dict.fromkeys(names))


def _unsafe_names(path: str, zipped: bool, err: BaseException) -> list[str] | None:
    """What ``path`` names beyond what weights-only loading allows ([] when nothing; None when
    the file could not be read that far)."""
    if zipped:
        try:
            return list(dict.fromkeys(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
        except Exception:
            return None
    allowed = _allowed_globals()
    found = [n for n in _pickle_globals(path) if n not in allowed]
    if not allowed:  # torch's list unavailable: judge by torch's message
        found = [n for n in found if n in str(err)]
    return found


def _risky(name: str) -> bool:
    """A function from a module that can run code (``posix.system``), or any function outside
    the data libraries: such a name in a checkpoint is how a malicious file runs code."""
    root, _, leaf = name.rpartition(".")
    top = root.split(".")[0]
    if top in _RISKY_MODULES:
        return True
    return bool(leaf) and leaf[0].islower() and top not in _DATA_MODULES


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _torch_reason(err: BaseException) -> str:
    """torch's error, without its advice to load with weights_only=False: its first useful line."""
    for line in str(err).splitlines():
        line = line.strip().rstrip(".")
        if line and not any(a in line.lower() for a in _TORCH_ADVICE):
            first = re.split(r"(?<=\.) ", line, maxsplit=1)[0].rstrip(".")
            return f"{type(err).__name__}: {first}"
    return type(err).__name__


def _what_it_is(head: bytes, size: int) -> str:
    """What kind of file starts with ``head`` (not a torch.save checkpoint)."""
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "a safetensors file (read it with safetensors.torch.load_file)"
    if head.startswith(b"\x80"):
        return "a plain Python pickle, not a file torch.save wrote"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (decompress it first)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{size:,} bytes starting with {head[:8].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file starting {text[:32]!r}"
    return f"{size:,} bytes starting with {head[:8].hex(' ')}"


def _zip_truncated(path: str, size: int) -> bool:
    """True when a zip file's end-of-central-directory record is missing (the file was cut short)."""
    with open(path, "rb") as f:
        f.seek(max(0, size - (66 << 10)))
        return ZIP_END not in f.read()


def _zip_members(path: str) -> list[str] | None:
    """The names in a zip archive, or None when its directory cannot be read (truncated, corrupt)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def _names_damage(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, (EOFError, KeyError, IndexError, ValueError)) or any(
        w in text for w in ("zip", "corrupt", "crc", "stream", "invalid argument", "unexpected end")
    )


def _unsafe(path: str, names: list[str]) -> UnsafeCheckpointError:
    """The refusal of a pickle that names ``names``: code to run, or classes to import."""
    shown = _names(names)
    if any(_risky(n) for n in names):
        message = (
            f"Refused to load {path!r}: it names {shown}, which no checkpoint needs; loading the file would call "
            f"{'it' if len(names) == 1 else 'them'} with arguments stored in it: that is how a malicious file would "
            f"run code on this machine (nothing was run). Do not load this file: delete it, or ask its author "
            f"for a checkpoint of tensors and plain data."
        )
    else:
        message = (
            f"Refused to load {path!r}: it holds objects of {shown}, which are not tensors or plain data; loading "
            f"them means importing and calling code the file names, which a safe load never does (nothing was "
            f"run), and fulmen checkpoints never hold such objects. "
            f"If you trust the file and its author, allow exactly these: `with "
            f"torch.serialization.safe_globals([{', '.join(names)}]):` around the load (see "
            f"docs/checkpoints.md#safe-loading); otherwise do not load it."
        )
    return UnsafeCheckpointError(message, path, tuple(names))


def refusal(path: str, err: BaseException) -> UnsafeCheckpointError | UnreadableCheckpointError:
    """The error to raise when ``torch.load(path, weights_only=True)`` failed with ``err``: one line
    saying what the file is, why it was refused and what to do, never to load with
    ``weights_only=False``. The file is examined without running anything it contains."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as os_err:
        return UnreadableCheckpointError(
            f"Could not read {path!r}: {os_err.strerror or os_err}. Check the path and its permissions.", path
        )
    if size == 0:
        return UnreadableCheckpointError(
            f"Refused to load {path!r}: the file is empty (0 bytes), so it holds no checkpoint (a save or copy that never "
            f"finished). Use another checkpoint, or copy it again.",
            path,
            "empty",
        )
    zipped = head.startswith(_ZIP_MAGIC)
    names = _unsafe_names(path, zipped, err) if zipped or head.startswith(b"\x80") else []
    if names:
        return _unsafe(path, names)
    if zipped:
        members = _zip_members(path)
        if members is not None and not any(m == "data.pkl" or m.endswith("/data.pkl") for m in members):
            return UnreadableCheckpointError(
                f"Refused to load {path!r}: it is a zip archive, but not one torch.save wrote (it has no data.pkl), "
                f"so not a PyTorch checkpoint. Check that the path names a checkpoint file fulmen or torch.save wrote.",
                path,
                "not_a_checkpoint",
            )
        if members is None or names is None or isinstance(err, pickle.UnpicklingError) or _names_damage(err):
            if members is None and _zip_truncated(path, size):
                detail = f"truncated: its end is missing, {size:,} bytes on disk"
            elif members is None:
                detail = "its zip directory is corrupt"
            else:
                detail = _torch_reason(err)
            return UnreadableCheckpointError(
                f"Refused to load {path!r}: it is a damaged PyTorch checkpoint ({detail}); it was cut short or "
                f"changed after it was written (an interrupted copy or download, a full disk, a bad disk). Use "
                f"another checkpoint (`fulmen verify RUN_DIR` says which are intact), or copy it again.",
                path,
                "damaged",
            )
        return UnreadableCheckpointError(  # whole and safe, yet torch could not read it (map_location, ...)
            f"Could not load the PyTorch checkpoint {path!r}: {_torch_reason(err)}. Use another checkpoint, or "
            f"one written by this PyTorch version.",
            path,
        )
    if head.startswith(b"\x80\x02\x8a\x0a"):  # the legacy torch.save format's magic number
        return UnreadableCheckpointError(
            f"Refused to load {path!r}: it is a damaged PyTorch checkpoint in the legacy (pre-1.6) format "
            f"({_torch_reason(err)}). Use another checkpoint, or copy it again.",
            path,
            "damaged",
        )
    return UnreadableCheckpointError(
        f"Refused to load {path!r}: it is not a PyTorch checkpoint ({_what_it_is(head, size)}; a checkpoint is the zip "
        f"archive torch.save writes). Check that the path names a checkpoint file fulmen or torch.save wrote.",
        path,
        "not_a_checkpoint",
    )


def check_weights_only(call: str, weights_only: object, error: type[ValueError] = ValueError) -> None:
    """Refuse ``weights_only`` other than None or True where fulmen reads a checkpoint for the
    caller (``trainer.fit``, ``System.load_from_checkpoint``, ...): it always reads with
    ``torch.load(weights_only=True)``. ``call`` names the entry point in the message."""
    if weights_only is not None and weights_only is not True:
        raise error(
            f"{call}(weights_only={weights_only!r}): fulmen reads checkpoints with torch.load(weights_only=True) "
            f"only (tensors and plain data, so loading one cannot run code); expected None or True. Leave "
            f"weights_only out or pass True. For a file you trust that needs more, read it with "
            f"fulmen.checkpoint.load_checkpoint(path, weights_only=False) and load its state_dict yourself."
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    verify: bool = True,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only.

    A file that would need to run code to load (a pickled class or function) is refused with
    ``UnsafeCheckpointError`` naming what it holds, so a checkpoint from someone else cannot execute
    anything on this machine; an empty, damaged or non-PyTorch file with
    ``UnreadableCheckpointError``, a PyTorch file that is not a fulmen checkpoint, or one from a
    newer fulmen (a higher ``format``), with ``IncompatibleCheckpointError`` (all three are
    ``CheckpointFileError``; each message is one line saying what the file is, why it was refused
    and what to do). With ``verify`` (the default), a checkpoint that carries a digest
    (``write_checkpoint``) must still match it, else ``CheckpointIntegrityError``. The caller's own
    ``weights_only=False`` lifts the restriction for a file it trusts (with a warning).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(n for n in os.listdir(path) if n.endswith((".ckpt", ".pt", ".pth")))[:3]
        hint = f" It holds {', '.join(found)}." if found else ""
        raise IsADirectoryError(
            f"{path!r} is a folder, not a checkpoint file: pass the path of a checkpoint file inside it.{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r} (it does not exist or is not a file).")
    if not weights_only:
        warn_once(
            f"load_checkpoint({path!r}, weights_only=False): the file is unpickled without restrictions, so it "
            f"can run any code it contains. Only do this for checkpoints you (or someone you trust) wrote.",
            key="load-checkpoint-weights-only-false",
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:
        # Damaged, foreign and unsafe files fail in many ways inside torch.load and pickle
        # (UnpicklingError, RuntimeError, EOFError, KeyError, ...); the file is examined to say which.
        if not weights_only:  # the caller lifted the restriction: nothing was refused, the load failed
            raise UnreadableCheckpointError(
                f"Could not load {path!r} (weights_only=False): {type(err).__name__}: {err}", path
            ) from err
        refused = refusal(path, err)
        raise refused from None
    if comment_cut_short(path):
        raise UnreadableCheckpointError(
            f"Refused to load {path!r}: it is a damaged PyTorch checkpoint (truncated: its end is missing, "
            f"{os.path.getsize(path):,} bytes on disk, cut inside the zip comment that holds its digest); it was "
            f"cut short after it was written (an interrupted copy or download, a full disk). Use another "
            f"checkpoint (`fulmen verify RUN_DIR` says which are intact), or copy it again.",
            path,
            "damaged",
        )
    ckpt = with_file_digest(ckpt, path)  # the digest write_checkpoint stored in the zip comment
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = f" with keys {sorted(map(str, ckpt))[:10]!r}" if isinstance(ckpt, dict) else ""
        bare = isinstance(ckpt, dict) and bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        hint = (
            " It looks like a bare state_dict: load it with model.load_state_dict(torch.load(path, weights_only=True))."
            if bare
            else ""
        )
        raise IncompatibleCheckpointError(
            f"{path!r} is not a fulmen checkpoint: expected a dict with a 'state_dict' key, got "
            f"{type(ckpt).__name__}{keys}.{hint}",
            path,
        )
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise IncompatibleCheckpointError(
            f"{path!r} was written by a newer fulmen (checkpoint format {fmt}, fulmen "
            f"{ckpt.get('fulmen_version', '?')}); this fulmen reads formats up to {CHECKPOINT_FORMAT}. "
            f"Upgrade fulmen (pip install -U fulmen) to load it.",
            path,
        )
    if verify:
        verify_digest(ckpt, path)
    return ckpt


def verify_digest(ckpt: Mapping[str, Any], path: str = "<checkpoint>") -> None:
    """Raise ``CheckpointIntegrityError`` when ``ckpt`` carries a digest its content does not match,
    or when it is a fulmen checkpoint (``fulmen_version``, or the pickle's note that the digest is
    in the zip comment) without one: fulmen always records a digest, so a missing one was removed
    after the file was written. ``ckpt`` is as ``load_checkpoint`` returns it: the digest from the
    file's zip comment already at ``ckpt["digest"]`` (``integrity.with_file_digest``).

    A checkpoint from elsewhere (``torch.save``, PyTorch Lightning) has none and passes; for one
    Lightning wrote, the user is told once that it could not be checked.
    """
    stored = stored_digest(ckpt)
    if stored is None:
        if "fulmen_version" in ckpt or is_comment_marker(ckpt.get(DIGEST_KEY)):
            who = f"fulmen {ckpt['fulmen_version']}" if "fulmen_version" in ckpt else "fulmen"
            raise CheckpointIntegrityError(
                f"{path!r} was written by {who} but carries no content digest. fulmen records one in every "
                f"checkpoint it writes (in the file's zip comment; older versions inside the pickle), so it was "
                f"removed after the file was written (an edited file, or one loaded and saved again with "
                f"torch.save, which does not keep it), and fulmen cannot tell what else changed. Use another "
                f"checkpoint; to edit one on purpose, save the edited dict with fulmen.checkpoint.write_checkpoint (which records a new "
                f"digest), or pass verify=False to load it unchecked."
            )
        from fulmen.checkpoint.lightning_format import note_undigested

        note_undigested(ckpt, path)
        return
    algorithm, value = stored
    if algorithm == "?":
        raise CheckpointIntegrityError(
            f"{path!r} records a content digest that cannot be read ({value}; expected a record "
            f'{{"algorithm": ..., "value": ...}} in the file\'s zip comment or its pickle): it was changed after it '
            f"was written. Use another checkpoint, or pass verify=False to load it unchecked."
        )
    if algorithm != DIGEST_ALGORITHM:
        raise CheckpointIntegrityError(
            f"{path!r} records a content digest of an unknown kind ({algorithm!r}; this fulmen knows "
            f"{DIGEST_ALGORITHM!r}), so it cannot be checked. Upgrade fulmen, or pass verify=False to load it unchecked."
        )
    actual = tensor_digest(ckpt)
    if actual != value:
        raise CheckpointIntegrityError(
            f"{path!r} does not match its stored digest (stored {value}, computed {actual}): its content changed "
            f"after it was written (a modified or damaged file). Use another checkpoint, or pass verify=False to "
            f"load it anyway."
        )
