"""The report's HTML page: the final metrics, the plot sections (each PNG embedded as a base64
data URI, so the page is self-contained), the hyperparameters and the run record."""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.report.reading import Run

#: A page section: (heading, HTML pieces in a grid, a note under the heading).
Section = tuple[str, list[str], str]

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


def figure_html(path: str, caption: str) -> str:
    """The PNG at ``path`` embedded in a ``<figure>``, its caption linking to the file beside the page."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    name = os.path.basename(path)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" data-file="{html.escape(name)}">'
        f'<figcaption>{html.escape(caption)} (<a href="{html.escape(name)}">{html.escape(name)}</a>)</figcaption></figure>'
    )


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1, differs: list[bool] | None = None) -> str:
    """An HTML table; columns from ``numeric_from`` on are right-aligned, ``differs`` rows in bold."""
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


def _record_rows(runs: list[Run]) -> list[list[str]]:
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


def _final_metrics(runs: list[Run], labels: list[str]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names.extend(c for c in ["epoch", "step", *run.columns] if c in run.last and c not in names)
    rows = [[name, *(_fmt(run.last[name]) if name in run.last else "" for run in runs)] for name in names]
    return [
        "<h2>Final metrics</h2>",
        '<p class="note">The last value logged for each metric.</p>',
        table(["metric", *labels], rows),
    ]


def _hyperparameters(runs: list[Run], labels: list[str]) -> list[str]:
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.hparams if k not in keys)
    parts = ["<h2>Hyperparameters</h2>"]
    if not keys:
        return [*parts, '<p class="note">No hparams.yaml in the run folder.</p>']
    rows = [[k, *(_fmt(run.hparams[k]) if k in run.hparams else "" for run in runs)] for k in keys]
    differs = [len(runs) > 1 and len(set(r[1:])) > 1 for r in rows]
    parts.append(table(["hyperparameter", *labels], rows, differs=differs))
    if len(runs) > 1 and any(differs):
        parts.append('<p class="note">Rows in bold differ between the runs.</p>')
    return parts


def page(runs: list[Run], sections: list[Section]) -> str:
    """The whole HTML page for ``runs`` with the plot ``sections`` between the tables."""
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
        *_final_metrics(runs, labels),
    ]
    for heading, figures, note in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            parts.append(f'<p class="note">{note}</p>')
        if figures:
            parts.append('<div class="grid">' + "".join(figures) + "</div>")
    parts.extend(_hyperparameters(runs, labels))
    record_rows = _record_rows(runs)
    if record_rows:
        parts.append("<h2>Run</h2>")
        parts.append(table(["", *labels], record_rows, numeric_from=99))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
