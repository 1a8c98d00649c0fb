"""``CSVLogger``: metrics to ``log_dir/metrics.csv``, hyperparameters to ``log_dir/hparams.yaml``.

The CSV has the columns ``epoch``, ``step``, then every metric name in the order it was first
logged, one row per ``log_metrics`` call. Rows are kept in memory and written in batches, so
logging stays cheap: every ``flush_logs_every_n_steps`` rows, once ``flush_secs`` have passed since
the last write (checked when a row is logged, at the log interval), before each checkpoint is
written, and at the end (``save()``, ``finalize()``). So after ``kill -9`` the file holds every row
up to the newest checkpoint. The logger's ``experiment`` is its ``MetricsWriter``, which holds
those rows and writes both files.

A resumed fit (``fit(ckpt_path=...)`` in the same version folder) first cuts ``metrics.csv`` back
to the rows it had when the checkpoint was written (``resume_at``): the rows the stopped run
logged after it are logged again by the resumed run, so the file reads as one run.

``save_dir`` may also be a URL (``s3://bucket/runs``, ``memory://``, ...), written through fsspec.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from collections.abc import Mapping
from typing import Any

from fulmen.loggers import _files
from fulmen.loggers._yaml import HPARAMS_FILE, params_dict, yaml_text
from fulmen.loggers.base import FolderLogger
from fulmen.run_dir import make_run_folder

METRICS_FILE = "metrics.csv"
_FIXED = ("epoch", "step")


class MetricsWriter:
    """What a ``CSVLogger`` writes with (its ``experiment``): rows waiting to be written
    (``metrics``), the CSV's columns (``metrics_keys``) and the hyperparameters (``hparams``).

    Args:
        log_dir: The run folder; ``metrics.csv`` and ``hparams.yaml`` go there. It is created
            when something is first written.
    """

    NAME_METRICS_FILE = METRICS_FILE
    NAME_HPARAMS_FILE = HPARAMS_FILE

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        #: Rows logged since the last ``save()``, each a dict with ``step`` and the metrics.
        self.metrics: list[dict[str, Any]] = []
        #: The columns of ``metrics.csv`` as last written.
        self.metrics_keys: list[str] = []
        #: Every hyperparameter logged so far (what ``hparams.yaml`` holds).
        self.hparams: dict[str, Any] = {}
        self._rows_logged = 0
        self._header_read = False  # whether metrics_keys reflects the file on disk
        self._rows_on_disk: int | None = None  # data rows in the file (None: not counted yet)
        self._cut: tuple[int, int | None] | None = None  # (step, rows) asked for by resume_at, not applied yet

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Keep one row: ``step`` (None: the number of rows this writer logged before) and the
        metrics (tensors become numbers)."""
        row: dict[str, Any] = {"step": self._rows_logged if step is None else step}
        for key, value in metrics_dict.items():
            row[key] = _epoch_cell(_cell(value)) if key == "epoch" else _cell(value)
        self.metrics.append(row)
        self._rows_logged += 1

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        """Add ``params`` to ``hparams`` and write them all to ``hparams.yaml`` (a second call
        adds to the file rather than dropping the first call's keys)."""
        self.hparams.update(params)
        make_run_folder(self.log_dir)
        _files.write_text(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), yaml_text(self.hparams))

    def resume_at(self, step: int, rows: int | None) -> None:
        """Before anything more is written: keep only the first ``rows`` data rows of the file
        (None: the rows at ``step`` or earlier), with the columns they use. Applied on the next
        write (or ``rows_on_disk``), so a process that never writes never touches the file."""
        self._cut = (step, rows)

    @property
    def rows_on_disk(self) -> int:
        """The number of data rows in ``metrics.csv`` (0 when there is none)."""
        self._apply_cut()
        if self._rows_on_disk is None:
            path = self.metrics_file_path
            self._rows_on_disk = len(_read_rows(path)[1]) if _files.isfile(path) else 0
        return self._rows_on_disk

    def _apply_cut(self) -> None:
        if self._cut is None:
            return
        step, rows = self._cut
        self._cut = None
        path = self.metrics_file_path
        if not _files.isfile(path):
            self._rows_on_disk, self.metrics_keys, self._header_read = 0, [], True
            return
        header, old = _read_rows(path)
        kept = old[:rows] if rows is not None else [r for r in old if _row_step(r) <= step]
        # The columns the kept rows use, in the file's order (so the header is the one the file had
        # when those rows were all it held); a file's fixed columns stay.
        fixed = self._columns([], [])
        used = [c for c in header if c in fixed or any(r.get(c) not in (None, "") for r in kept)]
        if not kept:
            _files.remove(path)
            used = []
        elif len(kept) != len(old) or used != header:
            _files.write_text(path, _csv_text(used, [{c: r.get(c) for c in used} for r in kept], with_header=True))
        self._rows_on_disk, self.metrics_keys, self._header_read = len(kept), used, True

    def save(self) -> None:
        """Write the pending rows to ``metrics.csv``: appended when their columns are all known,
        else the file is rewritten under the widened header."""
        self._apply_cut()
        if not self.metrics:
            return
        path = self.metrics_file_path
        if not self._header_read:
            # A file already there (an explicit version of a resumed run): keep its rows and
            # columns, adding ours after them.
            self.metrics_keys = _read_header(path) if _files.isfile(path) else []
            self._header_read = True
        known = self.metrics_keys
        seen, new = set(known), []
        for row in self.metrics:
            for key in row:
                if key not in seen:
                    seen.add(key)
                    new.append(key)
        header = self._columns(known, new) if new or not known else known
        if header == known:
            _files.append_text(path, _csv_text(header, self.metrics, with_header=False))
            if self._rows_on_disk is not None:
                self._rows_on_disk += len(self.metrics)
        else:
            # New columns (or a new file): everything rewritten under the new header (through a
            # temp file locally, so a crash mid-write never leaves a truncated CSV behind).
            old_rows = _read_rows(path)[1] if known else []
            make_run_folder(self.log_dir)
            _files.write_text(path, _csv_text(header, old_rows + self.metrics, with_header=True))
            self.metrics_keys = header
            self._rows_on_disk = len(old_rows) + len(self.metrics)
        self.metrics = []

    def _columns(self, known: list[str], new: list[str]) -> list[str]:
        """The header once ``new`` names arrive: ``epoch``, ``step``, then the metrics in the order
        they were first logged."""
        if not known:
            known = list(_FIXED)
        return known + [n for n in new if n not in known]


