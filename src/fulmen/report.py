"""Reports: ``fulmen report RUN_DIR [RUN_DIR ...]`` draws a run's curves into one HTML page.

``write_report(run_dirs)`` reads each run folder a ``CSVLogger`` wrote (``metrics.csv``, and when
present ``hparams.yaml``, ``run.json``, ``epoch_times.csv`` and ``predictions.pt``) and writes
``index.html`` plus one PNG per plot into ``out_dir`` (default: ``RUN_DIR/report`` for one run,
``./fulmen-report`` for several):

- ``curves_<name>.png``: each metric family, training and validation together (``train_loss``,
  ``val_loss``, ``train_loss_step``, ``train_loss_epoch`` are the family ``loss``), by global step;
- ``lr.png``: the learning rates ``LearningRateMonitor`` logged (``lr-*`` columns);
- ``epoch_times.png``: seconds per epoch, training and validation, from ``epoch_times.csv``,
  which the ``EpochTimes`` callback writes (``metrics.csv`` has no clock);
- ``confusion_matrix.png`` and ``top_losses.png`` for classifiers, from the test-set
  predictions ``save_predictions`` stored: the highest-loss examples are drawn as images when the
  inputs look like images (``(H, W)``, ``(1|3, H, W)``, or a flat square such as 8x8 = 64),
  otherwise as a bar chart, and listed in a table.

Several runs are overlaid in the same curve plots, one colour per run (the legend names each run
by its folder, e.g. ``fulmen_logs/version_1``); confusion matrices and top losses are drawn per
run (``confusion_matrix_<run>.png``). The page embeds every PNG as a base64 data URI, so it is
self-contained (it still shows when copied alone); the PNG files beside it are the same images.
It also has tables of the final metric values, the hyperparameters and the run record.

Plots are drawn with matplotlib's Agg backend without touching pyplot (``pip install matplotlib``,
or ``fulmen[tuner]``); matplotlib is imported only when a report is written.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import datetime
import html
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

METRICS_FILE = "metrics.csv"
EPOCH_TIMES_FILE = "epoch_times.csv"
PREDICTIONS_FILE = "predictions.pt"
REPORT_INDEX = "index.html"
TOP_LOSSES = 16
_EPOCH_TIME_FIELDS = ("epoch", "seconds", "train_seconds", "val_seconds", "end_time")
_STAGES = ("train", "val", "valid", "validation", "test")
_STAGE_STYLE = {"train": "-", "val": "--", "valid": "--", "validation": "--", "test": ":"}


# -- epoch times ----------------------------------------------------------------------------------
class EpochTimes(Callback):
    """Write the wall time of each training epoch to ``epoch_times.csv`` in the run folder.

    One row per epoch, appended when the epoch ends (so a run that crashes keeps the epochs it
    finished): ``epoch``, ``seconds`` (from ``on_train_epoch_start`` to ``on_train_epoch_end``,
    the epoch-end validation included), ``train_seconds`` and ``val_seconds`` (validation inside
    the epoch; the sanity check is not counted), ``end_time`` (Unix time). Only rank zero writes.
    The file goes to ``trainer.log_dir``; a resumed run appends to it.
    """

    def __init__(self, filename: str = EPOCH_TIMES_FILE) -> None:
        self.filename = filename
        self.path: str | None = None
        self._start: float | None = None
        self._val_start: float | None = None
        self._val = 0.0

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._start = time.monotonic()
        self._val = 0.0

    def on_validation_start(self, trainer: Trainer, system: System) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self._val_start = time.monotonic()

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        if self._val_start is not None:
            self._val += time.monotonic() - self._val_start
            self._val_start = None

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if self._start is None:
            return
        seconds = time.monotonic() - self._start
        self._start = None
        if not trainer.is_global_zero:
            return
        row = {
            "epoch": trainer.current_epoch,
            "seconds": f"{seconds:.6f}",
            "train_seconds": f"{max(seconds - self._val, 0.0):.6f}",
            "val_seconds": f"{self._val:.6f}",
            "end_time": f"{time.time():.3f}",
        }
        os.makedirs(trainer.log_dir, exist_ok=True)
        self.path = os.path.join(trainer.log_dir, self.filename)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=_EPOCH_TIME_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


# -- predictions ----------------------------------------------------------------------------------
def save_predictions(
    run_dir: str | os.PathLike[str],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    kind: str = "auto",
    class_names: Sequence[str] | None = None,
) -> str:
    """Store a classifier's predictions in ``run_dir/predictions.pt`` for the report; return its path.

    ``outputs`` is ``(N, C)`` logits or probabilities (``kind="logits"`` / ``"probs"``; ``"auto"``
    takes rows of numbers in [0, 1] summing to 1 as probabilities), or ``(N,)`` / ``(N, 1)`` for a
    binary classifier (a logit or the probability of class 1). ``targets`` is ``(N,)`` class
    indices; ``inputs`` (optional, first dimension N) lets the report draw the highest-loss
    examples. The file holds plain tensors and lists (``torch.load(..., weights_only=True)``). It
    is recorded, with its SHA-256, in the run's audit log (``checkpoints.jsonl``), so that
    ``fulmen verify`` knows it and notices a later change.
    """
    import torch

    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"save_predictions(kind={kind!r}): expected 'auto', 'logits' or 'probs'.")
    scores = torch.as_tensor(outputs).detach().cpu().float()
    labels = torch.as_tensor(targets).detach().cpu()
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    binary = scores.ndim == 1
    if scores.ndim not in (1, 2):
        raise ValueError(f"save_predictions: outputs must be (N, C) or (N,), got shape {tuple(scores.shape)}.")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"save_predictions: targets must be (N,) class indices with N = {scores.shape[0]} (the outputs' "
            f"first dimension), got shape {tuple(labels.shape)}."
        )
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("save_predictions: targets must be class indices, not probabilities or one-hot rows.")
    labels = labels.long()
    in_unit = bool(((scores >= 0) & (scores <= 1)).all()) if scores.numel() else True
    if kind == "auto":
        if binary:
            kind = "probs" if in_unit else "logits"
        else:
            sums_to_one = bool(torch.allclose(scores.sum(1), torch.ones(scores.shape[0]), atol=1e-3))
            kind = "probs" if in_unit and sums_to_one else "logits"
    if binary:
        p1 = scores if kind == "probs" else torch.sigmoid(scores)
        probs = torch.stack([1 - p1, p1], dim=1)
    else:
        probs = scores if kind == "probs" else torch.softmax(scores, dim=1)
    n_classes = probs.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"save_predictions: targets must lie in [0, {n_classes}) for {n_classes} classes, "
            f"got values from {int(labels.min())} to {int(labels.max())}."
        )
    data: dict[str, Any] = {"format": 1, "probs": probs.contiguous(), "targets": labels.contiguous()}
    if inputs is not None:
        x = torch.as_tensor(inputs).detach().cpu()
        if x.shape[0] != labels.shape[0]:
            raise ValueError(
                f"save_predictions: inputs must have N = {labels.shape[0]} rows, got shape {tuple(x.shape)}."
            )
        data["inputs"] = x.contiguous()
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != n_classes:
            raise ValueError(f"save_predictions: {len(names)} class_names for {n_classes} classes.")
        data["class_names"] = names
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, PREDICTIONS_FILE)
    tmp = path + ".tmp"
    torch.save(data, tmp)
    os.replace(tmp, path)
    from fulmen.checkpoint.audit import record_artifact

    record_artifact(run_dir, path, kind="predictions")  # so that `fulmen verify` knows it, and checks its bytes
    return path


# -- reading a run --------------------------------------------------------------------------------
@dataclass
class _Series:
    column: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class _Run:
    path: str
    label: str = ""
    columns: list[str] = field(default_factory=list)
    series: dict[str, _Series] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    epoch_times: list[dict[str, float]] = field(default_factory=list)
    predictions: dict[str, Any] | None = None


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


class ReportInputError(ValueError):
    """A file in a run folder that the report cannot read (not text, not CSV or YAML, a refused
    ``predictions.pt``); the message names the file and what is wrong with it."""


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


def _read_run(run_dir: str) -> _Run:
    run = _Run(path=run_dir)
    metrics = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(metrics):
        raise _missing_metrics_error(run_dir)
    with _reading(metrics, "CSV file"), open(metrics, newline="", encoding="utf-8") as f:
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
                    series = run.series.setdefault(column, _Series(column))
                    series.steps.append(step)
                    series.values.append(value)
            epoch = _number(row.get("epoch"))
            if epoch is not None:
                run.last["epoch"] = epoch
            if step is not None:
                run.last["step"] = step

    hparams = os.path.join(run_dir, "hparams.yaml")
    if os.path.isfile(hparams):
        import yaml

        with _reading(hparams, "YAML file"), open(hparams, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
        if isinstance(loaded, dict):
            run.hparams = _flatten(loaded)

    record = os.path.join(run_dir, "run.json")
    if os.path.isfile(record):
        try:
            with open(record, encoding="utf-8") as f:
                run.record = json.load(f)
        except (OSError, ValueError):
            run.record = None

    times = os.path.join(run_dir, EPOCH_TIMES_FILE)
    if os.path.isfile(times):
        with _reading(times, "CSV file"), open(times, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                parsed = {k: _number(row.get(k)) for k in _EPOCH_TIME_FIELDS}
                if parsed["epoch"] is not None and parsed["seconds"] is not None:
                    run.epoch_times.append({k: v for k, v in parsed.items() if v is not None})

    preds = os.path.join(run_dir, PREDICTIONS_FILE)
    if os.path.isfile(preds):
        import torch

        try:
            loaded_preds = torch.load(preds, map_location="cpu", weights_only=True)
        except Exception as err:
            from fulmen.checkpoint.io import refusal

            raise refusal(preds, err) from None  # one line; never torch's advice to load it unsafely
        run.predictions = _checked_predictions(preds, loaded_preds)
    return run


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


def _labels(paths: list[str]) -> list[str]:
    """Short unique names: ``parent/folder`` (``fulmen_logs/version_0``), longer when needed."""
    parts = [os.path.abspath(p).rstrip(os.sep).split(os.sep) for p in paths]
    depth = 2
    while True:
        labels = ["/".join(p[-depth:]).lstrip("/") or "/" for p in parts]
        if len(set(labels)) == len(labels) or depth > max(len(p) for p in parts):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


# -- metric families --------------------------------------------------------------------------------
def _split(column: str) -> tuple[str, str]:
    """``(stage, family)``: ``train_loss_step`` -> ("train", "loss"), ``val/acc`` -> ("val", "acc")."""
    name = column
    for suffix in ("_step", "_epoch"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    for stage in _STAGES:
        for sep in ("_", "/", "-", "."):
            if name.startswith(stage + sep) and len(name) > len(stage) + 1:
                return stage, name[len(stage) + 1 :]
        for sep in ("_", "/", "-", "."):
            if name.endswith(sep + stage) and len(name) > len(stage) + 1:
                return stage, name[: -len(stage) - 1]
    return "", name


def _is_lr(column: str) -> bool:
    return column.startswith("lr-") and not column.endswith(("-momentum", "-weight_decay"))


def _families(runs: list[_Run]) -> dict[str, list[tuple[int, str, str]]]:
    """family -> [(run index, column, stage)] of the columns with at least one point to draw.

    Test metrics are left to the tables (one value each); a family is drawn when some column of
    it has two or more points, or it holds both training and validation values."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    for i, run in enumerate(runs):
        for column in run.columns:
            if _is_lr(column) or column not in run.series:
                continue
            stage, family = _split(column)
            if stage == "test":
                continue
            out.setdefault(family, []).append((i, column, stage))
    kept = {}
    for family, members in out.items():
        longest = max(len(runs[i].series[c].values) for i, c, _ in members)
        if longest >= 2 or len({s for _, _, s in members}) > 1:
            kept[family] = members
    return kept


