"""Hook names, in one place, and the per-run dispatch tables.

Where each hook fires (``fit``; callbacks run before the system's hook, except *monitoring*
callbacks such as ``ModelCheckpoint``, which run after it so they see what the system logged)::

    setup("fit")                      # datamodule, then callbacks, then system
    configure_model()                 # once per system, before it moves to its device
    configure_optimizers()
    on_fit_start()                    # (resuming: optimizer and loop states are restored right after)
    on_sanity_check_start()           # callbacks only; num_sanity_val_steps batches of validation
        <validation, see below>
    on_sanity_check_end()
    on_train_start()
    for epoch:
        on_train_epoch_start()
        for batch_idx, batch in train_dataloader:
            on_before_batch_transfer / transfer_batch_to_device / on_after_batch_transfer
            on_train_batch_start(batch, batch_idx)     # the system returning -1 ends the epoch
            out = training_step(batch, batch_idx)      # under autocast with 16-/bf16-mixed
            on_before_backward(loss)                   # loss divided by the accumulation group's size
            <backward>                                 # loss scaled under 16-mixed
            on_after_backward()
            every accumulate_grad_batches batches (and at the epoch's last batch):
                <unscale gradients>                    # 16-mixed only
                on_before_optimizer_step(optimizer)
                configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
                <optimizer.step()>                     # skipped on inf/NaN gradients under 16-mixed
                on_before_zero_grad(optimizer)
                <optimizer.zero_grad(set_to_none=True)>
                lr_scheduler_step(scheduler, metric)   # schedulers with interval="step"
            on_train_batch_end(out, batch, batch_idx)  # out: {"loss": detached loss, ...} or None
            <validation, when val_check_interval says so>
        <validation, at the end of the epoch, when check_val_every_n_epoch says so>
        on_train_epoch_end()
        <epoch metrics are sent to the loggers>
        lr_scheduler_step(scheduler, metric)           # schedulers with interval="epoch"
    on_train_end()
    on_fit_end()
    teardown("fit")

    validation (also test, with "test" in place of "validation"):
    on_validation_start()
    on_validation_epoch_start()
    for dataloader_idx, loader:
        for batch_idx, batch in loader:
            on_validation_batch_start(batch, batch_idx, dataloader_idx)
            out = validation_step(batch, batch_idx[, dataloader_idx])   # index only with 2+ loaders
            on_validation_batch_end(out, batch, batch_idx, dataloader_idx)
    on_validation_epoch_end()
    on_validation_end()

With manual optimization (``automatic_optimization = False``) ``training_step`` does the
backward (``self.manual_backward``) and the steps (``opt.step()`` on ``self.optimizers()``);
``on_before_optimizer_step`` / ``on_before_zero_grad`` then fire from those calls.

``fulmen.lightning.LightningModule`` may also override Lightning's ``optimizer_step``,
``optimizer_zero_grad``, ``backward`` and ``on_*_model_eval`` / ``on_*_model_train`` (a plain
System may not: ``LIGHTNING_ONLY_HOOKS``). An ``optimizer_zero_grad`` override is called, after
``on_before_zero_grad``, between ``training_step`` and ``on_before_backward`` of the first batch
of each accumulation group (Lightning's place) instead of the zeroing after the step; a
``backward`` override replaces ``<backward>`` and receives the scaled loss under 16-mixed.

fulmen zeroes gradients right after the optimizer step (PyTorch Lightning zeroes them after
``training_step``, before backward). The effect on training is the same; freeing them earlier
means gradients do not occupy memory during the next forward pass.

A hook set to None (``model.validation_step = None``, ``model.val_dataloader = None``) is not
overridden: the stage or dataloader it provides is off. Steps may leave out ``batch_idx``
(``training_step(self, batch)``).

``fulmen.lightning.Trainer`` (``fulmen.lightning._rules.LIGHTNING_RULES``) calls them as PyTorch
Lightning does where the order differs (``fulmen.trainer._rules.LoopRules``):

- ``lightning_hook_calls``: ``setup(stage="fit")`` / ``teardown(stage=...)`` by keyword; the
  validation dataloaders are requested before the training dataloader (inside the sanity check's
  random state) and not at all for a stage turned off; the module's ``zero_grad()`` right after
  ``on_fit_start`` (and as validate/test/predict start); no sanity check when resuming, and the
  module's ``on_load_checkpoint`` before the callbacks'; gradients zeroed by a LightningModule's
  ``optimizer_zero_grad`` (overridden or not) where Lightning zeroes them, after ``training_step``
  of the first batch of each group, so ``on_before_zero_grad`` fires there and the gradients of a
  step stay until then; ``on_validation_model_zero_grad()``
  before each validation inside fit; ``configure_gradient_clipping(optimizer,
  gradient_clip_val=..., gradient_clip_algorithm=...)`` by keyword, None when not given; the
  evaluation batch hooks get ``dataloader_idx`` only with several dataloaders.
- ``lightning_scheduler_timing``: epoch-interval schedulers step right after the optimizer step
  of the epoch's last batch (before ``on_train_batch_end``, the epoch-end validation and its
  checkpoint); ReduceLROnPlateau after ``on_train_epoch_end`` (interval "epoch") or after the
  validation following its step (interval "step"); none in an epoch cut short.
- ``lightning_none_output_steps``: a batch whose ``training_step`` returned None still takes its
  optimizer step (``on_before_optimizer_step``, clipping, ``on_before_zero_grad``) and counts it.

An optimizer whose ``step`` needs a closure (LBFGS) gets one that returns the loop's evaluation
first and evaluates the batch again (zero_grad, ``training_step``, backward) on each later call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

#: Hooks that both callbacks and systems may implement (callbacks receive ``trainer, system`` first).
SHARED_HOOKS: tuple[str, ...] = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_save_checkpoint",
    "on_load_checkpoint",
)

#: Hooks only callbacks implement.
CALLBACK_ONLY_HOOKS: tuple[str, ...] = (
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_exception",
)

#: Hooks only systems implement (called directly by the loops, never through a table).
SYSTEM_ONLY_HOOKS: tuple[str, ...] = (
    "forward",
    "training_step",
    "validation_step",
    "test_step",
    "predict_step",
    "configure_optimizers",
    "configure_callbacks",
    "configure_model",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "prepare_data",
    "train_dataloader",
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
    "transfer_batch_to_device",
    "on_before_batch_transfer",
    "on_after_batch_transfer",
)

CALLBACK_HOOKS: tuple[str, ...] = SHARED_HOOKS + CALLBACK_ONLY_HOOKS
SYSTEM_HOOKS: tuple[str, ...] = SHARED_HOOKS + SYSTEM_ONLY_HOOKS

# Names starting with ``on_`` that are not hooks but fine to define (none yet).
_KNOWN_NON_HOOKS: frozenset[str] = frozenset()


#: PyTorch Lightning hooks that fulmen does not call, with what to do instead. Defining one on a
#: System fails at class definition, so ported code never silently trains differently.
LIGHTNING_ONLY_HOOKS: dict[str, str] = {
    "optimizer_step": "for a warm-up, return a LambdaLR scheduler with interval='step' from configure_optimizers; "
    "for anything else, use manual optimization (automatic_optimization = False)",
    "optimizer_zero_grad": "fulmen zeroes gradients (set_to_none=True) after each optimizer step; use "
    "on_before_zero_grad to look at them first",
    "backward": "use on_before_backward / on_after_backward, or manual optimization with self.manual_backward",
    "on_validation_model_eval": "fulmen puts the system in eval mode for evaluation and restores each module's "
    "mode afterwards; use on_validation_start / on_validation_end for more",
    "on_validation_model_train": "fulmen restores each module's train/eval mode after validation; use "
    "on_validation_end for more",
    "on_test_model_eval": "use on_test_start",
    "on_test_model_train": "use on_test_end",
    "on_predict_model_eval": "use on_predict_start",
    "configure_sharded_model": "use configure_model",
    "on_epoch_start": "use on_train_epoch_start (or on_validation_epoch_start, ...)",
    "on_epoch_end": "use on_train_epoch_end (or on_validation_epoch_end, ...)",
    "training_epoch_end": "use on_train_epoch_end and keep the outputs you need in an attribute",
    "validation_epoch_end": "use on_validation_epoch_end and keep the outputs you need in an attribute",
    "test_epoch_end": "use on_test_epoch_end and keep the outputs you need in an attribute",
}


def check_lightning_only(cls: type) -> None:
    """Refuse Lightning hooks fulmen never calls (see ``LIGHTNING_ONLY_HOOKS``); a base class may
    allow some (``fulmen.lightning.LightningModule`` runs ``optimizer_step``, ``optimizer_zero_grad``,
    ``backward`` and the ``on_*_model_eval`` / ``on_*_model_train`` hooks)."""
    allowed = {n for c in cls.__mro__ for n in getattr(c, "_allowed_lightning_hooks", ())}
    for name in vars(cls):
        advice = LIGHTNING_ONLY_HOOKS.get(name) if name not in allowed else None
        if advice is not None:
            raise TypeError(
                f"{cls.__qualname__} defines {name!r}, a PyTorch Lightning hook that fulmen does not call, so "
                f"the code in it would never run. Instead: {advice}."
            )


def check_hook_names(cls: type, known: Iterable[str], *, strict: bool) -> None:
    """Fail at class definition when ``cls`` defines a misspelt hook.

    ``strict``: every ``on_*`` method must be a hook (callbacks). Otherwise only names that look
    like a hook (a close match) are refused (systems may define their own ``on_*`` helpers).
    Only methods are checked: a class attribute holding data (``on_before_zero_grad_called = 0``,
    a counter) can never be a hook, so its name is free.
    """
    known = tuple(known)
    for name, value in vars(cls).items():
        if not name.startswith("on_") or name in known or name in _KNOWN_NON_HOOKS:
            continue
        if not callable(value) and not isinstance(value, (staticmethod, classmethod)):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if not strict and not close:
            continue
        hint = f" Did you mean {close[0]!r}?" if close else ""
        helper = "" if close else " (For a helper method of your own, use a name that does not start with 'on_'.)"
        raise TypeError(
            f"{cls.__qualname__} defines {name!r}, which is not a fulmen hook, so it would never be "
            f"called.{hint} The hooks are listed in fulmen.trainer._hooks.{helper}"
        )


def overrides(obj: object, name: str, base: type) -> bool:
    """True when ``obj``'s class overrides ``base.name`` (or sets it on the instance).

    A hook set to None (``model.validation_step = None``, on the instance or the class) is not
    overridden: that switches it off, as in Lightning (no validation without a step, no
    dataloader from a hook that is None)."""
    own = getattr(obj, "__dict__", {})
    if name in own:
        return own[name] is not None
    attr = getattr(type(obj), name, None)
    return attr is not None and attr is not getattr(base, name, None)


def _takes_keywords(fn: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError:
        return False
    except ValueError:  # no signature to read: keywords it is
        return True
    return True


def _action_name(fn: Callable[..., Any], hook: str) -> str:
    """``[Callback]ModelCheckpoint.on_train_batch_end`` / ``[System]on_train_epoch_end`` (profiler rows)."""
    if isinstance(fn, partial):
        owner = getattr(fn.func, "__self__", None)
        return f"[Callback]{type(owner).__name__}.{hook}"
    return f"[System]{hook}"


def call_hooks(fns: Sequence[Callable[..., Any]], *args: Any) -> bool:
    """Call each function; return True when the system's hook returned -1 (ends the epoch for
    ``on_train_batch_start``).

    An exception raised by a hook goes on unchanged; the loop that catches it adds a note naming
    the hook (read from this frame's ``fn``, see ``fulmen.trainer._where``) and where in the run.
    """
    stop = False
    for fn in fns:
        result = fn(*args)
        if type(result) is int and result == -1 and not isinstance(fn, partial):
            stop = True  # only the system's hook ends the epoch (callbacks are partials)
    return stop


class HookTable:
    """``{hook: tuple of bound functions}`` computed once per run.

    Only callbacks that override a hook (and the system, if it does) are in that hook's tuple, so
    dispatching an unused hook is a loop over an empty tuple.
    """

    def __init__(self, trainer: Any, system: Any, callbacks: Sequence[Any]) -> None:
        from fulmen.callbacks.base import Callback
        from fulmen.system import System

        # Roles are class attributes of Callback (a subclass keeps its base's): monitoring callbacks
        # run after the system; checkpointing ones last of all, so the state a checkpoint saves
        # includes what the other callbacks (e.g. EarlyStopping) decided in the same hook.
        before = [cb for cb in callbacks if not cb.monitors]
        after = sorted((cb for cb in callbacks if cb.monitors), key=lambda cb: cb.saves_checkpoints)
        self._tables: dict[str, tuple[Callable[..., Any], ...]] = {}
        for name in CALLBACK_HOOKS:
            fns: list[Callable[..., Any]] = []
            for cb in before:
                if overrides(cb, name, Callback):
                    fns.append(partial(getattr(cb, name), trainer, system))
            if name in SHARED_HOOKS and overrides(system, name, System):
                fns.append(getattr(system, name))
            for cb in after:
                if overrides(cb, name, Callback):
                    fns.append(partial(getattr(cb, name), trainer, system))
            profiler = getattr(trainer, "profiler", None)
            if profiler is not None and fns:  # each hook timed (only when profiling)
                fns = [profiler.wrap_hook(_action_name(fn, name), fn) for fn in fns]
            self._tables[name] = tuple(fns)
            setattr(self, name, self._tables[name])

    def __getitem__(self, name: str) -> tuple[Callable[..., Any], ...]:
        return self._tables[name]

    def __getattr__(self, name: str) -> tuple[Callable[..., Any], ...]:
        # Only reached for names that are not hooks (every hook is set as an attribute above).
        raise AttributeError(f"{name!r} is not a hook name")

    def call(self, name: str, *args: Any) -> bool:
        """Dispatch ``name`` to every function in its table."""
        fns = self._tables[name]
        return call_hooks(fns, *args) if fns else False

    def call_kw(self, name: str, **kwargs: Any) -> None:
        """Dispatch ``name`` with keyword arguments (Lightning's ``setup(stage=...)``); a function
        that takes no such keywords (``lambda trainer, module, *args: ...``) gets them positionally.
        (An exception's note reads the hook from this frame's ``fn``, as for ``call_hooks``.)"""
        for fn in self._tables[name]:
            if _takes_keywords(fn, kwargs):
                fn(**kwargs)
            else:
                fn(*kwargs.values())