class CSVLogger(FolderLogger):
    """Log metrics to a CSV file in ``save_dir/name/version_N``.

    Args:
        save_dir: Root folder for all runs (a local path, or a URL written through fsspec).
        name: Sub-folder for this experiment (``""`` writes versions straight into ``save_dir``).
        version: An int gives ``version_<int>``, a str is used as the folder name; None picks
            the next free ``version_N`` when the logger is first used.
        flush_logs_every_n_steps: Write buffered rows to disk every this many ``log_metrics`` calls.
        flush_secs: Also write them when a row is logged this many seconds or more after the last
            write. None: 5 seconds on a local disk, 120 on a URL (where each write sends the whole
            file again).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "fulmen_logs",
        version: int | str | None = None,
        flush_logs_every_n_steps: int = 100,
        flush_secs: float | None = None,
    ) -> None:
        super().__init__(save_dir, name=name, version=version)
        if flush_logs_every_n_steps < 1:
            raise ValueError(
                f"CSVLogger(flush_logs_every_n_steps=...) must be >= 1, got {flush_logs_every_n_steps}."
            )
        if flush_secs is not None and not flush_secs >= 0:
            raise ValueError(f"CSVLogger(flush_secs=...) must be a number of seconds >= 0, got {flush_secs}.")
        self._flush_every = flush_logs_every_n_steps
        self._flush_secs = flush_secs if flush_secs is not None else 120.0 if _files.is_remote(self._save_dir) else 5.0
        self._calls_since_flush = 0
        self._last_flush = time.monotonic()
        self._experiment: MetricsWriter | None = None
        self._resume: tuple[int, int | None] | None = None

    @property
    def experiment(self) -> MetricsWriter:
        """The ``MetricsWriter`` of this run (made on first use; the folder is created when
        something is first written)."""
        if self._experiment is None:
            self._experiment = self._new_experiment()
            if self._resume is not None:
                self._experiment.resume_at(*self._resume)
                self._resume = None
        return self._experiment

    def _new_experiment(self) -> MetricsWriter:
        return MetricsWriter(self.log_dir)

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, METRICS_FILE)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """One row of ``metrics`` at ``step`` (None: the number of rows logged before)."""
        self.experiment.log_metrics(metrics, step)
        self._calls_since_flush += 1
        # (one clock read per row: rows come at the log interval, never every step)
        if self._calls_since_flush >= self._flush_every or time.monotonic() - self._last_flush >= self._flush_secs:
            self.save()

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace | None = None) -> None:
        """Merge ``params`` into ``hparams.yaml`` (None writes the file with what it has)."""
        self.experiment.log_hparams(params_dict(params))

    def save(self) -> None:
        self._calls_since_flush = 0
        self._last_flush = time.monotonic()
        if self._experiment is not None:
            self._experiment.save()

    def log_position(self) -> dict[str, int]:
        """``{"rows": n}``: the data rows ``metrics.csv`` holds (after ``save()``)."""
        return {"rows": self.experiment.rows_on_disk}

    def resume_at(self, step: int, position: Any) -> None:
        """Cut ``metrics.csv`` back to the rows it held when the checkpoint was written (its
        ``log_position``; without one, to the rows at ``step`` or earlier), before this run writes."""
        rows = position.get("rows") if isinstance(position, dict) else None
        cut = (int(step), int(rows) if isinstance(rows, int) else None)
        if self._experiment is not None:
            self._experiment.resume_at(*cut)
        else:
            self._resume = cut


def _cell(value: Any) -> Any:
    """A CSV cell: numbers and text as they are; a tensor or NumPy scalar as its number."""
    if isinstance(value, (float, int, str)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):  # more than one element: written as it prints
            pass
    return value


def _csv_text(header: list[str], rows: list[dict[str, Any]], *, with_header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    if with_header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _epoch_cell(value: Any) -> Any:
    # The epoch arrives as a float (the trainer converts every logged value); 3.0 reads better as 3.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _read_header(path: str) -> list[str]:
    return next(csv.reader(io.StringIO(_files.read_text(path))), [])


def _read_rows(path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and the data rows of a CSV file (cells as text)."""
    reader = csv.DictReader(io.StringIO(_files.read_text(path)))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _row_step(row: Mapping[str, Any]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0
