"""Hyperparameters: capturing a constructor's arguments, and storing them as plain data."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from fulmen.errors import warn_once


class AttributeDict(dict[str, Any]):
    """A dict whose keys are also attributes: ``hparams.lr`` and ``hparams["lr"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"no hyperparameter named {key!r}; saved: {sorted(self)}") from err

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


def _init_args_of_frame(frame: Any) -> dict[str, Any]:
    """The arguments of the ``__init__`` running in ``frame`` (including ``**kwargs``)."""
    code = frame.f_code
    names = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    local = frame.f_locals
    out: dict[str, Any] = {}
    for name in names[1:]:  # skip self
        if name in local:
            out[name] = local[name]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kw_name = code.co_varnames[code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)]
        out.update(local.get(kw_name) or {})
    return out


_HELPER_DEPTH = 4  # frames looked through for the __init__ above a helper that saves hparams


def _is_init_of(frame: Any, obj: Any) -> bool:
    return frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is obj


def _init_args(obj: Any, frame: Any) -> tuple[dict[str, Any], bool]:
    """The arguments of the ``__init__`` chain of ``obj`` running at ``frame`` (or a few frames up,
    from a helper it calls), outermost class first; and whether such an ``__init__`` was found."""
    # Walk up through the __init__ chain of obj's class so that subclasses' arguments count.
    # The outermost __init__ (the class being built) comes first and wins: a subclass may
    # pass its base a derived value (``super().__init__(width * 2)``), and rebuilding the
    # class from its hyperparameters needs the subclass's own arguments.
    f = frame
    for _ in range(_HELPER_DEPTH):  # called from a helper method that __init__ calls
        if f is None or _is_init_of(f, obj):
            break
        f = f.f_back
    frames = []
    while f is not None and _is_init_of(f, obj):
        frames.append(f)
        f = f.f_back
    init_args: dict[str, Any] = {}
    for f in reversed(frames):
        for k, v in _init_args_of_frame(f).items():
            init_args.setdefault(k, v)
    found = bool(frames)
    del frames, f
    return init_args, found


def collect_init_args(obj: Any, args: Sequence[Any], ignore: Sequence[str] | str | None, frame: Any) -> AttributeDict:
    """What ``save_hyperparameters(*args, ignore=...)`` stores, called from ``obj.__init__``.

    Also records on ``obj`` (``_hparams_name``) where the values came from, as Lightning's
    checkpoints name it (``hparams_name``): the ``__init__`` argument that held the dict (or
    Namespace) passed in, else ``"kwargs"`` for the constructor's own arguments.
    """
    ignore_set = {ignore} if isinstance(ignore, str) else set(ignore or ())
    if len(args) == 1 and isinstance(args[0], (Mapping, argparse.Namespace)):
        found = dict(vars(args[0]) if isinstance(args[0], argparse.Namespace) else args[0])
        init_args, _ = _init_args(obj, frame)
        names = [k for k, v in init_args.items() if v is args[0]]
        obj.__dict__["_hparams_name"] = names[0] if names else None
    else:
        init_args, in_init = _init_args(obj, frame)
        if not in_init:
            warn_once(
                f"{type(obj).__name__}.save_hyperparameters() was called outside __init__, so there were no "
                f"constructor arguments to save. Call it in __init__, or pass a dict: "
                f"save_hyperparameters({{'lr': lr}}).",
                key=f"hparams-outside-init-{type(obj).__qualname__}",
            )
        if args:
            missing = [a for a in args if not isinstance(a, str) or a not in init_args]
            if missing:
                raise ValueError(
                    f"save_hyperparameters{tuple(args)!r}: {missing!r} are not arguments of "
                    f"{type(obj).__name__}.__init__ (its arguments: {sorted(init_args)})."
                )
            found = {a: init_args[a] for a in args}
        else:
            found = init_args
        obj.__dict__["_hparams_name"] = "kwargs"
    return AttributeDict({k: v for k, v in found.items() if k not in ignore_set and not k.startswith("__")})


_PLAIN = (str, int, float, bool, type(None))

#: Key of the dict that stands in a checkpoint for a hyperparameter that is not plain data.
UNSAVED = "__fulmen_unsaved__"
_REPR_LIMIT = 500
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _public_type_name(cls: type) -> str:
    """``torch.nn.Linear`` rather than ``torch.nn.modules.linear.Linear`` when a parent package
    exports the class; builtins by their bare name."""
    module, name = cls.__module__, cls.__qualname__
    if module == "builtins":
        return name
    parts = module.split(".")
    for i in range(1, len(parts)):
        parent = sys.modules.get(".".join(parts[:i]))
        if parent is not None and getattr(parent, name, None) is cls:
            return f"{'.'.join(parts[:i])}.{name}"
    return f"{module}.{name}"


def describe_unsaved(value: Any) -> dict[str, str]:
    """What a checkpoint keeps of a hyperparameter it cannot store: its type and a short ``repr``
    (memory addresses removed, so equal runs give equal checkpoints)."""
    try:
        text = repr(value)
    except Exception as err:
        text = f"<repr failed: {type(err).__name__}>"
    text = _ADDRESS.sub("", text)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return {UNSAVED: _public_type_name(type(value)), "repr": text}


