"""``LambdaCallback``: a callback made of plain functions, one per hook (Lightning's
``lightning.pytorch.callbacks.lambda_function``).

    LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: print(trainer.current_epoch))

Each keyword names a hook of ``fulmen.Callback`` (the list is ``CALLBACK_HOOKS`` in
``fulmen.trainer._hooks``) and gives the function to call there, with the arguments a callback's
hook receives after ``self``: ``(trainer, pl_module, ...)``. A name that is not a hook is refused
when the callback is built, so a misspelt hook never goes silently uncalled.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from fulmen.callbacks.base import Callback
from fulmen.trainer._hooks import CALLBACK_HOOKS

__all__ = ["LambdaCallback"]


class _Hook:
    """A function standing in for a hook method: ``__self__`` and ``__name__`` name the callback and
    the hook in error notes and profiler rows, like a bound method; ``__wrapped__`` gives the
    function's own signature (evaluation batch hooks may leave out ``dataloader_idx``)."""

    __slots__ = ("__name__", "__self__", "__wrapped__", "fn")

    def __init__(self, owner: LambdaCallback, name: str, fn: Callable[..., Any]) -> None:
        self.__self__ = owner
        self.__name__ = name
        self.__wrapped__ = fn
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<hook {type(self.__self__).__name__}.{self.__name__}: {self.fn!r}>"


class LambdaCallback(Callback):
    """``LambdaCallback(**hooks)``: call ``hooks[name](trainer, pl_module, ...)`` at each hook ``name``.

    The functions are set on the instance, which is how the trainer's dispatch tables (built once per
    run, from the hooks each callback overrides) find them. ``None`` values are skipped, as in
    Lightning; anything else must be callable.
    """

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        unknown = [name for name in hooks if name not in CALLBACK_HOOKS]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, CALLBACK_HOOKS, n=1, cutoff=0.75)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"LambdaCallback got {', '.join(hints)}, which {'is not a hook' if len(unknown) == 1 else 'are not hooks'} "
                f"of fulmen.Callback, so {'it' if len(unknown) == 1 else 'they'} would never be called. The hooks are: "
                f"{', '.join(CALLBACK_HOOKS)}."
            )
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}=...): expected a callable, got {type(fn).__name__}.")
            setattr(self, name, _Hook(self, name, fn))

    @property
    def hooks(self) -> dict[str, Callable[..., Any]]:
        """The functions given, by hook name."""
        return {name: value.fn for name, value in vars(self).items() if isinstance(value, _Hook)}

    def __repr__(self) -> str:
        return f"LambdaCallback({', '.join(self.hooks)})"
