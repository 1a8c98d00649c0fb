"""The ``fulmen`` command: ``fulmen verify RUN_DIR`` and ``fulmen export CKPT --to FILE``.

``fulmen verify`` checks a run folder's checkpoints against its ``checkpoints.jsonl`` (see
``fulmen.checkpoint.audit``): it prints each problem and exits 1, or prints one OK line and
exits 0. ``fulmen export`` writes a checkpoint's ``state_dict`` as a safetensors file (needs the
``safetensors`` package: ``pip install 'fulmen[export]'``). Usage errors exit 2.
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fulmen`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    return _export(args)


if __name__ == "__main__":
    sys.exit(main())
