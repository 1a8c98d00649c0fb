"""A served model with two inputs and two outputs: named inputs in, named outputs out."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from servable import TwoWay
from serve_helpers import running_server

from fulmen.export import export


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_named_inputs_and_outputs(tmp_path: Path, suffix: str) -> None:
    system = TwoWay().eval()
    path = tmp_path / f"two{suffix}"
    export(system, path, verbose=False)
    x, y = torch.randn(5, 3), torch.randn(5, 3)
    with torch.no_grad():
        first, second = system(x, y)
    with running_server(path) as url:
        r = httpx.post(url + "/predict", json={"inputs": {"input_0": x.tolist(), "input_1": y.tolist()}})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        assert sorted(out) == ["output_0", "output_1"]
        np.testing.assert_allclose(np.asarray(out["output_0"], dtype=np.float32), first.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out["output_1"], dtype=np.float32), second.numpy(), rtol=1e-5, atol=1e-6)
        one = httpx.post(url + "/predict", json={"inputs": x.tolist()})
        assert one.status_code == 400 and "the model takes 2 inputs (input_0, input_1)" in one.json()["detail"]
        rows = httpx.post(url + "/predict", json={"inputs": {"input_0": x.tolist(), "input_1": y[:2].tolist()}})
        assert rows.status_code == 400 and "same number of rows, got [2, 5]" in rows.json()["detail"]
