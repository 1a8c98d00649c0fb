"""Run folders: how they are numbered and made, and how an earlier run's checkpoint is found.

A file logger (``FolderLogger``: ``CSVLogger``, ``TensorBoardLogger``) writes into
``<save_dir>/<name>/version_<N>`` (or a folder named by a string version). The first logger's
folder is the run folder, ``trainer.log_dir`` (``default_root_dir`` without a file logger);
``ModelCheckpoint`` writes into its ``checkpoints`` sub-folder unless given a ``dirpath``, and a
signal's stop checkpoint goes there too. This module is the one place that knows that layout:

- numbering: ``next_version`` (the first free ``N`` under a logger's root), ``version_folder``;
- making: ``make_run_folder`` (a local folder or a URL, through fsspec);
- finding: ``newest_run`` (the latest version folder of a root), ``newest_run_checkpoint`` (the
  checkpoint of the newest run that has one: ``fit(ckpt_path="last")`` in a new process, the CLI's
  ``--ckpt_path best|last``), and the checkpoints in one run's folder (``checkpoint_files``,
  ``stop_checkpoints``, ``newest_requeue_checkpoint``, ``newest``).

A logger's version is fixed through ``Logger.pin_version`` only (the Trainer, the DDP broadcast,
a resume from a checkpoint's ``logger_versions``, the CLI and SLURM all go through it), and read
without choosing one through ``Logger.pinned_version``.

Top-level rather than in ``fulmen.loggers``: the trainer, ``ModelCheckpoint``, the signal and
SLURM handlers and the CLI use run folders as much as the loggers do, and none of them owns them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fulmen.loggers.base import FolderLogger, Logger

#: The sub-folder of a run folder that holds its checkpoints (unless ``ModelCheckpoint(dirpath=...)``).
CHECKPOINTS = "checkpoints"

_VERSION_RE = re.compile(r"^version_(\d+)$")
# Written when a signal stopped the run: ``interrupted.ckpt`` (fulmen.runtime.signals) and SLURM's
# requeue checkpoint ``hpc_ckpt_<restart count>.ckpt`` (fulmen.runtime.slurm).
_STOP_FILE = re.compile(r"interrupted\.ckpt|hpc_ckpt_\d+\.ckpt")
_REQUEUE_FILE = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


# -- numbering and making ----------------------------------------------------------------------------
def version_folder(root: str, version: int | str) -> str:
    """``root/version_<N>`` for an int version, ``root/<version>`` for a string one."""
    return os.path.join(root, version if isinstance(version, str) else f"version_{version}")


def next_version(root: str) -> int:
    """The first ``N`` such that ``root/version_N`` does not exist (0 for a new folder); ``root``
    may be a URL (``s3://...``, read through fsspec)."""
    from fulmen.loggers import _files

    try:
        names = _files.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    used = [
        int(m.group(1)) for n in names if (m := _VERSION_RE.match(n)) and _files.isdir(os.path.join(root, n))
    ]
    return max(used) + 1 if used else 0


def newest_run(root: str) -> str | None:
    """The latest ``root/version_<N>`` folder (with or without checkpoints), or None."""
    latest = next_version(root) - 1
    return version_folder(root, latest) if latest >= 0 else None


def make_run_folder(path: str) -> None:
    """Create the run folder ``path`` (and its parents) if needed; ``path`` may be a URL."""
    from fulmen.loggers import _files

    _files.makedirs(path)


def checkpoints_folder(run: str) -> str:
    """``<run>/checkpoints``: a run's default checkpoint folder."""
    return os.path.join(run, CHECKPOINTS)


# -- the checkpoints in one folder ---------------------------------------------------------------------
def checkpoint_files(folder: str, suffix: str = ".ckpt") -> list[str]:
    """The files in ``folder`` whose name ends with ``suffix``, and the sharded checkpoint folders
    (FSDP: a ``meta.ckpt`` inside) so named (hidden ones left out; none when there is no such folder)."""
    try:
        return [
            e.path
            for e in os.scandir(folder)
            if not e.name.startswith(".")
            and e.name.endswith(suffix)
            and (e.is_file() or os.path.isfile(os.path.join(e.path, "meta.ckpt")))
        ]
    except OSError:  # no folder (yet)
        return []


def stop_checkpoints(folder: str) -> list[str]:
    """The checkpoints in ``folder`` that a signal's stop wrote (``interrupted.ckpt``, and SLURM's
    ``hpc_ckpt_<n>.ckpt``): files, or sharded folders (FSDP: a ``meta.ckpt`` inside)."""
    try:
        return [
            e.path
            for e in os.scandir(folder)
            if _STOP_FILE.fullmatch(e.name) and (e.is_file() or os.path.isfile(os.path.join(e.path, "meta.ckpt")))
        ]
    except OSError:
        return []


def newest_requeue_checkpoint(folder: str) -> str | None:
    """The ``hpc_ckpt_<n>.ckpt`` in ``folder`` with the highest restart count ``n``, or None."""
    try:
        found = {int(m.group(1)): n for n in os.listdir(folder) if (m := _REQUEUE_FILE.fullmatch(n))}
    except OSError:
        return None
    return os.path.join(folder, found[max(found)]) if found else None


def newest(paths: Iterable[str]) -> str | None:
    """The most recently modified of ``paths`` (a file gone meanwhile counts as oldest), or None."""
    return max(paths, key=_mtime, default=None)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -math.inf


# -- the newest run with a checkpoint ------------------------------------------------------------------
def fresh_folder_loggers(loggers: Iterable[Logger]) -> list[FolderLogger]:
    """The ``FolderLogger``s whose version is not given, chosen or pinned yet."""
    from fulmen.loggers.base import FolderLogger

    return [lg for lg in loggers if isinstance(lg, FolderLogger) and lg.pinned_version is None]


def newest_run_checkpoint(
    loggers: Sequence[Logger], find: Callable[[], str | None], *, keep_version: bool
) -> str | None:
    """The checkpoint ``find()`` names in the newest run that has one, or None.

    ``find()`` answers for the run the loggers point at (``trainer.log_dir``, ``ModelCheckpoint``'s
    default folder): a checkpoint's path, or None when that run has none. It is asked once per
    version of the fresh ``FolderLogger``s' root (see ``fresh_folder_loggers``; they share one
    numbering), newest first, with those loggers pinned to that version, so a run without a
    checkpoint (a validate or test run since) is passed over. With ``keep_version`` the loggers
    stay on the run found (a resumed fit goes on in it); otherwise, and when no run has one, they
    are unpinned again and choose a new version on first use. Without fresh ``FolderLogger``s,
    ``find()`` is asked once, for the loggers as they are.
    """
    fresh = fresh_folder_loggers(loggers)
    if not fresh:
        return find()
    found = None
    for version in range(next_version(fresh[0].root_dir) - 1, -1, -1):
        for lg in fresh:
            lg.pin_version(None)
            lg.pin_version(version)
        found = find()
        if found is not None:
            break
    if found is None or not keep_version:
        for lg in fresh:
            lg.pin_version(None)
    return found


# -- a re-run by `fulmen reproduce` -------------------------------------------------------------------
#: Set by ``fulmen reproduce`` for the re-run: its work folder. Every output folder a run names by
#: an absolute path outside it is moved under ``<work folder>/_abs/`` (``redirected``), so that a
#: re-run never writes into the original run's folders.
REPRODUCE_ROOT_ENV = "FULMEN_REPRODUCE_ROOT"
REDIRECTED = "_abs"


def redirected(path: str, root: str | None = None) -> str:
    """``path`` itself, except inside a re-run by ``fulmen reproduce``: there an absolute local path
    outside the re-run's work folder becomes ``<work folder>/_abs/<path>`` (relative paths are
    already inside it: the re-run starts there). Used for ``default_root_dir``, file loggers'
    ``save_dir`` and ``ModelCheckpoint(dirpath=...)``; ``root`` (default: ``$FULMEN_REPRODUCE_ROOT``)
    names the work folder from outside the re-run."""
    root = root if root is not None else os.environ.get(REPRODUCE_ROOT_ENV)
    if not root or not os.path.isabs(path) or "://" in path:
        return path
    root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real == root or real.startswith(root + os.sep):
        return path
    return os.path.join(root, REDIRECTED, real.lstrip(os.sep))


def original_path(path: str, root: str, cwd: str, original_cwd: str) -> str:
    """The inverse of a re-run's placement, for comparing what its checkpoints record: a path under
    ``root/_abs/`` (``root``: the re-run's work folder) is the absolute path it stands for; a path
    under the re-run's working folder ``cwd`` is the same path under the original run's working
    folder ``original_cwd``; anything else as it is."""
    moved = os.path.join(root, REDIRECTED) + os.sep
    if path.startswith(moved):
        return os.sep + path[len(moved):]
    if path == cwd:
        return original_cwd
    if path.startswith(cwd + os.sep):
        return os.path.join(original_cwd, path[len(cwd) + 1:])
    return path
