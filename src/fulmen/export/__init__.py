"""Verified export: a system (or a checkpoint) to ONNX, a ``torch.export`` program or safetensors,
checked in the file's own runtime before it is kept, with a model card beside it.

``export(system, "model.onnx")`` writes the file under a temporary name, runs it (onnxruntime for
ONNX, ``torch.export.load`` for ``.pt2``; a safetensors file is reloaded) on the example input and,
when the batch dimension is dynamic, at a second batch size, compares with the eager system, and
renames it only when the outputs agree within the tolerance (or ``force=True``). The model card
(``model.onnx.json``, see ``fulmen.export.card``) records the file's digest, the checkpoint and run
it came from, the check, and library versions. Optional packages are imported when needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fulmen.export.card import card_path, check_card, inspect_card, read_card
from fulmen.export.formats import FORMATS, ExportError, format_of

__all__ = [
    "FORMATS",
    "ExportError",
    "card_path",
    "check_card",
    "export",
    "export_checkpoint",
    "inspect_card",
    "read_card",
]


def export(
    system: Any,
    path: str | os.PathLike[str],
    *,
    input: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    force: bool = False,
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Export ``system`` to ``path`` (format by suffix: .onnx, .pt2, .safetensors), check it, and
    write its model card beside it (``path + ".json"``); returns the card.

    ``input``: a tensor or a tuple of tensors for ``forward`` (default: ``system.example_input_array``).
    ``rtol``/``atol``: the tolerance of the check (default 1e-4/1e-5 for float32 outputs, 1e-2/1e-3
    for 16-bit ones). ``force``: keep a file whose outputs differ beyond it (the card says so).
    ``source``: the checkpoint the weights came from (a path; the card then records its digests,
    run folder, audit head and metrics) or a ready ``source`` dict. Raises ``ExportError`` (one line)
    when the system cannot be exported or the check fails; nothing is written then.
    """
    from fulmen.export.run import run_export

    extra: dict[str, Any] = {}
    if source is not None and not isinstance(source, Mapping):
        extra = _from_checkpoint(source)
    elif isinstance(source, Mapping):
        extra = {"source": dict(source)}
    return run_export(system, path, sample=input, rtol=rtol, atol=atol, force=force, verbose=verbose, **extra)


def _from_checkpoint(
    ckpt_path: str | os.PathLike[str], ckpt: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The card's source, hyperparameters and metrics from the checkpoint at ``ckpt_path``."""
    from fulmen.checkpoint.io import load_checkpoint
    from fulmen.export.card import checkpoint_source

    if ckpt is None:
        ckpt = load_checkpoint(ckpt_path, verify=True)
    return {
        "source": checkpoint_source(ckpt_path, ckpt),
        "hyperparameters": dict(ckpt.get("hyper_parameters") or {}),
        "metrics": dict(ckpt.get("callback_metrics") or {}),
    }


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    system_class: type | str | None = None,
    input: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    force: bool = False,
    verify: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Export the checkpoint at ``ckpt_path`` to ``path`` (see ``export``); returns the card.

    The system class is ``system_class`` (a class or ``"package.module:Class"``), else the one
    its run folder's run.json names; a safetensors export needs neither (it writes the checkpoint's
    weights). The checkpoint is loaded safely (weights only, its content digest checked unless
    ``verify=False``); the loader's errors pass through.
    """
    from fulmen.checkpoint.io import load_checkpoint
    from fulmen.export.run import run_export, write_weights
    from fulmen.export.system_class import resolve_system_class

    ckpt = load_checkpoint(ckpt_path, verify=verify)
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise ExportError(
            f"{os.fspath(ckpt_path)!r} has a 'state_dict' that is a {type(ckpt.get('state_dict')).__name__}, "
            f"not a mapping of names to tensors; nothing to export."
        )
    extra = _from_checkpoint(ckpt_path, ckpt)
    if format_of(path) == "safetensors":  # the checkpoint's own weights: no class needed
        return write_weights(ckpt["state_dict"], path, verbose=verbose, **extra)
    cls = resolve_system_class(ckpt_path, system_class, extra["source"], required=True)
    system = cls.load_from_checkpoint(ckpt_path, verify=False)  # type: ignore[union-attr]  # (checked above)
    return run_export(system, path, sample=input, rtol=rtol, atol=atol, force=force, verbose=verbose, **extra)
