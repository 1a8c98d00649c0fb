"""From the Trainer's flags (``accelerator``, ``devices``, ``num_nodes``, ``strategy``,
``precision``, ``sync_batchnorm``) to the one ``Strategy`` object the loops talk to."""

from __future__ import annotations

from typing import Any

import torch

from fulmen.errors import FlagError
from fulmen.runtime.accelerator import resolve_accelerator
from fulmen.runtime.environment import detect
from fulmen.runtime.precision import resolve_precision
from fulmen.runtime.strategy import SingleDeviceStrategy, Strategy

STRATEGIES = ("auto", "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp")


def parse_devices(accelerator: str, devices: Any, managed_local_world: int | None) -> list[int]:
    """The device indices this node uses (one process each); CPU processes count as ``[0, 1, ...]``.

    ``"auto"``: under a launcher, one per process it started on this node; otherwise every CUDA
    GPU, or one CPU process. ``-1``: every GPU (one process on CPU). An int N: N devices (the first
    N GPUs). A list, or a string such as ``"0,2"``: those GPU indices.
    """
    available = torch.cuda.device_count() if accelerator == "cuda" else 1
    original = devices
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            devices = "auto"
        elif text.lstrip("-").isdigit():
            devices = int(text)
        elif all(p.strip().isdigit() for p in text.split(",") if p.strip()) and text.strip(","):
            devices = [int(p) for p in text.split(",") if p.strip()]
        else:
            devices = None
    if devices == "auto":
        if managed_local_world is not None:
            count = managed_local_world
        else:
            count = available if accelerator == "cuda" else 1
        return list(range(count))
    if isinstance(devices, bool) or devices is None:
        pass
    elif isinstance(devices, int):
        if devices == -1:
            return list(range(available))
        if devices >= 1:
            if accelerator in ("cuda", "mps") and devices > available:
                raise FlagError(
                    f"Trainer(devices={original!r}): asked for {devices} {accelerator} devices, but {available} "
                    f"{'is' if available == 1 else 'are'} available here. Use devices<={available} or -1 for all."
                )
            return list(range(devices))
    elif isinstance(devices, (list, tuple)) and devices and all(isinstance(d, int) and not isinstance(d, bool) for d in devices):
        if accelerator == "cpu":
            if len(devices) == 1:
                return [0]
            raise FlagError(
                f"Trainer(accelerator='cpu', devices={original!r}): CPU processes have no indices; pass the number "
                f"of processes instead, e.g. devices={len(devices)}."
            )
        bad = [d for d in devices if not 0 <= d < available]
        if bad:
            raise FlagError(
                f"Trainer(devices={original!r}): there is no {accelerator} device {bad[0]}; {available} available "
                f"(indices 0..{available - 1})."
            )
        if len(set(devices)) != len(devices):
            raise FlagError(f"Trainer(devices={original!r}): a device index appears twice.")
        return list(devices)
    raise FlagError(
        f"Trainer(devices={original!r}): expected 'auto', a positive int (how many devices), -1 (all), or a list of "
        f"device indices such as [0, 1]."
    )


def build_strategy(
    accelerator: str,
    strategy: Any,
    devices: Any,
    num_nodes: int,
    precision: Any,
    sync_batchnorm: bool,
) -> Strategy:
    acc = resolve_accelerator(accelerator)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise FlagError(f"Trainer(num_nodes={num_nodes!r}): expected a positive int (the number of machines).")
    if not isinstance(sync_batchnorm, bool):
        raise FlagError(f"Trainer(sync_batchnorm={sync_batchnorm!r}): expected True or False.")
    env = detect()
    device_ids = parse_devices(acc, devices, env.local_world_size if env.managed else None)
    prec = resolve_precision(precision, acc)
    if isinstance(strategy, Strategy):
        chosen = strategy
    elif isinstance(strategy, str) and strategy.lower() in STRATEGIES:
        name = strategy.lower()
        if name == "auto":
            many = len(device_ids) * num_nodes > 1 or (env.managed and env.world_size > 1)
            name = "ddp" if many else "single_device"
        chosen = _named(name)
    else:
        raise FlagError(
            f"Trainer(strategy={strategy!r}): expected one of {', '.join(map(repr, STRATEGIES))}, or a strategy object "
            f"such as fulmen.DDPStrategy(...) or fulmen.FSDPStrategy(...)."
        )
    if isinstance(chosen, SingleDeviceStrategy) or type(chosen) is Strategy:
        if len(device_ids) * num_nodes > 1:
            raise FlagError(
                f"Trainer(strategy='single_device') runs one process, but devices={devices!r}, num_nodes={num_nodes} "
                f"ask for {len(device_ids) * num_nodes}. Use strategy='ddp' (or 'auto')."
            )
        index = device_ids[0] if device_ids else 0
        device = torch.device("cpu") if acc == "cpu" else torch.device(acc, index)
        chosen.root_device, chosen.precision = device, prec
        return chosen
    connect = getattr(chosen, "connect", None)
    if connect is None:
        raise FlagError(f"Trainer(strategy={type(chosen).__name__}(...)): this strategy cannot be configured by the Trainer.")
    connect(acc, device_ids, num_nodes, prec, sync_batchnorm)
    return chosen


def _named(name: str) -> Strategy:
    if name == "single_device":
        from fulmen.runtime.precision import Precision

        return SingleDeviceStrategy(torch.device("cpu"), Precision())
    if name in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        from fulmen.runtime.ddp import DDPStrategy

        method = {"ddp": "popen", "ddp_spawn": "spawn"}.get(name, "fork")
        return DDPStrategy(start_method=method)
    from fulmen.runtime.fsdp import FSDPStrategy

    return FSDPStrategy()
