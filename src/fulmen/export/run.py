"""The export procedure: write under a temporary name, check in the file's runtime, then keep it.

``run_export`` exports a system to ONNX or ``.pt2``; ``write_weights`` writes weights as
safetensors (from a system or a checkpoint's ``state_dict``). Both rename the file into place only
after its check passed (or ``force``), then write the model card beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from fulmen.export import check as checks
from fulmen.export import formats
from fulmen.export.card import card_path, describe_tensors, new_card, write_card
from fulmen.export.formats import ExportError, format_of


def _write_failed(path: str | os.PathLike[str], err: BaseException, needed: int | None) -> ExportError:
    """One line for a file that could not be written (a full disk): what it needs, what is free."""
    from fulmen.checkpoint.io import _bytes, _free_bytes

    free = _free_bytes(os.path.dirname(os.path.abspath(os.fspath(path))))
    space = f"; it needs about {_bytes(needed)}" if needed else ""
    space += f", {_bytes(free)} are free there" if free is not None else ""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    return ExportError(f"could not write {os.fspath(path)!r}: {reason}{space}; nothing was written.")


def _is_write_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) or "No space left on device" in str(err)  # safetensors: SafetensorError


def _temporary(out: str) -> str:
    """``.NAME.tmp-PID.SUFFIX`` beside ``out``: hidden, and with the format's own suffix (torch's
    ``.pt2`` reader and writer warn about any other)."""
    stem, suffix = os.path.splitext(os.path.basename(out))
    return os.path.join(os.path.dirname(out), f".{stem}.tmp-{os.getpid()}{suffix}")


def _final(tmp: str) -> str:
    """The file a temporary name stands for."""
    folder, name = os.path.split(tmp)
    return os.path.join(folder, name[1:].replace(f".tmp-{os.getpid()}", ""))


def _example(system: Any, sample: Any) -> tuple[tuple[torch.Tensor, ...], str]:
    """The inputs to export and check with, as a tuple of tensors, and where they came from."""
    given = sample is not None
    if sample is None:
        sample = getattr(system, "example_input_array", None)
    if sample is None:
        raise ExportError(
            f"{type(system).__name__} has no example input to export and check with: set "
            f"`self.example_input_array = torch.randn(batch, ...)` in its __init__, or pass one "
            f"(input=... in Python, --input FILE.pt holding a tensor or a tuple of tensors on the command line)."
        )
    if hasattr(system, "_example_for_export"):  # the batch transfer hooks, the system's device
        sample = system._example_for_export("export", sample, "input")
    args = tuple(sample) if isinstance(sample, (tuple, list)) else (sample,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        kinds = ", ".join(type(a).__name__ for a in args) or "nothing"
        raise ExportError(
            f"the example input of {type(system).__name__} must be a tensor or a tuple of tensors (the "
            f"arguments of forward), got {kinds}."
        )
    return args, "given" if given else "example_input_array"


def _eager(system: Any, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return _eager_named(system, args)[0]


def _eager_named(system: Any, args: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[str]]:
    """The eager system's outputs on ``args`` (eval mode, no gradients), flattened, and their names:
    a dict's keys when ``forward`` returns a flat dict of tensors, else ``output`` (``output_0``, ...)."""
    from fulmen.system import _exporting

    with _exporting(system):
        result = system(*args)
    outputs = [t.detach().cpu() for t in checks.flatten(result)]
    if isinstance(result, Mapping) and all(isinstance(v, torch.Tensor) for v in result.values()):
        return outputs, [str(k) for k in result]
    return outputs, formats.tensor_names("output", len(outputs))


