"""Up-front checks of the Trainer's flags: each message names the flag, the value and the fix.

``LoopConfig`` is the one list of the loop flags: each of its flag fields carries the flag's
default and its check (``_flag``). ``Trainer.__init__``'s signature, ``fulmen.lightning``'s
Trainer and the flag table in docs/trainer.md are checked against it by
tests/trainer/test_flag_table.py. Everything is checked when the Trainer is built, before any data
is loaded or process started.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fulmen.errors import FlagError

_INF = math.inf

#: A flag's check: ``check(name, value)`` raises ``FlagError`` for a bad value, else returns the
#: value as the loop keeps it (e.g. ``fast_dev_run=True`` as ``1``, a duration as seconds).
Check = Callable[[str, Any], Any]


def _flag(default: Any, check: Check) -> Any:
    """A ``LoopConfig`` field that is a Trainer flag: ``default`` is the Trainer's default (what
    its signature says) and ``check`` validates a given value."""
    return dataclasses.field(metadata={"default": default, "check": check})


def _derived() -> Any:
    """A ``LoopConfig`` field resolved from the flags, not a flag itself."""
    return dataclasses.field(metadata={})


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


def _int(minimum: int, allow_none: bool = False, extra: str = "") -> Check:
    """The check of an int flag (or None, with ``allow_none``) of at least ``minimum``."""

    def check(name: str, value: Any) -> Any:
        check_int(name, value, minimum, allow_none, extra)
        return value

    return check


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FlagError(f"Trainer({name}={value!r}): expected True or False.")
    return value


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


def _duration(name: str, value: Any) -> float | None:
    return parse_max_time(value, name)


def _val_check_interval(name: str, value: Any) -> Any:
    """A fraction of the epoch, a number of batches, or a duration (returned as a timedelta)."""
    if isinstance(value, (str, Mapping, datetime.timedelta)):  # a duration
        return datetime.timedelta(seconds=parse_max_time(value, name) or 0.0)
    if _is_int(value):
        if value < 1:
            raise FlagError(
                f"Trainer({name}={value!r}): an int is a number of training batches and must be >= 1."
            )
    elif not (isinstance(value, float) and 0.0 < value <= 1.0):
        raise FlagError(
            f"Trainer({name}={value!r}): expected a float in (0.0, 1.0] (a fraction of the training epoch), an "
            f"int >= 1 (a number of training batches), or a duration ('DD:HH:MM:SS', a dict such as "
            f"{{'minutes': 30}}, or a datetime.timedelta)."
        )
    return value


def _fast_dev_run(name: str, value: Any) -> int:
    if isinstance(value, bool) or (_is_int(value) and value >= 0):
        return int(value)
    raise FlagError(f"Trainer({name}={value!r}): expected True, False or an int >= 0.")


def _deterministic(name: str, value: Any) -> bool | str:
    if value is None:  # (Lightning's default: leave torch's setting alone, as False does)
        return False
    if isinstance(value, bool) or (isinstance(value, str) and value == "warn"):
        return value  # "warn": deterministic algorithms, torch warning (not raising) where an op has none
    raise FlagError(
        f"Trainer({name}={value!r}): expected True or False, or 'warn' (deterministic algorithms, with a "
        f"warning instead of an error for an operation that has no deterministic version)."
    )


def _clip_val(name: str, value: Any) -> float | None:
    return None if value is None else check_clip_value(value, "Trainer")


def _clip_algorithm(name: str, value: Any) -> str:
    return "norm" if value is None else check_clip_algorithm(value, "Trainer")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop flags, checked and resolved (``fast_dev_run`` and ``overfit_batches`` applied).

    The one declaration of the Trainer's loop flags: each flag field holds the flag's default
    and check (``_flag``), in the order of ``Trainer.__init__``'s signature; the other Trainer
    flags (devices, loggers, callbacks) are not loop configuration.
    """

    max_epochs: int = _flag(None, _int(-1, allow_none=True, extra=" (-1 for no limit)"))  # -1: no limit
    min_epochs: int = _flag(None, _int(0, allow_none=True))
    max_steps: int = _flag(-1, _int(-1, extra=" (-1 for no limit)"))  # -1: no step limit
    min_steps: int = _flag(None, _int(0, allow_none=True))
    max_time: float | None = _flag(None, _duration)  # seconds
    limit_train_batches: int | float = _flag(1.0, check_limit)
    limit_val_batches: int | float = _flag(1.0, check_limit)
    limit_test_batches: int | float = _flag(1.0, check_limit)
    limit_predict_batches: int | float = _flag(1.0, check_limit)
    overfit_batches: int | float = _flag(0.0, check_limit)
    val_check_interval: int | float = _flag(1.0, _val_check_interval)
    check_val_every_n_epoch: int | None = _flag(1, _int(1, allow_none=True))
    num_sanity_val_steps: int | float = _flag(2, _int(-1, extra=" (-1 for all batches)"))  # inf: all
    log_every_n_steps: int = _flag(50, _int(1))
    fast_dev_run: int = _flag(False, _fast_dev_run)  # 0: off
    deterministic: bool | str = _flag(False, _deterministic)  # True, False or "warn"
    inference_mode: bool = _flag(True, _bool)
    accumulate_grad_batches: int = _flag(1, _int(1, extra=" (1: step after every batch)"))
    gradient_clip_val: float | None = _flag(None, _clip_val)
    gradient_clip_algorithm: str = _flag(None, _clip_algorithm)  # "norm" or "value"
    reload_dataloaders_every_n_epochs: int = _flag(0, _int(0, extra=" (0: never)"))
    detect_anomaly: bool = _flag(False, _bool)
    #: max_epochs was not given: 1000, with a warning when fit starts.
    default_max_epochs: bool = _derived()
    #: ``val_check_interval`` given as a duration ('DD:HH:MM:SS', a dict, a timedelta): validate
    #: after the first batch that ends this many seconds after the last validation (or the start
    #: of training). None: validation is scheduled by batches.
    val_check_time: float | None = _derived()


