"""``ModelCheckpoint``'s ranking of the checkpoints it keeps by the monitored value
(``{path: score}``, oldest first), and the conversion of scores to floats and back to tensors.

Smaller ranks are better: the value itself for ``mode="min"``, its negative for ``"max"``. NaN
ranks last, and so do infinities, unless Lightning's rules (``nonfinite_as_numbers``, from
``fulmen.lightning``) rank infinities as numbers and let NaN enter while fewer than ``k`` are kept.
Among equal scores the newest is the worst, so ties keep the older checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fulmen.checkpoint.state import metric_number


def worst_value(mode: str) -> float:
    """The score worse than any other: ``inf`` for ``mode="min"``, ``-inf`` for ``"max"``."""
    return math.inf if mode == "min" else -math.inf


@dataclass(frozen=True)
class Ranking:
    mode: str
    nonfinite_as_numbers: bool = False

    def rank(self, value: float) -> float:
        """Smaller is better; NaN ranks last, and so do infinities unless Lightning's rules rank them as numbers."""
        if math.isnan(value) or (math.isinf(value) and not self.nonfinite_as_numbers):
            return math.inf
        return value if self.mode == "min" else -value

    def worst(self, kept: dict[str, float], exclude: str = "") -> str:
        """The path of the worst kept score (the newest among equals), ``exclude`` left out."""
        items = [(p, v) for p, v in reversed(kept.items()) if p != exclude]
        return max(items, key=lambda item: self.rank(item[1]))[0]

    def enters(self, value: float, kept: dict[str, float], k: int, kth: float) -> bool:
        """Whether ``value`` enters the top ``k`` (``-1``: all, ``0``: none) whose worst score is ``kth``."""
        if k == -1:
            return True
        if k == 0:
            return False
        if not self.nonfinite_as_numbers and not math.isfinite(value):
            return False  # (Lightning: NaN enters only while fewer than k are kept)
        return len(kept) < k or self.rank(value) < self.rank(kth)

    def insert(self, kept: dict[str, float], path: str, value: float, k: int, pushed_out: str) -> list[str]:
        """Keep ``path`` with ``value`` (a file written again under its name counts as new), drop
        ``pushed_out`` and, past ``k``, the worst; return the paths dropped."""
        dropped: list[str] = []
        kept.pop(path, None)
        kept[path] = value
        if pushed_out and pushed_out != path and pushed_out in kept:
            del kept[pushed_out]
            dropped.append(pushed_out)
        while k > 0 and len(kept) > k:  # only when a name was reused (enable_version_counter=False)
            worst = self.worst(kept, exclude=path)
            del kept[worst]
            dropped.append(worst)
        return dropped

    def summary(self, kept: dict[str, float]) -> tuple[str, float, str, float | None]:
        """``(kth path, kth score, best path, best score)`` of ``kept``: the worst kept one (none:
        ``""`` and the worst value) and the best finite one (none: ``""`` and None)."""
        kth_path, kth = "", worst_value(self.mode)
        if kept:
            kth_path = self.worst(kept)
            kth = kept[kth_path]
        finite = [(p, v) for p, v in kept.items() if math.isfinite(v) or self.nonfinite_as_numbers]
        if not finite:
            return kth_path, kth, "", None
        best_path, best = min(finite, key=lambda item: self.rank(item[1]))
        return kth_path, kth, best_path, best


def score(value: Any, what: str) -> float:
    """A monitored value as a float (``fulmen.checkpoint.state.metric_number``: a float32 value as
    the shortest decimal naming it, so scores compare equal to the numbers that were logged)."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise RuntimeError(f"{what} has shape {tuple(value.shape)}; expected a single number. Log a scalar.")
    return metric_number(value)


def state_score(value: Any) -> float:
    """A score given to the callback (its state, or a property set by hand) as a float."""
    return score(value, "a ModelCheckpoint state's score")


def state_score_or_none(value: Any) -> float | None:
    return None if value is None else state_score(value)


def as_tensor(value: float | None) -> torch.Tensor | None:
    """A score as the float64 tensor the public properties give (None stays None)."""
    return None if value is None else torch.tensor(value, dtype=torch.float64)
