"""The report's "Bias audit" section, drawn from a run folder's ``audit.json`` (``fulmen.audit``):
per-group bars of each metric with their bootstrap 95% intervals and the groups' sizes, the
disparity table, and the groups under the minimum size marked (hatched bars, "small" rows).
Runs without ``audit.json`` add nothing (this reads JSON only; fairlearn is not needed)."""

from __future__ import annotations

import html
import json
import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fulmen.report.page import Section
    from fulmen.report.reading import Run

AUDIT_FILE = "audit.json"
_PER_ROW = 3


def read_audit(run_dir: str) -> dict[str, Any] | None:
    """``run_dir/audit.json``, None when absent; ``ReportInputError`` when it is not an audit."""
    from fulmen.report.reading import ReportInputError

    path = os.path.join(run_dir, AUDIT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            audit = json.load(f)
    except (OSError, ValueError) as err:
        raise ReportInputError(f"{path} cannot be read as JSON ({err}): rewrite it with fulmen audit.") from None
    if not isinstance(audit, dict) or not isinstance(audit.get("groups"), list):
        raise ReportInputError(f"{path} is not a bias audit (no 'groups' list): rewrite it with fulmen audit.")
    return audit


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def plot_groups(audit: dict[str, Any]) -> Figure:
    """One panel per metric: a bar per group (hatched when small), its 95% interval as an error
    bar, and the group's size under its name."""
    from fulmen.report.plots import _figure

    groups = audit["groups"]
    names = list(groups[0]["metrics"]) if groups else []
    rows = max(1, math.ceil(len(names) / _PER_ROW))
    fig = _figure(width=4.2 * min(_PER_ROW, max(1, len(names))), height=3.2 * rows)
    labels = [f"{g['group']}\nn={g['size']}{' (small)' if g['small'] else ''}" for g in groups]
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, min(_PER_ROW, len(names)), k + 1)
        values = [_number(g["metrics"][name]["value"]) for g in groups]
        cis = [g["metrics"][name].get("ci") or [v, v] for g, v in zip(groups, values)]
        low = [max(0.0, v - _number(c[0])) if math.isfinite(v) else 0.0 for v, c in zip(values, cis)]
        high = [max(0.0, _number(c[1]) - v) if math.isfinite(v) else 0.0 for v, c in zip(values, cis)]
        bars = ax.bar(range(len(groups)), [v if math.isfinite(v) else 0.0 for v in values], yerr=[low, high], capsize=4,
                      color="#4c72b0", edgecolor="#333")
        for x, (bar, g, v) in enumerate(zip(bars, groups, values)):
            if not math.isfinite(v):  # a rate over no samples (no negatives, say)
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color="#666")
            if g["small"]:
                bar.set_hatch("//")
                bar.set_facecolor("#dd8452")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3, axis="y")
    fig.suptitle(f"per-group metrics ({audit.get('task')}), 95% bootstrap intervals", fontsize=11)
    fig.tight_layout()
    return fig


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def disparity_table(audit: dict[str, Any]) -> str:
    """The disparities (fairlearn's), then the largest difference of each metric between groups."""
    from fulmen.report.page import table

    rows = [[k, _fmt(v)] for k, v in (audit.get("disparities") or {}).items() if not isinstance(v, dict)]
    rows += [[f"{k} (max difference)", _fmt(v)] for k, v in (audit.get("differences") or {}).items()]
    return table(["disparity", "value"], rows)


def group_table(audit: dict[str, Any]) -> str:
    """Each group's size, whether it is small, and its metrics with their intervals."""
    from fulmen.report.page import table

    groups = audit["groups"]
    names = list(groups[0]["metrics"]) if groups else []
    rows = []
    for g in groups:
        cells = []
        for name in names:
            m = g["metrics"][name]
            ci = m.get("ci")
            cells.append(_fmt(m["value"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
        rows.append([str(g["group"]), str(g["size"]), "small" if g["small"] else "", *cells])
    return table(["group", "size", "flag", *names], rows)


def audit_sections(runs: list[Run], out: str) -> list[Section]:
    """One "Bias audit" section per run that has ``audit.json``."""
    from fulmen.report.page import figure_html
    from fulmen.report.plots import save_png, slug

    sections: list[Section] = []
    for run in runs:
        audit = read_audit(run.path)
        if audit is None:
            continue
        suffix = f"_{slug(run.label)}" if len(runs) > 1 else ""
        figure = figure_html(save_png(plot_groups(audit), os.path.join(out, f"bias_audit{suffix}.png")), "per-group metrics")
        small = [g for g in audit["groups"] if g["small"]]
        note = (
            f"{html.escape(str(audit.get('task')))}, {audit.get('samples')} samples grouped by "
            f"<code>{html.escape(str(audit.get('group_by')))}</code>; intervals: bootstrap "
            f"({audit.get('bootstrap')} resamples within each group)."
        )
        if small:
            names = ", ".join(f"{html.escape(str(g['group']))} ({g['size']})" for g in small)
            note += f" <strong>Small groups</strong> (under {audit.get('min_group_size')} samples, hatched): {names}."
        pieces = [figure, f"<div><h3>Disparities</h3>{disparity_table(audit)}</div>",
                  f"<div><h3>Groups</h3>{group_table(audit)}</div>"]
        sections.append((f"Bias audit ({run.label})" if len(runs) > 1 else "Bias audit", pieces, note))
    return sections
