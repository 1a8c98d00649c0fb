"""The message of a callback that monitors a metric the run did not log (``EarlyStopping``,
``ModelCheckpoint``, ``PruningCallback``): one wording, with the metrics there are and the
closest name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` Did you mean 'val_loss'?`` for the name in ``names`` closest to ``name``; "" when none is close."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def no_metric_message(caller: str, monitor: str, metrics: Iterable[str], how: str) -> str:
    """``<caller> found no metric 'm' in trainer.callback_metrics; available metrics: [...]. Did you
    mean ...? Log it in the system with self.log('m', value)<how>`` (``how`` ends the sentence)."""
    names = sorted(metrics)
    return (
        f"{caller} found no metric {monitor!r} in trainer.callback_metrics; available metrics: "
        f"{names or 'none'}.{did_you_mean(monitor, names)} Log it in the system with "
        f"self.log({monitor!r}, value){how}"
    )
