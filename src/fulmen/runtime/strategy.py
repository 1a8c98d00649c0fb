"""Strategies: where the system runs and how a step reaches the hardware.

The loops call only these methods, never ``isinstance(strategy, ...)``. One process on one
device is the only strategy so far; distributed strategies implement the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fulmen.runtime.precision import Precision


class Strategy:
    """The interface the Trainer uses to reach hardware."""

    world_size = 1
    global_rank = 0
    local_rank = 0
    node_rank = 0

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.root_device = device
        self.precision = precision

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def setup_module(self, module: nn.Module) -> nn.Module:
        return self.precision.convert_module(module).to(self.root_device)

    def backward(self, loss: Tensor) -> None:
        self.precision.backward(loss)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> Any:
        return self.precision.optimizer_step(optimizer)

    def step_functions(self, optimizer: torch.optim.Optimizer) -> tuple[Callable[[Tensor], Any], Callable[[], Any]]:
        """``(backward(loss), step())`` bound once per epoch for the training loop's hot path."""
        return self.precision.step_functions(optimizer)

    @property
    def host_reads_are_cheap(self) -> bool:
        """True when reading a tensor's value costs no device synchronisation (CPU): the loop
        then checks each loss at once instead of batching the checks."""
        return self.root_device.type == "cpu"

    # -- collectives (trivial for one process) -----------------------------------------------------
    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, tensor: Tensor, reduce_op: str = "mean") -> Tensor:
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor.unsqueeze(0)

    def teardown(self) -> None: ...


class SingleDeviceStrategy(Strategy):
    """One process, one device (CPU, one CUDA GPU or MPS)."""
