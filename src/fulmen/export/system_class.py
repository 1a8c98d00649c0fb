"""Which ``System`` class a checkpoint is exported with: given, or the one its run.json names."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from fulmen.export.formats import ExportError


def import_class(spec: str, extra_paths: list[str] | None = None) -> type:
    """The class named by ``"package.module:Class"`` or ``"package.module.Class"``; the folders in
    ``extra_paths`` are tried on ``sys.path`` when the plain import fails."""
    module_name, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not name:
        raise ImportError(f"{spec!r} is not package.module:Class")
    obj: Any = _import_module(module_name, extra_paths or [])
    for part in name.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ImportError(f"{spec!r} is a {type(obj).__name__}, not a class")
    return obj


def _import_module(name: str, extra_paths: list[str]) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        first = err
    for path in extra_paths:
        if path in sys.path:
            continue
        sys.path.insert(0, path)
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
        finally:
            sys.path.remove(path)
    raise first


def resolve_system_class(
    ckpt_path: str | os.PathLike[str], given: type | str | None, source: Mapping[str, Any], required: bool
) -> type | None:
    """The System class to rebuild the checkpoint with: ``given``, else run.json's ``system``.
    None when neither works and ``required`` is False; ExportError saying how otherwise."""
    from fulmen.export.card import run_record

    if isinstance(given, type):
        return given
    if given:
        try:
            return import_class(given, [os.getcwd()])
        except (ImportError, AttributeError) as err:
            raise ExportError(
                f"--system {given!r} does not import: {err}; give package.module:Class, importable from here."
            ) from None
    recorded = source.get("system")
    if recorded:
        run_dir = source.get("run_dir")
        record = run_record(str(run_dir)) if run_dir else {}
        paths = [os.getcwd(), *([record["cwd"]] if isinstance(record.get("cwd"), str) else [])]
        try:
            return import_class(str(recorded), paths)
        except (ImportError, AttributeError) as err:
            reason = f"its run.json names {recorded}, which does not import here ({err})"
    else:
        reason = "it belongs to no run folder with a run.json naming its system class"
    if not required:
        return None
    raise ExportError(
        f"cannot tell which System class {os.fspath(ckpt_path)!r} is: {reason}; pass --system package.module:Class "
        f"(or system_class=...) naming the class that was trained."
    )
