"""Where fulmen's core and PyTorch Lightning deliberately differ, as one set of choices.

``fulmen.Trainer`` runs with ``FULMEN_RULES``: stricter where Lightning silently loses or
mis-records a result (it raises, naming the flag or hook). ``fulmen.lightning.Trainer`` runs with
the rules in ``fulmen.lightning._rules`` (Lightning's behaviour, with a warning once where a
result could be lost). The rules are read when a run is set up (or once per epoch), never per
step: each loop variant is chosen before the loop starts.

Each field says what it decides; its default is fulmen's behaviour. docs/migrating-from-lightning.md
lists the differences for users.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopRules:
    """Behaviour choices fixed per Trainer class (see the module docstring)."""

    #: Lightning's semantics in general (names, defaults, warnings instead of errors where
    #: Lightning accepts an input). Specific choices below refine it.
    lightning: bool = False

    #: ``val_check_interval`` as a fraction (0.3): also validate at the epoch's end when the
    #: last batch was not a validation point, so the epoch's final weights are always validated
    #: (fulmen). Lightning validates at the fraction's multiples only (0.3, 0.6, 0.9).
    val_fraction_epoch_end: bool = True
    #: ``self.log(on_step=True)`` in validation/test steps: send the step values to the loggers
    #: after each batch (``<name>_step`` when also on_epoch; the step is the batches of that
    #: dataloader seen in the run), and keep step values out of ``callback_metrics`` (Lightning).
    #: fulmen sends evaluation epoch values only, and warns for an on_step-only key.
    eval_step_logging: bool = False
    #: One key logged with different ``on_step``/``on_epoch`` settings in different places
    #: (``training_step`` on_step, ``on_train_epoch_end`` on_epoch): kept as two records that
    #: share the name (Lightning). fulmen raises, as one name then means two things.
    same_key_other_settings: bool = False

    #: ModelCheckpoint ranks a NaN monitored value as the worst score, recorded as +inf (mode
    #: "min") or -inf ("max"), kept while fewer than save_top_k checkpoints are, and ranks
    #: infinities as numbers (Lightning; a warning once for NaN). fulmen never ranks NaN or inf.
    checkpoint_nonfinite_scores: bool = False
    #: ModelCheckpoint writes a ``filename`` field naming a metric that was not logged as 0
    #: (Lightning, with a warning once). fulmen raises, listing the metrics there are.
    checkpoint_missing_name_metric_zero: bool = False
    #: ModelCheckpoint's schedule as Lightning's: at an epoch's end ``last.ckpt`` is refreshed
    #: only together with a checkpoint written then (and written once when training ends if the
    #: callback wrote none), and ``save_on_train_epoch_end=None`` is decided once per fit (at the
    #: training epoch's end only when every epoch validates once, at its end). fulmen keeps
    #: ``last.ckpt`` current at every epoch's end and decides per epoch.
    checkpoint_lightning_schedule: bool = False
    #: The audit log of checkpoints (``checkpoints.jsonl``, ``fulmen.checkpoint.audit``) is kept
    #: in a per-user state folder (``$FULMEN_AUDIT_HOME``), so the folders the program chose hold
    #: only the files Lightning writes there; ``fulmen verify`` finds it. fulmen keeps it in the
    #: run folder.
    audit_log_outside_run: bool = False
    #: Learning-rate schedulers stepped when Lightning steps them (automatic optimization): an
    #: epoch-interval scheduler right after the optimizer step of the epoch's last batch, before
    #: ``on_train_batch_end`` and so before the epoch-end validation and checkpoint (a
    #: ReduceLROnPlateau, which reads a metric, after ``on_train_epoch_end``), and not in an epoch
    #: that max_steps, max_time or a stop request cut short; a step-interval ReduceLROnPlateau
    #: after the validation that follows its optimizer step. fulmen steps epoch-interval schedulers
    #: after ``on_train_epoch_end`` of every epoch that trained, step-interval ones right after
    #: the optimizer step.
    lightning_scheduler_timing: bool = False
    #: Hooks called as Lightning calls them: ``setup``/``teardown`` with ``stage=`` by keyword
    #: (datamodule, callbacks, module); the module's ``zero_grad()`` as each stage starts (after
    #: ``on_fit_start`` in fit); ``on_validation_model_zero_grad`` before a validation inside fit;
    #: ``configure_gradient_clipping`` with its values by keyword (None when not given); the
    #: validation dataloaders requested before the training one, with the random state kept as it
    #: was (Lightning requests them inside the sanity check), and no sanity check when resuming.
    #: fulmen passes ``stage`` positionally, requests the training data first and always runs the
    #: sanity check.
    lightning_hook_calls: bool = False
    #: ``training_step`` returning None under automatic optimization: the optimizer step is still
    #: taken (hooks, clipping, schedulers) and counted in ``global_step``, with no gradient from
    #: that batch (Lightning, with a warning). fulmen skips the batch: no step, not counted.
    lightning_none_output_steps: bool = False


FULMEN_RULES = LoopRules()
