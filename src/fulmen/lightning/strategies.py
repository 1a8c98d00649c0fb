"""``lightning.pytorch.strategies``: ``DDPStrategy`` and ``FSDPStrategy`` with Lightning's signatures,
on ``fulmen.DDPStrategy`` / ``fulmen.FSDPStrategy`` (torch's ``fully_shard``); ``Strategy`` and
``SingleDeviceStrategy`` are fulmen's own (the base class every trainer's ``trainer.strategy``
derives from, and the one-device strategy).

Lightning's plumbing arguments (``accelerator``, ``parallel_devices``, ``cluster_environment``,
``checkpoint_io``, ``precision_plugin``, DDP communication hooks, model averaging, activation
checkpointing, ``device_mesh``) are refused with a message naming them: fulmen picks devices,
launch environment and precision from the Trainer's flags.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from fulmen.runtime.ddp import DDPStrategy as _DDPStrategy
from fulmen.runtime.fsdp import FSDPStrategy as _FSDPStrategy
from fulmen.runtime.strategy import SingleDeviceStrategy, Strategy

__all__ = ["DDPStrategy", "FSDPStrategy", "SingleDeviceStrategy", "Strategy"]

_TIMEOUT = datetime.timedelta(seconds=1800)
_PLUMBING = (
    "accelerator",
    "parallel_devices",
    "cluster_environment",
    "checkpoint_io",
    "precision_plugin",
)


def _refuse(cls: str, given: Mapping[str, Any], advice: str) -> None:
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{cls}({name}=...): not supported by fulmen.lightning; {advice}")


class DDPStrategy(_DDPStrategy):
    """Lightning's ``DDPStrategy(**kwargs)``: keyword arguments such as ``find_unused_parameters``
    or ``static_graph`` go to ``DistributedDataParallel``, as in Lightning."""

    def __init__(
        self,
        accelerator: Any = None,
        parallel_devices: Any = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        ddp_comm_state: Any = None,
        ddp_comm_hook: Any = None,
        ddp_comm_wrapper: Any = None,
        model_averaging_period: Any = None,
        process_group_backend: str | None = None,
        timeout: datetime.timedelta | float = _TIMEOUT,
        start_method: str = "popen",
        **kwargs: Any,
    ) -> None:
        _refuse(
            "DDPStrategy",
            dict(zip(_PLUMBING, (accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin))),
            "choose devices with Trainer(accelerator=..., devices=...) and precision with Trainer(precision=...).",
        )
        _refuse(
            "DDPStrategy",
            {
                "ddp_comm_state": ddp_comm_state,
                "ddp_comm_hook": ddp_comm_hook,
                "ddp_comm_wrapper": ddp_comm_wrapper,
                "model_averaging_period": model_averaging_period,
            },
            "fulmen's DDP uses torch's default all-reduce of the gradients.",
        )
        super().__init__(
            process_group_backend=process_group_backend, timeout=timeout, start_method=start_method, **kwargs
        )


class FSDPStrategy(_FSDPStrategy):
    """Lightning's ``FSDPStrategy``: ``sharding_strategy`` ``"FULL_SHARD"`` (the default) or
    ``"SHARD_GRAD_OP"`` (parameters kept gathered between forward and backward), ``mixed_precision``
    as torch's FSDP ``MixedPrecision`` (or a ``MixedPrecisionPolicy``), ``cpu_offload`` as a bool
    or torch's ``CPUOffload``, ``auto_wrap_policy`` as a set of module classes."""

    def __init__(
        self,
        accelerator: Any = None,
        parallel_devices: Any = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
        timeout: datetime.timedelta | float = _TIMEOUT,
        cpu_offload: Any = None,
        mixed_precision: Any = None,
        auto_wrap_policy: Any = None,
        activation_checkpointing: Any = None,
        activation_checkpointing_policy: Any = None,
        sharding_strategy: Any = "FULL_SHARD",
        state_dict_type: str = "full",
        device_mesh: Any = None,
        **kwargs: Any,
    ) -> None:
        _refuse(
            "FSDPStrategy",
            dict(zip(_PLUMBING, (accelerator, parallel_devices, cluster_environment, checkpoint_io, precision_plugin))),
            "choose devices with Trainer(accelerator=..., devices=...) and precision with Trainer(precision=...).",
        )
        _refuse(
            "FSDPStrategy",
            {
                "activation_checkpointing": activation_checkpointing,
                "activation_checkpointing_policy": activation_checkpointing_policy,
                "device_mesh": device_mesh,
            },
            "wrap the layers with torch.utils.checkpoint in the model yourself, and use one device mesh "
            "over all processes (fulmen's default).",
        )
        if kwargs.pop("use_orig_params", True) is not True:
            raise ValueError("FSDPStrategy(use_orig_params=False): fulmen's FSDP always keeps the original parameters.")
        if kwargs:
            raise ValueError(
                f"FSDPStrategy({', '.join(f'{k}=...' for k in kwargs)}): Lightning passes these to torch's older "
                "FullyShardedDataParallel class; fulmen shards with fully_shard and does not take them. Use "
                "fulmen.FSDPStrategy(**fully_shard_kwargs) for fully_shard's own arguments."
            )
        super().__init__(
            auto_wrap_policy=_wrap_policy(auto_wrap_policy),
            mixed_precision=_policy(mixed_precision),
            cpu_offload=_offload(cpu_offload),
            reshard_after_forward=_reshard(sharding_strategy),
            state_dict_type=state_dict_type,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )


def _reshard(strategy: Any) -> bool:
    name = getattr(strategy, "name", strategy)
    if name == "FULL_SHARD":
        return True
    if name == "SHARD_GRAD_OP":
        return False
    raise ValueError(
        f"FSDPStrategy(sharding_strategy={name!r}): fulmen supports 'FULL_SHARD' and 'SHARD_GRAD_OP' (for "
        "'NO_SHARD' use strategy='ddp')."
    )


def _offload(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    offload = getattr(value, "offload_params", None)  # torch.distributed.fsdp.CPUOffload
    if isinstance(offload, bool):
        return offload
    raise ValueError(f"FSDPStrategy(cpu_offload={value!r}): expected True/False or torch's CPUOffload.")


def _policy(value: Any) -> Any:
    """torch's FSDP1 ``MixedPrecision`` becomes the arguments of fully_shard's policy."""
    if value is None or type(value).__name__ != "MixedPrecision":
        return value
    if getattr(value, "buffer_dtype", None) not in (None, getattr(value, "param_dtype", None)):
        raise ValueError(
            "FSDPStrategy(mixed_precision=MixedPrecision(buffer_dtype=...)): fully_shard keeps buffers in their own "
            "dtype; leave buffer_dtype unset or equal to param_dtype."
        )
    return {"param_dtype": value.param_dtype, "reduce_dtype": value.reduce_dtype}


def _wrap_policy(value: Any) -> Any:
    if value is None or isinstance(value, (set, frozenset, list, tuple)):
        return value
    raise ValueError(
        f"FSDPStrategy(auto_wrap_policy={value!r}): fulmen.lightning takes a set of module classes to shard "
        "separately, e.g. {nn.TransformerEncoderLayer} (torch's FSDP1 policy functions do not apply to fully_shard)."
    )
