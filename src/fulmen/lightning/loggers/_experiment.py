"""``rank_zero_experiment``, ``DummyExperiment`` and ``DummyLogger`` (``lightning.pytorch.loggers.logger``):
the pieces Lightning users write custom loggers with."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from fulmen.loggers.base import DummyExperiment, Logger
from fulmen.runtime.distributed import rank_zero_only

__all__ = ["DummyExperiment", "DummyLogger", "rank_zero_experiment"]


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorate a logger's ``experiment`` getter: it runs on global rank 0 only; the other
    processes get a ``DummyExperiment``. Put ``@property`` above it."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if rank_zero_only.rank > 0:
            return DummyExperiment()
        return fn(self)

    return experiment


class DummyLogger(Logger):
    """A logger that logs nothing (Lightning's stand-in during tuning); ``experiment`` is a
    ``DummyExperiment``."""

    def __init__(self) -> None:
        self._experiment = DummyExperiment()

    @property
    def experiment(self) -> DummyExperiment:
        return self._experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        pass

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def __getitem__(self, idx: int) -> DummyLogger:
        return self  # as Lightning's: a logger collection of one

    def __iter__(self) -> Any:
        yield from ()

    def __getattr__(self, name: str) -> Callable[..., None]:
        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method
