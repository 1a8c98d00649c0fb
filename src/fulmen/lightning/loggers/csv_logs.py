"""``CSVLogger`` with Lightning's signature: ``fulmen.CSVLogger`` writing
``save_dir/lightning_logs/version_N/metrics.csv`` by default, with Lightning's file layout.

As in Lightning: the columns of ``metrics.csv`` are ``step`` and the names logged (``epoch``
among them), in sorted order; ``experiment`` is an ``ExperimentWriter``; an explicit
``version`` naming a folder that already holds a ``metrics.csv`` replaces that file (with a
warning). A run resumed by fulmen in its own version folder (``fit(ckpt_path=...)`` without an
explicit version) appends to its ``metrics.csv`` instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from fulmen.lightning.loggers._prefix import prefixed
from fulmen.loggers import _files
from fulmen.loggers.csv import CSVLogger as _CSVLogger
from fulmen.loggers.csv import MetricsWriter

__all__ = ["CSVLogger", "ExperimentWriter"]


class ExperimentWriter(MetricsWriter):
    """``CSVLogger.experiment``: ``log_metrics(metrics, step=None)``, ``log_hparams(params)``,
    ``save()``, the pending rows in ``metrics``, ``metrics_file_path``.

    Args:
        log_dir: The run folder.
        replace_existing: True (Lightning's behaviour): a ``metrics.csv`` already in ``log_dir``
            is deleted now, with a warning, and this run writes a new one. False: this run's
            rows are added to it (a resumed run).
    """

    def __init__(self, log_dir: str, replace_existing: bool = True) -> None:
        super().__init__(log_dir)
        if replace_existing and _files.isfile(self.metrics_file_path):
            warnings.warn(
                f"Experiment logs directory {log_dir} exists and is not empty: its {self.NAME_METRICS_FILE} (from an "
                "earlier run with this version) is deleted now and this run writes a new one, as Lightning does. "
                "Pass another version (or version=None for the next free version_N) to keep it.",
                UserWarning,
                stacklevel=4,
            )
            _files.remove(self.metrics_file_path)

    def _columns(self, known: list[str], new: list[str]) -> list[str]:
        return sorted({*known, *new})  # Lightning's header: every name logged, sorted


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
        self._version_given = version is not None

    @property
    def experiment(self) -> ExperimentWriter:
        writer = super().experiment
        assert isinstance(writer, ExperimentWriter)
        return writer

    def _new_experiment(self) -> ExperimentWriter:
        # A version chosen by the user replaces that folder's metrics.csv (Lightning); one that
        # fulmen set to continue a resumed run keeps it.
        return ExperimentWriter(self.log_dir, replace_existing=self._version_given)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(prefixed(self._prefix, metrics), step)
