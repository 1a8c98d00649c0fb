"""``fulmen serve`` under real HTTP on localhost: a server process per model, httpx clients."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from servable import MLP
from serve_helpers import make_onnx, make_pt2, running_server


@pytest.fixture(scope="module")
def mlp() -> MLP:
    return MLP().eval()


@pytest.fixture(scope="module")
def pt2_server(tmp_path_factory: pytest.TempPathFactory, mlp: MLP) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("pt2")
    path = make_pt2(folder, mlp)
    flags = ("--max-batch-size", "64", "--max-wait-ms", "50", "--max-request-rows", "100", "--max-request-bytes", "200000")
    with running_server(path, *flags) as url:
        yield url, path


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def b64(x: np.ndarray) -> dict[str, object]:
    return {"dtype": str(x.dtype), "shape": list(x.shape), "b64": base64.b64encode(x.astype(x.dtype.newbyteorder("<")).tobytes()).decode()}


def test_pt2_json_outputs_equal_the_eager_model_bitwise(pt2_server: tuple[str, Path], mlp: MLP) -> None:
    url, _ = pt2_server
    x = rows(5, 0)
    r = httpx.post(url + "/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"], dtype=np.float32)
    assert got.shape == (5, 3)
    assert np.array_equal(got, eager(mlp, x))
    named = httpx.post(url + "/predict", json={"inputs": {"input": x.tolist()}})
    assert np.array_equal(np.asarray(named.json()["outputs"], dtype=np.float32), got)


def test_pt2_tensor_encoding_round_trips_bitwise(pt2_server: tuple[str, Path], mlp: MLP) -> None:
    url, _ = pt2_server
    x = rows(7, 1)
    r = httpx.post(url + "/predict", json={"inputs": b64(x)})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["dtype"] == "float32" and out["shape"] == [7, 3]
    got = np.frombuffer(base64.b64decode(out["b64"]), dtype="<f4").reshape(7, 3)
    assert np.array_equal(got, eager(mlp, x))
    as_json = httpx.post(url + "/predict", json={"inputs": b64(x), "encoding": "json"}).json()["outputs"]
    assert np.array_equal(np.asarray(as_json, dtype=np.float32), got)


def test_concurrent_requests_are_batched_and_answered_with_their_own_rows(pt2_server: tuple[str, Path], mlp: MLP) -> None:
    url, _ = pt2_server
    before = httpx.get(url + "/health").json()["stats"]
    inputs = [rows(1 + i % 3, 100 + i) for i in range(16)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json={"inputs": x.tolist()}) for x in inputs))

    responses = asyncio.run(fire())
    for x, r in zip(inputs, responses):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.asarray(r.json()["outputs"], dtype=np.float32), eager(mlp, x), rtol=1e-5, atol=1e-6)
    after = httpx.get(url + "/health").json()["stats"]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 16
    assert batches < requests, f"16 concurrent requests ran as {batches} batches: nothing was batched"
    assert after["largest_batch_requests"] > 1
    assert after["rows"] - before["rows"] == sum(len(x) for x in inputs)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"rows": [[1.0] * 8]}).encode(), '{"inputs": ...}'),
        (json.dumps({"inputs": [[1.0] * 5]}).encode(), "expected shape input: float32[N, 8]"),
        (json.dumps({"inputs": [1.0] * 8}).encode(), "expected 2 dimensions"),
        (json.dumps({"inputs": [["a"] * 8]}).encode(), "expected numbers"),
        (json.dumps({"inputs": [[1.0] * 8, [1.0] * 7]}).encode(), "ragged"),
        (json.dumps({"inputs": b64(np.ones((2, 8), dtype=np.int64))}).encode(), "expected dtype float32, got int64"),
        (json.dumps({"inputs": {"dtype": "float32", "shape": [2, 8], "b64": "AAAA"}}).encode(), "needs 64 bytes"),
        (json.dumps({"inputs": {"x": [[1.0] * 8]}}).encode(), "do not match the model's inputs ['input']"),
        (json.dumps({"inputs": []}).encode(), "expected 2 dimensions"),
    ],
)
def test_a_malformed_request_gets_400_and_the_server_keeps_serving(
    pt2_server: tuple[str, Path], mlp: MLP, body: bytes, message: str
) -> None:
    url, _ = pt2_server
    r = httpx.post(url + "/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]
    x = rows(2, 3)
    good = httpx.post(url + "/predict", json={"inputs": x.tolist()})
    assert good.status_code == 200
    assert np.array_equal(np.asarray(good.json()["outputs"], dtype=np.float32), eager(mlp, x))


def test_an_oversized_request_gets_413_and_the_server_keeps_serving(pt2_server: tuple[str, Path]) -> None:
    url, _ = pt2_server
    too_many = httpx.post(url + "/predict", json={"inputs": b64(rows(101, 4))})
    assert too_many.status_code == 413
    assert "101 rows" in too_many.json()["detail"] and "--max-request-rows" in too_many.json()["detail"]
    too_big = httpx.post(url + "/predict", content=b" " * 200_001, headers={"content-type": "application/json"})
    assert too_big.status_code == 413
    assert "--max-request-bytes" in too_big.json()["detail"]
    assert httpx.post(url + "/predict", json={"inputs": rows(100, 5).tolist()}).status_code == 200


def test_health_and_metadata(pt2_server: tuple[str, Path]) -> None:
    url, path = pt2_server
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok"
    assert health["model"]["format"] == "pt2"
    assert health["batching"] == {"max_batch_size": 64, "max_wait_ms": 50.0, "enabled": True}
    card = json.loads(Path(str(path) + ".json").read_text())
    assert httpx.get(url + "/metadata").json() == card


def test_onnx_outputs_match_the_eager_model(tmp_path: Path, mlp: MLP) -> None:
    path = make_onnx(tmp_path, mlp)
    x = rows(6, 7)
    with running_server(path) as url:
        r = httpx.post(url + "/predict", json={"inputs": b64(x)})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        got = np.frombuffer(base64.b64decode(out["b64"]), dtype="<f4").reshape(out["shape"])
        np.testing.assert_allclose(got, eager(mlp, x), rtol=1e-5, atol=1e-6)
        assert httpx.get(url + "/metadata").json()["model"]["format"] == "onnx"
        assert httpx.post(url + "/predict", json={"inputs": [[0.0] * 9]}).status_code == 400
