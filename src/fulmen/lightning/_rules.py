"""The ``LoopRules`` of ``fulmen.lightning.Trainer``: Lightning's behaviour where fulmen's core is
stricter or differs (see ``fulmen.trainer._rules`` and docs/migrating-from-lightning.md)."""

from __future__ import annotations

from fulmen.trainer._rules import LoopRules

LIGHTNING_RULES = LoopRules(
    lightning=True,
    checkpoint_nonfinite_scores=True,
    checkpoint_missing_name_metric_zero=True,
    checkpoint_lightning_schedule=True,
    audit_log_outside_run=True,
)
