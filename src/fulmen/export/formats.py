"""Writers of the three export formats: ONNX, ``torch.export`` programs (``.pt2``) and safetensors.

Each writer writes to the path it is given (a temporary name: ``fulmen.export.export`` renames it
only after the check passed) and returns notes for the model card. The batch dimension (dimension 0
of every input tensor) is dynamic by default; a model whose code fixes it is exported with static
shapes and a note says so. Torch's exporters print much; their output is kept from the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

#: File suffix -> format name (the model card's ``model.format``).
FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".safetensors": "safetensors"}


class ExportError(RuntimeError):
    """An export that could not be made or was refused: one line saying what and what to do."""


def format_of(path: str | os.PathLike[str]) -> str:
    """The format named by ``path``'s suffix; ExportError for any other suffix."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise ExportError(
            f"cannot export to {os.fspath(path)!r}: expected a file ending in .onnx, .pt2 or .safetensors, "
            f"got {suffix or 'no suffix'!r}."
        )
    return FORMATS[suffix]


def tensor_names(prefix: str, count: int) -> list[str]:
    """``["input"]`` for one tensor, ``["input_0", "input_1", ...]`` for several (outputs alike)."""
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Torch's exporters' progress lines and warnings kept off the terminal."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_shapes(args: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if a.dim() > 0 else {} for a in args)


def _fixes_batch(err: BaseException) -> bool:
    """Whether torch refused a dynamic batch dimension because the model's code fixes it."""
    text = str(err)
    return "Constraints violated" in text or "specialized it to be a constant" in text


def export_program(module: nn.Module, args: tuple[torch.Tensor, ...], dynamic: bool) -> tuple[Any, list[str]]:
    """``torch.export.export`` of ``module`` on ``args``: (program, notes). A dynamic batch that the
    model forbids falls back to static shapes, with a note."""
    notes: list[str] = []
    with _quiet():
        if dynamic:
            try:
                return torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(args)), notes
            except Exception as err:
                if not _fixes_batch(err):
                    raise
                notes.append("the model's code fixes the batch size, so the batch dimension is static")
        return torch.export.export(module, args), notes


def write_pt2(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    dynamic: bool = True,
    outputs: list[str] | None = None,
) -> list[str]:
    """Write ``module`` as a ``torch.export`` program (``torch.export.save``); returns notes."""
    program, notes = export_program(module, args, dynamic)
    torch.export.save(program, path)
    return notes


def _onnx_packages() -> None:
    import importlib.util

    missing = [n for n in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(n) is None]
    if missing:
        raise ExportError(
            f"exporting to ONNX needs {', '.join(missing)}, not installed: pip install 'fulmen[onnx]' "
            f"(or export to .pt2, which needs torch only)."
        )


