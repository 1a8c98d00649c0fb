"""Up-front checks of the Trainer's flags: each message names the flag, the value and the fix.

Everything is checked when the Trainer is built, before any data is loaded or process started.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from fulmen.errors import FlagError

_INF = math.inf


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop flags, checked and resolved (``fast_dev_run`` and ``overfit_batches`` applied)."""

    max_epochs: int  # -1: no epoch limit
    default_max_epochs: bool  # max_epochs was not given: 1000, with a warning when fit starts
    min_epochs: int
    max_steps: int  # -1: no step limit
    min_steps: int
    max_time: float | None  # seconds
    limit_train_batches: int | float
    limit_val_batches: int | float
    limit_test_batches: int | float
    limit_predict_batches: int | float
    val_check_interval: int | float
    check_val_every_n_epoch: int | None
    num_sanity_val_steps: int | float  # inf: all
    log_every_n_steps: int
    fast_dev_run: int  # 0: off
    overfit_batches: int | float
    inference_mode: bool
    deterministic: bool | str  # True, False or "warn"
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: str
    reload_dataloaders_every_n_epochs: int
    detect_anomaly: bool = False
    #: ``val_check_interval`` given as a duration ('DD:HH:MM:SS', a dict, a timedelta): validate
    #: after the first batch that ends this many seconds after the last validation (or the start
    #: of training). None: validation is scheduled by batches.
    val_check_time: float | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(name: str, value: Any, minimum: int, allow_none: bool = False, extra: str = "") -> None:
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        raise FlagError(
            f"Trainer({name}={value!r}): expected an int >= {minimum}{' or None' if allow_none else ''}{extra}."
        )


def check_limit(name: str, value: Any) -> int | float:
    """``limit_*_batches``: an int (batches) or a float fraction in [0.0, 1.0]; None means the
    default, 1.0 (all batches), as in Lightning."""
    if value is None:
        return 1.0
    if _is_int(value) and value >= 0:
        return value
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return value
    if isinstance(value, float) and value > 1.0:
        raise FlagError(
            f"Trainer({name}={value!r}): a float is a fraction of the dataloader and must be between 0.0 and 1.0. "
            f"To run a number of batches, pass an int (e.g. {name}={int(value)})."
        )
    raise FlagError(
        f"Trainer({name}={value!r}): expected an int >= 0 (a number of batches) or a float between 0.0 and 1.0 "
        f"(a fraction of the dataloader)."
    )


