"""``rank_zero_only`` (fulmen's) and ``rank_zero_info`` / ``rank_zero_debug`` / ``rank_zero_warn``,
which log or warn on the process of global rank 0 only.

Messages go to the ``logging`` logger ``"fulmen.lightning"``; as Lightning does for its own logger,
it prints INFO messages to stderr when the application has not configured logging.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from fulmen.runtime.distributed import rank_zero_only

__all__ = ["log", "rank_zero_debug", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]

log = logging.getLogger("fulmen.lightning")
if not logging.root.handlers and not log.handlers:
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())


@rank_zero_only
def rank_zero_info(*args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """``logging.info`` on rank 0."""
    log.info(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_debug(*args: Any, stacklevel: int = 3, **kwargs: Any) -> None:
    """``logging.debug`` on rank 0."""
    log.debug(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(message: str | Warning, stacklevel: int = 3, **kwargs: Any) -> None:
    """``warnings.warn`` on rank 0 (``category`` defaults to ``UserWarning``)."""
    warnings.warn(message, stacklevel=stacklevel, **kwargs)
