"""``NonFiniteGuard``: stop (or skip the step) when a gradient is NaN/inf, naming the parameters and
the first module whose output went non-finite; and ``first_nonfinite_module``, the re-run that
finds that module (also used by the trainer's ``NonFiniteLossError``)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fulmen.callbacks.base import Callback
from fulmen.errors import FulmenWarning, NonFiniteGradientError, warn_once

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

_MODES = ("raise", "skip")
_NAMED = 5  # parameters named in a message; the rest are counted
_RECORDED = 1000  # skipped steps whose (epoch, batch, step) the guard keeps

# -- finding the module ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NonFiniteOrigin:
    """What re-running one batch found (see ``first_nonfinite_module``).

    ``module``: qualified name of the first module (in the order their forwards finished) whose
    output held NaN/inf, ``""`` for the system's own ``forward``, None when every output was
    finite; ``module_type`` its class name. ``in_batch``: the batch itself holds NaN/inf.
    ``loss_finite``: whether the re-run's loss was finite (None when there was none).
    ``reran``: False when the batch was not re-run, ``note`` says why.
    """

    module: str | None = None
    module_type: str | None = None
    in_batch: bool = False
    loss_finite: bool | None = None
    reran: bool = True
    note: str = ""

    @property
    def label(self) -> str | None:
        """``"net.3 (Linear)"``, or None when no module's output was non-finite."""
        if self.module is None:
            return None
        name = self.module or "the system's own forward"
        return f"{name} ({self.module_type})"

    def describe(self, what: str = "loss") -> str:
        """A sentence for an error message; ``what`` is ``"loss"`` or ``"gradient"``."""
        if not self.reran:
            return f"(The batch was not re-run to find the module that produced it: {self.note}.)"
        parts: list[str] = []
        if self.in_batch:
            parts.append("The batch itself contains NaN or inf values.")
        if self.label is not None:
            parts.append(
                f"The first module whose output was non-finite: {self.label} (found by re-running training_step "
                f"on this batch under torch.no_grad)."
            )
        elif what == "loss":
            if self.loss_finite:
                parts.append(
                    "Re-running training_step on this batch gave finite module outputs and a finite loss, so the "
                    "NaN/inf depends on random numbers (e.g. dropout) or on state that has changed since."
                )
            else:
                parts.append(
                    "Re-running training_step on this batch, all module outputs were finite, so the loss "
                    "computation itself produced it (e.g. log or division of values that can be zero)."
                )
        else:
            parts.append(
                "Re-running training_step on this batch, all module outputs were finite, so the gradient went "
                "non-finite in the backward pass (e.g. sqrt, log or division at 0, whose derivative is infinite) "
                "or in computation outside modules."
            )
        return " ".join(parts)


def first_nonfinite_module(system: System, batch: Any, batch_idx: int) -> NonFiniteOrigin:
    """Re-run ``system.training_step(batch, batch_idx)`` with a forward hook on every submodule and
    return the first module whose output held NaN or inf.

    Runs only after something went non-finite, so the normal path pays nothing for it. The re-run
    is under ``torch.no_grad`` (and the run's autocast), with the random number generators, the
    buffers (e.g. BatchNorm statistics) and the attributes of the system and its submodules
    (rebound values, and lists, dicts and sets changed in place) put back afterwards, and with
    ``self.log`` going to a store that is thrown away: training continues as if it had not run.
    Other side effects of ``training_step`` (files, globals, objects it changes deeper inside)
    are not undone. Manual optimization is not re-run (its ``training_step`` steps the optimizers).
    """
    if not system.automatic_optimization:
        return NonFiniteOrigin(
            reran=False, note="with manual optimization training_step steps the optimizers, so it is not re-run"
        )
    from fulmen.logging._store import MetricStore
    from fulmen.seed import RNGState

    in_batch = any(_nonfinite(t) for t in _tensors(batch))
    found: list[tuple[str, str]] = []
    names = {id(m): name for name, m in system.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not found and any(_nonfinite(t) for t in _tensors(output)):
            found.append((names.get(id(module), "?"), type(module).__name__))

    handles = [m.register_forward_hook(hook) for _, m in system.named_modules()]
    rng = RNGState()
    attributes = _AttributeSnapshot(system)
    with torch.no_grad():
        buffers = [(b, b.detach().clone()) for b in system.buffers()]
    trainer = system._trainer
    context = trainer.strategy.precision.forward_context() if trainer is not None else None
    loss_finite: bool | None = None
    note = ""
    try:
        system._log_store = MetricStore("train")  # self.log works, and what it records is dropped
        with torch.no_grad():
            if context is not None:
                with context:
                    out = system.training_step(batch, batch_idx)
            else:
                out = system.training_step(batch, batch_idx)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if isinstance(loss, Tensor):
            loss_finite = not _nonfinite(loss)
    except Exception as err:  # the report is best effort: never hide the original problem
        note = f"re-running training_step raised {type(err).__name__}: {err}"
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)
        attributes.restore()
        rng.restore()
    if note and not found:
        return NonFiniteOrigin(in_batch=in_batch, reran=False, note=note)
    module, module_type = found[0] if found else (None, None)
    return NonFiniteOrigin(module=module, module_type=module_type, in_batch=in_batch, loss_finite=loss_finite)


