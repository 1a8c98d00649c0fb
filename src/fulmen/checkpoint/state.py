"""What goes into a checkpoint: plain containers, tensors, numbers and strings only."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

import torch

from fulmen._hparams import plain_hparams
from fulmen.checkpoint.io import CHECKPOINT_FORMAT

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def build_checkpoint(trainer: Trainer, system: System, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict; ``torch.load(path, weights_only=True)`` reads it back.

    ``weights_only`` leaves out the optimizer, scheduler and callback states (a smaller file for
    inference or sharing).
    """
    from fulmen import __version__

    strategy = trainer.strategy
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "fulmen_version": __version__,
        "torch_version": str(torch.__version__),
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        # torch.compile'd submodules add "_orig_mod." to their keys; the checkpoint keeps the
        # plain names so it loads into an uncompiled system (load_from_checkpoint, inference).
        # The strategy decides how the weights are collected (FSDP gathers its shards here, on every
        # process; the default is system.state_dict()).
        "state_dict": {k.replace("._orig_mod", ""): v for k, v in strategy.model_state_dict(system).items()},
        "hyper_parameters": plain_hparams(system.hparams, "system"),
    }
    if trainer.datamodule is not None and trainer.datamodule.hparams:
        ckpt["datamodule_hyper_parameters"] = plain_hparams(trainer.datamodule.hparams, "datamodule")
    # Hyperparameters saved from one dict argument (save_hyperparameters(config)): the argument's
    # name, under Lightning's keys, so load_from_checkpoint passes them back as that argument.
    for owner, key in ((system, "hparams_name"), (trainer.datamodule, "datamodule_hparams_name")):
        name = getattr(owner, "_hparams_name", None) if owner is not None else None
        if name not in (None, "kwargs") and owner.hparams:
            ckpt[key] = name
    if not weights_only:
        ckpt["optimizer_states"] = [strategy.optimizer_state_dict(opt) for opt in trainer.optimizers]
        ckpt["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        ckpt["precision"] = trainer.strategy.precision.state_dict()
        ckpt["callbacks"] = callback_states(trainer.callbacks)
        if trainer.datamodule is not None:
            ckpt["datamodule"] = trainer.datamodule.state_dict()
        ckpt.update(_run_position(trainer, system))
    if trainer.rules.lightning:  # Lightning's keys beside fulmen's, so Lightning loads the file too
        from fulmen.checkpoint.lightning_format import add_lightning_keys

        add_lightning_keys(ckpt, trainer, system)
    if not weights_only:
        assert trainer._hooks is not None
        trainer._hooks.call("on_save_checkpoint", ckpt)
    else:
        system.on_save_checkpoint(ckpt)
    return plain_data(ckpt)


def _run_position(trainer: Trainer, system: System) -> dict[str, Any]:
    """What a full checkpoint records beside the states, so that a resume goes on exactly: the
    loop's position (``trainer.loop.state_dict()``, with Lightning's loop entries under its rules),
    the random number generators, gradients of an unfinished accumulation group, the metrics, the
    loggers' positions and rows not yet sent, and every process's own part of these."""
    from fulmen.loggers._positions import checkpoint_logs
    from fulmen.seed import RNGState
    from fulmen.trainer._resume import loader_generators, loop_state, pending_gradients

    out: dict[str, Any] = {
        "loops": loop_state(trainer),
        "optimizer_types": [type(opt).__qualname__ for opt in trainer.optimizers],
        "rng": RNGState(loader_generators(trainer.train_dataloader)).state_dict(),
        "pending_gradients": pending_gradients(trainer, system),  # (inside an accumulation group)
        "callback_metrics": {  # (float32 values as the numbers logged: 0.3, not 0.30000001192092896)
            k: metric_number(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
        },  # host sync: a checkpoint is written rarely
        "logger_versions": [lg.version for lg in trainer.loggers],
        "logs": checkpoint_logs(trainer),  # where each logger is, and the rows due but not yet sent
        "world_size": trainer.world_size,
    }
    if trainer.world_size > 1:  # every process's own random numbers and local gradients
        from fulmen.trainer._resume import rank_state

        out["ranks"] = trainer.strategy.all_gather_object(rank_state(out))
    return out


def plain_data(value: Any) -> Any:
    """``value`` with NumPy scalars (and 0-d arrays) turned into Python numbers, recursively.

    A learning rate that came from NumPy (``np.logspace(...)[i]``) ends up in optimizer and
    scheduler states as a NumPy scalar, which ``torch.load(weights_only=True)`` refuses: the
    checkpoint could not be loaded. Containers are rebuilt only where something changed.
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    if type(value) in (dict,) or (isinstance(value, dict) and type(value).__module__ == "collections"):
        items = {k: plain_data(v) for k, v in value.items()}
        if all(items[k] is value[k] for k in value):
            return value
        out = value.copy()
        out.update(items)
        return out
    if type(value) in (list, tuple):
        parts = [plain_data(v) for v in value]
        return value if all(a is b for a, b in zip(parts, value)) else type(value)(parts)
    return value


def callback_states(callbacks: Any) -> dict[str, Any]:
    """Each callback's state under its ``state_key``; a key used again gets ``#1``, ``#2``, ...
    in list order, so two callbacks of one class keep separate states."""
    out: dict[str, Any] = {}
    for cb in callbacks:
        key, n = cb.state_key, 0
        while key in out:
            n += 1
            key = f"{cb.state_key}#{n}"
        out[key] = cb.state_dict()
    return out


_SHORT_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def metric_number(value: Any) -> float:
    """A one-element metric as a Python float. A float32 (or 16-bit) value becomes the shortest
    decimal that names the same float32 (``0.3``, not ``0.30000001192092896``), so a recorded
    metric compares equal to the number that was logged and turns back into the same tensor; the
    order of values is unchanged. One host read for a tensor."""
    if isinstance(value, torch.Tensor):
        number = float(value.item())
        if value.dtype in _SHORT_FLOATS and math.isfinite(number):
            return shortest_float32(number)
        return number
    return float(value)


def shortest_float32(x: float) -> float:
    """The float with the fewest significant digits that rounds to the same float32 as ``x``."""
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        try:
            if struct.unpack("<f", struct.pack("<f", candidate))[0] == x:
                return candidate
        except OverflowError:
            continue
    return x

