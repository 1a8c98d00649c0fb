"""The ``LoopRules`` of ``fulmen.lightning.Trainer``: Lightning's behaviour where fulmen's core is
stricter or differs (see ``fulmen.trainer._rules`` and docs/migrating-from-lightning.md)."""

from __future__ import annotations

from fulmen.trainer._rules import LoopRules

LIGHTNING_RULES = LoopRules(
    lightning=True,
    val_fraction_epoch_end=False,
    eval_step_logging=True,
    same_key_other_settings=True,
    checkpoint_nonfinite_scores=True,
    checkpoint_missing_name_metric_zero=True,
    checkpoint_lightning_schedule=True,
    lightning_scheduler_timing=True,
    lightning_hook_calls=True,
    lightning_none_output_steps=True,
    audit_log_outside_run=True,
)
