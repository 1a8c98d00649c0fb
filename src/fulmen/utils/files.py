"""Writing files: the mode a plain ``open(path, "w")`` would give, and durable renames.

Atomic writes go through a temporary file; ``tempfile.mkstemp`` (and some libraries) create it
with mode 0600 whatever the umask, and the rename keeps that mode, so a ``metrics.csv`` or
``hparams.yaml`` in a shared lab folder would be unreadable to the group and to a TensorBoard or
serving process running as another user. ``plain_file_mode()`` is what ``open`` would use under
the process's umask; the writers set it on the temporary file before renaming it into place.

``fsync_dir`` makes a rename durable; ``link_atomic`` and ``write_text_atomic`` replace a file so
that it is at every moment the old one or the complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``),
    else by setting and restoring it (not thread-safe, but only on other systems)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (where folders can be opened; not on Windows)."""
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


def link_atomic(target: str, path: str, *, symbolic: bool = False) -> None:
    """Make ``path`` the same file as ``target``: a hard link (a relative symbolic link with
    ``symbolic`` or for a folder, such as a sharded checkpoint; a copy where neither works), made
    under a temporary name and renamed over ``path``, so ``path`` is at every moment complete."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.link-{os.getpid()}")
    _remove_if_there(tmp)
    try:
        made = False
        if symbolic or os.path.isdir(target):
            try:
                os.symlink(os.path.relpath(os.path.abspath(target), folder), tmp)
                made = True
            except (OSError, NotImplementedError):
                pass
        if not made:
            try:
                os.link(target, tmp)
                made = True
            except OSError:  # no hard links on this filesystem
                pass
        if not made:
            with open(target, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(tmp, path)
        _remove_if_there(tmp)  # rename() does nothing when both names are already links to one file
    except BaseException:
        _remove_if_there(tmp)
        raise
    fsync_dir(folder)


def write_text_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) durably: a temporary file beside it, flushed and
    fsynced, renamed over it, and the folder fsynced."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_if_there(tmp)
        raise
    fsync_dir(folder)


def _remove_if_there(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()