# -- drawing --------------------------------------------------------------------------------------
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def _figure(width: float = 7.0, height: float = 4.2) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError("fulmen report needs matplotlib: pip install matplotlib (or fulmen[tuner]).") from err
    return Figure(figsize=(width, height), dpi=100)


def _save(fig: Figure, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", facecolor="white")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"


_STAGE_MARKER = {"train": "o", "val": "s", "valid": "s", "validation": "s", "test": "^"}


def _line_style(n_points: int, stage: str = "train") -> dict[str, Any]:
    return {"marker": _STAGE_MARKER.get(stage, "D"), "markersize": 3.5} if n_points <= 60 else {}


def _plot_family(runs: list[_Run], family: str, members: list[tuple[int, str, str]], path: str) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    multi = len(runs) > 1
    order = {"train": 0, "": 1, "val": 2, "valid": 2, "validation": 2, "test": 3}
    members = sorted(members, key=lambda m: (m[0], order.get(m[2], 1))) if not multi else members
    for k, (i, column, stage) in enumerate(members):
        series = runs[i].series[column]
        color = _COLORS[(i if multi else k) % len(_COLORS)]
        label = f"{runs[i].label} · {column}" if multi else column
        ax.plot(
            series.steps,
            series.values,
            color=color,
            linestyle=_STAGE_STYLE.get(stage, "-"),
            linewidth=1.6,
            label=label,
            **_line_style(len(series.values), stage),
        )
    values = [v for i, c, _ in members for v in runs[i].series[c].values]
    if "loss" in family.lower() and values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_title(family)
    ax.set_xlabel("step")
    ax.set_ylabel(family)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_lr(runs: list[_Run], path: str) -> str | None:
    members = [(i, c) for i, run in enumerate(runs) for c in run.columns if _is_lr(c) and c in run.series]
    if not members:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    multi = len(runs) > 1
    for k, (i, column) in enumerate(members):
        series = runs[i].series[column]
        ax.plot(
            series.steps,
            series.values,
            color=_COLORS[(i if multi else k) % len(_COLORS)],
            linewidth=1.6,
            label=f"{runs[i].label} · {column}" if multi else column,
            **_line_style(len(series.values)),
        )
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_epoch_times(runs: list[_Run], path: str) -> str | None:
    timed = [(i, run) for i, run in enumerate(runs) if run.epoch_times]
    if not timed:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    if len(runs) == 1:
        rows = timed[0][1].epoch_times
        epochs = [r["epoch"] for r in rows]
        train = [r.get("train_seconds", r["seconds"]) for r in rows]
        val = [r.get("val_seconds", 0.0) for r in rows]
        ax.bar(epochs, train, color="tab:blue", label="training")
        ax.bar(epochs, val, bottom=train, color="tab:orange", label="validation")
    else:
        for i, run in timed:
            rows = run.epoch_times
            ax.plot(
                [r["epoch"] for r in rows],
                [r["seconds"] for r in rows],
                color=_COLORS[i % len(_COLORS)],
                linewidth=1.6,
                label=run.label,
                **_line_style(len(rows)),
            )
    ax.set_title("seconds per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _class_names(pred: dict[str, Any]) -> list[str]:
    n = int(pred["probs"].shape[1])
    names = pred.get("class_names")
    return [str(c) for c in names] if names and len(names) == n else [str(c) for c in range(n)]


def _losses(pred: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(per-example cross-entropy, predicted class, its probability), as tensors."""
    import torch

    probs = pred["probs"].float()
    targets = pred["targets"].long()
    true_p = probs.gather(1, targets[:, None])[:, 0]
    losses = -torch.log(true_p.clamp_min(1e-12))
    conf, predicted = probs.max(1)
    return losses, predicted, conf


def _plot_confusion(run: _Run, path: str) -> str:
    import torch

    pred = run.predictions
    assert pred is not None
    names = _class_names(pred)
    n = len(names)
    targets = pred["targets"].long()
    predicted = pred["probs"].argmax(1)
    matrix = torch.bincount(targets * n + predicted, minlength=n * n).reshape(n, n)
    rows = matrix.sum(1, keepdim=True).clamp_min(1)
    share = (matrix.float() / rows).numpy()
    accuracy = float(matrix.diag().sum()) / max(int(matrix.sum()), 1)
    size = min(max(4.5, 0.45 * n + 2.5), 14.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 30:
        counts = matrix.numpy()
        for r in range(n):
            for c in range(n):
                if counts[r, c]:
                    ax.text(
                        c, r, str(counts[r, c]), ha="center", va="center", fontsize=8 if n <= 15 else 6,
                        color="white" if share[r, c] > 0.5 else "black",
                    )
    ticks = list(range(n))
    ax.set_xticks(ticks if n <= 40 else ticks[:: max(n // 20, 1)])
    ax.set_yticks(ticks if n <= 40 else ticks[:: max(n // 20, 1)])
    if n <= 40:
        ax.set_xticklabels(names, rotation=90 if max(len(s) for s in names) > 3 else 0)
        ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {run.label}\naccuracy {accuracy:.3f} on {int(matrix.sum())} examples", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _as_image(x: Any) -> Any:
    """A 2-D (grey) or (H, W, 3) numpy image for one input, or None when it does not look like one."""
    import torch

    x = x.detach().float()
    if x.ndim == 1:
        side = math.isqrt(x.numel())
        if side < 2 or side * side != x.numel():
            return None
        x = x.reshape(side, side)
    elif x.ndim == 3 and x.shape[0] in (1, 3):
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    elif x.ndim != 2:
        return None
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.numpy()


def _top_losses(run: _Run, k: int = TOP_LOSSES) -> list[dict[str, Any]]:
    pred = run.predictions
    assert pred is not None
    losses, predicted, conf = _losses(pred)
    names = _class_names(pred)
    order = losses.argsort(descending=True)[: min(k, losses.numel())]
    return [
        {
            "index": int(i),
            "true": names[int(pred["targets"][i])],
            "predicted": names[int(predicted[i])],
            "prob": float(conf[i]),
            "loss": float(losses[i]),
        }
        for i in order
    ]


def _plot_top_losses(run: _Run, path: str) -> str:
    pred = run.predictions
    assert pred is not None
    top = _top_losses(run)
    inputs = pred.get("inputs")
    images = [_as_image(inputs[row["index"]]) for row in top] if inputs is not None else []
    if images and all(img is not None for img in images):
        cols = 4
        rows = max(math.ceil(len(top) / cols), 1)
        fig = _figure(cols * 2.1, rows * 2.3 + 0.4)
        for n, (row, img) in enumerate(zip(top, images)):
            ax = fig.add_subplot(rows, cols, n + 1)
            ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None, interpolation="nearest")
            wrong = row["true"] != row["predicted"]
            ax.set_title(
                f"{row['predicted']}/{row['true']} / {row['loss']:.2f} / {row['prob']:.2f}",
                fontsize=8,
                color="tab:red" if wrong else "tab:green",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red" if wrong else "tab:green")
                spine.set_linewidth(2)
        fig.suptitle(f"highest losses ({run.label}): predicted/true / loss / probability of the prediction", fontsize=10)
    else:
        fig = _figure(7.0, max(2.5, 0.3 * len(top) + 1.2))
        ax = fig.add_subplot()
        labels = [f"#{r['index']}: {r['true']} → {r['predicted']}" for r in top][::-1]
        values = [r["loss"] for r in top][::-1]
        colors = ["tab:red" if r["true"] != r["predicted"] else "tab:green" for r in top][::-1]
        ax.barh(range(len(top)), values, color=colors)
        ax.set_yticks(range(len(top)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlabel("cross-entropy loss")
        ax.set_title(f"highest losses ({run.label}): example: true → predicted", fontsize=10)
        ax.grid(True, alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, path)


# -- the page -------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222;
       background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin: 28px 0 8px 0; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin: 16px 0 6px 0; }
.meta { color: #666; font-size: 13px; } a { color: #333; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid #ddd; padding: 6px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: #666; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td { font-weight: 600; } .note { color: #666; font-size: 13px; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _figure_html(path: str, caption: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    name = os.path.basename(path)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" data-file="{html.escape(name)}">'
        f'<figcaption>{html.escape(caption)} (<a href="{html.escape(name)}">{html.escape(name)}</a>)</figcaption></figure>'
    )


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1, differs: list[bool] | None = None) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in header), "</tr>"]
    for n, row in enumerate(rows):
        cls = ' class="differs"' if differs and differs[n] else ""
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if j >= numeric_from else f"<td>{html.escape(c)}</td>"
            for j, c in enumerate(row)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "".join(out)


def _record_rows(runs: list[_Run]) -> list[list[str]]:
    def get(rec: dict[str, Any] | None, *keys: str) -> str:
        value: Any = rec
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return "" if value is None else _fmt(value)

    fields = [
        ("started", ("start_time",)),
        ("system", ("system",)),
        ("seed", ("seed",)),
        ("precision", ("precision",)),
        ("git commit", ("git", "commit")),
        ("git dirty", ("git", "dirty")),
        ("host", ("host", "name")),
        ("devices", ("host", "devices")),
        ("torch", ("versions", "torch")),
        ("fulmen", ("versions", "fulmen")),
        ("command", ("command",)),
    ]
    rows = []
    for title, keys in fields:
        values = [get(run.record, *keys) for run in runs]
        if title == "command":
            values = [" ".join(json.loads(v)) if v.startswith("[") else v for v in values]
        if any(values):
            rows.append([title, *values])
    totals = [f"{sum(r['seconds'] for r in run.epoch_times):.1f} s" if run.epoch_times else "" for run in runs]
    if any(totals):
        rows.append(["training time (epochs)", *totals])
    return rows


def _page(runs: list[_Run], sections: list[tuple[str, list[str], str]]) -> str:
    labels = [run.label for run in runs]
    title = "fulmen report: " + ", ".join(labels)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{len(runs)} run{"s" if len(runs) > 1 else ""}, written {now}: '
        + "; ".join(f"<code>{html.escape(r.label)}</code> = {html.escape(os.path.abspath(r.path))}" for r in runs)
        + "</p>",
    ]

    # final metrics
    names: list[str] = []
    for run in runs:
        names.extend(c for c in ["epoch", "step", *run.columns] if c in run.last and c not in names)
    rows = [[name, *(_fmt(run.last[name]) if name in run.last else "" for run in runs)] for name in names]
    parts.append("<h2>Final metrics</h2>")
    parts.append('<p class="note">The last value logged for each metric.</p>')
    parts.append(_table(["metric", *labels], rows))

    for heading, figures, note in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f'<p class="note">{note}</p>')
        if figures:
            parts.append('<div class="grid">' + "".join(figures) + "</div>")

    # hyperparameters and the run record
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.hparams if k not in keys)
    parts.append("<h2>Hyperparameters</h2>")
    if keys:
        hrows = [[k, *(_fmt(run.hparams[k]) if k in run.hparams else "" for run in runs)] for k in keys]
        differs = [len(runs) > 1 and len(set(r[1:])) > 1 for r in hrows]
        parts.append(_table(["hyperparameter", *labels], hrows, differs=differs))
        if len(runs) > 1 and any(differs):
            parts.append('<p class="note">Rows in bold differ between the runs.</p>')
    else:
        parts.append('<p class="note">No hparams.yaml in the run folder.</p>')
    record_rows = _record_rows(runs)
    if record_rows:
        parts.append("<h2>Run</h2>")
        parts.append(_table(["", *labels], record_rows, numeric_from=99))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Write ``index.html`` and its PNGs for one run folder or several (overlaid); return the page's path.

    ``out_dir`` defaults to ``RUN_DIR/report`` for one run and ``./fulmen-report`` for several.
    A folder without ``metrics.csv`` raises ``FileNotFoundError`` saying what to pass instead.
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [os.fspath(p) for p in run_dirs]
    if not paths:
        raise ValueError("write_report: no run folders given.")
    runs = [_read_run(p) for p in paths]
    for run, label in zip(runs, _labels(paths)):
        run.label = label
    if out_dir is None:
        out_dir = os.path.join(paths[0], "report") if len(paths) == 1 else os.path.join(os.getcwd(), "fulmen-report")
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)

    sections: list[tuple[str, list[str], str]] = []
    families = _families(runs)
    curves = [
        _figure_html(_plot_family(runs, family, members, os.path.join(out, f"curves_{_slug(family)}.png")), family)
        for family, members in families.items()
    ]
    sections.append(
        ("Curves", curves, "" if curves else "Nothing logged more than once: no curves to draw.")
    )
    lr = _plot_lr(runs, os.path.join(out, "lr.png"))
    times = _plot_epoch_times(runs, os.path.join(out, "epoch_times.png"))
    notes = []
    if lr is None:
        notes.append("No <code>lr-*</code> columns: add <code>fulmen.LearningRateMonitor()</code> to the callbacks.")
    if times is None:
        notes.append(f"No {EPOCH_TIMES_FILE}: add <code>fulmen.report.EpochTimes()</code> to the callbacks.")
    sections.append(
        (
            "Learning rate and epoch times",
            [_figure_html(path, caption) for path, caption in ((lr, "learning rate"), (times, "seconds per epoch")) if path],
            " ".join(notes),
        )
    )
    classified = [run for run in runs if run.predictions is not None]
    if classified:
        multi = len(runs) > 1
        for run in classified:
            suffix = f"_{_slug(run.label)}" if multi else ""
            figures = [
                _figure_html(_plot_confusion(run, os.path.join(out, f"confusion_matrix{suffix}.png")), "confusion matrix"),
                _figure_html(_plot_top_losses(run, os.path.join(out, f"top_losses{suffix}.png")), "highest losses"),
            ]
            top = _top_losses(run)
            table = _table(
                ["example", "true", "predicted", "probability", "loss"],
                [[str(r["index"]), r["true"], r["predicted"], f"{r['prob']:.3f}", f"{r['loss']:.3f}"] for r in top],
                numeric_from=3,
            )
            heading = f"Predictions ({run.label})" if multi else "Predictions"
            sections.append((heading, [*figures, f"<div><h3>Highest losses</h3>{table}</div>"], ""))
    else:
        sections.append(
            (
                "Predictions",
                [],
                f"No {PREDICTIONS_FILE}: a classifier can store its test-set outputs with "
                "<code>fulmen.report.save_predictions(run_dir, logits, targets, inputs)</code>.",
            )
        )
    page = os.path.join(out, REPORT_INDEX)
    tmp = page + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_page(runs, sections))
    os.replace(tmp, page)
    return page


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fulmen report`` (for a sub-command parser)."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (each holding metrics.csv)")
    parser.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="where to write index.html and the PNGs (default: RUN_DIR/report for one run, ./fulmen-report for several)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report ``args`` describe; print the page's path (exit 0), or one line saying why
    not: exit 2 for a folder or file it cannot use (missing, not a run folder, damaged, refused),
    1 without matplotlib."""
    import pickle

    from fulmen.checkpoint.io import CheckpointFileError

    try:
        page = write_report(args.run_dirs, args.out)
    except (FileNotFoundError, NotADirectoryError, ValueError, CheckpointFileError, pickle.UnpicklingError) as err:
        message = str(err)
        print(message if message.startswith("fulmen report:") else f"fulmen report: {message}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(page)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fulmen report RUN_DIR [RUN_DIR ...] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="fulmen report",
        description="Draw the curves, learning rate, epoch times and (for classifiers) the confusion matrix and "
        "highest-loss examples of one run or several overlaid, into a self-contained HTML page with PNGs.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
