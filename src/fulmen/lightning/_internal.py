"""Stand-ins for Lightning internals that ``fulmen.lightning`` deliberately does not provide.

Lightning code sometimes imports private objects (loop classes, connector helpers) next to the
public ones. The import succeeds, so the rest of such a file works; *using* the stand-in raises
``NotImplementedError`` naming the internal and what to use instead in fulmen.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["UnprovidedInternal", "unprovided_class", "unprovided_function"]


class UnprovidedInternal(NotImplementedError):
    """Raised when a Lightning internal that fulmen.lightning does not provide is used."""


def _message(name: str, instead: str) -> str:
    return (
        f"{name} is a Lightning internal that fulmen.lightning does not provide (fulmen's trainer is not built from "
        f"Lightning's loop, connector and strategy objects). {instead}"
    )


def unprovided_class(name: str, instead: str) -> type:
    """A class that can be imported, subclassed and used in ``isinstance`` (nothing is an
    instance of it) but not instantiated."""
    qualname = name.rpartition(".")[2]
    message = _message(name, instead)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise UnprovidedInternal(message)

    def __getattr__(cls: Any, attr: str) -> NoReturn:
        if attr.startswith("__"):  # introspection (hasattr, copy, pytest) sees a plain class
            raise AttributeError(attr)
        raise UnprovidedInternal(f"{message} (attribute {attr!r} was asked for)")

    meta = type(f"_{qualname}Meta", (type,), {"__getattr__": __getattr__})
    return meta(qualname, (), {"__init__": __init__, "__doc__": message, "__module__": name.rpartition(".")[0]})


def unprovided_function(name: str, instead: str) -> Any:
    """A function that raises ``UnprovidedInternal`` when called."""
    message = _message(name, instead)

    def unprovided(*args: Any, **kwargs: Any) -> NoReturn:
        raise UnprovidedInternal(message)

    unprovided.__name__ = unprovided.__qualname__ = name.rpartition(".")[2]
    unprovided.__doc__ = message
    return unprovided
