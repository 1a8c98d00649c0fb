"""``CSVLogger``: metrics to ``log_dir/metrics.csv``, hyperparameters to ``log_dir/hparams.yaml``.

The CSV has the columns ``epoch``, ``step``, then every metric name in the order it was first
logged, one row per ``log_metrics`` call. Rows are kept in memory and written in batches, so
logging stays cheap; ``save()`` (and ``finalize()``) writes whatever is pending.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from typing import Any

from fulmen.loggers._yaml import HPARAMS_FILE, replace_atomic, write_yaml_atomic
from fulmen.loggers.base import FolderLogger

METRICS_FILE = "metrics.csv"
_FIXED = ("epoch", "step")


class CSVLogger(FolderLogger):
    """Log metrics to a CSV file in ``save_dir/name/version_N``.

    Args:
        save_dir: Root folder for all runs.
        name: Sub-folder for this experiment (``""`` writes versions straight into ``save_dir``).
        version: An int gives ``version_<int>``, a str is used as the folder name; None picks
            the next free ``version_N`` when the logger is first used.
        flush_logs_every_n_steps: Write buffered rows to disk every this many ``log_metrics`` calls.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "fulmen_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        super().__init__(save_dir, name=name, version=version)
        if flush_logs_every_n_steps < 1:
            raise ValueError(
                f"CSVLogger(flush_logs_every_n_steps=...) must be >= 1, got {flush_logs_every_n_steps}."
            )
        self._flush_every = flush_logs_every_n_steps
        self._metric_names: list[str] = []  # first-seen order, without epoch/step
        self._pending: list[dict[str, Any]] = []
        self._calls_since_flush = 0
        self._file_header: list[str] | None = None  # header of metrics.csv as it is on disk
        self._hparams: dict[str, Any] = {}

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, METRICS_FILE)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        row: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            if key == "epoch":
                row["epoch"] = _epoch_cell(value)
                continue
            if key not in self._metric_names:
                self._metric_names.append(key)
            row[key] = value
        self._pending.append(row)
        self._calls_since_flush += 1
        if self._calls_since_flush >= self._flush_every:
            self.save()

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        # Merged, so a second call adds to the file rather than dropping the first call's keys.
        self._hparams.update(params)
        write_yaml_atomic(os.path.join(self.log_dir, HPARAMS_FILE), self._hparams)

    def save(self) -> None:
        self._calls_since_flush = 0
        if not self._pending:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        path = self.metrics_file
        if self._file_header is None and os.path.exists(path):
            # An explicit version that already has a metrics.csv (a resumed run): keep its rows
            # and columns, adding ours after them.
            self._file_header = _read_header(path) or None
        header = self._header()
        if header == self._file_header:
            with open(path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=header).writerows(self._pending)
        else:
            # New columns (or a new file): rewrite everything under the widened header, atomically,
            # so a crash mid-write never leaves a truncated CSV behind.
            old_rows = _read_rows(path) if self._file_header is not None else []
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=header)
            writer.writeheader()
            writer.writerows(old_rows)
            writer.writerows(self._pending)
            replace_atomic(path, buffer.getvalue())
            self._file_header = header
        self._pending.clear()

    def _header(self) -> list[str]:
        old = self._file_header or list(_FIXED)
        return old + [n for n in self._metric_names if n not in old]


def _epoch_cell(value: Any) -> Any:
    # The epoch arrives as a float (the trainer converts every logged value); 3.0 reads better as 3.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _read_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
