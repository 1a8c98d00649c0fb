"""``lightning.pytorch.utilities``: the rank-zero helpers, ``grad_norm``, ``AttributeDict`` (what
``self.hparams`` is) and the enums ``GradClipAlgorithmType`` / ``LightningEnum``."""

from __future__ import annotations

import torch

from fulmen._hparams import AttributeDict
from fulmen.lightning.utilities.enums import GradClipAlgorithmType, LightningEnum
from fulmen.lightning.utilities.rank_zero import (
    rank_zero_debug,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)

__all__ = [
    "AttributeDict",
    "GradClipAlgorithmType",
    "LightningEnum",
    "grad_norm",
    "rank_zero_debug",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
]


def grad_norm(
    module: torch.nn.Module, norm_type: float | int | str, group_separator: str = "/"
) -> dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, ``grad_{p}_norm/<name>``, and of all
    of them together, ``grad_{p}_norm_total`` (``p`` as a float: ``2.0``, ``inf``), as tensors (no
    wait for the device). Parameters without a gradient are left out; no gradient at all gives
    an empty dict. Typically logged from ``on_before_optimizer_step`` with ``self.log_dict``."""
    from fulmen.callbacks.gradient_monitor import named_grad_norms, positive_norm

    return named_grad_norms(module, positive_norm(norm_type, "grad_norm"), group_separator)
