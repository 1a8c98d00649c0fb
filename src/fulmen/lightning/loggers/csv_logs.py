"""``CSVLogger`` with Lightning's signature: ``fulmen.CSVLogger`` writing
``save_dir/lightning_logs/version_N/metrics.csv`` by default."""

from __future__ import annotations

import os
from collections.abc import Mapping

from fulmen.lightning.loggers._prefix import prefixed
from fulmen.loggers.csv import CSVLogger as _CSVLogger

__all__ = ["CSVLogger"]


class CSVLogger(_CSVLogger):
    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(
            save_dir, name=name or "", version=version, flush_logs_every_n_steps=flush_logs_every_n_steps
        )
        self._prefix = prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        super().log_metrics(prefixed(self._prefix, metrics), step)