def _write(system: Any, fmt: str, args: tuple[torch.Tensor, ...], tmp: str, outputs: list[str]) -> list[str]:
    """Write ``system`` in ``fmt`` to ``tmp``; torch's refusals become one ExportError line."""
    from fulmen.system import _exporting

    writer = formats.write_onnx if fmt == "onnx" else formats.write_pt2
    # A batch of one would be fixed at 1 by torch's exporters: export a batch of two.
    export_args = checks.other_batch(args) if all(a.dim() and a.shape[0] == 1 for a in args) else args
    try:
        with _exporting(system):
            return writer(system, export_args, tmp, True, outputs)
    except ExportError:
        raise
    except Exception as err:
        if isinstance(err, OSError):
            raise _write_failed(_final(tmp), err, None) from err
        raise ExportError(formats.describe_failure(system, fmt, err, export_args)) from err


def _run_file(fmt: str, tmp: str, batches: list[tuple[torch.Tensor, ...]]) -> list[list[torch.Tensor]]:
    if fmt == "onnx":
        return [checks.run_onnx(tmp, b) for b in batches]
    module = checks.load_pt2(tmp)
    with torch.no_grad():
        return [[t.detach().cpu() for t in checks.flatten(module(*b))] for b in batches]


def _is_dynamic(fmt: str, tmp: str, notes: list[str]) -> bool:
    if fmt == "pt2":
        return not any("static" in n for n in notes)
    import onnx

    graph = onnx.load(tmp, load_external_data=False).graph
    dims = [i.type.tensor_type.shape.dim for i in graph.input]
    return all(not d or d[0].HasField("dim_param") for d in dims)


def _check(
    fmt: str, tmp: str, system: Any, args: tuple[torch.Tensor, ...], dynamic: bool, tol: tuple[float, float]
) -> tuple[float, str | None, list[int]]:
    """Run the written file on ``args`` (and at batch + 1 when dynamic); ``(largest difference,
    what is wrong or None, batch sizes checked)``."""
    batches = [args, checks.other_batch(args)] if dynamic and args[0].dim() else [args]
    try:
        got = _run_file(fmt, tmp, batches)
    except Exception as err:  # the runtime refused the file or an input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return float("inf"), f"the exported file does not run in its runtime: {first}", []
    largest, problem = 0.0, None
    for batch, outputs in zip(batches, got):
        diff, wrong = checks.compare(outputs, _eager(system, batch), *tol)
        largest = max(largest, diff)
        problem = problem or (f"at batch size {batch[0].shape[0]}: {wrong}" if wrong else None)
    return largest, problem, [int(b[0].shape[0]) for b in batches if b[0].dim()]


def run_export(
    system: Any,
    path: str | os.PathLike[str],
    *,
    sample: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    force: bool = False,
    verbose: bool = True,
    **card_fields: Any,
) -> dict[str, Any]:
    """Export, check and keep (see ``fulmen.export.export``); returns the model card."""
    fmt = format_of(path)
    if fmt == "safetensors":
        return write_weights(system.state_dict(), path, system=system, verbose=verbose, **card_fields)
    out = os.path.abspath(os.fspath(path))
    args, origin = _example(system, sample)
    eager, names = _eager_named(system, args)
    default = checks.default_tolerance(eager)
    tol = (default[0] if rtol is None else float(rtol), default[1] if atol is None else float(atol))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = _temporary(out)
    try:
        notes = _write(system, fmt, args, tmp, names)
        dynamic = _is_dynamic(fmt, tmp, notes)
        if not dynamic and not any("static" in n for n in notes):
            notes.append(
                "the exporter fixed the batch size (the model's code fixes it), so the batch dimension is static"
            )
        largest, problem, sizes = _check(fmt, tmp, system, args, dynamic, tol)
        runtime = "onnxruntime" if fmt == "onnx" else "torch.export.load"
        if verbose:
            print(
                f"checked {os.path.basename(out)} in {runtime} at batch size(s) {sizes or 'n/a'}: largest difference "
                f"{largest:.3g} (tolerance rtol={tol[0]:g}, atol={tol[1]:g})"
            )
        if problem and not force:
            raise ExportError(
                f"refused to write {out}: the exported model's outputs differ from the eager system's {problem}; "
                f"nothing was written (pass looser rtol/atol, or force=True / --force to write it with a warning in the card)."
            )
        check = {
            "input": origin,
            "rtol": tol[0],
            "atol": tol[1],
            "max_abs_diff": _number(largest),
            "passed": problem is None,
            "forced": bool(problem and force),
            "batch_sizes": sizes,
        }
        if problem:
            check["warning"] = f"written with force although the check failed: {problem}"
        fields = {**card_fields, "check": check, "notes": [*card_fields.get("notes", []), *notes]}
        fields["inputs"] = describe_tensors(formats.tensor_names("input", len(args)), list(args), dynamic)
        fields["outputs"] = describe_tensors(names, eager, dynamic)
        return _keep(tmp, out, fmt, system, fields, verbose)
    finally:
        for left in (tmp, tmp + ".data"):  # (.data: external weights, should an exporter write them)
            if os.path.exists(left):
                os.remove(left)


