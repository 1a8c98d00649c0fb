"""Rank helpers for user code: ``fulmen.rank_zero_only`` and friends."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _rank_from_env() -> int:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


class _RankZeroOnly:
    """Decorator: the function runs on the process of global rank 0 only and returns None elsewhere.

    ``rank_zero_only.rank`` is read from the environment at import (``RANK``, ``SLURM_PROCID``) and
    set by the Trainer once the ranks are known.
    """

    def __init__(self) -> None:
        self.rank = _rank_from_env()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.rank == 0:
                return fn(*args, **kwargs)
            return None

        return wrapped  # type: ignore[return-value]


rank_zero_only = _RankZeroOnly()


@rank_zero_only
def rank_zero_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only."""
    print(*args, **kwargs)
