"""The training step, built once per epoch: what the loop calls for each batch.

``build_step`` gathers what the step uses (``StepParts``: the hooks, the forward, the optimizer,
the precision, accumulation, profiling) and chooses the step variant before the epoch's loop
starts, so the per-batch code takes no branch on a setting that cannot change inside an epoch:

- **automatic** (``automatic_step``): the loss found in what ``training_step`` returned and
  checked, divided for gradient accumulation, backward (``on_before_backward`` /
  ``on_after_backward``), and at the end of each accumulation group the optimizer step. Full
  precision without clipping or a closure steps torch's optimizer directly; otherwise the step
  unscales (16-mixed), clips, passes a closure to an optimizer that needs one (LBFGS:
  ``Reevaluation``) and reports a step that loss scaling skipped (``full_optimizer_step``);
- **manual** (``automatic_optimization = False``): ``training_step`` did the backward and the
  steps, so nothing is left to do;
- a variant of the system's own: ``system._train_step_variant(parts, start)`` may return one.
  ``fulmen.lightning.LightningModule`` does when it overrides Lightning's
  ``optimizer_zero_grad``, ``backward`` or ``optimizer_step`` (``fulmen.lightning._step``): it
  fills ``automatic_step``'s slots with those overrides, so none of them is in the core step.
  The slots: ``zero_first(batch_idx)`` zeroes at the first batch of each accumulation group,
  after the loss is checked and before ``on_before_backward`` (also for a batch without a loss),
  in place of the zeroing after each step; ``backward(loss)``; ``optimizer_step(reevaluate)``
  builds the optimizer step (``reevaluate``: see ``make_reevaluate``).

Every variant reads a callback's request to skip the optimizer step in one place
(``fulmen.trainer._optim.before_optimizer_step``). The loop calls ``training_step`` itself (no
extra frame between ``fit`` and the user's code) and then ``Step.run`` with its output.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from fulmen.errors import FlagError, warn_once
from fulmen.trainer._eval import takes_batch_idx, without_batch_idx
from fulmen.trainer._hooks import call_hooks
from fulmen.trainer._loss import check_loss, loss_of, raise_nonfinite
from fulmen.trainer._optim import Reevaluation, before_optimizer_step, needs_closure, step_schedulers

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer._optim import SchedulerConfig
    from fulmen.trainer.trainer import Trainer

#: ``optimizer_step(loss, batch, batch_idx) -> stepped``: the optimizer step at the end of a group.
OptimizerStep = Callable[[Any, Any, int], bool]
#: ``reevaluate(batch, batch_idx) -> loss``: the batch evaluated again (see ``make_reevaluate``).
Reevaluate = Callable[[Any, int], "Tensor | None"]
#: ``make_step(reevaluate) -> optimizer_step``: builds the optimizer step of a variant.
MakeStep = Callable[["Reevaluate | None"], OptimizerStep]

_INF = math.inf


class Step(NamedTuple):
    """A training step built for one epoch."""

    #: ``run(out, batch, batch_idx) -> outputs``: everything after ``training_step`` returned
    #: ``out`` (backward, the optimizer step ending a group); returns what ``on_train_batch_end``
    #: receives.
    run: Callable[[Any, Any, int], Any]
    #: ``finish(ran, ended_early)``: after the epoch's batches (``ran`` of them, counted from 0):
    #: a group the epoch left unfinished is stepped, or dropped when the epoch was cut short.
    finish: Callable[[int, bool], None]


class StepParts:
    """What every variant of the step uses, bound once per epoch (so the step does no attribute
    or dict lookups for them)."""

    def __init__(
        self,
        trainer: Trainer,
        system: System,
        n_batches: int | float,
        step_scheds: list[SchedulerConfig],
        outputs_needed: bool,
    ) -> None:
        hooks = trainer._hooks
        assert hooks is not None
        strategy = trainer.strategy
        self.trainer, self.system = trainer, system
        self.precision = precision = strategy.precision
        self.before_backward, self.after_backward = hooks.on_before_backward, hooks.on_after_backward
        self.before_step, self.before_zero = hooks.on_before_optimizer_step, hooks.on_before_zero_grad
        # The forward: through DDP's wrapper with several processes; training_step(self, batch)
        # is called without batch_idx; under autocast where the precision needs it.
        training_step = strategy.training_step_function(system)
        if not takes_batch_idx(system.training_step):
            training_step = without_batch_idx(training_step)
        self.forward_ctx = precision.forward_context
        self.plain_forward = not precision.needs_forward_context
        self.optimizer = optimizer = trainer.optimizers[0]
        self.backward, self.optimizer_step = strategy.step_functions(optimizer)
        self.zero_grad = optimizer.zero_grad
        self.accumulate = accumulate = trainer.accumulate_grad_batches
        self.n_batches = n_batches
        # The last group of an epoch may be shorter than accumulate_grad_batches: its losses are
        # divided by its own size, so every optimizer step sees the mean gradient of its batches.
        known = not math.isinf(n_batches)
        self.last_group_start = n_batches - n_batches % accumulate if known else sys.maxsize
        self.last_batch = int(n_batches) - 1 if known else -1
        # Several processes: gradients are all-reduced only on the micro-batch that steps.
        automatic = system.automatic_optimization
        self.grad_sync = strategy.grad_sync_function() if accumulate > 1 and automatic else None
        self.step_scheds = step_scheds
        self.report_skipped = bool(step_scheds)  # (16-mixed: whether a step was skipped is read only for them)
        self.check_each_loss = strategy.host_reads_are_cheap  # CPU: read each loss; else check per window
        # On an accelerator, reading a loss waits for the device: the losses of a log window are
        # kept, with (global step, batch index) of each, and checked together (fulmen.trainer._loss).
        self.losses: list[Tensor] = []
        self.where: list[tuple[int, int]] = []
        self.outputs_needed = outputs_needed  # on_train_batch_end is dispatched: it gets {"loss": ...}
        self.metrics = lambda: trainer.callback_metrics  # what plateau schedulers read
        self.profiler = profiler = trainer.profiler
        if profiler is not None:  # each part of the step timed (only when profiling)
            training_step = profiler.wrap("training_step", training_step)
            self.backward = profiler.wrap("backward", self.backward)
            self.optimizer_step = profiler.wrap("optimizer_step", self.optimizer_step)
            self.zero_grad = profiler.wrap("optimizer_zero_grad", self.zero_grad)
        self.training_step = training_step

    def timed(self, action: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, timed as ``action`` when profiling."""
        return fn if self.profiler is None else self.profiler.wrap(action, fn)


