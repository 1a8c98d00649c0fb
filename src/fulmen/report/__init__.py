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

The package, one job a module (public names are imported on first use, PEP 562, so a training
run that uses ``EpochTimes`` imports neither the plots nor matplotlib):

- ``recording``: ``EpochTimes`` and ``save_predictions``, what a run records while it trains;
- ``reading``: a run folder into a ``Run`` (``ReportInputError`` for a file it cannot read);
- ``plots``: each plot as a matplotlib ``Figure`` (matplotlib imported there, lazily);
- ``page``: the HTML page;
- ``bias_audit``: the "Bias audit" section, from ``audit.json`` (``fulmen.audit``) when present;
- ``cli``: ``fulmen report`` (``add_arguments``, ``run``, ``main``);
- here: ``write_report``, which reads the runs, saves each plot as a PNG and writes the page.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fulmen.report.cli import add_arguments, main, run
    from fulmen.report.page import Section
    from fulmen.report.reading import ReportInputError, Run
    from fulmen.report.recording import EpochTimes, save_predictions

# The files of a run folder the report reads, and what it writes.
METRICS_FILE = "metrics.csv"
EPOCH_TIMES_FILE = "epoch_times.csv"
PREDICTIONS_FILE = "predictions.pt"
REPORT_INDEX = "index.html"
TOP_LOSSES = 16
EPOCH_TIME_FIELDS = ("epoch", "seconds", "train_seconds", "val_seconds", "end_time")

_EXPORTS = {
    "EpochTimes": "fulmen.report.recording",
    "save_predictions": "fulmen.report.recording",
    "ReportInputError": "fulmen.report.reading",
    "add_arguments": "fulmen.report.cli",
    "run": "fulmen.report.cli",
    "main": "fulmen.report.cli",
}

__all__ = [
    "EPOCH_TIMES_FILE",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "REPORT_INDEX",
    "TOP_LOSSES",
    "EpochTimes",
    "ReportInputError",
    "add_arguments",
    "main",
    "run",
    "save_predictions",
    "write_report",
]


def __getattr__(name: str) -> Any:  # PEP 562: the public names of the submodules, imported on first use
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fulmen.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def write_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Write ``index.html`` and its PNGs for one run folder or several (overlaid); return the page's path.

    ``out_dir`` defaults to ``RUN_DIR/report`` for one run and ``./fulmen-report`` for several.
    A folder without ``metrics.csv`` raises ``FileNotFoundError`` saying what to pass instead.
    """
    from fulmen.report.page import page
    from fulmen.report.reading import read_runs

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [os.fspath(p) for p in run_dirs]
    if not paths:
        raise ValueError("write_report: no run folders given.")
    runs = read_runs(paths)
    if out_dir is None:
        out_dir = os.path.join(paths[0], "report") if len(paths) == 1 else os.path.join(os.getcwd(), "fulmen-report")
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    from fulmen.report.bias_audit import audit_sections

    sections = [_curves(runs, out), _lr_and_epoch_times(runs, out), *_predictions(runs, out), *audit_sections(runs, out)]
    index = os.path.join(out, REPORT_INDEX)
    tmp = index + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page(runs, sections))
    os.replace(tmp, index)
    return index


def _save(fig: Figure, path: str) -> str:
    """Every plot of the report becomes a PNG file here."""
    from fulmen.report.plots import save_png

    return save_png(fig, path)


def _curves(runs: list[Run], out: str) -> Section:
    from fulmen.report.page import figure_html
    from fulmen.report.plots import families, plot_family, slug

    curves = [
        figure_html(_save(plot_family(runs, family, members), os.path.join(out, f"curves_{slug(family)}.png")), family)
        for family, members in families(runs).items()
    ]
    return "Curves", curves, "" if curves else "Nothing logged more than once: no curves to draw."


def _lr_and_epoch_times(runs: list[Run], out: str) -> Section:
    from fulmen.report.page import figure_html
    from fulmen.report.plots import plot_epoch_times, plot_lr

    figures, notes = [], []
    lr = plot_lr(runs)
    if lr is not None:
        figures.append(figure_html(_save(lr, os.path.join(out, "lr.png")), "learning rate"))
    else:
        notes.append("No <code>lr-*</code> columns: add <code>fulmen.LearningRateMonitor()</code> to the callbacks.")
    times = plot_epoch_times(runs)
    if times is not None:
        figures.append(figure_html(_save(times, os.path.join(out, "epoch_times.png")), "seconds per epoch"))
    else:
        notes.append(f"No {EPOCH_TIMES_FILE}: add <code>fulmen.report.EpochTimes()</code> to the callbacks.")
    return "Learning rate and epoch times", figures, " ".join(notes)


def _predictions(runs: list[Run], out: str) -> list[Section]:
    from fulmen.report.page import figure_html, table
    from fulmen.report.plots import plot_confusion, plot_top_losses, slug, top_losses

    classified = [run for run in runs if run.predictions is not None]
    if not classified:
        note = (
            f"No {PREDICTIONS_FILE}: a classifier can store its test-set outputs with "
            "<code>fulmen.report.save_predictions(run_dir, logits, targets, inputs)</code>."
        )
        return [("Predictions", [], note)]
    multi = len(runs) > 1
    sections: list[Section] = []
    for run in classified:
        suffix = f"_{slug(run.label)}" if multi else ""
        figures = [
            figure_html(_save(plot_confusion(run), os.path.join(out, f"confusion_matrix{suffix}.png")), "confusion matrix"),
            figure_html(_save(plot_top_losses(run), os.path.join(out, f"top_losses{suffix}.png")), "highest losses"),
        ]
        rows = [[str(r["index"]), r["true"], r["predicted"], f"{r['prob']:.3f}", f"{r['loss']:.3f}"] for r in top_losses(run)]
        listing = table(["example", "true", "predicted", "probability", "loss"], rows, numeric_from=3)
        heading = f"Predictions ({run.label})" if multi else "Predictions"
        sections.append((heading, [*figures, f"<div><h3>Highest losses</h3>{listing}</div>"], ""))
    return sections