def write_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    dynamic: bool = True,
    outputs: list[str] | None = None,
) -> list[str]:
    """Write ``module`` as ONNX with torch's dynamo-based exporter (``dynamo=True``, offline), falling
    back to the TorchScript-based one when that fails for a reason other than the model itself;
    returns notes. Inputs are named ``input`` (``input_0``, ...), outputs ``outputs`` (default ``output``)."""
    _onnx_packages()
    names, out_names = tensor_names("input", len(args)), outputs or ["output"]
    notes: list[str] = []
    with _quiet():
        try:
            shapes = _dynamic_shapes(args) if dynamic else None
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=True,
                external_data=False,  # one self-contained file (under protobuf's 2 GiB limit)
                input_names=names,
                output_names=out_names,
                dynamic_shapes=shapes,
            )
            return notes
        except Exception as err:
            if _model_error(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            notes.append(
                f"the dynamo-based ONNX exporter failed ({first}); the TorchScript-based one was used"
            )
        axes = {n: {0: "batch"} for n, a in zip(names, args) if a.dim() > 0} if dynamic else None
        torch.onnx.export(
            module, args, path, dynamo=False, input_names=names, output_names=out_names, dynamic_axes=axes
        )
    return notes


def _model_error(err: BaseException) -> bool:
    """Whether the exporter failed because of the model (control flow, an op with no conversion)."""
    text = str(err)
    return any(
        k in text for k in ("data-dependent", "No ONNX function found", "Unsupported", "Constraints violated")
    )


def write_safetensors(
    state_dict: Mapping[str, Any], path: str, metadata: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Write the tensors of ``state_dict`` with safetensors (tied weights stored once each);
    returns the tensors written, for the check."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExportError(
            "exporting to .safetensors needs the safetensors package, not installed: pip install 'fulmen[export]'."
        ) from None
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        if t.numel():
            if t.untyped_storage().data_ptr() in storages:
                t = t.clone()  # safetensors refuses tensors sharing memory
            storages.add(t.untyped_storage().data_ptr())
        tensors[str(name)] = t
    save_file(tensors, path, metadata=dict(metadata))
    return tensors


def describe_failure(
    system: nn.Module, fmt: str, err: BaseException, args: tuple[torch.Tensor, ...] = ()
) -> str:
    """One line for an export torch refused: the module and the op when torch's error names them,
    and the other format to try."""
    text = str(err)
    other = ".pt2" if fmt == "onnx" else ".onnx"
    op = _op_named(text)
    where = _code_line(text)
    module = _module_of(system, where) if where else (_module_of_op(system, args, op) if op else None)
    what = "data-dependent control flow" if "data-dependent" in text else "an op it cannot convert"
    parts = [f"cannot export {type(system).__name__} to {fmt}: {what}"]
    if op:
        parts.append(f"the op {op}")
    if module:
        parts.append(f"in module {module}")
    if where:
        parts.append(f"at {where[0]}:{where[1]} `{where[2]}`")
    summary = _summary(text)
    tail = f" (torch: {summary})" if summary else ""
    if what == "data-dependent control flow":
        advice = (
            f"rewrite it with tensor operations (torch.where, torch.cond); {other} goes through torch.export too, "
            f"so only .safetensors (weights only) avoids it"
        )
    else:
        advice = f"export to {other} instead, replace that op, or export the weights only to .safetensors"
    return ", ".join(parts) + tail + "; " + advice + "."


def _op_named(text: str) -> str | None:
    m = re.search(r"OpOverload\(op='([\w.]+)'", text) or re.search(r"torch\.ops\.([\w.]+)", text)
    return m.group(1) if m else None


def _code_line(text: str) -> tuple[str, int, str] | None:
    """``(file, line, code)`` of "The following call raised this error" in torch's message."""
    m = re.search(r'raised this error:\s*\n\s*File "([^"]+)", line (\d+), in \w+\n\s*(.+)', text)
    return (m.group(1), int(m.group(2)), m.group(3).strip()) if m else None


def _module_of(system: nn.Module, where: tuple[str, int, str]) -> str | None:
    """``name (Class)`` of the submodule whose ``forward`` holds the line ``where`` names."""
    import inspect

    for name, module in system.named_modules():
        forward = type(module).forward
        try:
            lines, start = inspect.getsourcelines(forward)
            file = inspect.getsourcefile(forward)
        except (OSError, TypeError):
            continue
        if (
            file
            and os.path.realpath(file) == os.path.realpath(where[0])
            and start <= where[1] < start + len(lines)
        ):
            return f"{name or '(the system)'} ({type(module).__name__})"
    return None


def _module_of_op(system: nn.Module, args: tuple[torch.Tensor, ...], op: str) -> str | None:
    """``name (Class)`` of the submodule that calls ``op``, from a ``torch.export`` program's node
    metadata (the ONNX exporter's message names the op but not the module)."""
    try:
        program, _ = export_program(system, args, dynamic=False)
        with _quiet():
            program = program.run_decompositions()  # the ops the ONNX exporter saw
    except Exception:
        return None
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(op + "."):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].strip("'>")
                return f"{path or '(the system)'} ({name})"
            return f"(the system) ({type(system).__name__})"
    return None


def _summary(text: str) -> str:
    """The line of torch's message that says what went wrong."""
    for pattern in (
        r"No ONNX function found for [^\n]*?(?=\. Failure|$)",
        r"Could not guard on data-dependent expression [^\n]*?(?= \(unhinted|\.\s|$)",
    ):
        m = re.search(pattern, text, re.MULTILINE)
        if m:
            return m.group(0).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:200] if lines else ""
