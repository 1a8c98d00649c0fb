"""Numerical precision of a run (the ``precision`` flag).

=============  ======================================================================
``32-true``    float32 weights and compute (default; also ``32``)
``64-true``    float64 weights and compute (also ``64``)
``16-mixed``   float32 weights, float16 autocast, loss scaling with a GradScaler (also ``16``)
``bf16-mixed`` float32 weights, bfloat16 autocast, no scaling needed (also ``"bf16"``)
``16-true``    float16 weights and compute (no scaling: fine-tuning or inference)
``bf16-true``  bfloat16 weights and compute
=============  ======================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fulmen.errors import FlagError

_ALIASES: dict[Any, str] = {
    "32-true": "32-true",
    "32": "32-true",
    32: "32-true",
    "64-true": "64-true",
    "64": "64-true",
    64: "64-true",
    "16-mixed": "16-mixed",
    "16": "16-mixed",
    16: "16-mixed",
    "bf16-mixed": "bf16-mixed",
    "bf16": "bf16-mixed",
    "16-true": "16-true",
    "bf16-true": "bf16-true",
}
VALID = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


class Precision:
    """Full precision (``32-true`` / ``64-true``) and the interface every precision implements."""

    #: False when ``forward_context`` does nothing, so the loops call the step without entering it.
    needs_forward_context = False
    #: True when the loss is scaled (16-mixed): gradients must be unscaled before clipping.
    scales_loss = False

    def __init__(self, name: str = "32-true", dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.dtype = dtype  # the weights' dtype

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.dtype) if self.dtype != torch.float32 else module

    def convert_input(self, batch: Any) -> Any:
        if self.dtype == torch.float32:
            return batch
        from fulmen.utils.apply import apply_to_tensors

        dtype = self.dtype
        return apply_to_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)

    def forward_context(self, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward(*args, **kwargs)`` (e.g. ``retain_graph=True``), scaled where the precision scales."""
        loss.backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before they are read or clipped (no-op here)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, report_skipped: bool = True) -> bool:
        """Step ``optimizer``; return False when the step was skipped (16-mixed, inf/NaN gradients).

        ``report_skipped=False``: the caller does not need to know (the return value is then True).
        """
        optimizer.step()
        return True

    def discard_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step was skipped (a callback asked): forget what was prepared for it."""

    def step_functions(self, optimizer: torch.optim.Optimizer) -> tuple[Callable[[Tensor], Any], Callable[[], Any]]:
        """``(backward(loss), step())`` for the training loop's plain path, bound once per epoch.

        Full precision needs nothing around them, so the loop calls torch directly (no extra
        Python frames per step).
        """
        return Tensor.backward, optimizer.step

    @property
    def plain(self) -> bool:
        """True when backward and step are torch's own (no scaling, no skipped steps)."""
        return not self.scales_loss

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MixedPrecision(Precision):
    """Autocast to float16 or bfloat16 around the steps; weights stay float32.

    float16 has a small range, so ``16-mixed`` multiplies the loss by a large factor before
    backward (``torch.amp.GradScaler``) and divides the gradients by it before the optimizer
    step; a step whose gradients overflowed is skipped and the factor lowered.
    """

    needs_forward_context = True

    def __init__(self, name: str, device_type: str) -> None:
        super().__init__(name, torch.float32)
        self.autocast_dtype = torch.float16 if name == "16-mixed" else torch.bfloat16
        self.device_type = device_type
        self.scaler: torch.amp.GradScaler | None = None
        if name == "16-mixed":
            self.scaler = torch.amp.GradScaler(device_type)
            self.scales_loss = True
        self._unscaled: set[int] = set()

    def forward_context(self, device_type: str | None = None) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type or self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        if self.scaler is None:
            loss.backward(*args, **kwargs)
        else:
            self.scaler.scale(loss).backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, report_skipped: bool = True) -> bool:
        if self.scaler is None:
            optimizer.step()
            return True
        stepped = True
        if report_skipped:
            # GradScaler.step waits for the device once to learn whether the gradients were
            # finite; reading the same flags right after unscaling costs no second wait. Asked
            # only when the answer is used (step-interval schedulers): otherwise a step costs
            # the one wait a hand-written AMP loop has.
            self.unscale(optimizer)
            stepped = not self._found_inf(optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return stepped

    def discard_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients unscaled for a step that was then skipped: the scaler's record of them would be
        # reused by the next step (with its still-scaled gradients). update() ends that record
        # (and lowers the scale when they held inf/NaN); the next step unscales afresh.
        if self.scaler is not None and id(optimizer) in self._unscaled:
            self.scaler.update()
            self._unscaled.discard(id(optimizer))

    def _found_inf(self, optimizer: torch.optim.Optimizer) -> bool:
        assert self.scaler is not None
        state = getattr(self.scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
        flags = state.get("found_inf_per_device")
        if not flags:  # a torch without that (private) record: recompute from the gradients
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            return bool(grads) and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        return bool(sum(float(v.item()) for v in flags.values()))

    def step_functions(self, optimizer: torch.optim.Optimizer) -> tuple[Callable[[Tensor], Any], Callable[[], Any]]:
        return self.backward, lambda: self.optimizer_step(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class HalfPrecision(Precision):
    """Weights and inputs in float16 (``16-true``) or bfloat16 (``bf16-true``); no loss scaling."""

    def __init__(self, name: str) -> None:
        super().__init__(name, torch.float16 if name == "16-true" else torch.bfloat16)


def resolve_precision(value: Any, device_type: str = "cpu") -> Precision:
    """The precision object for the ``precision`` flag (aliases accepted)."""
    try:
        name = _ALIASES.get(value.lower() if isinstance(value, str) else value)
    except TypeError:  # unhashable, e.g. a list
        name = None
    if name is None:
        raise FlagError(
            f"Trainer(precision={value!r}): expected one of {', '.join(map(repr, VALID))} "
            f"(or the short forms 32, 64, 16, 'bf16')."
        )
    if name == "64-true":
        return Precision(name, torch.float64)
    if name in ("16-mixed", "bf16-mixed"):
        return MixedPrecision(name, device_type)
    if name in ("16-true", "bf16-true"):
        return HalfPrecision(name)
    return Precision(name)
