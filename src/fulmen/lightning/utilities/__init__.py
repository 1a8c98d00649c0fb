"""``lightning.pytorch.utilities``: the rank-zero helpers."""

from __future__ import annotations

from fulmen.lightning.utilities.rank_zero import (
    rank_zero_debug,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

__all__ = ["rank_zero_debug", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]
