"""The checkpoint commands of ``fulmen``: ``verify``, ``keygen``, ``sign`` and ``export``.

``fulmen verify RUN_DIR`` checks a run folder's checkpoints against its ``checkpoints.jsonl``
(``fulmen.checkpoint.verify``; given a checkpoint folder it checks the run that logs it, and a log
kept outside the run folder, as ``fulmen.lightning`` keeps it, is found); with ``--key`` also the
run's signatures (``fulmen.checkpoint.signing``). ``fulmen keygen`` and ``fulmen sign`` make a key
pair and sign a run (docs/signing.md). ``fulmen export`` writes a checkpoint as ONNX, a ``torch.export``
program or safetensors, checked in its own runtime, with a model card (``fulmen.export``,
docs/deploy.md); ``fulmen verify MODEL_CARD.json`` checks a card. Usage errors exit 2, problems found exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from typing import Any


def add_parsers(sub: Any) -> None:
    """The four commands' parsers, on ``fulmen``'s subparsers ``sub``."""
    verify = sub.add_parser(
        "verify",
        help="check a run folder's checkpoints against its audit log",
        description="Re-hash every checkpoint of a run and check the hash chain of its checkpoints.jsonl. "
        "Exit status 1 when anything is wrong, 0 when the run is intact.",
    )
    verify.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="the run folder or a checkpoint folder (its checkpoints.jsonl is in it, in the run folder above it, "
        "or, for fulmen.lightning runs, kept for it under $FULMEN_AUDIT_HOME); or a model card (model.onnx.json, "
        "written by fulmen export) to check against its model file, checkpoint and run",
    )
    verify.add_argument(
        "--log", metavar="FILE", help="the checkpoints.jsonl to check against (e.g. after the run folder was moved)"
    )
    verify.add_argument(
        "--no-load",
        action="store_true",
        help="compare file hashes only; do not load each checkpoint to check its content digest (faster)",
    )
    verify.add_argument(
        "--expected-head", metavar="SHA256", help="a head hash printed by an earlier verify: the log must still contain it"
    )
    verify.add_argument(
        "--key",
        action="append",
        metavar="PUBLIC_KEY",
        help="a trusted public key (PEM, from fulmen keygen; repeatable): the run must also carry a valid signature "
        "by one of them covering every checkpoint (see docs/signing.md)",
    )

    export = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, a torch.export program (.pt2) or safetensors, checked, with a model card",
        description="Load a checkpoint safely (weights_only, digest checked), export it in the format FILE's suffix "
        "names, run the exported file in its own runtime (onnxruntime, torch.export.load; safetensors: reloaded) and "
        "compare with the trained system; the file is kept only when the outputs agree (or --force). A model card "
        "FILE.json beside it ties it to the checkpoint and run (see docs/deploy.md). Exit 1 when refused.",
    )
    export.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    export.add_argument(
        "--to", required=True, metavar="FILE", help="the file to write: model.onnx, model.pt2 or model.safetensors"
    )
    export.add_argument("--no-verify", action="store_true", help="do not check the checkpoint's content digest")
    export.add_argument(
        "--input",
        metavar="FILE.pt",
        help="the example input to export and check with (torch.save of a tensor or a tuple of tensors); "
        "default: the system's example_input_array",
    )
    export.add_argument("--rtol", type=float, metavar="R", help="relative tolerance of the check (default 1e-4)")
    export.add_argument("--atol", type=float, metavar="A", help="absolute tolerance of the check (default 1e-5)")
    export.add_argument(
        "--force", action="store_true", help="write the file even when the check fails (the model card says so)"
    )
    export.add_argument(
        "--system",
        metavar="package.module:Class",
        help="the System class of the checkpoint (default: the one its run folder's run.json names)",
    )

    keygen = sub.add_parser(
        "keygen",
        help="write a new Ed25519 key pair for signing runs",
        description="Write a private key to PATH (PEM, mode 0600; encrypted when $FULMEN_KEY_PASSPHRASE is set) and "
        "its public key to PATH.pub. Never overwrites a file. Keep the private key out of run folders and git.",
    )
    keygen.add_argument("--out", required=True, metavar="PATH", help="the private key file to write (PATH.pub too)")
    sign = sub.add_parser(
        "sign",
        help="sign a run's audit log with a private key",
        description="Sign the audit chain head and every checkpoint digest of RUN_DIR into RUN_DIR/signatures.json. "
        "Refused (exit 1) when fulmen verify finds problems in the run.",
    )
    sign.add_argument("run_dir", metavar="RUN_DIR", help="the run folder or a checkpoint folder (as for fulmen verify)")
    sign.add_argument("--key", required=True, metavar="PRIVATE_KEY", help="the private key file (fulmen keygen)")
    sign.add_argument("--log", metavar="FILE", help="the checkpoints.jsonl to sign (e.g. after the run folder was moved)")


def verify(args: argparse.Namespace) -> int:
    from fulmen.checkpoint.audit import describe_run, find_run, verify_run

    if os.path.isfile(args.run_dir) and args.run_dir.endswith(".json"):
        return verify_card(args.run_dir)
    if not os.path.isdir(args.run_dir):
        print(f"fulmen verify: {args.run_dir!r} is not a folder", file=sys.stderr)
        return 2
    run_dir, log = args.run_dir, args.log
    if log is not None and not os.path.isfile(log):
        print(f"fulmen verify: --log {log!r} is not a file", file=sys.stderr)
        return 2
    if log is None:
        found = find_run(run_dir)
        if found is not None:
            run, log = found
            if run != os.path.realpath(run_dir):
                print(f"fulmen verify: the checkpoints of {run_dir} are logged for the run folder {run}; verifying it")
                run_dir = run
    problems = verify_run(run_dir, load=not args.no_load, expected_head=args.expected_head, log=log)
    if args.key:
        from fulmen.checkpoint.signing import SigningError, check_run

        try:
            problems += check_run(run_dir, args.key, log=log, load=not args.no_load)
        except SigningError as err:  # a key file that cannot be read or is not a public key
            print(f"fulmen verify: {err}", file=sys.stderr)
            return 2
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {run_dir}", file=sys.stderr)
        return 1
    outside = log and os.path.dirname(os.path.abspath(log)) != os.path.realpath(run_dir)
    signed = ", signed by a trusted key (--key)" if args.key else ""
    print(f"OK {run_dir}: {describe_run(run_dir, log=log)}{signed}" + (f" (log {log})" if outside else ""))
    return 0


def keygen(args: argparse.Namespace) -> int:
    from fulmen.checkpoint.signing import PASSPHRASE_ENV, SigningError, generate_key

    try:
        private, public = generate_key(args.out)
    except (FileExistsError, SigningError) as err:
        print(f"fulmen keygen: {err}", file=sys.stderr)
        return 2
    locked = "encrypted with $" + PASSPHRASE_ENV if os.environ.get(PASSPHRASE_ENV) else "not encrypted"
    print(f"wrote the private key {private} (mode 0600, {locked}: keep it out of run folders and git)")
    print(f"wrote the public key {public} (give it to whoever verifies: fulmen verify RUN_DIR --key {public})")
    return 0


def sign(args: argparse.Namespace) -> int:
    from fulmen.checkpoint.signing import SigningError, load_private_key, locate_run, sign_run
    from fulmen.checkpoint.verify import verify_run

    if not os.path.isdir(args.run_dir):
        print(f"fulmen sign: {args.run_dir!r} is not a folder", file=sys.stderr)
        return 2
    try:
        key = load_private_key(args.key)
    except SigningError as err:
        print(f"fulmen sign: {err}", file=sys.stderr)
        return 2
    run_dir, log = locate_run(args.run_dir, args.log)
    problems = verify_run(run_dir, log=log) if log is not None else []
    for problem in problems:
        print(problem)
    if problems:
        print(f"fulmen sign: {len(problems)} problem(s) in {run_dir} (see above): not signing a broken run", file=sys.stderr)
        return 1
    try:
        entry = sign_run(run_dir, key, log=log, check=False)  # (verify_run ran just above)
    except SigningError as err:
        print(f"fulmen sign: {err}", file=sys.stderr)
        return 1
    payload = json.loads(entry["payload"])
    print(
        f"signed {run_dir}: {len(payload['checkpoints'])} checkpoint entries, head {payload['head']}, "
        f"key {entry['key_id']} (signatures.json)"
    )
    return 0


def verify_card(path: str) -> int:
    """``fulmen verify MODEL_CARD.json``: the card against its model file, checkpoint and run."""
    from fulmen.export import inspect_card, read_card

    problems, notes = inspect_card(path)
    for problem in problems:
        print(problem)
    for note in notes:
        print(note)
    if problems:
        print(f"{len(problems)} problem(s) in the model card {path}", file=sys.stderr)
        return 1
    model = read_card(path)["model"]
    checked = "its model file" + ("" if notes else ", source checkpoint and run log")
    print(f"OK {path}: {model['file']} ({model['format']}, sha256 {model['sha256'][:12]}...) matches; checked {checked}")
    return 0


def _safetensors_save() -> Any:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise SystemExit(
            "fulmen export needs the safetensors package, which is not installed. Install it with "
            "`pip install 'fulmen[export]'` (or `pip install safetensors`)."
        ) from None
    return save_file


def _example_input(path: str | None) -> Any:
    """The tensor (or tuple of tensors) saved at ``path`` for ``--input``, loaded weights-only."""
    import torch

    if path is None:
        return None
    value = torch.load(path, weights_only=True, map_location="cpu")
    return tuple(value) if isinstance(value, list) else value


def export(args: argparse.Namespace) -> int:
    from fulmen.export import FORMATS, ExportError, export_checkpoint

    suffix = os.path.splitext(args.to)[1].lower()
    if suffix not in FORMATS:
        print(f"fulmen export: --to {args.to!r}: expected a file ending in .onnx, .pt2 or .safetensors", file=sys.stderr)
        return 2
    if suffix == ".safetensors":
        _safetensors_save()  # the install hint, before loading anything
    try:
        sample = _example_input(args.input)
    except (OSError, RuntimeError, pickle.UnpicklingError) as err:
        print(f"fulmen export: --input {args.input!r} is not a tensor file torch.load reads: {err}", file=sys.stderr)
        return 2
    try:
        export_checkpoint(
            args.checkpoint, args.to, system_class=args.system, input=sample, rtol=args.rtol, atol=args.atol,
            force=args.force, verify=not args.no_verify,
        )
    except ExportError as err:
        print(f"fulmen export: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError, TypeError, pickle.UnpicklingError) as err:
        # missing, a folder, refused (not a checkpoint, damaged, unsafe: CheckpointFileError), digest
        # mismatch; TypeError: load_from_checkpoint could not build the class from the hyperparameters
        print(f"fulmen export: {err}", file=sys.stderr)
        return 2
    return 0
