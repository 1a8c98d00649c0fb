"""``lightning.pytorch.utilities.model_helpers``: ``is_overridden``."""

from __future__ import annotations

import functools
from typing import Any
from unittest import mock

__all__ = ["is_overridden"]


def _default_parent(instance: Any) -> type:
    from fulmen.callbacks.base import Callback
    from fulmen.datamodule import DataModule
    from fulmen.lightning._module import LightningModule
    from fulmen.system import System

    for parent in (LightningModule, System, DataModule, Callback):
        if isinstance(instance, parent):
            return parent
    raise ValueError(
        f"is_overridden(..., {type(instance).__name__}): expected a LightningModule (fulmen.System), a "
        f"LightningDataModule or a Callback, or pass parent=<the base class>."
    )


def _function(attr: Any) -> Any:
    """The plain function behind a hook: bound methods, ``functools.wraps`` wrappers,
    ``functools.partial`` and ``Mock(wraps=...)`` are looked through."""
    attr = getattr(attr, "__wrapped__", attr)
    if isinstance(attr, mock.Mock):
        attr = attr._mock_wraps
    elif isinstance(attr, functools.partial):
        attr = attr.func
    return getattr(attr, "__func__", attr)


def is_overridden(method_name: str, instance: Any = None, parent: type | None = None) -> bool:
    """Whether ``instance`` (its class, or the instance itself: ``model.hook = fn``) defines
    ``method_name`` differently from ``parent``. ``parent`` defaults to the fulmen base class the
    instance derives from (``LightningModule`` / ``System``, ``DataModule``, ``Callback``). A
    hook set to None, and no instance at all, count as not overridden."""
    if instance is None:
        return False
    if parent is None:
        parent = _default_parent(instance)
    own = _function(getattr(instance, method_name, None))
    if own is None:
        return False
    base = getattr(parent, method_name, None)
    if base is None:
        raise ValueError(f"is_overridden({method_name!r}): {parent.__name__} has no method {method_name!r}.")
    own_code = getattr(own, "__code__", own)
    return bool(own_code is not getattr(_function(base), "__code__", base))