_FLAG_FIELDS = tuple(f for f in dataclasses.fields(LoopConfig) if "check" in f.metadata)
#: The loop flags and their defaults, in the order of ``Trainer.__init__``'s signature.
LOOP_FLAGS: dict[str, Any] = {f.name: f.metadata["default"] for f in _FLAG_FIELDS}


def build_loop_config(given: Mapping[str, Any]) -> LoopConfig:
    """The ``LoopConfig`` of a Trainer's flags ``given`` (a loop flag not in it takes its default):
    each flag checked by its own check, then the rules between flags, then resolved."""
    flags = {f.name: f.metadata["check"](f.name, given.get(f.name, f.metadata["default"])) for f in _FLAG_FIELDS}
    _check_together(flags)
    return _resolve(flags)


def _check_together(flags: dict[str, Any]) -> None:
    """The rules between flags (each flag is valid on its own)."""
    for flag, what in (("max_epochs", "no epoch"), ("max_steps", "no optimizer step")):
        if flags[flag] == 0 and not flags["fast_dev_run"]:
            raise FlagError(
                f"Trainer({flag}=0): {what} would run, so fit would train nothing. Expected an int >= 1, or -1 "
                f"for no limit; to only evaluate, call trainer.validate(system, ...) instead."
            )
    for low, high in (("min_epochs", "max_epochs"), ("min_steps", "max_steps")):
        lo_v, hi_v = flags[low], flags[high]
        if lo_v is not None and hi_v is not None and hi_v != -1 and lo_v > hi_v:
            raise FlagError(
                f"Trainer({low}={lo_v}, {high}={hi_v}): {low} is more than {high}, so the run would stop at "
                f"{high} before reaching {low}. Lower {low} or raise {high}."
            )
    interval = flags["val_check_interval"]  # (a duration is a timedelta here)
    if flags["check_val_every_n_epoch"] is None and not isinstance(interval, (datetime.timedelta, int)):
        raise FlagError(
            f"Trainer(check_val_every_n_epoch=None, val_check_interval={interval!r}): with "
            f"check_val_every_n_epoch=None validation is scheduled by training batches across epochs, so "
            f"val_check_interval must be an int. In Lightning's words: `val_check_interval` should be an "
            f"integer or a time-based duration (str 'DD:HH:MM:SS', datetime.timedelta, or dict kwargs for "
            f"timedelta) when `check_val_every_n_epoch=None`."
        )


def _resolve(flags: dict[str, Any]) -> LoopConfig:
    """The checked flags as the loop runs them: defaults that depend on other flags, then
    ``overfit_batches`` and ``fast_dev_run`` applied over the flags they replace."""
    flags["default_max_epochs"], flags["val_check_time"] = False, None
    if flags["max_epochs"] is None:
        if flags["max_steps"] == -1 and flags["max_time"] is None and not flags["fast_dev_run"]:
            flags["max_epochs"], flags["default_max_epochs"] = 1000, True
        else:
            flags["max_epochs"] = -1
    flags["min_epochs"] = flags["min_epochs"] or 0
    flags["min_steps"] = flags["min_steps"] or 0
    if isinstance(flags["val_check_interval"], datetime.timedelta):  # a duration
        flags["val_check_time"] = flags["val_check_interval"].total_seconds()
        flags["val_check_interval"] = 1.0
    if flags["num_sanity_val_steps"] == -1:
        flags["num_sanity_val_steps"] = _INF
    limits = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")
    if flags["overfit_batches"]:
        flags["limit_train_batches"] = flags["limit_val_batches"] = flags["overfit_batches"]
    if n := flags["fast_dev_run"]:
        flags.update(dict.fromkeys(limits, n), max_epochs=1, max_steps=n, num_sanity_val_steps=0)
        flags.update(val_check_interval=1.0, check_val_every_n_epoch=1, log_every_n_steps=1)
        flags["val_check_time"] = None  # (a clock has no meaning for a run of a few batches)
    return LoopConfig(**flags)


def check_clip_value(value: Any, where: str) -> float:
    """A clip value: a finite number >= 0 (returned as a float)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise FlagError(
            f"{where}(gradient_clip_val={value!r}): expected a number >= 0 (the largest gradient norm, or value, "
            f"to allow); None turns clipping off."
        )
    return float(value)


def check_clip_algorithm(algorithm: Any, where: str) -> str:
    """A clip algorithm: ``"norm"`` or ``"value"``, any case (returned lower-case)."""
    if not isinstance(algorithm, str) or algorithm.lower() not in ("norm", "value"):
        raise FlagError(
            f"{where}(gradient_clip_algorithm={algorithm!r}): expected 'norm' (scale all gradients so their total "
            f"2-norm is at most gradient_clip_val) or 'value' (clamp each gradient value)."
        )
    return algorithm.lower()


def check_clip(value: Any, algorithm: Any, where: str) -> str:
    """A clip value >= 0 and an algorithm ``"norm"`` or ``"value"`` (returned lower-case)."""
    check_clip_value(value, where)
    return check_clip_algorithm(algorithm, where)


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
