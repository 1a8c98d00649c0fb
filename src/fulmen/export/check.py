"""The check of an exported file: run it in its own runtime and compare with the eager system.

ONNX files run in an onnxruntime ``InferenceSession`` on CPU, ``.pt2`` programs through
``torch.export.load(...).module()``; both on the example input and, when the batch dimension is
dynamic, at a second batch size. The eager system runs in eval mode without gradients. A
safetensors file is reloaded and compared with the weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Default tolerances by the outputs' dtype: float32 (and wider) and 16-bit floats.
TOLERANCES = {"float32": (1e-4, 1e-5), "16-bit": (1e-2, 1e-3)}


def flatten(value: Any) -> list[torch.Tensor]:
    """The tensors of a forward's result (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in flatten(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    return []


def default_tolerance(outputs: list[torch.Tensor]) -> tuple[float, float]:
    """``(rtol, atol)``: looser when any output is a 16-bit float."""
    if any(t.dtype in (torch.float16, torch.bfloat16) for t in outputs):
        return TOLERANCES["16-bit"]
    return TOLERANCES["float32"]


def other_batch(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs at batch size + 1 (the first sample repeated at the end)."""
    return tuple(torch.cat([a, a[:1]]) if a.dim() > 0 else a for a in args)


def run_onnx(path: str, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Outputs of the ONNX file at ``path`` on ``args`` in onnxruntime (CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def load_pt2(path: str) -> Any:
    """The callable module of the ``torch.export`` program saved at ``path``."""
    return torch.export.load(path).module()


def compare(
    exported: list[torch.Tensor], eager: list[torch.Tensor], rtol: float, atol: float
) -> tuple[float, str | None]:
    """``(largest absolute difference, what is wrong or None)`` of the exported outputs vs the eager ones."""
    if len(exported) != len(eager):
        return float("inf"), f"the exported file returns {len(exported)} outputs, the system {len(eager)}"
    largest = 0.0
    for i, (got, want) in enumerate(zip(exported, eager)):
        want = want.detach().cpu()
        got = got.to(want.dtype) if got.dtype != want.dtype and got.is_floating_point() else got
        if tuple(got.shape) != tuple(want.shape):
            return float("inf"), f"output {i} has shape {tuple(got.shape)}, the system's {tuple(want.shape)}"
        if got.numel():
            largest = max(largest, float((got.double() - want.double()).abs().max()))
        if not torch.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            return largest, f"output {i} differs by up to {largest:.3g} (rtol={rtol:g}, atol={atol:g})"
    return largest, None


def compare_weights(path: str, tensors: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between the safetensors file at ``path`` and ``tensors`` (bitwise), or None."""
    from safetensors.torch import load_file

    loaded = load_file(path)
    if set(loaded) != set(tensors):
        return f"the file holds {sorted(set(loaded) ^ set(tensors))[:5]} differently from the weights"
    for name, want in tensors.items():
        got = loaded[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"{name}: {got.dtype} {tuple(got.shape)} in the file, {want.dtype} {tuple(want.shape)} in the system"
        if not torch.equal(_raw(got), _raw(want)):
            return f"{name} differs from the system's weights"
    return None


def _raw(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes (so that NaNs and signed zeros compare bit for bit)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
