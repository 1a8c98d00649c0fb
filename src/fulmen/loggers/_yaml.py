"""Turning hyperparameters into plain values and writing ``hparams.yaml``.

Shared by the file loggers. ``yaml.safe_dump`` refuses anything that is not a plain Python
value, and hyperparameters routinely hold tensors, paths, numpy scalars or classes; a logger
must never crash a run over that, so everything is converted (or, as a last resort, repr'd).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from fulmen.utils.files import plain_file_mode

HPARAMS_FILE = "hparams.yaml"


def to_plain(value: Any) -> Any:
    """``value`` as None/bool/int/float/str, or lists and str-keyed dicts of those."""
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    # Subclasses of the plain types (numpy.float64, custom str types) are refused by
    # safe_dump, so they become the base type.
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, argparse.Namespace):
        return to_plain(vars(value))
    if dataclasses.is_dataclass(value):
        return to_plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_plain(v) for v in items]
    # Tensors and numpy arrays/scalars all have ``tolist`` (a 0-d one gives a bare number);
    # duck-typing keeps torch and numpy out of this module's imports.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            return to_plain(tolist())
        except Exception:
            pass
    return repr(value)


def params_dict(params: Any) -> dict[str, Any]:
    """A logger's ``log_hyperparams`` argument as a dict: None gives ``{}``, an
    ``argparse.Namespace`` its attributes, any mapping (``AttributeDict``, OmegaConf's
    ``DictConfig``) its items."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params.items())
    raise TypeError(
        f"log_hyperparams(params): expected a dict, an argparse.Namespace or None, got {type(params).__name__}."
    )


def yaml_text(data: Mapping[str, Any]) -> str:
    """``data`` (plain-converted) as YAML text, keys in their order."""
    import yaml  # imported here: yaml costs ~10 ms, and only runs that log hparams need it

    return yaml.safe_dump(to_plain(data), sort_keys=False, default_flow_style=False)


def write_yaml_atomic(path: str, data: Mapping[str, Any]) -> None:
    """Write ``data`` (plain-converted) as YAML; readers never see a half-written file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    replace_atomic(path, yaml_text(data))


def replace_atomic(path: str, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, then rename it over ``path`` (with the mode
    a plain ``open`` would give it under the umask)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp_", suffix=".part")
    try:
        os.fchmod(fd, plain_file_mode())  # mkstemp makes it 0600: give it the mode open() would
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