def build_step(
    trainer: Trainer,
    system: System,
    n_batches: int | float,
    start: int,
    step_scheds: list[SchedulerConfig],
    outputs_needed: bool,
) -> tuple[StepParts, Step]:
    """The epoch's parts and its step variant (see the module docstring)."""
    parts = StepParts(trainer, system, n_batches, step_scheds, outputs_needed)
    if not system.automatic_optimization:
        return parts, manual_step()
    variant = getattr(system, "_train_step_variant", None)  # fulmen.lightning.LightningModule's overrides
    step = variant(parts, start) if variant is not None else None
    return parts, step if step is not None else automatic_step(parts, start)


def manual_step() -> Step:
    """Manual optimization: ``training_step`` did the backward and the steps (each counted in
    ``global_step`` by ``ManualOptimizer``); its output goes to ``on_train_batch_end`` as it is."""

    def run(out: Any, batch: Any, batch_idx: int) -> Any:
        return out

    def finish(ran: int, ended_early: bool) -> None:
        pass

    return Step(run, finish)


def automatic_step(
    parts: StepParts, start: int, *, zero_first: Callable[[int], None] | None = None,
    backward: Callable[[Tensor], Any] | None = None, optimizer_step: MakeStep | None = None,
) -> Step:
    """Automatic optimization, for the epoch's batches from ``start`` on (the three slots a variant
    may fill: see the module docstring)."""
    trainer, system, optimizer, precision = parts.trainer, parts.system, parts.optimizer, parts.precision
    accumulate, n_batches, last_batch = parts.accumulate, parts.n_batches, parts.last_batch
    last_group_start, check_each_loss, losses, where = parts.last_group_start, parts.check_each_loss, parts.losses, parts.where
    before_backward, after_backward = parts.before_backward, parts.after_backward
    before_step, before_zero, step_now, zero_grad = parts.before_step, parts.before_zero, parts.optimizer_step, parts.zero_grad
    step_scheds, metrics, outputs_needed = parts.step_scheds, parts.metrics, parts.outputs_needed
    backward = backward if backward is not None else parts.backward
    none_steps = trainer.rules.lightning_none_output_steps  # Lightning: a batch returning None still steps
    reevaluate = make_reevaluate(parts, zero_first, backward)  # (an optimizer that needs a closure: LBFGS)
    make_step = optimizer_step if optimizer_step is not None else lambda r: full_optimizer_step(parts, r)
    full_step = parts.timed("optimizer_step", make_step(reevaluate))
    plain = optimizer_step is None and precision.plain and not trainer._clips_gradients and reevaluate is None
    pending = _restored_group(parts, start)  # gradients accumulated since the last optimizer step
    loop = trainer.loop  # (the position: global_step counted here)
    step_before = loop.global_step  # nothing stepped this epoch: training_step returned only None

    def run(out: Any, batch: Any, batch_idx: int) -> Any:
        nonlocal pending
        loss = out if type(out) is Tensor else loss_of(out, system)
        if loss is not None:
            if loss.ndim or not loss.requires_grad:
                loss = check_loss(loss, system)
            if check_each_loss:
                value = loss.item()  # no device wait on the CPU
                if not -_INF < value < _INF:  # NaN or inf (a chained comparison: no call per step)
                    raise_nonfinite(trainer, loss, loop.global_step, batch_idx, batch=batch)
            else:
                losses.append(loss.detach())
                where.append((loop.global_step, batch_idx))
            if accumulate > 1:
                loss = loss / (accumulate if batch_idx < last_group_start else n_batches - last_group_start)
            if zero_first is not None and batch_idx % accumulate == 0:
                zero_first(batch_idx)
            if before_backward:
                call_hooks(before_backward, loss)
            backward(loss)
            if after_backward:
                call_hooks(after_backward)
            pending = True
        else:
            if none_steps:  # Lightning: nothing to backward, but the optimizer step is taken
                _warn_none_output(system)
                pending, out = True, {}
            if zero_first is not None and batch_idx % accumulate == 0:  # (a skipped batch still zeroes)
                zero_first(batch_idx)
        if pending and ((batch_idx + 1) % accumulate == 0 or batch_idx == last_batch):
            if plain:  # torch's own step: the hooks around it, nothing else
                stepped = not before_step or before_optimizer_step(trainer, before_step, optimizer)
                if stepped:
                    step_now()
                if before_zero:
                    call_hooks(before_zero, optimizer)
                zero_grad(set_to_none=True)
            else:
                stepped = full_step(loss, batch, batch_idx)
            pending = False
            loop.global_step = global_step = loop.global_step + 1
            if step_scheds and stepped:  # a step skipped by 16-mixed loss scaling does not count
                step_schedulers(system, step_scheds, "step", global_step, metrics)
        if loss is not None and outputs_needed:  # as in Lightning: {"loss": <detached>, **the other keys returned}
            detached = loss.detach()
            return {"loss": detached} if type(out) is Tensor else {**out, "loss": detached}
        return out

    def finish(ran: int, ended_early: bool) -> None:
        nonlocal pending
        if ran > start and not pending and loop.global_step == step_before:
            _warn_nothing_optimized(system, trainer, ran - start)
        if pending:
            pending = False
            _unfinished_group(parts, make_step, ran, ended_early)

    return Step(run, finish)


