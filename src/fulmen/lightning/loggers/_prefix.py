"""Lightning's ``prefix`` logger argument: ``"{prefix}-{metric}"`` for every metric logged."""

from __future__ import annotations

from collections.abc import Mapping


def prefixed(prefix: str, metrics: Mapping[str, float]) -> Mapping[str, float]:
    if not prefix:
        return metrics
    return {f"{prefix}-{k}" if k != "epoch" else k: v for k, v in metrics.items()}
