"""Request and response encoding of ``fulmen serve``: JSON lists, or raw tensors in base64.

A request is a JSON object whose ``"inputs"`` is one of:

- ``[[...], ...]``: the model's single input, as nested lists (the first dimension is the rows);
- ``{"name": [[...], ...], ...}``: each named input (names from the model card);
- a tensor object ``{"dtype": "float32", "shape": [2, 64], "b64": "<base64>"}`` in place of any
  nested list: the array's raw little-endian bytes in C order, base64-encoded. It skips JSON's
  number parsing, so it is the fast path for large requests.

The response is ``{"outputs": ...}`` in the same shape: a single output as a list (or a tensor
object), several as ``{"name": ...}``. Outputs come back as tensor objects when any input was
one, or when the request says ``"encoding": "b64"`` (``"json"`` forces lists).

Everything a request can get wrong raises ``RequestError`` with one line saying what was
expected and what came; the server answers it with HTTP 400 (413 for ``too_large``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

#: dtypes a tensor object may name (little-endian on the wire).
DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


class RequestError(ValueError):
    """A request the server refuses: HTTP 400, or 413 when ``too_large``."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, shape (None for a dynamic dimension) and dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def decode_tensor(obj: dict[str, Any], where: str) -> np.ndarray:
    """A tensor object (``dtype``, ``shape``, ``b64``) as a numpy array."""
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("b64")
    if dtype not in DTYPES or dtype == "bfloat16":
        raise RequestError(f"{where}: dtype {dtype!r} is not one of {', '.join(d for d in DTYPES if d != 'bfloat16')}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not isinstance(data, str):
        raise RequestError(f"{where}: 'b64' must be a base64 string of the raw little-endian bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{where}: 'b64' is not valid base64 ({err})") from None
    np_dtype = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(raw) != expected:
        raise RequestError(f"{where}: shape {shape} of {dtype} needs {expected} bytes, the data has {len(raw)}")
    # bytearray: a writable buffer, so torch.from_numpy gets an array it may share without a warning
    return np.frombuffer(bytearray(raw), dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="), copy=False)


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """A numpy array as a tensor object (raw little-endian bytes, base64)."""
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": str(array.dtype), "shape": list(array.shape), "b64": base64.b64encode(little.tobytes()).decode("ascii")}


def _from_lists(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Nested JSON lists as an array of ``spec.dtype``; refuses ragged lists and lossy casts."""
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nesting (numpy >= 1.24)
        raise RequestError(f"{where}: the nested lists are ragged ({err}); every row needs the same length") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise RequestError(f"{where}: expected numbers in nested lists, got {array.dtype.name} values")
    target = np.dtype(spec.dtype)
    if array.dtype.kind == "f" and target.kind in "biu":
        raise RequestError(f"{where}: expected {spec.dtype} values, got floating-point numbers")
    if array.dtype.kind in "iu" and target.kind == "b":
        raise RequestError(f"{where}: expected bool values (true/false), got integers")
    return array.astype(target)


def _check(array: np.ndarray, spec: TensorSpec, where: str) -> None:
    if array.dtype != np.dtype(spec.dtype):
        raise RequestError(f"{where}: expected dtype {spec.dtype}, got {array.dtype}")
    if array.ndim != len(spec.shape):
        raise RequestError(
            f"{where}: expected {len(spec.shape)} dimensions ({spec.describe()}), got shape {list(array.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if want is not None and want != got:
            raise RequestError(f"{where}: expected shape {spec.describe()}, got {list(array.shape)} (dimension {axis})")


def _one_input(value: Any, spec: TensorSpec, where: str) -> tuple[np.ndarray, bool]:
    if isinstance(value, dict):
        array, b64 = decode_tensor(value, where), True
    elif isinstance(value, list):
        array, b64 = _from_lists(value, spec, where), False
    else:
        raise RequestError(f"{where}: expected nested lists or a tensor object, got {type(value).__name__}")
    _check(array, spec, where)
    return array, b64


def _named(inputs: Any, specs: list[TensorSpec]) -> list[tuple[Any, TensorSpec, str]]:
    if isinstance(inputs, dict) and "b64" not in inputs:
        names = [s.name for s in specs]
        if sorted(inputs) != sorted(names):
            raise RequestError(f"'inputs' names {sorted(inputs)} do not match the model's inputs {names}")
        return [(inputs[s.name], s, f"inputs[{s.name!r}]") for s in specs]
    if len(specs) != 1:
        raise RequestError(
            f"the model takes {len(specs)} inputs ({', '.join(s.name for s in specs)}): send "
            f'{{"inputs": {{"name": [[...]], ...}}}}'
        )
    return [(inputs, specs[0], "inputs")]


def decode_request(body: Any, specs: list[TensorSpec], max_rows: int) -> tuple[list[np.ndarray], bool]:
    """The request's input arrays (in ``specs`` order) and whether to answer with tensor objects."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise RequestError('expected a JSON object {"inputs": ...}, got ' + type(body).__name__)
    encoding = body.get("encoding")
    if encoding not in (None, "json", "b64"):
        raise RequestError(f"'encoding' must be 'json' or 'b64', got {encoding!r}")
    arrays, any_b64 = [], False
    for value, spec, where in _named(body["inputs"], specs):
        array, b64 = _one_input(value, spec, where)
        arrays.append(array)
        any_b64 = any_b64 or b64
    rows = {a.shape[0] for a in arrays}
    if len(rows) != 1:
        raise RequestError(f"every input needs the same number of rows, got {sorted(rows)}")
    n = rows.pop()
    if n == 0:
        raise RequestError("the request has no rows")
    if n > max_rows:
        raise RequestError(f"the request has {n} rows, the server takes at most {max_rows} (--max-request-rows)", too_large=True)
    return arrays, (encoding == "b64") or (any_b64 and encoding != "json")


def encode_outputs(outputs: list[np.ndarray], names: list[str], b64: bool) -> dict[str, Any]:
    """The response body: one output bare, several by name."""
    values = [encode_tensor(a) if b64 else a.tolist() for a in outputs]
    if len(values) == 1:
        return {"outputs": values[0]}
    return {"outputs": dict(zip(names, values))}
