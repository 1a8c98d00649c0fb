"""What ``training_step`` returned: finding the loss in it, checking it, and reporting NaN/inf."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.errors import HookReturnError, NonFiniteLossError
from fulmen.logging._store import first_nonfinite

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def loss_of(out: Any, system: System) -> Tensor | None:
    """The loss inside ``training_step``'s return value (a dict with "loss", or None to skip)."""
    if out is None:
        return None
    if isinstance(out, Tensor):  # a Tensor subclass (the loop's fast path takes plain tensors)
        return out
    if isinstance(out, dict):
        if "loss" not in out:
            raise HookReturnError(
                f"{type(system).__name__}.training_step returned a dict without a 'loss' key (keys: "
                f"{sorted(map(str, out))}). Put the loss to optimize under 'loss'."
            )
        loss = out["loss"]
        if isinstance(loss, Tensor):
            return loss
        got = type(loss).__name__
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned {{'loss': <{got}>}}; the loss must be a scalar tensor "
            f"that requires grad, computed from the model's outputs."
        )
    raise HookReturnError(
        f"{type(system).__name__}.training_step returned {type(out).__name__}; expected a scalar loss tensor, a dict "
        f"with a 'loss' key, or None to skip the batch."
    )


def check_loss(loss: Tensor, system: System) -> Tensor:
    """A loss that is not a 0-d tensor requiring grad: fixed (one element) or refused."""
    if loss.numel() != 1:
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned a loss of shape {tuple(loss.shape)}; it must be a scalar. "
            f"Reduce it first, e.g. loss.mean()."
        )
    if not loss.requires_grad:
        raise HookReturnError(
            f"{type(system).__name__}.training_step returned a loss that does not require grad, so there is nothing "
            f"to backpropagate. Compute it from the model's outputs (not under torch.no_grad(), and not with "
            f".item() or .detach())."
        )
    return loss.reshape(())


def check_window(trainer: Trainer, losses: list[Tensor], where: list[tuple[int, int]]) -> None:
    """Raise if a loss in this window was NaN/inf, naming its step and batch; then clear the window.

    ``where`` holds (global step, batch index) of each loss.
    """
    bad = first_nonfinite(losses)  # host sync, once per log window
    if bad is not None:
        step, batch_idx = where[bad]
        raise_nonfinite(trainer, losses[bad], step, batch_idx, window=True)
    losses.clear()
    where.clear()


def raise_nonfinite(
    trainer: Trainer, loss: Tensor, step: int, batch_idx: int, window: bool = False, batch: Any = None
) -> None:
    """Raise ``NonFiniteLossError`` for a NaN/inf loss at ``step`` / ``batch_idx``.

    With ``batch`` (the CPU path, which checks each loss at once) and one process, the batch is
    re-run once, with forward hooks, to name the first module whose output was non-finite (see
    ``fulmen.callbacks.nonfinite.first_nonfinite_module``); only here, so a healthy run pays nothing.
    """
    how = (
        f" (On an accelerator, losses are checked every log_every_n_steps={trainer.config.log_every_n_steps} steps, "
        f"so training does not wait on the device each step; fulmen.callbacks.NonFiniteGuard checks every "
        f"step's gradients and names the first module whose output went non-finite.)"
        if window
        else ""
    )
    origin = ""
    system = trainer.system
    # Only with one process: this process alone found the NaN, and a re-run of a forward that
    # talks to the others (FSDP, SyncBatchNorm) would wait for them forever.
    if batch is not None and system is not None and trainer.world_size == 1:
        from fulmen.callbacks.nonfinite import first_nonfinite_module

        origin = " " + first_nonfinite_module(system, batch, batch_idx).describe("loss")
    raise NonFiniteLossError(
        f"training_step returned a non-finite loss ({float(loss.item())}) at global step {step} (epoch "
        f"{trainer.current_epoch}, batch {batch_idx}).{origin} Common causes: a learning rate that is too high, "
        f"NaN or inf in the input data, or log/division of values that can be zero.{how}"
    )
