"""Writing checkpoints so a crash never leaves a half-written file, and reading them safely."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

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


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """Save ``obj`` with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    The data goes to a temporary file in the same folder (on clusters the system temp folder is
    often another filesystem, where a rename is not atomic), is flushed and fsynced, then renamed
    over ``path``; the folder is fsynced so the rename itself survives a power cut.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)
    return path


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


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only.

    A file that would need to run code to load (a pickled class or function) is refused, so a
    checkpoint from someone else cannot execute anything on this machine.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path!r} (it does not exist or is not a file).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if _refused_as_unsafe(err):
            raise pickle.UnpicklingError(
                f"Refused to load {path!r}: it holds objects other than tensors and plain Python data, and "
                f"loading them would run code from the file. fulmen checkpoints never need that; if you trust "
                f"the file and its author, load it yourself with torch.load(path, weights_only=False). "
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
    return ckpt