def _restored_group(parts: StepParts, start: int) -> bool:
    """Whether gradients restored by a resume inside an accumulation group are pending (only inside
    a group: with Lightning's zeroing order, ``optimizer_zero_grad``, the gradients of the last step
    stay until the next group starts, and must not be stepped again)."""
    inside_group = start % parts.accumulate != 0 and start < parts.n_batches
    return start > 0 and inside_group and any(p.grad is not None for p in parts.system.parameters())


def _unfinished_group(parts: StepParts, make_step: MakeStep, ran: int, ended_early: bool) -> None:
    """The accumulation group an epoch left unfinished: dropped when a stop cut the epoch short;
    else (a loader of unknown length ended inside it) stepped on what it gave. Its losses were
    divided by accumulate_grad_batches: the gradients are rescaled so the step sees the mean
    gradient of the batches the group has (as for a known-length last group)."""
    trainer, optimizer, accumulate = parts.trainer, parts.optimizer, parts.accumulate
    if ended_early:
        optimizer.zero_grad(set_to_none=True)
        return
    size = ran % accumulate
    if size:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, accumulate / size)
    stepped = make_step(None)(None, None, 0)
    trainer.loop.global_step += 1
    if parts.step_scheds and stepped:
        step_schedulers(parts.system, parts.step_scheds, "step", trainer.loop.global_step, parts.metrics)


def prepare_optimizer_step(parts: StepParts) -> bool:
    """Before an optimizer step: unscale the gradients (16-mixed: hooks and clipping see the true
    ones), ``on_before_optimizer_step``, clipping. False when a callback asked to skip the step
    (the unscaling prepared for it is discarded, so the loss scaler starts the next one afresh)."""
    trainer, optimizer, precision = parts.trainer, parts.optimizer, parts.precision
    if precision.scales_loss:
        precision.unscale(optimizer)
    if parts.before_step and not before_optimizer_step(trainer, parts.before_step, optimizer):
        precision.discard_step(optimizer)
        return False
    if trainer._clips_gradients:
        clip = trainer._clip_kwargs  # Lightning's call: its values by keyword
        if clip is None:
            cfg = trainer.config
            parts.system.configure_gradient_clipping(optimizer, cfg.gradient_clip_val, cfg.gradient_clip_algorithm)
        else:
            parts.system.configure_gradient_clipping(optimizer, **clip)
    return True


