"""The few file operations the file loggers need, on a local folder or on a URL (``s3://``,
``gs://``, ``memory://``, ...) through ``fsspec``, which torch already depends on.

Local writes that replace a file go through a temp file and a rename, so a reader never sees
half a file. Object stores have no rename and no append: there a file is written whole.
"""

from __future__ import annotations

import os
from typing import Any

from fulmen.loggers._yaml import replace_atomic


def is_remote(path: str) -> bool:
    """True for a URL with a scheme other than ``file://`` (handled by fsspec)."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme not in ("", "file") and os.sep not in scheme


def _fs(path: str) -> tuple[Any, str]:
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, inner = _fs(path)
    return bool(fs.isfile(inner))


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    fs, inner = _fs(path)
    return bool(fs.isdir(inner))


def listdir(path: str) -> list[str]:
    """Names (not paths) in the folder ``path``; FileNotFoundError when it does not exist."""
    if not is_remote(path):
        return os.listdir(path)
    fs, inner = _fs(path)
    if not fs.isdir(inner):
        raise FileNotFoundError(path)
    return [os.path.basename(str(p).rstrip("/")) for p in fs.ls(inner, detail=False)]


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        return
    fs, inner = _fs(path)
    fs.makedirs(inner, exist_ok=True)


def read_text(path: str) -> str:
    if not is_remote(path):
        with open(path, newline="", encoding="utf-8") as f:
            return f.read()
    fs, inner = _fs(path)
    with fs.open(inner, "r", newline="", encoding="utf-8") as f:
        return str(f.read())


def write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (atomically on a local disk)."""
    if not is_remote(path):
        replace_atomic(path, text)
        return
    fs, inner = _fs(path)
    with fs.open(inner, "w", newline="", encoding="utf-8") as f:
        f.write(text)


def append_text(path: str, text: str) -> None:
    """Add ``text`` at the end of ``path`` (an object store rewrites the whole file)."""
    if not is_remote(path):
        with open(path, "a", newline="", encoding="utf-8") as f:
            f.write(text)
        return
    write_text(path, (read_text(path) if isfile(path) else "") + text)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(path)
        return
    fs, inner = _fs(path)
    fs.rm_file(inner)