def _nonfinite(t: Tensor) -> bool:
    """True when a floating-point (or complex) tensor holds NaN or inf.  # host sync (diagnostic path only)"""
    if not (t.is_floating_point() or t.is_complex()) or t.is_sparse or t.numel() == 0:
        return False
    try:
        return not bool(torch.isfinite(t.detach()).all())
    except Exception:  # an exotic tensor subclass: not worth failing the report for
        return False


def _tensors(data: Any, depth: int = 0) -> Iterator[Tensor]:
    """The tensors in a nested output or batch (tensors, mappings, lists, tuples, dataclasses)."""
    if isinstance(data, Tensor):
        yield data
    elif depth > 8:
        return
    elif isinstance(data, Mapping):
        for v in data.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(data, (list, tuple)):
        for v in data:
            yield from _tensors(v, depth + 1)
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        for f in dataclasses.fields(data):
            yield from _tensors(getattr(data, f.name, None), depth + 1)


_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}
_MISSING = object()


class _AttributeSnapshot:
    """The plain attributes of a module tree (not parameters, buffers or submodules), to put back
    after a re-run: rebound values, and the contents of lists, dicts and sets changed in place
    (restored in place, so references held elsewhere see the old contents again)."""

    def __init__(self, root: nn.Module) -> None:
        self.saved: list[tuple[nn.Module, dict[str, tuple[Any, Any]]]] = []
        for module in root.modules():
            entries: dict[str, tuple[Any, Any]] = {}
            for key, value in vars(module).items():
                if key in _MODULE_INTERNALS:
                    continue
                contents: Any = None
                if isinstance(value, (list, dict, set)):
                    contents = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else set(value)
                entries[key] = (value, contents)
            self.saved.append((module, entries))

    def restore(self) -> None:
        for module, entries in self.saved:
            state = vars(module)
            for key in [k for k in state if k not in entries and not k.startswith("_") and k != "training"]:
                del state[key]  # a public attribute the re-run added (private ones may be torch's own)
            for key, (value, contents) in entries.items():
                if contents is not None:
                    if isinstance(value, list):
                        value[:] = contents
                    else:
                        value.clear()
                        value.update(contents)
                if state.get(key, _MISSING) is not value:
                    state[key] = value


# -- the callback ------------------------------------------------------------------------------------


