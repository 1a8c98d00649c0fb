"""Choosing the device from the ``accelerator`` and ``devices`` flags."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.errors import FlagError

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_accelerator(accelerator: str) -> str:
    """``"auto"`` -> the best available of cuda, mps, cpu; checks that the requested one exists."""
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATORS:
        raise FlagError(
            f"Trainer(accelerator={accelerator!r}): expected one of {', '.join(map(repr, ACCELERATORS))}."
        )
    acc = accelerator.lower()
    if acc == "gpu":
        acc = "cuda" if torch.cuda.is_available() or not _mps_available() else "mps"
    if acc == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if acc == "cuda" and not torch.cuda.is_available():
        raise FlagError(
            f"Trainer(accelerator={accelerator!r}) but CUDA is not available here (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False). Use accelerator='cpu' or 'auto', or install a CUDA build "
            f"of torch on a machine with an NVIDIA GPU."
        )
    if acc == "mps" and not _mps_available():
        raise FlagError(
            f"Trainer(accelerator={accelerator!r}) but Apple's MPS backend is not available here. "
            f"Use accelerator='cpu' or 'auto'."
        )
    return acc


def resolve_device(accelerator: str, devices: Any) -> torch.device:
    """The one device this run uses (several devices come with the distributed strategies)."""
    acc = resolve_accelerator(accelerator)
    count = torch.cuda.device_count() if acc == "cuda" else 1
    if devices in ("auto", -1, "-1") or (isinstance(devices, int) and not isinstance(devices, bool) and devices == 1):
        index = 0
    elif isinstance(devices, (list, tuple)) and len(devices) == 1 and isinstance(devices[0], int):
        index = devices[0]
    elif isinstance(devices, str) and devices.strip().isdigit() and int(devices) == 1:
        index = 0
    else:
        raise FlagError(
            f"Trainer(devices={devices!r}): this version of fulmen trains on one device; expected 1, "
            f"'auto', -1 or a one-element list of a device index such as [0]. Training on several devices "
            f"needs the distributed strategies, which are not part of fulmen yet."
        )
    if acc == "cpu":
        return torch.device("cpu")
    if not 0 <= index < count:
        raise FlagError(
            f"Trainer(devices={devices!r}): there is no {acc} device {index}; {count} available."
        )
    return torch.device(acc, index)