def _number(value: float) -> float | str:
    return value if value != float("inf") else "inf"


def write_weights(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    system: Any = None,
    verbose: bool = True,
    **card_fields: Any,
) -> dict[str, Any]:
    """Write the tensors of ``state_dict`` as safetensors, reload and compare them bit for bit,
    keep the file and write its card; returns the card."""
    out = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = _temporary(out)
    source = card_fields.get("source") or {}
    metadata = {"format": "pt"}
    if source.get("checkpoint"):
        metadata["fulmen_checkpoint"] = os.path.basename(str(source["checkpoint"]))
    if source.get("content_digest"):
        metadata["fulmen_digest"] = (
            f"{source.get('digest_algorithm', 'sha256-tensors-v1')}:{source['content_digest']}"
        )
    try:
        try:
            tensors = formats.write_safetensors(state_dict, tmp, metadata)
        except Exception as err:
            if not _is_write_failure(err):
                raise
            needed = sum(
                t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor)
            )
            raise _write_failed(path, err, needed) from err
        problem = checks.compare_weights(tmp, tensors)
        if problem:
            raise ExportError(
                f"refused to write {out}: reloading the safetensors file gave other weights: {problem}."
            )
        skipped = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        notes = ["weights only"] + ([f"left out non-tensor entries: {', '.join(skipped)}"] if skipped else [])
        if verbose:
            print(f"checked {os.path.basename(out)}: {len(tensors)} tensors reload bit for bit")
            if skipped:
                print(notes[-1])
        check = {
            "input": None,
            "rtol": 0.0,
            "atol": 0.0,
            "max_abs_diff": 0.0,
            "passed": True,
            "forced": False,
            "method": "reloaded and compared bit for bit",
        }
        fields = {**card_fields, "check": check, "notes": [*card_fields.get("notes", []), *notes]}
        fields["weights"] = [
            {"name": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for k, t in tensors.items()
        ]
        return _keep(tmp, out, "safetensors", system, fields, verbose, label=f"{len(tensors)} tensors to ")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _keep(
    tmp: str, out: str, fmt: str, system: Any, fields: dict[str, Any], verbose: bool, label: str = ""
) -> dict[str, Any]:
    """Rename the checked file into place and write its card beside it."""
    from fulmen.utils.files import fsync_dir, plain_file_mode

    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, plain_file_mode())
    os.replace(tmp, out)
    fsync_dir(os.path.dirname(out))
    source = dict(fields.get("source") or {})
    if system is not None and not source.get("system"):
        source["system"] = f"{type(system).__module__}.{type(system).__qualname__}"
    source.setdefault("checkpoint", None)
    if system is not None and not fields.get("hyperparameters"):
        fields["hyperparameters"] = dict(getattr(system, "hparams", {}) or {})
    card = new_card(out, fmt, **{**fields, "source": source})
    write_card(card, card_path(out))
    if verbose:
        forced = (
            " (FORCED: the check failed, see the card's check.warning)" if card["check"].get("forced") else ""
        )
        print(f"wrote {label}{out} and its model card {card_path(out)}{forced}")
    return card