class NonFiniteGuard(Callback):
    """Check the gradients before every optimizer step; on NaN/inf stop, or skip that step.

    Runs in ``on_before_optimizer_step``: after backward and after 16-mixed's unscaling, before
    gradient clipping and the step. It finds the parameters whose gradient holds NaN or inf and

    - ``mode="raise"`` (default): raises ``fulmen.NonFiniteGradientError`` (a
      ``NonFiniteLossError``) naming the first few of them and their count, the global step,
      epoch and batch index;
    - ``mode="skip"``: drops the gradients and skips the step (``global_step`` still counts it,
      as for a step 16-mixed's loss scaling skips), records ``(epoch, batch_idx, global_step)``
      in ``skipped`` and counts it in ``skipped_steps``, which is logged as
      ``nonfinite_skipped_steps`` and kept in checkpoints (so it survives a resume). The first
      skip of a fit warns with the full report.

    On a detection (only then) it re-runs the step's last batch under ``torch.no_grad`` with
    forward hooks on every submodule, to name the first module whose output went non-finite
    (see ``first_nonfinite_module``; ``find_module=False`` turns this off). The batch is kept by
    reference from ``on_train_batch_start``, nothing is copied. With gradient accumulation the
    step's last batch is re-run; the message gives the group's first batch too.

    Cost: reading whether the gradients are finite waits for the device once per optimizer step
    (one ``torch._foreach_norm`` per device, then one host read), so the guard is opt-in. With
    several processes the decision is agreed by all of them (one collective per step), so all
    stop or skip together.

    Not active under ``precision="16-mixed"``: there, inf/NaN gradients are loss scaling's normal
    signal (the scaler skips the step and lowers the scale). Use ``bf16-mixed`` or ``32-true``
    while debugging. With manual optimization the guard checks at each ``opt.step()`` of
    ``self.optimizers()`` (skip mode makes that call do nothing).
    """

    def __init__(self, mode: str = "raise", find_module: bool = True) -> None:
        if mode not in _MODES:
            raise ValueError(
                f"NonFiniteGuard(mode={mode!r}): expected 'raise' (stop with NonFiniteGradientError) or 'skip' "
                f"(skip the optimizer step)."
            )
        if not isinstance(find_module, bool):
            raise ValueError(f"NonFiniteGuard(find_module={find_module!r}): expected True or False.")
        self.mode = mode
        self.find_module = find_module
        #: Optimizer steps skipped so far (mode="skip"), across resumes.
        self.skipped_steps = 0
        #: ``(epoch, batch_idx, global_step)`` of each skipped step (the last 1000).
        self.skipped: list[tuple[int, int, int]] = []
        #: The origin found at the last detection (None before any).
        self.last_origin: NonFiniteOrigin | None = None
        self._active = True
        self._warned = False
        self._batch: Any = None
        self._batch_idx = -1
        self._group_start: int | None = None

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "skipped": [list(s) for s in self.skipped]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.skipped = [(int(e), int(b), int(s)) for e, b, s in state_dict.get("skipped", [])]

    # -- hooks -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        if stage != "fit":
            return
        self._active = not trainer.strategy.precision.scales_loss
        if not self._active:
            warn_once(
                "NonFiniteGuard does nothing under precision='16-mixed': inf/NaN gradients are loss scaling's "
                "normal signal there (the step is skipped and the scale lowered). Use 'bf16-mixed' or '32-true' "
                "to find where NaN/inf comes from.",
                key="nonfinite-guard-16-mixed",
            )

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._group_start = None

    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx  # by reference: re-run only on a detection
        if self._group_start is None:
            self._group_start = batch_idx

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        self._batch = None

    def on_before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Optimizer) -> None:
        group_start, self._group_start = self._group_start, None
        if not self._active:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        bad = any_nonfinite(grads)  # host sync, once per step
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self._report(trainer, system, optimizer, group_start)
        if self.mode == "skip" and system.automatic_optimization:
            system.log("nonfinite_skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, add_dataloader_idx=False)

    def _report(self, trainer: Trainer, system: System, optimizer: Optimizer, group_start: int | None) -> None:
        step, epoch, batch_idx = trainer.global_step, trainer.current_epoch, self._batch_idx
        names = _nonfinite_parameters(system, optimizer)
        shown = ", ".join(names[:_NAMED]) + (f" (and {len(names) - _NAMED} more)" if len(names) > _NAMED else "")
        origin: NonFiniteOrigin | None = None
        if self.find_module and self._batch is not None:
            origin = first_nonfinite_module(system, self._batch, batch_idx)
        self.last_origin = origin
        where = f"at global step {step} (epoch {epoch}, batch {batch_idx}"
        if group_start is not None and group_start != batch_idx:
            where += f"; the step accumulated batches {group_start} to {batch_idx}, the last of which was re-run"
        where += ")"
        count = f"{len(names)} parameter{'s' if len(names) != 1 else ''}" if names else "a parameter on another process"
        message = f"NaN or inf gradient in {count} {where}: {shown or 'see the other processes'}."
        if origin is not None:
            message += " " + origin.describe("gradient")
        if self.mode == "raise":
            raise NonFiniteGradientError(
                f"{message} Trainer(detect_anomaly=True) names the backward operation that produced it; "
                f"NonFiniteGuard(mode='skip') skips such steps instead of stopping."
            )
        trainer.skip_optimizer_step()
        self.skipped_steps += 1
        self.skipped.append((epoch, batch_idx, step))
        del self.skipped[:-_RECORDED]
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"NonFiniteGuard(mode='skip') skipped the optimizer step: {message} Later skips are counted in "
                f"'nonfinite_skipped_steps' without a warning.",
                FulmenWarning,
                stacklevel=2,
            )


def any_nonfinite(grads: list[Tensor]) -> bool:
    """True when any tensor in ``grads`` holds NaN or inf: one max-abs norm per device (NaN
    propagates, and unlike a 2-norm it cannot overflow), then one host read per device."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        if g.is_sparse:
            g = g.coalesce().values()
        by_device.setdefault(g.device, []).append(g)
    for tensors in by_device.values():
        norms = torch._foreach_norm(tensors, float("inf"))
        if not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):  # host sync
            return True
    return False


def _nonfinite_parameters(system: System, optimizer: Optimizer) -> list[str]:
    """Names of the optimizer's parameters whose gradient holds NaN/inf, in the system's order."""
    names = {id(p): name for name, p in system.named_parameters()}
    out: list[str] = []
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if p.grad is not None and _nonfinite(p.grad.coalesce().values() if p.grad.is_sparse else p.grad):
                out.append(names.get(id(p), f"param_groups[{gi}]['params'][{pi}]"))
    return out
