"""``bias_audit``: per-group metrics, intervals and disparities of a system on some data, as the
plain dict that ``write_audit`` saves as ``audit.json`` (format in the package docstring)."""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from fulmen.audit.collect import AuditError, collect
from fulmen.audit.metrics import CALIBRATION, REGRESSION, Metric, Prepared, classification_metrics, prepare

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = 1
CONFIDENCE = 0.95


def require_fairlearn() -> None:
    """Import fairlearn, or one line saying how to install it."""
    try:
        import fairlearn.metrics  # noqa: F401
    except ImportError:
        raise ImportError("the bias audit needs fairlearn, which is not installed: pip install 'fulmen[audit]'") from None


def bias_audit(
    system: Any,
    dataloader: Any,
    groups: Any,
    *,
    task: str | None = None,
    min_group_size: int = 30,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Audit ``system`` on ``dataloader`` per group; returns the content of ``audit.json``.

    ``groups``: a field of the batch (a dict key such as ``"group"``, or a tuple position) or one
    value per dataset sample (list, numpy array, tensor). ``task``: ``"binary"``, ``"multiclass"``,
    ``"regression"`` or None to infer it. Groups with fewer than ``min_group_size`` samples are
    flagged ``"small"`` and named in a warning. ``bootstrap`` resamples (within each group, seeded
    with ``seed``) give 95% intervals; 0 turns them off."""
    from fulmen.errors import FulmenWarning

    require_fairlearn()
    if min_group_size < 1 or bootstrap < 0:
        raise AuditError(f"min_group_size must be >= 1 and bootstrap >= 0; got {min_group_size} and {bootstrap}.")
    data = collect(system, dataloader, groups)
    prep = prepare(data, task)
    frames = _frames(prep)
    result = _skeleton(system, prep, groups, min_group_size, bootstrap, seed)
    result["groups"] = _per_group(frames, data.groups, min_group_size, bootstrap, seed)
    result["overall"], result["differences"], result["ratios"] = _summaries(frames, data.groups)
    result["disparities"] = _disparities(prep, data.groups, result["differences"])
    small = [g for g in result["groups"] if g["small"]]
    if small:
        names = ", ".join(f"{g['group']!r} ({g['size']})" for g in small)
        message = (
            f"bias audit: {len(small)} group(s) with fewer than min_group_size={min_group_size} samples: {names}; "
            f'their metrics are unreliable and are flagged "small" in the result.'
        )
        result["warnings"].append(message)
        warnings.warn(message, FulmenWarning, stacklevel=2)
    return _plain(result)


def _skeleton(system: Any, prep: Prepared, groups: Any, min_size: int, bootstrap: int, seed: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "format": AUDIT_FORMAT,
        "created": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "system": f"{type(system).__module__}.{type(system).__qualname__}",
        "task": prep.task,
        "samples": len(prep.y_true),
        "group_by": groups if isinstance(groups, (str, int)) and not isinstance(groups, bool) else "array",
        "classes": prep.classes,
        "min_group_size": min_size,
        "bootstrap": bootstrap,
        "seed": seed,
        "confidence": CONFIDENCE,
        "probabilities": prep.prob is not None,
        "notes": list(prep.notes),
        "warnings": [],
    }


#: (metrics, y_true, y_pred) given to one MetricFrame.
Frame = tuple[dict[str, Metric], np.ndarray, np.ndarray]


def _frames(prep: Prepared) -> list[Frame]:
    if prep.task == "regression":
        return [(REGRESSION, prep.y_true, prep.y_pred)]
    frames: list[Frame] = [(classification_metrics(prep), prep.y_true, prep.y_pred)]
    if prep.prob is not None:
        observed = prep.y_true if prep.task == "binary" else (prep.y_true == prep.y_pred).astype(np.int64)
        frames.append((CALIBRATION, observed.astype(np.float64), prep.prob))
    return frames


def _metric_frames(frames: list[Frame], groups: np.ndarray) -> list[Any]:
    from fairlearn.metrics import MetricFrame

    return [MetricFrame(metrics=m, y_true=yt, y_pred=yp, sensitive_features=groups) for m, yt, yp in frames]


def _summaries(frames: list[Frame], groups: np.ndarray) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Overall values, and the largest difference and smallest ratio between groups, per metric."""
    overall: dict[str, float] = {}
    differences: dict[str, float] = {}
    ratios: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ratio of zeros
        for mf in _metric_frames(frames, groups):
            overall.update({k: float(v) for k, v in mf.overall.items()})
            differences.update({k: float(v) for k, v in mf.difference().items()})
            ratios.update({k: float(v) for k, v in mf.ratio().items()})
    return overall, differences, ratios


def _per_group(frames: list[Frame], groups: np.ndarray, min_size: int, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Each group's size, flag and metrics, each with its bootstrap interval."""
    by_group: dict[str, dict[str, float]] = {}
    for mf in _metric_frames(frames, groups):
        for metric, values in mf.by_group.to_dict().items():
            for g, v in values.items():
                by_group.setdefault(str(g), {})[metric] = float(v)
    rng = np.random.default_rng(seed)
    out = []
    for g in sorted(by_group):
        idx = np.flatnonzero(groups == g)
        draws = rng.integers(0, len(idx), size=(bootstrap, len(idx))) if bootstrap else None
        metrics = {}
        for fns, yt, yp in frames:
            for name, fn in fns.items():
                ci = _interval(fn, yt[idx], yp[idx], draws)
                metrics[name] = {"value": by_group[g][name], "ci": ci}
        out.append({"group": g, "size": len(idx), "small": len(idx) < min_size, "metrics": metrics})
    return out


def _interval(fn: Metric, yt: np.ndarray, yp: np.ndarray, draws: np.ndarray | None) -> list[float] | None:
    """The central 95% of ``fn`` over the resamples (None without resamples or finite values)."""
    if draws is None:
        return None
    values = np.asarray([fn(yt[d], yp[d]) for d in draws], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def _disparities(prep: Prepared, groups: np.ndarray, differences: dict[str, float]) -> dict[str, Any]:
    """fairlearn's demographic parity difference and ratio and equalized odds difference
    (multiclass: per class one-vs-rest, and the worst class); regression: MAE/RMSE differences."""
    if prep.task == "regression":
        return {"mae_difference": differences["mae"], "rmse_difference": differences["rmse"]}
    if prep.task == "binary":
        return _binary_disparities(prep.y_true, prep.y_pred, groups)
    per_class = {
        str(c): _binary_disparities((prep.y_true == c).astype(np.int64), (prep.y_pred == c).astype(np.int64), groups)
        for c in prep.classes
    }
    worst: dict[str, Any] = {}
    for key, pick in (("demographic_parity_difference", max), ("demographic_parity_ratio", min), ("equalized_odds_difference", max)):
        finite = [d[key] for d in per_class.values() if d[key] is not None and math.isfinite(d[key])]
        worst[key] = pick(finite) if finite else None
    worst["per_class"] = per_class
    return worst


def _binary_disparities(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
    )

    fns: dict[str, Callable[..., float]] = {
        "demographic_parity_difference": demographic_parity_difference,
        "demographic_parity_ratio": demographic_parity_ratio,
        "equalized_odds_difference": equalized_odds_difference,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a group without positives or negatives: a rate of 0/0
        return {name: float(fn(y, p, sensitive_features=groups)) for name, fn in fns.items()}


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_audit(run_dir: str | os.PathLike[str], result: dict[str, Any], name: str = AUDIT_FILE) -> str:
    """Write ``result`` as ``run_dir/name`` (atomically) and record it in the run's audit log
    (``kind="bias_audit"``) so ``fulmen verify`` checks its bytes; returns the path."""
    from fulmen.checkpoint.audit import record_artifact

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(os.fspath(run_dir), name)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_plain(result), f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    record_artifact(run_dir, path, kind="bias_audit")
    return path


def audit_after_test(trainer: Any, system: Any, groups: Any) -> list[str]:
    """``Trainer.test(..., groups=...)``: audit each test dataloader the run used and write
    ``audit.json`` (``audit_<i>.json`` for dataloader ``i`` > 0) into ``trainer.log_dir``."""
    if not trainer.is_global_zero:
        return []
    loaders = trainer.test_dataloaders
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    paths = []
    for i, loader in enumerate(loaders):
        result = bias_audit(system, loader, groups)
        result["dataloader"] = i
        paths.append(write_audit(trainer.log_dir, result, AUDIT_FILE if i == 0 else f"audit_{i}.json"))
    return paths
