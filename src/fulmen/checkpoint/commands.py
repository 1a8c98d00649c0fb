"""The checkpoint commands of ``fulmen``: ``verify``, ``keygen``, ``sign`` and ``export``.

``fulmen verify RUN_DIR`` checks a run folder's checkpoints against its ``checkpoints.jsonl``
(``fulmen.checkpoint.verify``; given a checkpoint folder it checks the run that logs it, and a log
kept outside the run folder, as ``fulmen.lightning`` keeps it, is found); with ``--key`` also the
run's signatures (``fulmen.checkpoint.signing``). ``fulmen keygen`` and ``fulmen sign`` make a key
pair and sign a run (docs/signing.md). ``fulmen export`` writes a checkpoint's ``state_dict`` as a
safetensors file (``pip install 'fulmen[export]'``). Usage errors exit 2, problems found exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from collections.abc import Mapping
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
        "or, for fulmen.lightning runs, kept for it under $FULMEN_AUDIT_HOME)",
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
        help="write a checkpoint's weights as a safetensors file",
        description="Load a checkpoint safely (weights_only, digest checked) and write its state_dict with safetensors.",
    )
    export.add_argument("checkpoint", metavar="CKPT", help="the checkpoint file")
    export.add_argument("--to", required=True, metavar="FILE", help="the .safetensors file to write")
    export.add_argument("--no-verify", action="store_true", help="do not check the checkpoint's content digest")

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


def _safetensors_save() -> Any:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise SystemExit(
            "fulmen export needs the safetensors package, which is not installed. Install it with "
            "`pip install 'fulmen[export]'` (or `pip install safetensors`)."
        ) from None
    return save_file


def export(args: argparse.Namespace) -> int:
    import torch

    from fulmen.checkpoint.io import load_checkpoint
    from fulmen.utils.files import fsync_dir

    save_file = _safetensors_save()
    try:
        ckpt = load_checkpoint(args.checkpoint, verify=not args.no_verify)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
        # missing, a folder, refused (not a checkpoint, damaged, unsafe: CheckpointFileError), digest mismatch
        print(f"fulmen export: {err}", file=sys.stderr)
        return 2
    if not isinstance(ckpt["state_dict"], Mapping):
        print(
            f"fulmen export: {args.checkpoint!r} has a 'state_dict' that is a {type(ckpt['state_dict']).__name__}, "
            f"not a mapping of names to tensors; nothing to export.",
            file=sys.stderr,
        )
        return 2
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
        from fulmen.utils.files import plain_file_mode

        os.chmod(tmp, plain_file_mode())  # the mode open() would give, whatever the writer chose
        os.replace(tmp, out)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) or "No space left on device" in str(err):  # safetensors: SafetensorError
            from fulmen.checkpoint.io import _bytes, _free_bytes

            free = _free_bytes(os.path.dirname(out))
            needed = sum(t.numel() * t.element_size() for t in tensors.values())
            space = f"; it needs about {_bytes(needed)}" + (f", {_bytes(free)} are free there" if free is not None else "")
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            print(f"fulmen export: could not write {args.to!r}: {reason}{space}; nothing was written.", file=sys.stderr)
            return 1
        raise
    fsync_dir(os.path.dirname(out))
    note = f" (left out non-tensor entries: {', '.join(skipped)})" if skipped else ""
    print(f"wrote {len(tensors)} tensors to {args.to}{note}")
    return 0
