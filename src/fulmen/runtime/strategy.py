"""Strategies: where the system runs and how a step reaches the hardware.

The loops call only these methods, never ``isinstance(strategy, ...)``: ``SingleDeviceStrategy``
(one process, one device) here, ``DDPStrategy`` (``fulmen.runtime.ddp``) and ``FSDPStrategy``
(``fulmen.runtime.fsdp``) implement the same interface over ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fulmen.checkpoint.background import CheckpointIO
from fulmen.runtime.precision import Precision


class Strategy:
    """The interface the Trainer uses to reach hardware."""

    name = "single_device"
    world_size = 1
    global_rank = 0
    local_rank = 0
    node_rank = 0
    num_nodes = 1
    #: How checkpoint files are written: now (``CheckpointIO``, the default) or in the background
    #: (``AsyncCheckpointIO``, from ``Trainer(checkpoint_io=...)``).
    checkpoint_io: CheckpointIO = CheckpointIO()

    def __init__(self, device: torch.device, precision: Precision) -> None:
        self.root_device = device
        self.precision = precision

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def launches_processes(self) -> bool:
        """True when the Trainer's entry points (``fit``, ``validate``, ...) run in processes this
        strategy starts from here (``ddp_spawn`` / ``ddp_fork``): this process waits and takes rank
        0's results. False when the run happens in this process (one device; DDP started by
        fulmen's launcher, torchrun or SLURM, where this process is one of the ranks)."""
        return False

    def setup_environment(self) -> None:
        """Before a run: start processes and join the process group (nothing for one process)."""

    def setup_module(self, module: nn.Module) -> nn.Module:
        return self.precision.convert_module(module).to(self.root_device)

    def training_step_function(self, system: nn.Module) -> Callable[..., Any]:
        """What the training loop calls as ``training_step(batch, batch_idx)``: the system's own
        method here; distributed strategies route it through their wrapper (e.g. DDP)."""
        return system.training_step  # type: ignore[return-value]

    def grad_sync_function(self) -> Callable[[bool], None] | None:
        """A setter for gradient synchronisation before each micro-batch under gradient
        accumulation (``False``: keep gradients local), or None when there is nothing to sync."""
        return None

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``num_replicas`` and ``rank`` for splitting the data between processes; None for one process."""
        return None

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(loss, *args, **kwargs)

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

    # -- checkpoint state (what a checkpoint holds of the model and the optimizers) -----------------
    # Called on every process: a sharding strategy (FSDP) gathers or scatters here, so these are
    # collectives there. The defaults are the modules' own ``state_dict``/``load_state_dict``.
    def model_state_dict(self, system: nn.Module) -> dict[str, Any]:
        """The weights to put in a checkpoint (the system's ``state_dict``)."""
        return system.state_dict()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state to put in a checkpoint (torch's format, parameters by index)."""
        return optimizer.state_dict()

    def load_model_state_dict(self, system: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        """Load checkpoint weights (as ``model_state_dict`` returns them) into ``system``."""
        system.load_state_dict(state, strict=strict)

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a checkpoint's optimizer state (as ``optimizer_state_dict`` returns it)."""
        optimizer.load_state_dict(state)

    # -- checkpoint files --------------------------------------------------------------------------
    def save_checkpoint(
        self,
        ckpt: dict[str, Any],
        filepath: str | os.PathLike[str],
        *,
        audit_dir: str | os.PathLike[str] | None = None,
        metrics: Mapping[str, Any] | None = None,
        position: Any = None,
    ) -> None:
        """Write ``ckpt`` (called on every process): rank 0 writes the file (digest, atomic durable
        write, audit-log entry) through ``checkpoint_io``; with synchronous writes the others wait
        at a barrier so nobody reads it half-written (asynchronous writes are waited for when the
        run ends). ``position`` identifies the loop position (saves at one position share a snapshot)."""
        io = self.checkpoint_io
        if self.is_global_zero:
            io.save(ckpt, filepath, audit_dir=audit_dir, metrics=metrics, position=position)
        if not io.asynchronous:
            self.barrier("save_checkpoint")

    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
        """Read a checkpoint (safe loading, digest checked); sharding strategies also read folders."""
        from fulmen.checkpoint.io import load_checkpoint

        return load_checkpoint(path, map_location=map_location)

    # -- collectives (trivial for one process) -----------------------------------------------------
    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def reduce(self, tensor: Tensor, reduce_op: str = "mean") -> Tensor:
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor.unsqueeze(0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def teardown(self) -> None: ...


class SingleDeviceStrategy(Strategy):
    """One process, one device (CPU, one CUDA GPU or MPS)."""
