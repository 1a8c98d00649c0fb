"""``fulmen audit RUN_DIR|CKPT --data package.module:DataModule (--group-by ATTR | --groups FILE.npy)``.

Loads the system from a checkpoint (given, or the run folder's best one: the ``best_model_path``
that ``ModelCheckpoint`` recorded in its last checkpoint, i.e. ``last.ckpt`` or else the last one
its audit log records), its class from the run's ``run.json`` (``--system`` otherwise),
builds the DataModule with no arguments, runs ``bias_audit`` on its ``test_dataloader()`` and writes
``audit.json`` into the run folder (the checkpoint's folder when it belongs to no run). Exit status
0 when written, 2 for input it cannot use (one line on stderr).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import sys
import warnings
from typing import Any

from fulmen.audit.collect import AuditError


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``fulmen audit`` on ``parser``."""
    parser.add_argument("target", metavar="RUN_DIR|CKPT", help="a run folder (its best, else last, checkpoint) or a checkpoint file")
    parser.add_argument("--data", required=True, metavar="DATAMODULE", help="the data, as package.module:DataModule")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--group-by", metavar="ATTR", help="the batch field holding each sample's group (a dict key, or a tuple position)")
    where.add_argument("--groups", metavar="FILE.npy", help="one group per test dataset sample, as a numpy .npy file")
    parser.add_argument("--system", metavar="SYSTEM", help="the system class, package.module:Class (default: from run.json)")
    parser.add_argument("--task", choices=("binary", "multiclass", "regression"), help="default: inferred")
    parser.add_argument("--min-group-size", type=int, default=30, metavar="N", help="flag smaller groups (default 30)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N", help="resamples for the intervals (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    return parser


def _best(ckpt: str) -> str:
    """The best checkpoint ``ModelCheckpoint`` recorded in ``ckpt`` (its ``best_model_path``, when
    that file exists), else ``ckpt`` itself."""
    from fulmen.checkpoint.io import load_checkpoint

    states = load_checkpoint(ckpt).get("callbacks") or {}
    for state in states.values() if isinstance(states, dict) else []:
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if isinstance(best, str) and best and os.path.isfile(best):
            return best
    return ckpt


def _checkpoint(target: str) -> tuple[str, str]:
    """``(checkpoint, run folder)`` for a checkpoint file, or a run folder's best checkpoint
    (``best_model_path`` in its last checkpoint) or last one."""
    ckpt, run_dir = _last_checkpoint(target)
    return (ckpt, run_dir) if os.path.isfile(target) else (_best(ckpt), run_dir)


def _last_checkpoint(target: str) -> tuple[str, str]:
    from fulmen.checkpoint.audit import find_run, read_log

    if os.path.isfile(target):
        found = find_run(os.path.dirname(os.path.abspath(target)))
        return target, found[0] if found else os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(target):
        raise AuditError(f"{target!r} is neither a run folder nor a checkpoint file.")
    last = sorted(glob.glob(os.path.join(target, "**", "last.ckpt"), recursive=True))
    if last:
        return last[0], target
    for entry in reversed(read_log(target)):
        name = str(entry.get("file", ""))
        path = name if os.path.isabs(name) else os.path.join(target, name)
        if os.path.isfile(path):
            return path, target
    files = sorted(glob.glob(os.path.join(target, "**", "*.ckpt"), recursive=True), key=os.path.getmtime)
    if not files:
        raise AuditError(f"{target} holds no checkpoint (*.ckpt): give a run folder that has one, or the checkpoint file.")
    return files[-1], target


def _import(dotted: str) -> Any:
    """``package.module.Class`` (run.json's spelling) or ``package.module:Class``."""
    if ":" in dotted:
        from fulmen.cli import _load_class

        return _load_class(dotted, "--system")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        if obj is not None:
            return obj
    raise ImportError(f"cannot import {dotted}")


def _system_class(args: argparse.Namespace, run_dir: str) -> Any:
    if args.system:
        return _import(args.system)
    record = os.path.join(run_dir, "run.json")
    name = None
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            name = json.load(f).get("system")
    if not name:
        raise AuditError(f"{run_dir} has no run.json naming the system: pass --system package.module:Class.")
    try:
        return _import(name)
    except ImportError:
        raise AuditError(f"run.json names the system {name}, which cannot be imported here: pass --system package.module:Class.") from None


def _groups(args: argparse.Namespace) -> Any:
    if args.groups:
        import numpy as np

        try:
            return np.load(args.groups, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise AuditError(f"--groups {args.groups}: not a readable .npy file ({err}).") from None
    return int(args.group_by) if args.group_by.lstrip("-").isdigit() else args.group_by


def _loader(spec: str) -> Any:
    from fulmen.cli import _load_class

    datamodule = _load_class(spec, "--data")()
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.test_dataloader()


def audit(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Run the audit ``args`` describe; returns the path written and the result."""
    from fulmen.audit.core import bias_audit, require_fairlearn, write_audit

    require_fairlearn()
    ckpt, run_dir = _checkpoint(args.target)
    system = _system_class(args, run_dir).load_from_checkpoint(ckpt, map_location="cpu")
    loader = _loader(args.data)
    result = bias_audit(
        system, loader, _groups(args), task=args.task, min_group_size=args.min_group_size, bootstrap=args.bootstrap, seed=args.seed
    )
    result["checkpoint"] = os.path.abspath(ckpt)
    return write_audit(run_dir, result), result


def summary(result: dict[str, Any]) -> str:
    """A few lines: each group's size and main metric, then the disparities."""
    lines = [f"bias audit ({result['task']}, {result['samples']} samples):"]
    for g in result["groups"]:
        shown = ", ".join(f"{k} {v['value']:.3f}" for k, v in list(g["metrics"].items())[:4] if v["value"] is not None)
        lines.append(f"  {g['group']}: n={g['size']}{' (small)' if g['small'] else ''}  {shown}")
    for key, value in result["disparities"].items():
        if isinstance(value, (int, float)):
            lines.append(f"  {key}: {value:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``fulmen audit``: exit 0 when audit.json is written, 2 for input it cannot use."""
    from fulmen.checkpoint.io import CheckpointFileError
    from fulmen.errors import CheckpointIntegrityError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path, result = audit(args)
    except (AuditError, ImportError, ValueError, CheckpointFileError, CheckpointIntegrityError) as err:
        print(f"fulmen audit: {err}", file=sys.stderr)
        return 2
    for w in caught:
        if str(w.message) in result["warnings"]:
            print(f"fulmen audit: warning: {w.message}", file=sys.stderr)
    print(summary(result))
    print(f"wrote {path}")
    return 0
