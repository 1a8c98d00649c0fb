"""Writing checkpoints so a crash never leaves a half-written file, and reading them safely and checked."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from collections.abc import Mapping
from typing import IO, Any, cast

import torch

from fulmen.checkpoint.integrity import DIGEST_ALGORITHM, DIGEST_KEY, stored_digest, tensor_digest
from fulmen.errors import CheckpointIntegrityError, warn_once

CHECKPOINT_FORMAT = 1


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter:
    """The file object ``torch.save`` writes to: bytes go straight to the file, and a thread reads
    back what is already written and hashes it (SHA-256) while the rest is still being written.

    Reading back from the page cache costs far less than SHA-256, so hashing adds little to the
    write, and the tail is hashed while the file is fsynced.
    """

    _PIECE = 8 << 20  # hashed in pieces of this size, so the hash follows the write closely
    _SMALL = 1 << 20

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115
        try:
            self._reader = open(path, "rb", buffering=0)  # noqa: SIM115
        except BaseException:
            self.file.close()
            raise
        self._sha = hashlib.sha256()
        self._pending = bytearray()
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
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
                self._drain()
            return total
        self._drain()
        self._write_through(view)
        return total

    def _write_through(self, view: memoryview) -> None:
        pos, total = 0, len(view)
        while pos < total:
            n = self.file.write(view[pos : pos + self._PIECE]) or 0
            pos += n
            with self._cond:
                self._written += n
                self._cond.notify()

    def _drain(self) -> None:
        if self._pending:
            self._write_through(memoryview(self._pending))
            self._pending = bytearray()

    def flush(self) -> None:
        self._drain()

    def _hash(self) -> None:
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

    def finish(self) -> tuple[str, int]:
        """Fsync the file while the last bytes are hashed; the file's SHA-256 and size."""
        self._drain()
        with self._cond:
            self._done = True
            self._cond.notify()
        os.fsync(self.file.fileno())
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest(), self._written

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
        self.file.close()
        self._reader.close()


def _save(obj: Any, path: str | os.PathLike[str], hash_file: bool) -> tuple[str, str | None, int]:
    """``atomic_save``; with ``hash_file`` also the SHA-256 of the file written and its size."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    sha: str | None = None
    try:
        if hash_file:
            writer = _HashingWriter(tmp)
            try:
                torch.save(obj, cast(IO[bytes], writer))
                sha, size = writer.finish()
            finally:
                writer.close()
        else:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
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
) -> str:
    """Write ``ckpt`` to ``path`` atomically with its content digest; return the digest.

    Sets ``ckpt["digest"] = {"algorithm": "sha256-tensors-v1", "value": <hex>}`` (see
    ``fulmen.checkpoint.integrity``), which ``load_checkpoint`` checks. With ``audit_dir`` (the
    run folder), the checkpoint also records its own log entry under ``ckpt["audit"]`` (file,
    time, ``metrics``, the previous line's hash) and a line is appended to
    ``audit_dir/checkpoints.jsonl`` once the file is in place, with the SHA-256 of the file's
    bytes (hashed while it is written) and its size; see ``fulmen.checkpoint.audit``.
    """
    from fulmen.checkpoint import audit

    record = None
    if audit_dir is not None:
        record = audit.new_record(audit_dir, path, metrics)
        ckpt[audit.AUDIT_KEY] = record
    ckpt.pop(DIGEST_KEY, None)
    value = tensor_digest(ckpt)
    ckpt[DIGEST_KEY] = {"algorithm": DIGEST_ALGORITHM, "value": value}
    _, sha, size = _save(ckpt, path, hash_file=record is not None)
    if audit_dir is not None and record is not None and sha is not None:
        audit.append_entry(
            audit_dir,
            record,
            step=ckpt.get("global_step"),
            epoch=ckpt.get("epoch"),
            digest=value,
            file_sha256=sha,
            size=size,
        )
    return value


def _refused_as_unsafe(err: pickle.UnpicklingError) -> bool:
    """True when torch's weights-only unpickler refused a class or function the file names (a
    ``GLOBAL`` it does not allow), rather than failing on bytes that are not a pickle at all."""
    return "global" in str(err).lower()


def _unreadable(path: str, err: BaseException) -> RuntimeError:
    return RuntimeError(
        f"Could not read the checkpoint {path!r}: the file is damaged or not a PyTorch checkpoint "
        f"({type(err).__name__}: {err}). If it was being written when a run stopped, use the previous "
        f"checkpoint."
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

    A file that would need to run code to load (a pickled class or function) is refused, so a
    checkpoint from someone else cannot execute anything on this machine. ``weights_only=False``
    lifts that for a file you trust (with a warning). With ``verify`` (the default), a checkpoint
    that carries a digest (``write_checkpoint``) must still match it, else
    ``CheckpointIntegrityError``. A checkpoint from a newer fulmen (a higher ``format``) is refused
    with a message to upgrade.
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
    except pickle.UnpicklingError as err:
        if _refused_as_unsafe(err):
            raise pickle.UnpicklingError(
                f"Refused to load {path!r}: it holds objects other than tensors and plain Python data, and "
                f"loading them would run code from the file. fulmen checkpoints never need that; if you trust "
                f"the file and its author, load it with load_checkpoint(path, weights_only=False). "
                f"Details: {err}"
            ) from err
        raise _unreadable(path, err) from err
    except Exception as err:
        # Damaged and foreign files fail in many ways inside torch.load and pickle (RuntimeError,
        # EOFError, KeyError, IndexError, ...): all of them mean the same thing here.
        raise _unreadable(path, err) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path!r} is not a fulmen checkpoint: expected a dict with a 'state_dict' key, got "
            f"{type(ckpt).__name__}{' with keys ' + repr(sorted(ckpt)[:10]) if isinstance(ckpt, dict) else ''}."
        )
    fmt = ckpt.get("format", CHECKPOINT_FORMAT)
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path!r} was written by a newer fulmen (checkpoint format {fmt}, fulmen "
            f"{ckpt.get('fulmen_version', '?')}); this fulmen reads formats up to {CHECKPOINT_FORMAT}. "
            f"Upgrade fulmen (pip install -U fulmen) to load it."
        )
    if verify:
        verify_digest(ckpt, path)
    return ckpt


def verify_digest(ckpt: Mapping[str, Any], path: str = "<checkpoint>") -> None:
    """Raise ``CheckpointIntegrityError`` when ``ckpt`` carries a digest its content does not match,
    or when it is a fulmen checkpoint (``fulmen_version``) without one: fulmen always records a
    digest, so a missing one was removed after the file was written.

    A checkpoint from elsewhere (``torch.save``, PyTorch Lightning) has none and passes; for one
    Lightning wrote, the user is told once that it could not be checked.
    """
    stored = stored_digest(ckpt)
    if stored is None:
        if "fulmen_version" in ckpt:
            raise CheckpointIntegrityError(
                f"{path!r} was written by fulmen {ckpt.get('fulmen_version')} but carries no content digest. fulmen "
                f"records one in every checkpoint it writes, so it was removed after the file was written (an "
                f"edited file), and fulmen cannot tell what else changed. Use another checkpoint; to edit one on "
                f"purpose, save the edited dict with fulmen.checkpoint.write_checkpoint (which records a new "
                f"digest), or pass verify=False to load it unchecked."
            )
        from fulmen.checkpoint.lightning_format import note_undigested

        note_undigested(ckpt, path)
        return
    algorithm, value = stored
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
