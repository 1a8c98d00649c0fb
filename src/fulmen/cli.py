"""The ``fulmen`` command: ``fulmen verify RUN_DIR``, ``fulmen export CKPT --to FILE`` and
``fulmen doctor package.module:System [--data package.module:DataModule]``.

``fulmen verify`` checks a run folder's checkpoints against its ``checkpoints.jsonl`` (see
``fulmen.checkpoint.audit``): it prints each problem and exits 1, or prints one OK line and
exits 0. ``fulmen export`` writes a checkpoint's ``state_dict`` as a safetensors file (needs the
``safetensors`` package: ``pip install 'fulmen[export]'``). ``fulmen doctor`` builds the system
(and datamodule) with no arguments, runs ``fulmen.doctor`` on them and prints its report; it exits
1 when the report has problems. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulmen", description="fulmen command-line tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    verify = sub.add_parser(
        "verify",
        help="check a run folder's checkpoints against its audit log",
        description="Re-hash every checkpoint of a run and check the hash chain of its checkpoints.jsonl. "
        "Exit status 1 when anything is wrong, 0 when the run is intact.",
    )
    verify.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (the one holding checkpoints.jsonl)")
    verify.add_argument(
        "--no-load",
        action="store_true",
        help="compare file hashes only; do not load each checkpoint to check its content digest (faster)",
    )
    verify.add_argument(
        "--expected-head", metavar="SHA256", help="a head hash printed by an earlier verify: the log must still contain it"
    )

    export = sub.add_parser(
        "export",
        help="write a checkpoint's weights as a safetensors file",
        description="Load a checkpoint safely (weights_only, digest checked) and write its state_dict with safetensors.",
    )
    export.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    export.add_argument("--to", required=True, metavar="FILE", help="the .safetensors file to write")
    export.add_argument("--no-verify", action="store_true", help="do not check the checkpoint's content digest")

    doctor = sub.add_parser(
        "doctor",
        help="run one batch of each stage of a system and report what would go wrong",
        description="Import SYSTEM (package.module:Class), build it with no arguments, run one training and one "
        "validation batch through it (nothing is written, no optimizer steps) and print what would go wrong. "
        "Exit status 1 when there are problems, 0 otherwise (warnings allowed).",
    )
    doctor.add_argument("system", metavar="SYSTEM", help="the fulmen.System class, as package.module:Class")
    doctor.add_argument(
        "--data", metavar="DATAMODULE", help="a fulmen.DataModule class, as package.module:Class (default: the system's data)"
    )
    return parser


def _verify(args: argparse.Namespace) -> int:
    from fulmen.checkpoint.audit import chain_head, read_log, verify_run

    if not os.path.isdir(args.run_dir):
        print(f"fulmen verify: {args.run_dir!r} is not a folder", file=sys.stderr)
        return 2
    problems = verify_run(args.run_dir, load=not args.no_load, expected_head=args.expected_head)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.run_dir}", file=sys.stderr)
        return 1
    entries = read_log(args.run_dir)
    on_disk = sum(1 for e in {str(e.get("file")) for e in entries} if os.path.isfile(_resolve(args.run_dir, e)))
    print(
        f"OK {args.run_dir}: {len(entries)} log entries, {on_disk} checkpoint(s) on disk verified, "
        f"head {chain_head(args.run_dir)}"
    )
    return 0


def _resolve(run_dir: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(run_dir, name)


def _safetensors_save() -> Any:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise SystemExit(
            "fulmen export needs the safetensors package, which is not installed. Install it with "
            "`pip install 'fulmen[export]'` (or `pip install safetensors`)."
        ) from None
    return save_file


def _export(args: argparse.Namespace) -> int:
    import torch

    from fulmen.checkpoint.io import _fsync_dir, load_checkpoint

    save_file = _safetensors_save()
    try:
        ckpt = load_checkpoint(args.checkpoint, verify=not args.no_verify)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"fulmen export: {err}", file=sys.stderr)
        return 1
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    skipped = []
    for name, value in ckpt["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            skipped.append(name)
            continue
        t = value.detach().contiguous()
        if t.numel():
            if t.untyped_storage().data_ptr() in storages:
                t = t.clone()  # safetensors refuses tensors that share memory (tied weights): one copy each
            storages.add(t.untyped_storage().data_ptr())
        tensors[str(name)] = t
    digest = ckpt.get("digest")
    metadata = {"format": "pt", "fulmen_checkpoint": os.path.basename(args.checkpoint)}
    if isinstance(digest, dict) and isinstance(digest.get("value"), str):
        metadata["fulmen_digest"] = f"{digest.get('algorithm')}:{digest['value']}"
    out = os.path.abspath(args.to)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(out))
    note = f" (left out non-tensor entries: {', '.join(skipped)})" if skipped else ""
    print(f"wrote {len(tensors)} tensors to {args.to}{note}")
    return 0


def _load_class(spec: str, what: str) -> Any:
    """``package.module:Class`` (or ``package.module:Outer.Inner``), imported from the current folder too."""
    import importlib

    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{what} {spec!r}: expected package.module:Class")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {module_name} has no {qualname}")
        obj = getattr(obj, part)
    return obj


def _doctor(args: argparse.Namespace) -> int:
    from fulmen.datamodule import DataModule
    from fulmen.doctor import doctor
    from fulmen.system import System

    try:
        system_cls = _load_class(args.system, "SYSTEM")
        data_cls = _load_class(args.data, "--data") if args.data else None
    except (ImportError, ValueError) as err:
        print(f"fulmen doctor: {err}", file=sys.stderr)
        return 2
    for cls, base, what in ((system_cls, System, "SYSTEM"), (data_cls, DataModule, "--data")):
        if cls is not None and not (isinstance(cls, type) and issubclass(cls, base)):
            print(f"fulmen doctor: {what} {cls!r} is not a fulmen.{base.__name__} subclass", file=sys.stderr)
            return 2
    try:
        system = system_cls()
        datamodule = data_cls() if data_cls is not None else None
    except Exception as err:
        print(
            f"fulmen doctor: could not build it with no arguments: {type(err).__name__}: {err}. Give the class "
            f"defaults for every argument, or a small subclass that passes them.",
            file=sys.stderr,
        )
        return 2
    report = doctor(system, datamodule, verbose=False)
    print(report)
    return 1 if report.problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fulmen`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    if args.command == "doctor":
        return _doctor(args)
    return _export(args)


if __name__ == "__main__":
    sys.exit(main())
