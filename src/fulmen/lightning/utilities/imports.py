"""``lightning.pytorch.utilities.imports``: which optional packages this environment has, under
Lightning's flag names (Lightning code and its tests branch or skip on them). Each flag is a
plain bool computed from the installed distributions when this module is first imported."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys

__all__ = [
    "_OMEGACONF_AVAILABLE",
    "_PYTHON_GREATER_EQUAL_3_11_0",
    "_RICH_AVAILABLE",
    "_TORCHMETRICS_GREATER_EQUAL_0_8_0",
    "_TORCHMETRICS_GREATER_EQUAL_0_9_1",
    "_TORCHMETRICS_GREATER_EQUAL_0_11",
    "_TORCHMETRICS_GREATER_EQUAL_1_0_0",
    "_TORCHVISION_AVAILABLE",
    "_TORCH_EQUAL_2_8",
    "_TORCH_EQUAL_2_9",
    "_TORCH_GREATER_EQUAL_2_6",
    "_TORCH_GREATER_EQUAL_2_8",
]


def _release(version: str) -> tuple[int, ...]:
    """A version string as a comparable tuple: three release numbers, then 0 for a final release
    or -1 for a pre-release. ``"2.13.0+cpu"`` -> ``(2, 13, 0, 0)``, ``"1.0.0rc1"`` -> ``(1, 0, 0, -1)``."""
    parts: list[int] = []
    final = 0
    for piece in version.split("+")[0].split("."):
        match = re.match(r"\d+", piece)
        if match is None:  # "2.9.0.dev1": before 2.9.0; "1.2.post1": after 1.2
            final = 0 if piece.startswith("post") else -1
            break
        parts.append(int(match.group()))
        if match.end() < len(piece):  # "0rc1", "0a2", "0.dev1": before that release
            final = -1 if not piece[match.end() :].startswith("post") else 0
            break
    parts = [*parts, 0, 0, 0][:3]
    return (*parts, final)


def _installed(distribution: str) -> tuple[int, ...] | None:
    """The installed release of ``distribution``, or None when it is not installed."""
    try:
        return _release(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:
        return None


def _at_least(distribution: str, minimum: tuple[int, ...]) -> bool:
    found = _installed(distribution)
    return found is not None and found >= _release(".".join(map(str, minimum)))


def _between(distribution: str, low: tuple[int, ...], high: tuple[int, ...]) -> bool:
    found = _installed(distribution)
    return found is not None and _release(".".join(map(str, low))) <= found < _release(".".join(map(str, high)))


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_PYTHON_GREATER_EQUAL_3_11_0 = sys.version_info >= (3, 11)
_TORCH_GREATER_EQUAL_2_6 = _at_least("torch", (2, 6))
_TORCH_GREATER_EQUAL_2_8 = _at_least("torch", (2, 8))
_TORCH_EQUAL_2_8 = _between("torch", (2, 8), (2, 9))
_TORCH_EQUAL_2_9 = _between("torch", (2, 9), (2, 10))
_TORCHMETRICS_GREATER_EQUAL_0_8_0 = _at_least("torchmetrics", (0, 8, 0))
_TORCHMETRICS_GREATER_EQUAL_0_9_1 = _at_least("torchmetrics", (0, 9, 1))
_TORCHMETRICS_GREATER_EQUAL_0_11 = _at_least("torchmetrics", (0, 11, 0))
_TORCHMETRICS_GREATER_EQUAL_1_0_0 = _at_least("torchmetrics", (1, 0, 0))
_OMEGACONF_AVAILABLE = _module_available("omegaconf")
_TORCHVISION_AVAILABLE = _installed("torchvision") is not None
_RICH_AVAILABLE = _at_least("rich", (10, 2, 2))
