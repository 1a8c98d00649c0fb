"""``ModelCheckpoint``'s argument checks, run by its constructor in this order (the first wrong
argument is the one reported): where and how files are named, what is kept, when it saves, the
on/off flags, and at most one save trigger. Each raises ``ArgumentError`` (a ``ValueError``)
naming the argument, its value and what is expected. Also how ``dirpath`` is taken
(``absolute_folder``, ``is_remote``)."""

from __future__ import annotations

import datetime
import os
from typing import Any

from fulmen.callbacks._filename import checked_template
from fulmen.errors import ArgumentError

MODES = ("min", "max")


def check_names(dirpath: Any, filename: Any) -> None:
    """``dirpath``: a folder path or None; ``filename``: a usable template or None."""
    if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
        raise ArgumentError(f"ModelCheckpoint(dirpath={dirpath!r}): expected a folder path (str or os.PathLike) or None.")
    if filename is not None:
        if not isinstance(filename, str):
            raise ArgumentError(f"ModelCheckpoint(filename={filename!r}): expected a str template such as '{{epoch}}-{{step}}'.")
        checked_template(filename, "filename")


def check_kept(monitor: Any, mode: Any, save_last: Any, save_top_k: Any) -> None:
    """``monitor``, ``mode``, ``save_last``, ``save_top_k`` and whether they go together."""
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ArgumentError(
            f"ModelCheckpoint(monitor={monitor!r}): expected the name of a logged metric, such as 'val_loss', or None."
        )
    if mode not in MODES:
        raise ArgumentError(
            f"ModelCheckpoint(mode={mode!r}): expected 'min' or 'max'; `mode` can be 'min' (lower is better) or "
            f"'max' (higher is better), but got {mode}."
        )
    if save_last not in (None, True, False, "link"):
        raise ArgumentError(f"ModelCheckpoint(save_last={save_last!r}): expected True, False, None or 'link'.")
    if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
        raise ArgumentError(
            f"ModelCheckpoint(save_top_k={save_top_k!r}): expected an int >= -1 (Must be >= -1: -1 keeps every "
            f"checkpoint, 0 none, k the best k)."
        )
    if monitor is None and save_top_k not in (-1, 0, 1):
        raise ArgumentError(
            f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: without a "
            f"monitored metric there is no order to keep the best {save_top_k} by; expected save_top_k 1 (the "
            f"newest), -1 (all) or 0, or pass monitor='<logged metric>'."
        )


def check_schedule(every_n_train_steps: Any, every_n_epochs: Any, train_time_interval: Any, save_on_train_epoch_end: Any) -> None:
    """Each save trigger's value, and ``save_on_train_epoch_end``."""
    for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ArgumentError(
                f"ModelCheckpoint({name}={value!r}): expected None or an int >= 0 (Must be >= 0; 0 turns it off)."
            )
    if train_time_interval is not None and (
        not isinstance(train_time_interval, datetime.timedelta) or train_time_interval.total_seconds() <= 0
    ):
        raise ArgumentError(
            f"ModelCheckpoint(train_time_interval={train_time_interval!r}): expected a positive "
            f"datetime.timedelta, e.g. datetime.timedelta(minutes=30), or None."
        )
    if save_on_train_epoch_end not in (None, True, False):
        raise ArgumentError(
            f"ModelCheckpoint(save_on_train_epoch_end={save_on_train_epoch_end!r}): expected True, False or None."
        )


def check_flags(**flags: Any) -> None:
    """Each of ``flags`` (name=value) is True or False."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ArgumentError(f"ModelCheckpoint({name}={flag!r}): expected True or False.")


def check_one_trigger(every_n_train_steps: Any, every_n_epochs: Any, train_time_interval: Any) -> None:
    """At most one of the three save triggers is on."""
    active = [
        f"{name}={value!r}"
        for name, value, on in (
            ("every_n_train_steps", every_n_train_steps, bool(every_n_train_steps)),
            ("every_n_epochs", every_n_epochs, bool(every_n_epochs)),
            ("train_time_interval", train_time_interval, train_time_interval is not None),
        )
        if on
    ]
    if len(active) > 1:
        raise ArgumentError(
            f"ModelCheckpoint({', '.join(active)}): Combination of parameters every_n_train_steps, every_n_epochs "
            f"and train_time_interval given; expected at most one of them. To save on several schedules, use one "
            f"ModelCheckpoint for each."
        )


def absolute_folder(dirpath: str | os.PathLike[str]) -> str:
    """A user's ``dirpath``: ``~`` expanded and made absolute (symbolic links resolved), so a later
    change of the working folder does not move the checkpoints; a remote URL (``s3://...``) as given."""
    from fulmen.run_dir import redirected

    path = os.fspath(dirpath)
    return path if is_remote(path) else redirected(os.path.realpath(os.path.expanduser(path)))


def is_remote(path: str) -> bool:
    """True for a URL of a filesystem other than the local one (``memory://``, ``s3://``)."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"
