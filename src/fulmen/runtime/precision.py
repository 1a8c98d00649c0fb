"""Numerical precision of a run (the ``precision`` flag)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fulmen.errors import FlagError

_ALIASES = {"32": "32-true", "32-true": "32-true", 32: "32-true", "64": "64-true", "64-true": "64-true", 64: "64-true"}


class Precision:
    """Full precision: float32 (``"32-true"``) or float64 (``"64-true"``) weights and compute."""

    #: False when ``forward_context`` does nothing, so the loop calls the step without entering it.
    needs_forward_context = False

    def __init__(self, name: str = "32-true") -> None:
        self.name = name
        self.dtype = torch.float64 if name == "64-true" else torch.float32

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.dtype) if self.dtype != torch.float32 else module

    def convert_input(self, batch: Any) -> Any:
        if self.dtype == torch.float32:
            return batch
        from fulmen.utils.apply import apply_to_tensors

        return apply_to_tensors(batch, lambda t: t.to(self.dtype) if t.is_floating_point() else t)

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.step()

    def step_functions(self, optimizer: torch.optim.Optimizer) -> tuple[Callable[[Tensor], Any], Callable[[], Any]]:
        """``(backward(loss), step())`` for the training loop, bound once per epoch.

        Full precision needs nothing around them, so the loop calls torch directly (no extra
        Python frames per step); precisions that scale the loss return their own functions.
        """
        return Tensor.backward, optimizer.step

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_precision(value: Any) -> Precision:
    try:
        name = _ALIASES.get(value.lower() if isinstance(value, str) else value)
    except TypeError:  # unhashable, e.g. a list
        name = None
    if name is None:
        raise FlagError(
            f"Trainer(precision={value!r}): this version of fulmen supports '32-true' (also 32) and "
            f"'64-true' (also 64). Mixed and 16-bit precision are not part of fulmen yet."
        )
    return Precision(name)