_TIME_RE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def parse_max_time(value: Any, flag: str = "max_time") -> float | None:
    """``max_time`` (or another duration ``flag``) as seconds: ``"DD:HH:MM:SS"``, a dict of
    timedelta arguments, or a timedelta."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, Mapping):
        try:
            seconds = datetime.timedelta(**value).total_seconds()
        except TypeError as err:
            raise FlagError(
                f"Trainer({flag}={dict(value)!r}): the dict's keys must be timedelta arguments "
                f"(days, hours, minutes, seconds): {err}."
            ) from err
    elif isinstance(value, str) and (m := _TIME_RE.match(value.strip())):
        d, h, mi, s = map(int, m.groups())
        seconds = datetime.timedelta(days=d, hours=h, minutes=mi, seconds=s).total_seconds()
    else:
        raise FlagError(
            f"Trainer({flag}={value!r}): expected a string 'DD:HH:MM:SS' (e.g. '00:12:00:00' for 12 hours), "
            f"a dict such as {{'hours': 12}}, or a datetime.timedelta."
        )
    if seconds <= 0:
        what = "time limit" if flag == "max_time" else "interval"
        raise FlagError(f"Trainer({flag}={value!r}): the {what} must be positive.")
    return seconds


def build_loop_config(
    *,
    max_epochs: Any,
    min_epochs: Any,
    max_steps: Any,
    min_steps: Any,
    max_time: Any,
    limit_train_batches: Any,
    limit_val_batches: Any,
    limit_test_batches: Any,
    limit_predict_batches: Any,
    val_check_interval: Any,
    check_val_every_n_epoch: Any,
    num_sanity_val_steps: Any,
    log_every_n_steps: Any,
    fast_dev_run: Any,
    overfit_batches: Any,
    inference_mode: Any,
    deterministic: Any,
    accumulate_grad_batches: Any = 1,
    gradient_clip_val: Any = None,
    gradient_clip_algorithm: Any = None,
    reload_dataloaders_every_n_epochs: Any = 0,
    detect_anomaly: Any = False,
) -> LoopConfig:
    check_int("max_epochs", max_epochs, -1, allow_none=True, extra=" (-1 for no limit)")
    check_int("min_epochs", min_epochs, 0, allow_none=True)
    check_int("max_steps", max_steps, -1, extra=" (-1 for no limit)")
    check_int("min_steps", min_steps, 0, allow_none=True)
    if max_epochs == 0 and not fast_dev_run:
        raise FlagError(
            "Trainer(max_epochs=0): no epoch would run, so fit would train nothing. Expected an int >= 1, or -1 "
            "for no limit; to only evaluate, call trainer.validate(system, ...) instead."
        )
    if max_steps == 0 and not fast_dev_run:
        raise FlagError(
            "Trainer(max_steps=0): no optimizer step would run, so fit would train nothing. Expected an int >= 1, "
            "or -1 for no limit; to only evaluate, call trainer.validate(system, ...) instead."
        )
    for low, high, lo_v, hi_v in (
        ("min_epochs", "max_epochs", min_epochs, max_epochs),
        ("min_steps", "max_steps", min_steps, max_steps),
    ):
        if lo_v is not None and hi_v is not None and hi_v != -1 and lo_v > hi_v:
            raise FlagError(
                f"Trainer({low}={lo_v}, {high}={hi_v}): {low} is more than {high}, so the run would stop at "
                f"{high} before reaching {low}. Lower {low} or raise {high}."
            )
    max_time_s = parse_max_time(max_time)
    limits = {
        "limit_train_batches": check_limit("limit_train_batches", limit_train_batches),
        "limit_val_batches": check_limit("limit_val_batches", limit_val_batches),
        "limit_test_batches": check_limit("limit_test_batches", limit_test_batches),
        "limit_predict_batches": check_limit("limit_predict_batches", limit_predict_batches),
    }
    val_check_time = None
    if isinstance(val_check_interval, (str, Mapping, datetime.timedelta)):  # a duration
        val_check_time = parse_max_time(val_check_interval, "val_check_interval")
        val_check_interval = 1.0
    elif _is_int(val_check_interval):
        if val_check_interval < 1:
            raise FlagError(
                f"Trainer(val_check_interval={val_check_interval!r}): an int is a number of training batches "
                f"and must be >= 1."
            )
    elif not (isinstance(val_check_interval, float) and 0.0 < val_check_interval <= 1.0):
        raise FlagError(
            f"Trainer(val_check_interval={val_check_interval!r}): expected a float in (0.0, 1.0] (a fraction of "
            f"the training epoch), an int >= 1 (a number of training batches), or a duration ('DD:HH:MM:SS', "
            f"a dict such as {{'minutes': 30}}, or a datetime.timedelta)."
        )
    check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1, allow_none=True)
    if check_val_every_n_epoch is None and val_check_time is None and not _is_int(val_check_interval):
        raise FlagError(
            f"Trainer(check_val_every_n_epoch=None, val_check_interval={val_check_interval!r}): with "
            f"check_val_every_n_epoch=None validation is scheduled by training batches across epochs, so "
            f"val_check_interval must be an int. In Lightning's words: `val_check_interval` should be an "
            f"integer or a time-based duration (str 'DD:HH:MM:SS', datetime.timedelta, or dict kwargs for "
            f"timedelta) when `check_val_every_n_epoch=None`."
        )
    check_int("num_sanity_val_steps", num_sanity_val_steps, -1, extra=" (-1 for all batches)")
    check_int("log_every_n_steps", log_every_n_steps, 1)
    if isinstance(fast_dev_run, bool):
        fdr = int(fast_dev_run)
    elif _is_int(fast_dev_run) and fast_dev_run >= 0:
        fdr = fast_dev_run
    else:
        raise FlagError(f"Trainer(fast_dev_run={fast_dev_run!r}): expected True, False or an int >= 0.")
    overfit = check_limit("overfit_batches", overfit_batches)
    if deterministic is None:  # (Lightning's default: leave torch's setting alone, as False does)
        deterministic = False
    if isinstance(deterministic, str) and deterministic == "warn":
        pass  # deterministic algorithms, torch warning (not raising) where an op has none
    elif not isinstance(deterministic, bool):
        raise FlagError(
            f"Trainer(deterministic={deterministic!r}): expected True or False, or 'warn' (deterministic "
            f"algorithms, with a warning instead of an error for an operation that has no deterministic version)."
        )
    for flag, val in (("inference_mode", inference_mode), ("detect_anomaly", detect_anomaly)):
        if not isinstance(val, bool):
            raise FlagError(f"Trainer({flag}={val!r}): expected True or False.")

    check_int("accumulate_grad_batches", accumulate_grad_batches, 1, extra=" (1: step after every batch)")
    check_int("reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0, extra=" (0: never)")
    clip_algorithm = "norm"
    if gradient_clip_val is not None:
        algorithm = "norm" if gradient_clip_algorithm is None else gradient_clip_algorithm
        clip_algorithm = check_clip(gradient_clip_val, algorithm, "Trainer")
    elif gradient_clip_algorithm is not None:
        clip_algorithm = check_clip(1.0, gradient_clip_algorithm, "Trainer")

    default_max_epochs = False
    if max_epochs is None:
        if max_steps == -1 and max_time_s is None and not fdr:
            max_epochs, default_max_epochs = 1000, True
        else:
            max_epochs = -1
    sanity: int | float = _INF if num_sanity_val_steps == -1 else num_sanity_val_steps
    if overfit:
        limits["limit_train_batches"] = overfit
        limits["limit_val_batches"] = overfit
    if fdr:
        for key in limits:
            limits[key] = fdr
        max_epochs, max_steps, sanity = 1, fdr, 0
        val_check_interval, check_val_every_n_epoch, log_every_n_steps = 1.0, 1, 1
        val_check_time = None  # (a clock has no meaning for a run of a few batches)
    return LoopConfig(
        max_epochs=max_epochs,
        default_max_epochs=default_max_epochs,
        min_epochs=min_epochs or 0,
        max_steps=max_steps,
        min_steps=min_steps or 0,
        max_time=max_time_s,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=check_val_every_n_epoch,
        num_sanity_val_steps=sanity,
        log_every_n_steps=log_every_n_steps,
        fast_dev_run=fdr,
        overfit_batches=overfit,
        inference_mode=inference_mode,
        deterministic=deterministic,
        accumulate_grad_batches=accumulate_grad_batches,
        gradient_clip_val=None if gradient_clip_val is None else float(gradient_clip_val),
        gradient_clip_algorithm=clip_algorithm,
        reload_dataloaders_every_n_epochs=reload_dataloaders_every_n_epochs,
        detect_anomaly=detect_anomaly,
        val_check_time=val_check_time,
        **limits,
    )


def check_clip(value: Any, algorithm: Any, where: str) -> str:
    """A clip value >= 0 and an algorithm ``"norm"`` or ``"value"`` (returned lower-case)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise FlagError(
            f"{where}(gradient_clip_val={value!r}): expected a number >= 0 (the largest gradient norm, or value, "
            f"to allow); None turns clipping off."
        )
    if not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value"):
        raise FlagError(
            f"{where}(gradient_clip_algorithm={algorithm!r}): expected 'norm' (scale all gradients so their total "
            f"2-norm is at most gradient_clip_val) or 'value' (clamp each gradient value)."
        )
    return algorithm.lower()