def full_optimizer_step(parts: StepParts, reevaluate: Reevaluate | None) -> OptimizerStep:
    """The optimizer step with everything the plain path leaves out: ``prepare_optimizer_step``,
    the step through the precision (False when loss scaling skipped it) or, for an optimizer that
    needs a closure, with ``Reevaluation``; then ``on_before_zero_grad`` and the zeroing."""
    optimizer, precision, before_zero = parts.optimizer, parts.precision, parts.before_zero
    report_skipped = parts.report_skipped

    def step(loss: Any, batch: Any, batch_idx: int) -> bool:
        stepped = prepare_optimizer_step(parts)
        if stepped and reevaluate is not None:
            optimizer.step(Reevaluation(loss, reevaluate, batch, batch_idx))
        elif stepped:
            stepped = precision.optimizer_step(optimizer, report_skipped)
        if before_zero:
            call_hooks(before_zero, optimizer)
        optimizer.zero_grad(set_to_none=True)
        return stepped

    return step


def make_reevaluate(
    parts: StepParts, zero_first: Callable[[int], None] | None, backward: Callable[[Tensor], Any]
) -> Reevaluate | None:
    """For an optimizer whose step needs a closure (LBFGS; else None): ``reevaluate(batch,
    batch_idx)``, one more evaluation of the batch for it: zero the gradients at the first batch of
    an accumulation group (as Lightning's closure does; ``zero_first`` where a variant zeroes its
    own way), ``training_step``, backward with its hooks. Loss scaling cannot re-run a closure, so
    16-mixed is refused."""
    optimizer, precision, system = parts.optimizer, parts.precision, parts.system
    if not needs_closure(optimizer):
        return None
    if precision.scales_loss:
        raise FlagError(
            f"{type(optimizer).__name__} needs a closure to evaluate the loss again, which loss scaling under "
            f"precision={precision.name!r} cannot re-run (AMP and the LBFGS optimizer are not compatible). "
            f"Use precision='bf16-mixed' or '32-true'."
        )
    training_step, forward_ctx, plain_forward = parts.training_step, parts.forward_ctx, parts.plain_forward
    accumulate, n_batches, last_group_start = parts.accumulate, parts.n_batches, parts.last_group_start
    before_backward, after_backward, before_zero = parts.before_backward, parts.after_backward, parts.before_zero

    def reevaluate(batch: Any, batch_idx: int) -> Tensor | None:
        if batch_idx % accumulate == 0:
            if zero_first is not None:
                zero_first(batch_idx)
            else:
                if before_zero:
                    call_hooks(before_zero, optimizer)
                optimizer.zero_grad()
        if plain_forward:
            out = training_step(batch, batch_idx)
        else:
            with forward_ctx():
                out = training_step(batch, batch_idx)
        loss = out if type(out) is Tensor else loss_of(out, system)
        if loss is None:
            return None
        if accumulate > 1:
            loss = loss / (accumulate if batch_idx < last_group_start else n_batches - last_group_start)
        if before_backward:
            call_hooks(before_backward, loss)
        backward(loss)
        if after_backward:
            call_hooks(after_backward)
        return loss

    return reevaluate


def _warn_none_output(system: System) -> None:
    name = type(system).__name__
    warn_once(
        f"`training_step` returned `None`. If this was on purpose, ignore this warning... ({name}.training_step "
        f"returned None for a batch: as in Lightning, its optimizer step is still taken and counted in global_step, "
        f"with no gradient from that batch.)",
        UserWarning,
        key=f"none-output-{name}",
    )


def _warn_nothing_optimized(system: System, trainer: Trainer, n: int) -> None:
    """Every batch of an epoch ended with training_step returning None (checked once per epoch,
    from global_step: nothing is counted per batch). Warned when training_step has no return
    statement at all, the forgotten ``return loss``; one that says ``return None`` means it."""
    if _has_return_statement(type(system).training_step):
        return
    name = type(system).__name__
    warn_once(
        f"{name}.training_step returned None for all {n} batches of epoch {trainer.current_epoch}, so nothing was "
        f"optimized (global_step is still {trainer.global_step}). If that is not on purpose, training_step is "
        f"missing `return loss` (None skips a batch). With manual optimization, set "
        f"self.automatic_optimization = False in {name}.__init__.",
        key=f"nothing-optimized-{name}",
    )


def _has_return_statement(fn: Any) -> bool:
    """Whether the source of ``fn`` has a ``return`` of its own (not of a nested function); False
    when the source cannot be read."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    todo: list[ast.AST] = list(tree.body[0].body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Return):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return False
