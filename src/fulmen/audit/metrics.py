"""The numbers of a bias audit: the task, per-group metrics through fairlearn's ``MetricFrame``,
bootstrap confidence intervals and the disparities (fairlearn's functions).

Every metric is a plain function ``(y_true, y_pred) -> float`` on numpy arrays: the same function
gives ``MetricFrame`` its per-group values and the bootstrap its resampled ones, so the interval
is always around the reported value. fairlearn is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fulmen.audit.collect import AuditError, Collected

TASKS = ("binary", "multiclass", "regression")
Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class Prepared:
    """The collected outputs turned into what the metrics read: labels (classification) or errors
    (regression), and probabilities when the outputs give them."""

    task: str
    y_true: np.ndarray
    y_pred: np.ndarray
    classes: list[Any] = field(default_factory=list)
    #: binary: P(positive) per sample; multiclass: the probability of the predicted class.
    prob: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _columns(outputs: np.ndarray) -> int:
    return 1 if outputs.ndim == 1 or outputs.shape[1:] in ((), (1,)) else int(np.prod(outputs.shape[1:]))


def _integral(values: np.ndarray) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0))


def infer_task(outputs: np.ndarray, targets: np.ndarray) -> str:
    """binary (one output or two logits with 0/1 targets), multiclass (C > 2 logits, or integer
    labels), regression (float targets that are not class labels)."""
    cols, y = _columns(outputs), targets.reshape(len(targets), -1)
    labels = y.shape[1] == 1 and _integral(y)
    if cols == 2 and labels:
        return "binary"
    if cols > 2 and labels:
        return "multiclass"
    values = set(np.unique(y).tolist()) if labels else set()
    if cols == 1 and labels and (values == {0, 1} if targets.dtype.kind == "f" else values <= {0, 1}):
        return "binary"  # float targets only when both 0 and 1 occur (BCE labels), else regression
    if cols == 1 and labels and targets.dtype.kind in "biu" and _integral(outputs):
        return "multiclass"  # integer labels predicted as labels
    if targets.dtype.kind == "f":
        return "regression"
    raise AuditError(
        f"cannot tell the task from outputs of shape {tuple(outputs.shape)} and {targets.dtype} targets of shape "
        f"{tuple(targets.shape)}: pass task='binary', 'multiclass' or 'regression'."
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rows of class scores as probabilities: kept when they already are, else a softmax."""
    is_prob = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4))
    return (scores, True) if is_prob else (_softmax(scores), False)


def _one_hot_to_labels(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """Class indices for one-hot targets shaped like the outputs (``(n, C)``, C >= 2), else None."""
    if targets.ndim != 2 or targets.shape[1] < 2 or targets.shape != outputs.reshape(len(outputs), -1).shape:
        return None
    if not (np.isin(targets, (0, 1)).all() and np.all(targets.sum(axis=1) == 1)):
        return None
    return targets.argmax(axis=1)


def prepare(data: Collected, task: str | None) -> Prepared:
    """Labels, probabilities or errors for ``task`` (inferred when None); one-hot targets are read
    as class indices unless ``task="regression"``."""
    labels = _one_hot_to_labels(data.outputs, data.targets) if task != "regression" else None
    if labels is not None:
        data = Collected(data.outputs, labels, data.groups)
    task = task or infer_task(data.outputs, data.targets)
    if task not in TASKS:
        raise AuditError(f"task={task!r} is not one of {', '.join(TASKS)}.")
    out = data.outputs.astype(np.float64).reshape(len(data.outputs), -1)
    if task == "regression":
        err = out - data.targets.astype(np.float64).reshape(len(out), -1)
        return Prepared(task, np.abs(err).mean(axis=1), (err**2).mean(axis=1))
    y = data.targets.reshape(-1).astype(np.int64)
    if task == "binary":
        return _binary(out, y)
    return _multiclass(out, y, data.outputs.dtype.kind in "biu")


def _binary(out: np.ndarray, y: np.ndarray) -> Prepared:
    if out.shape[1] == 2:
        p = _probabilities(out)[0][:, 1]
    elif out.shape[1] == 1:
        col = out[:, 0]
        p = col if np.all((col >= 0) & (col <= 1)) else 1.0 / (1.0 + np.exp(-col))
    else:
        raise AuditError(f"task='binary' needs one output or two per sample; the system gave {out.shape[1]}.")
    return Prepared("binary", y, (p >= 0.5).astype(np.int64), [0, 1], p)


def _multiclass(out: np.ndarray, y: np.ndarray, labels_given: bool) -> Prepared:
    if out.shape[1] == 1:  # the system predicted labels: no probabilities
        pred = out[:, 0].astype(np.int64)
        classes = sorted(set(y.tolist()) | set(pred.tolist()))
        return Prepared("multiclass", y, pred, classes, None, ["outputs are labels: no calibration"])
    probs, _ = _probabilities(out)
    pred = probs.argmax(axis=1)
    note = [] if not labels_given else ["integer outputs read as class scores"]
    return Prepared("multiclass", y, pred, list(range(out.shape[1])), probs[np.arange(len(pred)), pred], note)


# -- metric functions ------------------------------------------------------------------------------
def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return _mean(y == p)


def selection_rate(y: np.ndarray, p: np.ndarray) -> float:
    """The rate of positive predictions (binary)."""
    return _mean(p == 1)


def false_positive_rate(y: np.ndarray, p: np.ndarray) -> float:
    return _mean(p[y == 0] == 1)


def false_negative_rate(y: np.ndarray, p: np.ndarray) -> float:
    return _mean(p[y == 1] == 0)


def _one_vs_rest(rate: Metric, classes: list[Any]) -> Metric:
    """``rate`` of each class against the rest, averaged over the classes where it is defined."""

    def macro(y: np.ndarray, p: np.ndarray) -> float:
        values = [rate((y == c).astype(np.int64), (p == c).astype(np.int64)) for c in classes]
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    return macro


def _class_rate(c: Any) -> Metric:
    return lambda y, p: _mean(p == c)


def classification_metrics(prep: Prepared) -> dict[str, Metric]:
    """binary: accuracy, selection rate, FPR, FNR; multiclass: accuracy, the selection rate of
    each class, and one-vs-rest macro FPR and FNR."""
    if prep.task == "binary":
        return {
            "accuracy": accuracy,
            "selection_rate": selection_rate,
            "false_positive_rate": false_positive_rate,
            "false_negative_rate": false_negative_rate,
        }
    metrics: dict[str, Metric] = {"accuracy": accuracy}
    metrics.update({f"selection_rate[{c}]": _class_rate(c) for c in prep.classes})
    metrics["false_positive_rate"] = _one_vs_rest(false_positive_rate, prep.classes)
    metrics["false_negative_rate"] = _one_vs_rest(false_negative_rate, prep.classes)
    return metrics


#: Calibration, on (observed, predicted probability): binary (label, P(positive)); multiclass
#: (whether the predicted class is right, its probability).
CALIBRATION: dict[str, Metric] = {
    "mean_probability": lambda y, q: _mean(q),
    "observed_rate": lambda y, q: _mean(y),
    "calibration_gap": lambda y, q: _mean(q) - _mean(y),
    "brier_score": lambda y, q: _mean((q - y) ** 2),
}
#: Regression, on (absolute error, squared error) per sample (averaged over the outputs).
REGRESSION: dict[str, Metric] = {
    "mae": lambda a, s: _mean(a),
    "rmse": lambda a, s: float(np.sqrt(_mean(s))),
}
