"""Bias audits: how a trained system behaves for different groups of people (``audit.json``).

Not to be confused with ``fulmen.checkpoint.audit``, the hash-chained *checkpoint* audit log
(``checkpoints.jsonl``); this package measures fairness, and records the ``audit.json`` it writes
in that log (``kind="bias_audit"``) so ``fulmen verify`` checks the file.

``bias_audit(system, dataloader, groups)`` runs the system over the data (eval mode, no grad;
``predict_step`` when the system overrides it, else ``forward`` on the batch's inputs), groups the
samples by a sensitive attribute (a field of the batch, or one value per dataset sample), and
computes with fairlearn's ``MetricFrame`` (``pip install 'fulmen[audit]'``; imported only here):

- classification (binary; multiclass one-vs-rest): accuracy, selection rate, false positive and
  false negative rates; calibration when the outputs give probabilities (mean predicted
  probability, observed rate, their gap, Brier score); disparities: demographic parity difference
  and ratio, equalized odds difference (fairlearn's functions);
- regression: per-group MAE and RMSE and their largest difference;
- each group's size and a bootstrap 95% interval of each per-group metric (resampled within the
  group, seeded); groups under ``min_group_size`` samples are flagged ``"small"`` and warned about.

``write_audit(run_dir, result)`` writes it; ``Trainer.test(..., groups=...)`` and ``fulmen audit``
call both; ``fulmen report`` draws it. ``audit.json``::

    {"format": 1, "created": "...Z", "system": "module.Class", "task": "binary", "samples": 200,
     "group_by": "group" | 2 | "array", "classes": [0, 1], "min_group_size": 30, "bootstrap": 200,
     "seed": 0, "confidence": 0.95, "probabilities": true, "notes": [...], "warnings": [...],
     "groups": [{"group": "a", "size": 100, "small": false,
                 "metrics": {"accuracy": {"value": 0.9, "ci": [0.84, 0.95]}, ...}}, ...],
     "overall": {"accuracy": ..., ...}, "differences": {"accuracy": ...}, "ratios": {...},
     "disparities": {"demographic_parity_difference": ..., "demographic_parity_ratio": ...,
                     "equalized_odds_difference": ...}}

(multiclass: ``selection_rate[c]`` per class, and ``disparities`` holds the worst class and a
``per_class`` table; regression: ``mae``/``rmse`` and ``mae_difference``/``rmse_difference``).
Values that are undefined (a rate over no samples) are ``null``.

Modules: ``collect`` (one pass over the data), ``metrics`` (task, metric functions), ``core``
(``bias_audit``, ``write_audit``), ``cli`` (``fulmen audit``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fulmen.audit.cli import add_arguments, run
    from fulmen.audit.collect import AuditError
    from fulmen.audit.core import AUDIT_FILE, bias_audit, write_audit

_EXPORTS = {
    "AUDIT_FILE": "fulmen.audit.core",
    "bias_audit": "fulmen.audit.core",
    "write_audit": "fulmen.audit.core",
    "AuditError": "fulmen.audit.collect",
    "add_arguments": "fulmen.audit.cli",
    "run": "fulmen.audit.cli",
}

__all__ = ["AUDIT_FILE", "AuditError", "add_arguments", "bias_audit", "run", "write_audit"]


def __getattr__(name: str) -> Any:  # PEP 562: imported on first use (numpy, fairlearn stay unloaded)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fulmen.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
