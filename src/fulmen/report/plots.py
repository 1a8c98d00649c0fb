"""The report's plots: each function draws one matplotlib ``Figure`` from the runs read by
``fulmen.report.reading``; ``fulmen.report.write_report`` saves them as PNGs.

matplotlib is imported inside the functions (``_figure``), only when a report is written, and
pyplot is never touched (figures are drawn with the Agg canvas), so nothing here changes the
caller's matplotlib state.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from fulmen.report import TOP_LOSSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fulmen.report.reading import Run

_STAGES = ("train", "val", "valid", "validation", "test")
_STAGE_STYLE = {"train": "-", "val": "--", "valid": "--", "validation": "--", "test": ":"}
_STAGE_MARKER = {"train": "o", "val": "s", "valid": "s", "validation": "s", "test": "^"}
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


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


def families(runs: list[Run]) -> dict[str, list[tuple[int, str, str]]]:
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


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"


# -- drawing --------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.2) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError("fulmen report needs matplotlib: pip install matplotlib (or fulmen[tuner]).") from err
    return Figure(figsize=(width, height), dpi=100)


def save_png(fig: Figure, path: str) -> str:
    """Draw ``fig`` with the Agg canvas into the PNG file ``path``; return ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", facecolor="white")
    return path


def _line_style(n_points: int, stage: str = "train") -> dict[str, Any]:
    return {"marker": _STAGE_MARKER.get(stage, "D"), "markersize": 3.5} if n_points <= 60 else {}


def _finish(fig: Figure, ax: Any, title: str, xlabel: str, ylabel: str, grid_axis: str = "both") -> Figure:
    """Title, axis labels, a light grid and the legend; the layout tightened."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, axis=grid_axis)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_family(runs: list[Run], family: str, members: list[tuple[int, str, str]]) -> Figure:
    """One metric family (training and validation, of every run) against the global step."""
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
    return _finish(fig, ax, family, "step", family)


def plot_lr(runs: list[Run]) -> Figure | None:
    """The ``lr-*`` columns ``LearningRateMonitor`` logged; None without any."""
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
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _finish(fig, ax, "learning rate", "step", "learning rate")


def plot_epoch_times(runs: list[Run]) -> Figure | None:
    """Seconds per epoch: training and validation stacked for one run, a line per run for several."""
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
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, "seconds per epoch", "epoch", "seconds", grid_axis="y")


# -- predictions ----------------------------------------------------------------------------------
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


def top_losses(run: Run, k: int = TOP_LOSSES) -> list[dict[str, Any]]:
    """The ``k`` examples with the highest loss: index, true and predicted class, probability, loss."""
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


def plot_confusion(run: Run) -> Figure:
    """True class against predicted class: the share of each true class, with counts."""
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
    return fig


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


def plot_top_losses(run: Run) -> Figure:
    """The highest-loss examples: as images when the inputs look like images, else a bar chart."""
    pred = run.predictions
    assert pred is not None
    top = top_losses(run)
    inputs = pred.get("inputs")
    images = [_as_image(inputs[row["index"]]) for row in top] if inputs is not None else []
    if images and all(img is not None for img in images):
        fig = _image_grid(run, top, images)
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
    return fig


def _image_grid(run: Run, top: list[dict[str, Any]], images: list[Any]) -> Figure:
    """The top losses as a grid of images, each titled predicted/true / loss / probability."""
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
    return fig
