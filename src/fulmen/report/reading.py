"""Reading a run folder for the report: ``metrics.csv`` and, when present, ``hparams.yaml``,
``run.json``, ``epoch_times.csv`` and ``predictions.pt``, into one ``Run``.

A file the report cannot read raises ``ReportInputError`` (a ``ValueError``) naming the file; a
folder without ``metrics.csv`` raises ``FileNotFoundError`` saying what to pass instead.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fulmen.report import EPOCH_TIME_FIELDS, EPOCH_TIMES_FILE, METRICS_FILE, PREDICTIONS_FILE


@dataclass
class Series:
    """One column's finite values against the global step."""

    column: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class Run:
    """What the report knows of one run folder."""

    path: str
    label: str = ""
    columns: list[str] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    epoch_times: list[dict[str, float]] = field(default_factory=list)
    predictions: dict[str, Any] | None = None


class ReportInputError(ValueError):
    """A file in a run folder that the report cannot read (not text, not CSV or YAML, a refused
    ``predictions.pt``); the message names the file and what is wrong with it."""


def read_runs(paths: list[str]) -> list[Run]:
    """The runs in ``paths``, each labelled with a short unique name (see ``labels``)."""
    runs = [read_run(p) for p in paths]
    for run, label in zip(runs, labels(paths)):
        run.label = label
    return runs


def read_run(run_dir: str) -> Run:
    """Read one run folder (``FileNotFoundError`` without ``metrics.csv``)."""
    run = Run(path=run_dir)
    metrics = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(metrics):
        raise _missing_metrics_error(run_dir)
    _read_metrics(run, metrics)
    hparams = os.path.join(run_dir, "hparams.yaml")
    if os.path.isfile(hparams):
        run.hparams = _read_hparams(hparams)
    record = os.path.join(run_dir, "run.json")
    if os.path.isfile(record):
        try:
            with open(record, encoding="utf-8") as f:
                run.record = json.load(f)
        except (OSError, ValueError):
            run.record = None
    times = os.path.join(run_dir, EPOCH_TIMES_FILE)
    if os.path.isfile(times):
        run.epoch_times = _read_epoch_times(times)
    preds = os.path.join(run_dir, PREDICTIONS_FILE)
    if os.path.isfile(preds):
        run.predictions = _read_predictions(preds)
    return run


def _number(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _missing_metrics_error(run_dir: str) -> FileNotFoundError:
    if not os.path.isdir(run_dir):
        return FileNotFoundError(f"fulmen report: {run_dir!r} is not a folder (expected a run folder holding {METRICS_FILE}).")
    nested = sorted(
        name for name in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, name, METRICS_FILE))
    )
    hint = (
        f" It has run folders inside: {', '.join(nested[:8])}{' ...' if len(nested) > 8 else ''}; pass one of those."
        if nested
        else " Pass the folder a CSVLogger wrote (e.g. runs/fulmen_logs/version_0); a run without a CSVLogger "
        "has nothing to report."
    )
    return FileNotFoundError(f"fulmen report: no {METRICS_FILE} in {run_dir!r}.{hint}")


@contextlib.contextmanager
def _reading(path: str, what: str) -> Iterator[None]:
    """Errors while reading ``path`` as ``what`` become one ``ReportInputError`` naming it."""
    try:
        yield
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReportInputError(
            f"fulmen report: {path!r} is not a readable {what} ({type(err).__name__}: {err}); it is damaged or was "
            f"replaced. Move it out of the run folder, or restore it."
        ) from None
    except Exception as err:
        import yaml

        if not isinstance(err, yaml.YAMLError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReportInputError(
            f"fulmen report: {path!r} is not a readable {what} ({first}); it is damaged or was edited by hand. "
            f"Move it out of the run folder, or restore it."
        ) from None


def _read_metrics(run: Run, path: str) -> None:
    """``metrics.csv``: the columns, each column's finite values by step, and the last values."""
    with _reading(path, "CSV file"), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        run.columns = [c for c in (reader.fieldnames or []) if c not in ("epoch", "step")]
        for row in reader:
            step = _number(row.get("step"))
            for column in run.columns:
                value = _number(row.get(column))
                if value is None:
                    continue
                run.last[column] = value
                if step is not None and math.isfinite(value):
                    series = run.series.setdefault(column, Series(column))
                    series.steps.append(step)
                    series.values.append(value)
            epoch = _number(row.get("epoch"))
            if epoch is not None:
                run.last["epoch"] = epoch
            if step is not None:
                run.last["step"] = step


def _read_hparams(path: str) -> dict[str, Any]:
    import yaml

    with _reading(path, "YAML file"), open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    return _flatten(loaded) if isinstance(loaded, dict) else {}


def _read_epoch_times(path: str) -> list[dict[str, float]]:
    rows = []
    with _reading(path, "CSV file"), open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {k: _number(row.get(k)) for k in EPOCH_TIME_FIELDS}
            if parsed["epoch"] is not None and parsed["seconds"] is not None:
                rows.append({k: v for k, v in parsed.items() if v is not None})
    return rows


def _read_predictions(path: str) -> dict[str, Any]:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        from fulmen.checkpoint.io import refusal

        raise refusal(path, err) from None  # one line; never torch's advice to load it unsafely
    return _checked_predictions(path, loaded)


def _checked_predictions(path: str, data: Any) -> dict[str, Any]:
    """``predictions.pt`` as ``save_predictions`` writes it: ``probs`` (N, C) and ``targets`` (N,)."""
    import torch

    probs = data.get("probs") if isinstance(data, dict) else None
    targets = data.get("targets") if isinstance(data, dict) else None
    if (
        not isinstance(probs, torch.Tensor)
        or not isinstance(targets, torch.Tensor)
        or probs.ndim != 2
        or targets.ndim != 1
        or probs.shape[0] != targets.shape[0]
        or targets.is_floating_point()
        or (targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= probs.shape[1]))
        or (isinstance(data.get("inputs"), torch.Tensor) and data["inputs"].shape[:1] != targets.shape)
        or ("class_names" in data and len(data["class_names"] or ()) != probs.shape[1])
    ):
        raise ReportInputError(
            f"fulmen report: {path!r} is not a predictions file fulmen.report.save_predictions wrote (expected a "
            f"dict with 'probs' (N, C) and 'targets' (N,) class indices in [0, C), optional 'inputs' with N rows "
            f"and C 'class_names'). Move it out of the run folder, or write it again with save_predictions."
        )
    return data


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def labels(paths: list[str]) -> list[str]:
    """Short unique names: ``parent/folder`` (``fulmen_logs/version_0``), longer when needed."""
    parts = [os.path.abspath(p).rstrip(os.sep).split(os.sep) for p in paths]
    depth = 2
    while True:
        names = ["/".join(p[-depth:]).lstrip("/") or "/" for p in parts]
        if len(set(names)) == len(names) or depth > max(len(p) for p in parts):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out
