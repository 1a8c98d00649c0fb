"""Where a tuned hyperparameter lives (the learning rate, the batch size), read and written as
Lightning does: the system's attribute, its ``hparams``, the datamodule's attribute, its ``hparams``."""

from __future__ import annotations

from typing import Any

__all__ = ["attr_holders", "get_from", "set_on"]


def attr_holders(system: Any, datamodule: Any, name: str) -> list[Any]:
    """Everything that holds ``name``, in Lightning's order: the system's attribute, its hparams,
    the datamodule's attribute, its hparams."""
    holders: list[Any] = []
    for owner in (system, datamodule):
        if owner is None:
            continue
        if _has_attribute(owner, name):
            holders.append(owner)
        hparams = getattr(owner, "hparams", None)
        if hparams is not None and name in hparams:
            holders.append(hparams)
    return holders


def _has_attribute(owner: Any, name: str) -> bool:
    try:
        getattr(owner, name)
    except AttributeError:
        return False
    return True


def get_from(holder: Any, name: str) -> Any:
    return holder[name] if isinstance(holder, dict) else getattr(holder, name)


def set_on(holders: list[Any], name: str, value: Any) -> None:
    for holder in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)
