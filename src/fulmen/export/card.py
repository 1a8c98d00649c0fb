"""The model card: a JSON file beside an exported model that ties it to the run that made it.

For an exported file ``F`` the card is ``F + ".json"``. Format 1 (the agreed layout):
``format``, ``created``, ``model`` (file, format, sha256, size), ``source`` (checkpoint, content and
state digests, step, epoch, run folder, audit chain head, command, system class), ``hyperparameters``,
``metrics`` (the checkpoint's callback_metrics), ``inputs`` / ``outputs`` (name, shape with None for
a dynamic dimension, dtype), ``check`` (input, rtol, atol, max_abs_diff, passed, forced, and a
``warning`` when forced), ``versions``, ``notes``, and for safetensors ``weights`` (name, shape,
dtype of each tensor; ``inputs``/``outputs`` are empty then). ``check_card`` says what no longer matches.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Mapping
from typing import Any

import torch

from fulmen.utils.files import file_sha256

CARD_FORMAT = 1


def card_path(model_path: str | os.PathLike[str]) -> str:
    """Where the card of the exported file ``model_path`` is: beside it, ``model_path + ".json"``."""
    return os.fspath(model_path) + ".json"


def describe_tensors(names: list[str], tensors: list[torch.Tensor], dynamic: bool) -> list[dict[str, Any]]:
    """``[{"name", "shape", "dtype"}]``, the batch dimension None when it is dynamic."""
    out = []
    for name, t in zip(names, tensors):
        shape: list[int | None] = list(t.shape)
        if dynamic and shape:
            shape[0] = None
        out.append({"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")})
    return out


def versions() -> dict[str, str | None]:
    """Python, torch, fulmen, onnx and onnxruntime versions (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("fulmen", "onnx", "onnxruntime", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def plain(value: Any) -> Any:
    """``value`` as JSON: tensors and numbers as numbers (non-finite ones as strings), the rest as text."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return repr(value)


def new_card(model_file: str, fmt: str, **fields: Any) -> dict[str, Any]:
    """A card for the written file ``model_file``: its digest and size, and ``fields`` (source,
    hyperparameters, metrics, inputs, outputs, check, notes)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "format": CARD_FORMAT,
        "created": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "model": {
            "file": os.path.basename(model_file),
            "format": fmt,
            "sha256": file_sha256(model_file),
            "size": os.path.getsize(model_file),
        },
        "source": fields.get("source") or {},
        "hyperparameters": plain(fields.get("hyperparameters") or {}),
        "metrics": plain(fields.get("metrics") or {}),
        "inputs": fields.get("inputs") or [],
        "outputs": fields.get("outputs") or [],
        "check": fields.get("check") or {},
        "versions": versions(),
        "notes": list(fields.get("notes") or []),
        **({"weights": fields["weights"]} if fields.get("weights") else {}),
    }


def write_card(card: Mapping[str, Any], path: str) -> None:
    """Write ``card`` to ``path`` atomically (a temporary file, fsynced, then renamed)."""
    from fulmen.utils.files import fsync_dir

    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(card, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(folder)


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card at ``path`` (``model.onnx.json``; given the model file, its card beside it).
    ValueError, in one line, when it is not a model card."""
    path = os.fspath(path)
    if not path.endswith(".json") and os.path.exists(card_path(path)):
        path = card_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            card = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path!r} is not a model card: not JSON ({err}).") from None
    if (
        not isinstance(card, dict)
        or card.get("format") != CARD_FORMAT
        or not isinstance(card.get("model"), dict)
    ):
        raise ValueError(
            f"{path!r} is not a model card of format {CARD_FORMAT} (expected the JSON fulmen export writes "
            f"beside an exported file, e.g. model.onnx.json)."
        )
    return card


def checkpoint_source(ckpt_path: str | os.PathLike[str], ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``source`` for a loaded checkpoint: digests, step, epoch, and the run it belongs
    to (its folder, audit chain head, and run.json's command and system class) when it is found."""
    from fulmen.checkpoint.audit import chain_head, find_run
    from fulmen.checkpoint.integrity import state_digest

    path = os.path.abspath(os.fspath(ckpt_path))
    digest = ckpt.get("digest")
    found = find_run(os.path.dirname(path))
    run_dir, head, record = None, None, {}
    if found is not None:
        run_dir, log = found
        head = chain_head(run_dir, log=log)
        record = run_record(run_dir)
    return {
        "checkpoint": path,
        "content_digest": digest.get("value") if isinstance(digest, Mapping) else None,
        "digest_algorithm": digest.get("algorithm") if isinstance(digest, Mapping) else None,
        "state_digest": state_digest(ckpt),
        "step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
        "run_dir": run_dir,
        "audit_head": head,
        "command": record.get("command"),
        "system": record.get("system"),
    }


def run_record(run_dir: str) -> dict[str, Any]:
    """The run folder's run.json, or ``{}`` when it has none or it cannot be read."""
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def inspect_card(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of the card at ``path``: problems are what no longer matches (the
    model file, the source checkpoint, the run's audit log); notes say what could not be checked
    because it was not shipped with the card (the run folder)."""
    try:
        card = read_card(path)
    except (OSError, ValueError) as err:
        return [str(err)], []
    problems: list[str] = []
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    problems += _model_problems(card, folder)
    source = card.get("source") or {}
    notes: list[str] = []
    if source.get("checkpoint"):
        p, n = _source_problems(source)
        problems += p
        notes += n
    return problems, notes


def check_card(path: str | os.PathLike[str]) -> list[str]:
    """What no longer matches in the model card at ``path`` (empty when it all does): the model
    file's sha256, the source checkpoint's content digest (or the checkpoint gone from a run folder
    that is there), the recorded audit chain head no longer in the run's log."""
    return inspect_card(path)[0]


def _model_problems(card: Mapping[str, Any], folder: str) -> list[str]:
    model = card["model"]
    file = os.path.join(folder, str(model.get("file")))
    if not os.path.isfile(file):
        return [f"the model file {file} is missing (the card describes {model.get('file')!r} beside it)"]
    digest = file_sha256(file)
    if digest != model.get("sha256"):
        return [
            f"the model file {file} changed after export: sha256 {digest}, the card records {model.get('sha256')}"
        ]
    return []


def _source_problems(source: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    ckpt, run_dir = str(source["checkpoint"]), source.get("run_dir")
    run_here = bool(run_dir) and os.path.isdir(str(run_dir))
    problems: list[str] = []
    if not os.path.exists(ckpt):
        if run_here:
            problems.append(f"the source checkpoint {ckpt} is gone from its run folder {run_dir}")
        else:
            return [], [
                f"not checked: the source checkpoint {ckpt} and its run folder are not here (not shipped)"
            ]
    else:
        problems += _digest_problems(ckpt, source.get("content_digest"))
    if run_here and source.get("audit_head"):
        problems += _head_problems(str(run_dir), str(source["audit_head"]))
    return problems, []


def _digest_problems(ckpt: str, recorded: Any) -> list[str]:
    from fulmen.checkpoint.io import load_checkpoint

    try:
        loaded = load_checkpoint(ckpt, verify=True)
    except Exception as err:  # refused, damaged, digest mismatch: the loader's one line
        return [
            f"the source checkpoint {ckpt} does not load intact: {str(err).splitlines()[0] if str(err) else err}"
        ]
    digest = loaded.get("digest")
    value = digest.get("value") if isinstance(digest, Mapping) else None
    if value != recorded:
        return [f"the source checkpoint {ckpt} has the content digest {value}, the card records {recorded}"]
    return []


def _head_problems(run_dir: str, head: str) -> list[str]:
    import hashlib

    from fulmen.checkpoint.audit import log_file

    log = log_file(run_dir)
    if log is None:
        return [f"the run folder {run_dir} has no checkpoints.jsonl: its audit head {head} cannot be found"]
    with open(log, "rb") as f:
        hashes = {hashlib.sha256(line).hexdigest() for line in f.read().split(b"\n") if line}
    if head not in hashes:
        return [f"no line of {log} has the recorded audit head {head}: the run's log was rewritten or cut"]
    return []