@functools.cache
def _autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch can autocast to ``dtype`` on ``device_type`` (a torch without support
    warns and turns autocast off, or raises). Probed once per (device type, dtype)."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device_type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type, dtype=dtype):
                try:
                    return bool(torch.is_autocast_enabled(device_type))
                except TypeError:  # an older torch: is_autocast_enabled() takes no device type
                    return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled())
        except (RuntimeError, ValueError, AssertionError):
            return False


def check_precision_supported(precision: Any) -> None:
    """A mixed precision (``16-mixed``, ``bf16-mixed``) needs autocast to its dtype on the run's
    device; checked once when a run starts, so the run does not train silently in float32."""
    dtype = getattr(precision, "autocast_dtype", None)
    device_type = getattr(precision, "device_type", None)
    if dtype is None or device_type is None or _autocast_works(device_type, dtype):
        return
    name = getattr(precision, "name", "?")
    other = "'bf16-mixed' or '32-true'" if name == "16-mixed" else "'32-true'"
    raise FlagError(
        f"Trainer(precision={name!r}) on {device_type}: this torch ({torch.__version__}) cannot autocast to "
        f"{str(dtype).replace('torch.', '')} on the {device_type}, so the run would not use the precision asked for. "
        f"Use precision={other} here, run on a GPU (accelerator='cuda'), or install a newer torch."
    )
