"""The request codec of ``fulmen serve``: what each input form decodes to, and what it refuses."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from fulmen.serve.codec import RequestError, TensorSpec, decode_request, encode_outputs, encode_tensor

FLOAT = [TensorSpec("input", (None, 2), "float32")]
INTS = [TensorSpec("tokens", (None, 3), "int64")]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"])
def test_tensor_objects_round_trip_bit_for_bit(dtype: str) -> None:
    array = (np.arange(6).reshape(3, 2) * 7 - 5).astype(dtype)
    spec = [TensorSpec("input", (None, 2), dtype)]
    (decoded,), b64 = decode_request({"inputs": encode_tensor(array)}, spec, 100)
    assert b64 and decoded.dtype == array.dtype and decoded.tobytes() == array.tobytes()
    out = encode_outputs([decoded], ["output"], True)["outputs"]
    assert base64.b64decode(out["b64"]) == array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_lists_are_converted_to_the_input_dtype_without_loss() -> None:
    (tokens,), b64 = decode_request({"inputs": [[1, 2, 3]]}, INTS, 100)
    assert tokens.dtype == np.int64 and tokens.tolist() == [[1, 2, 3]] and not b64
    with pytest.raises(RequestError, match="expected int64 values, got floating-point numbers"):
        decode_request({"inputs": [[1.5, 2, 3]]}, INTS, 100)
    (x,), _ = decode_request({"inputs": [[1, 2]]}, FLOAT, 100)
    assert x.dtype == np.float32


def test_the_answer_encoding_follows_the_request() -> None:
    tensor = encode_tensor(np.zeros((1, 2), dtype=np.float32))
    assert decode_request({"inputs": tensor}, FLOAT, 10)[1] is True
    assert decode_request({"inputs": tensor, "encoding": "json"}, FLOAT, 10)[1] is False
    assert decode_request({"inputs": [[0, 0]], "encoding": "b64"}, FLOAT, 10)[1] is True
    with pytest.raises(RequestError, match="'encoding' must be 'json' or 'b64'"):
        decode_request({"inputs": [[0, 0]], "encoding": "msgpack"}, FLOAT, 10)


def test_too_many_rows_is_too_large_and_no_rows_is_malformed() -> None:
    with pytest.raises(RequestError) as err:
        decode_request({"inputs": [[0, 0]] * 11}, FLOAT, 10)
    assert err.value.too_large
    with pytest.raises(RequestError) as err:
        decode_request({"inputs": encode_tensor(np.zeros((0, 2), dtype=np.float32))}, FLOAT, 10)
    assert not err.value.too_large and "no rows" in str(err.value)
