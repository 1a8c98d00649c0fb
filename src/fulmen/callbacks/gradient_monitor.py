"""``GradientMonitor``: log the norm of each parameter's gradient, and their total norm."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class GradientMonitor(Callback):
    """Log the ``norm_type``-norm of every parameter's gradient and of all of them together.

    Names, as PyTorch Lightning's ``grad_norm``: ``grad_2.0_norm/<parameter name>`` for each
    parameter with a gradient and ``grad_2.0_norm_total`` (``grad_inf_norm/...`` for
    ``norm_type="inf"``). The total is the norm of the per-parameter norms, which is what
    ``torch.nn.utils.clip_grad_norm_`` computes and clips.

    When: in ``on_before_optimizer_step``, so after 16-mixed's unscaling (the true gradients) and
    before gradient clipping (the gradients as backward made them); on the steps whose index + 1
    is a multiple of ``log_every_n_steps`` (default: the trainer's), at the step index the
    trainer logs that step's metrics under. Other steps cost nothing. On a logging step the
    norms are computed with ``torch._foreach_norm`` and logged as tensors with the system's
    ``self.log``, so they reach the loggers with the trainer's own values, without a wait for
    the device of their own (and appear in ``trainer.callback_metrics``). A
    ``log_every_n_steps`` that is not a multiple of the trainer's is sent to the loggers at once
    (one device wait on those steps). ``last_norms`` holds the last values logged.

    With FSDP each process holds a shard of each gradient: the norms are those of the local shards.
    """

    def __init__(self, norm_type: float | int | str = 2.0, log_every_n_steps: int | None = None) -> None:
        norm = positive_norm(norm_type, "GradientMonitor")
        if log_every_n_steps is not None and (
            not isinstance(log_every_n_steps, int) or isinstance(log_every_n_steps, bool) or log_every_n_steps < 1
        ):
            raise ValueError(
                f"GradientMonitor(log_every_n_steps={log_every_n_steps!r}): expected an int >= 1, or None for the "
                f"trainer's log_every_n_steps."
            )
        self.norm_type = norm
        self.log_every_n_steps = log_every_n_steps
        self.prefix = f"grad_{norm}_norm"
        #: The values logged last, by name (tensors; ``float(v)`` reads one).
        self.last_norms: dict[str, Tensor] = {}

    def on_before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Optimizer) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        step = trainer.global_step
        if (step + 1) % every:
            return
        values = named_grad_norms(system, self.norm_type)
        if not values:
            return
        self.last_norms = values
        log_step_values(trainer, values, step, every)


def positive_norm(norm_type: float | int | str, caller: str) -> float:
    """``norm_type`` as a float > 0 (``"inf"`` too); ``ValueError`` naming ``caller`` otherwise."""
    try:
        norm = float(norm_type)
    except (TypeError, ValueError):
        norm = math.nan
    if not norm > 0:
        raise ValueError(f"{caller}(norm_type={norm_type!r}): expected a positive number or 'inf'.")
    return norm


def named_grad_norms(module: torch.nn.Module, norm_type: float, separator: str = "/") -> dict[str, Tensor]:
    """``grad_{p}_norm<separator><name>`` for each parameter of ``module`` with a gradient and
    ``grad_{p}_norm_total`` (``p`` as a float: ``2.0``, ``inf``), as tensors; empty without gradients."""
    named = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return {}
    norms, total = grad_norms([g for _, g in named], norm_type)
    prefix = f"grad_{norm_type}_norm"
    out = {f"{prefix}{separator}{name}": n for (name, _), n in zip(named, norms)}
    out[f"{prefix}_total"] = total
    return out


def grad_norms(grads: list[Tensor], norm_type: float = 2.0) -> tuple[list[Tensor], Tensor]:
    """The ``norm_type``-norm of each tensor (float32, on its device) and the norm of those norms
    (on the first tensor's device), as ``torch.nn.utils.clip_grad_norm_`` computes them; no host sync."""
    by_device: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    dense = [g.coalesce().values() if g.is_sparse else g for g in grads]
    for i, g in enumerate(dense):
        by_device.setdefault((g.device, g.dtype), []).append(i)
    norms: list[Tensor] = [torch.empty(0)] * len(dense)
    for indices in by_device.values():
        for i, n in zip(indices, torch._foreach_norm([dense[i] for i in indices], norm_type)):
            norms[i] = n.float()
    first = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), norm_type)
    return norms, total


def log_step_values(trainer: Trainer, values: dict[str, Any], step: int, every: int) -> None:
    """Log ``values`` (tensors or numbers) for the optimizer step ``step``.

    When ``every`` is a multiple of the trainer's ``log_every_n_steps`` they are logged with the
    system's ``self.log`` (as a callback logs, in Lightning too: ``pl_module.log``), for this step
    only: the trainer sends them with its own values for that step, converting them with the same
    single device wait. Otherwise they are sent to the loggers now, under ``step``.
    """
    if every % trainer.log_every_n_steps == 0:
        system = trainer.lightning_module
        assert system is not None, "called from a training hook: the trainer has its system"
        for name, value in values.items():
            system.log(name, value, on_step=True, on_epoch=False, add_dataloader_idx=False)
    else:
        trainer.metrics.send(dict(values), step)  # host sync (for tensors on an accelerator)