def is_unsaved(value: Any) -> bool:
    """True for a description written by ``describe_unsaved``."""
    return isinstance(value, Mapping) and isinstance(value.get(UNSAVED), str)


def plain_hparams(hparams: Mapping[str, Any], owner: str = "system", warn: bool = True) -> dict[str, Any]:
    """Hyperparameters as plain data that ``torch.load(weights_only=True)`` reads back.

    Values that are not numbers, strings, tensors or containers of them (a model, a function)
    are recorded by description (``{"__fulmen_unsaved__": "torch.nn.Linear", "repr": "..."}``),
    with one warning that says how to avoid it; ``load_from_checkpoint`` then asks for them.
    """
    import torch

    def plain(value: Any) -> tuple[bool, Any]:
        if type(value) in _PLAIN or isinstance(value, torch.Tensor):
            return True, value
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
            value = value.item()  # a NumPy scalar: the Python number (or bool, str) it holds
        # Subclasses of the plain types (numpy.float64, IntEnum, str enums) would be pickled as
        # their own class, which weights_only loading refuses: keep the plain value.
        if isinstance(value, bool):
            return True, bool(value)
        if isinstance(value, int):
            return True, int(value)
        if isinstance(value, float):
            return True, float(value)
        if isinstance(value, str):
            return True, str.__str__(value)
        if value is None:
            return True, None
        if isinstance(value, os.PathLike):
            return True, os.fspath(value)
        if isinstance(value, (list, tuple)):
            parts = [plain(v) for v in value]
            return all(ok for ok, _ in parts), type(value)(v for _, v in parts) if isinstance(value, list) else tuple(v for _, v in parts)
        if isinstance(value, Mapping):
            keys = {k: plain(k) for k in value}
            items = {k: plain(v) for k, v in value.items()}
            ok = all(ok for ok, _ in items.values()) and all(
                ok and isinstance(k, (str, int)) for ok, k in keys.values()
            )
            return ok, {keys[k][1]: v for k, (_, v) in items.items()}
        return False, None

    out: dict[str, Any] = {}
    unsaved = []
    for key, value in hparams.items():
        ok, converted = plain(value)
        if ok:
            out[key] = converted
        else:
            out[key] = describe_unsaved(value)
            unsaved.append((key, type(value).__name__))
    if unsaved and warn:
        names = ", ".join(f"{k} ({t})" for k, t in unsaved)
        warn_once(
            f"The {owner}'s hyperparameters {names} are not plain data (numbers, strings, tensors, lists, "
            f"dicts): checkpoints record only their type and repr, and load_from_checkpoint will ask for them "
            f"({', '.join(f'{k}=...' for k, _ in unsaved)}). To silence this, leave them out with "
            f"save_hyperparameters(ignore=[...]): ignore=[{', '.join(repr(k) for k, _ in unsaved)}].",
            key=f"hparams-unsaved-{owner}-{names}",
        )
    return out


def _accepted(cls: type, hparams: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``hparams`` that ``cls.__init__`` takes (all of them with ``**kwargs``)."""
    try:
        params = inspect.signature(cls).parameters  # the __init__ arguments, without self
    except (TypeError, ValueError):
        return hparams
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return hparams
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in hparams.items() if k in names}


def _init_parameter(cls: type, name: Any) -> bool:
    """True when ``name`` is a named parameter of ``cls.__init__``."""
    if not isinstance(name, str) or name == "kwargs":
        return False
    try:
        param = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def hparams_for_init(
    saved: Mapping[str, Any], overrides: Mapping[str, Any], cls: type, name: Any = None
) -> dict[str, Any]:
    """The keyword arguments to rebuild ``cls`` from a checkpoint: the saved hyperparameters that
    ``cls.__init__`` takes, updated with ``overrides`` (the caller's keyword arguments).

    ``name`` is the checkpoint's ``hparams_name`` (Lightning's key; fulmen.lightning writes it too):
    when it names an ``__init__`` argument, the hyperparameters were one dict passed as that
    argument (``save_hyperparameters(config)``), and they are passed back as it (an
    ``AttributeDict``, updated with the overrides), as Lightning does.

    A saved hyperparameter that the checkpoint could only describe (``describe_unsaved``) is never
    passed on: unless ``overrides`` gives it, a ``TypeError`` names each one and says to pass it.
    """
    if _init_parameter(cls, name):
        nested = AttributeDict(saved)
        nested.update({k: v for k, v in overrides.items() if k != name})
        out = {name: overrides.get(name, nested)}
        out.update({k: v for k, v in _accepted(cls, dict(overrides)).items() if k != name})
        return out
    kwargs = _accepted(cls, dict(saved))
    missing = [(k, v) for k, v in kwargs.items() if is_unsaved(v) and k not in overrides]
    if missing:
        what = "; ".join(f"{k}: {v[UNSAVED]} {v.get('repr', '')}" for k, v in missing)
        raise TypeError(
            f"{cls.__name__}.load_from_checkpoint(): the hyperparameter(s) {', '.join(k for k, _ in missing)} "
            f"could not be saved in the checkpoint (not plain data; it recorded only {what}). Pass them as "
            f"keyword arguments: {cls.__name__}.load_from_checkpoint(path, "
            f"{', '.join(f'{k}=...' for k, _ in missing)})."
        )
    kwargs.update(overrides)
    return kwargs
