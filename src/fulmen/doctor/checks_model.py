"""``fulmen.doctor``'s checks of the model as one batch runs through the real loop: the loss, the
gradients, the device the batch reaches a step on, train/eval modes, and the monitored metrics."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fulmen.doctor.report import Findings, names, plural, verb

if TYPE_CHECKING:
    from fulmen.doctor.probe import StepProbe
    from fulmen.system import System

__all__ = [
    "check_batch_device",
    "check_gradients",
    "check_loss",
    "check_modes",
    "check_monitors",
    "devices_of",
    "same_device",
]


def check_loss(out: Findings, system: System, output: Any) -> Tensor | None:
    """What ``training_step`` returned: a finite scalar loss that requires grad. Returns the loss
    when the loop can backpropagate it, else None (reported: the loop would skip the batch, or stop
    on a non-finite loss before its backward)."""
    from fulmen.errors import HookReturnError
    from fulmen.trainer._loss import loss_of

    try:
        loss = loss_of(output, system)
    except HookReturnError as err:
        out.add("problem", "loss", "training_step does not return a loss", str(err))
        return None
    if loss is None:
        out.add(
            "warning",
            "loss",
            "training_step returned None for the first batch",
            "The Trainer skips a batch whose training_step returns None, so nothing is learned from it. Return "
            "the loss (a scalar tensor) or {'loss': loss}.",
        )
        return None
    if loss.numel() != 1:
        out.add(
            "problem",
            "loss",
            f"training_step returns a loss of shape {tuple(loss.shape)}",
            "The loss must be a scalar. Reduce it first, e.g. loss.mean().",
        )
        return None
    value = float(loss.detach().float().item())
    if not loss.requires_grad:
        out.add(
            "problem",
            "loss",
            "The loss does not require grad",
            "There is nothing to backpropagate: the loss was computed under torch.no_grad(), detached, made "
            "with .item(), or from tensors that are not parameters. Compute it from the model's outputs.",
        )
        return None
    if not math.isfinite(value):
        out.add(
            "problem",
            "loss",
            f"The loss is not finite ({value})",
            "training_step returned NaN or inf on the first batch, so training stops at once (or learns "
            "nothing). Common causes: NaN or inf in the input data, log or division of values that can be zero, "
            "uninitialised weights (torch.empty), or an overflow in half precision.",
        )
        return None
    out.add("ok", "loss", f"training_step returns a finite loss ({value:.4g}) that requires grad")
    return loss.reshape(())


def check_gradients(out: Findings, system: System) -> None:
    """After backward: every parameter that requires grad has a finite, not all-zero gradient."""
    named = [(n, p) for n, p in system.named_parameters() if p.requires_grad]
    if not named:
        out.add(
            "warning",
            "gradients",
            "No parameter requires grad",
            "Every parameter is frozen, so training changes nothing. Call requires_grad_(True) on the parts "
            "to train.",
        )
        return
    missing = [n for n, p in named if p.grad is None]
    with_grad = [(n, p.grad) for n, p in named if p.grad is not None]
    zero: list[str] = []
    nonfinite: list[str] = []
    if with_grad:
        grads = [g.detach() for _, g in with_grad]
        maxabs = torch.stack([g.abs().max().float() if g.numel() else g.new_zeros((), dtype=torch.float32) for g in grads])
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        maxabs, finite = maxabs.cpu(), finite.cpu()  # host sync: once
        zero = [n for (n, _), m, f in zip(with_grad, maxabs.tolist(), finite.tolist()) if f and m == 0.0]
        nonfinite = [n for (n, _), f in zip(with_grad, finite.tolist()) if not f]
    if missing:
        out.add(
            "problem",
            "gradients",
            f"{plural(len(missing), 'parameter')} {verb(len(missing))} no gradient: {names(missing)}",
            "The loss of a training batch does not depend on them, so the optimizer never changes them (and "
            "DDP fails with 'Expected to have finished reduction'). Use them in the loss, delete them, or freeze "
            "them with requires_grad_(False). Unused: " + ", ".join(missing),
        )
    if nonfinite:
        out.add(
            "problem",
            "gradients",
            f"{plural(len(nonfinite), 'parameter')} {verb(len(nonfinite))} a NaN or inf gradient: {names(nonfinite)}",
            "An operation in the forward pass has an infinite derivative here (sqrt or log of 0, division by "
            "0). Add a small epsilon or clamp the input.",
        )
    if zero:
        out.add(
            "warning",
            "gradients",
            f"{plural(len(zero), 'parameter')} {verb(len(zero))} an all-zero gradient: {names(zero)}",
            "They take part in the loss but their gradient for this batch is exactly zero: a branch multiplied "
            "by zero, dead ReLUs, or a clamp/step function. It may be this batch only; if not, they never train.",
        )
    if not missing and not nonfinite and not zero:
        out.add("ok", "gradients", f"All {len(named)} trainable parameter tensors get a gradient")


def check_batch_device(out: Findings, step: str, probe: StepProbe, want: torch.device) -> None:
    """The batch reached ``step`` on ``want``, the device the system runs on (once per step)."""
    if probe.reported_device:
        return
    probe.reported_device = True
    wrong = sorted({str(d) for d in probe.batch_devices if not same_device(d, want)})
    if wrong:
        out.add(
            "problem",
            "device",
            f"The batch reaches {step} on {', '.join(wrong)}, not on {want}",
            f"The model runs on {want}, so using this batch fails or copies it each step. A custom "
            f"transfer_batch_to_device / on_after_batch_transfer hook moves it elsewhere, or the batch holds "
            f"objects fulmen cannot move (give them a .to(device) method).",
        )
    elif probe.batch_devices:
        out.add("ok", "device", f"The batch reaches {step} on {want}")


def check_modes(out: Findings, step: str, probe: StepProbe, expect_training: bool) -> None:
    """The model was in train mode throughout ``training_step``, in eval mode in the others."""
    want = "train" if expect_training else "eval"
    other = "eval" if expect_training else "train"
    entry, ran, exit_ = probe.entry, probe.ran, probe.exit
    if entry.get("", expect_training) != expect_training:
        out.add(
            "problem",
            "modes",
            f"The model is in {other} mode when {step} starts",
            f"The Trainer puts it in {want} mode before {step}; a hook that runs before the step switched it "
            f"(self.{other}() in on_{'train' if expect_training else 'validation'}_batch_start?).",
        )
        return
    if expect_training:
        # Submodules frozen in eval mode on purpose (before the step) are left alone.
        moved = [n for n, t in entry.items() if t and (ran.get(n, t) is False or exit_.get(n, t) is False)]
    else:
        moved = [n for n, t in entry.items() if not t and (ran.get(n, t) is True or exit_.get(n, t) is True)]
    if moved:
        where = "the whole model" if "" in moved else names(moved)
        fix = (
            "Dropout then stays off and batch norm stops learning its statistics for the rest of training. "
            "Remove self.eval() from training_step (fulmen switches modes itself), or restore with self.train()."
            if expect_training
            else f"Dropout is then on and batch norm updates its running statistics during {step}, so the "
            f"metrics are noisy and evaluation changes the model. Remove self.train() from {step} (fulmen "
            f"switches modes itself)."
        )
        out.add("problem", "modes", f"{step} switches {where} to {other} mode", fix)
    else:
        out.add("ok", "modes", f"The model is in {want} mode during {step}")


def devices_of(batch: Any) -> set[torch.device]:
    found: set[torch.device] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(obj, Tensor):
            found.add(obj.device)
        elif isinstance(obj, Mapping):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj[:1000]:
                walk(v, depth + 1)
        elif is_dataclass(obj) and not isinstance(obj, type):
            for f in fields(obj):
                walk(getattr(obj, f.name, None), depth + 1)

    walk(batch, 0)
    return found


def same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_monitors(out: Findings, monitors: list[tuple[str, str]], logged: set[str], ran: dict[str, bool]) -> None:
    """Every ``(owner, metric)`` monitored is among the names ``logged`` by the stages that ran
    (``ran["train"]``, ``ran["val"]``)."""
    seen: set[tuple[str, str]] = set()
    for owner, name in monitors:
        if (owner, name) in seen:
            continue
        seen.add((owner, name))
        if name in logged:
            out.add("ok", "monitor", f"{owner} monitors {name!r}, which is logged")
            continue
        if not ran.get("val") and not ran.get("train"):
            continue  # the stages that would log it failed: reported already
        close = difflib.get_close_matches(name, sorted(logged), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        have = ", ".join(sorted(logged)) or "nothing"
        no_val = "" if ran.get("val") else " Validation did not run (no validation data or validation_step)."
        out.add(
            "problem",
            "monitor",
            f"{owner} monitors {name!r}, which is never logged",
            f"One training and one validation batch logged: {have}.{hint}{no_val} Log it with "
            f"self.log({name!r}, value) (in validation_step for a validation metric), or change the monitor.",
        )
