"""Each format's round trip: the exported file, run in its own runtime, computes what the system does."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from fulmen.export import check_card, export, read_card
from tests.export.export_systems import MLP, FixedBatch, TwoInOut

pytest.importorskip("onnxruntime")


def printed_tolerance(out: str) -> tuple[float, float, float]:
    """(largest difference, rtol, atol) from the line export prints."""
    m = re.search(r"largest difference (\S+) \(tolerance rtol=(\S+), atol=(\S+)\)", out)
    assert m, out
    return float(m[1]), float(m[2]), float(m[3])


def eager(system: MLP, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return system.eval()(x)


def test_onnx_round_trip_at_other_batch_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    system = MLP()
    card = export(system, tmp_path / "model.onnx")
    largest, rtol, atol = printed_tolerance(capsys.readouterr().out)
    assert (rtol, atol) == (1e-4, 1e-5) and largest <= atol
    assert card["check"] == {
        "input": "example_input_array", "rtol": rtol, "atol": atol, "max_abs_diff": card["check"]["max_abs_diff"],
        "passed": True, "forced": False, "batch_sizes": [4, 5],
    }
    assert card["inputs"] == [{"name": "input", "shape": [None, 8], "dtype": "float32"}]
    assert card["outputs"] == [{"name": "output", "shape": [None, 2], "dtype": "float32"}]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 17):
        x = torch.randn(batch, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), eager(system, x), rtol=rtol, atol=atol)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.json"]  # no temporary file left
    assert check_card(tmp_path / "model.onnx.json") == []


def test_pt2_round_trip_at_other_batch_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    system = MLP()
    card = system.export(tmp_path / "model.pt2")  # System.export calls fulmen.export.export
    largest, rtol, atol = printed_tolerance(capsys.readouterr().out)
    assert largest <= atol and card["check"]["passed"] and card["model"]["format"] == "pt2"
    assert card["inputs"][0]["shape"] == [None, 8]
    module = torch.export.load(str(tmp_path / "model.pt2")).module()
    for batch in (2, 9):
        x = torch.randn(batch, 8)
        torch.testing.assert_close(module(x), eager(system, x), rtol=rtol, atol=atol)
    assert read_card(tmp_path / "model.pt2") == card  # given the model file, its card beside it


def test_safetensors_round_trip_is_bitwise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file

    system = MLP()
    card = export(system, tmp_path / "model.safetensors")
    assert "4 tensors reload bit for bit" in capsys.readouterr().out
    loaded = load_file(str(tmp_path / "model.safetensors"))
    state = system.state_dict()
    assert set(loaded) == set(state)
    for name, value in state.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    assert card["check"]["passed"] and card["check"]["max_abs_diff"] == 0.0
    assert {w["name"] for w in card["weights"]} == set(state)
    assert card["hyperparameters"] == {"features": 8, "hidden": 16, "example": True}


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_model_that_fixes_the_batch_size_is_exported_static_with_a_note(tmp_path: Path, suffix: str) -> None:
    card = export(FixedBatch(), tmp_path / f"model{suffix}", verbose=False)
    assert card["inputs"][0]["shape"] == [4, 8] and card["check"]["batch_sizes"] == [4]
    assert any("fixes" in note and "the batch dimension is static" in note for note in card["notes"])
    if suffix == ".pt2":
        module = torch.export.load(str(tmp_path / "model.pt2")).module()
        with pytest.raises(Exception):  # noqa: B017 (torch raises its own guard error at another size)
            module(torch.randn(5, 8))


def test_the_card_is_the_agreed_format(tmp_path: Path) -> None:
    export(MLP(), tmp_path / "model.pt2")
    with open(tmp_path / "model.pt2.json") as f:
        card = json.load(f)
    assert card["format"] == 1 and card["created"].endswith("Z")
    assert set(card) >= {"model", "source", "hyperparameters", "metrics", "inputs", "outputs", "check", "versions"}
    data = (tmp_path / "model.pt2").read_bytes()
    import hashlib

    assert card["model"] == {
        "file": "model.pt2", "format": "pt2", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)
    }
    assert card["source"]["checkpoint"] is None and card["source"]["system"] == "tests.export.export_systems.MLP"
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["python"]


def test_several_inputs_and_named_outputs(tmp_path: Path) -> None:
    import onnxruntime

    system = TwoInOut()
    card = export(system, tmp_path / "model.onnx", verbose=False)
    assert [i["name"] for i in card["inputs"]] == ["input_0", "input_1"]
    assert card["outputs"] == [
        {"name": "logits", "shape": [None, 3], "dtype": "float32"},
        {"name": "probs", "shape": [None, 3], "dtype": "float32"},
    ]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
    x, z = torch.randn(7, 4), torch.randn(7, 2)
    logits, probs = session.run(None, {"input_0": x.numpy(), "input_1": z.numpy()})
    with torch.no_grad():
        want = system.eval()(x, z)
    torch.testing.assert_close(torch.from_numpy(logits), want["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(probs), want["probs"], rtol=1e-4, atol=1e-5)


def test_16_bit_outputs_get_the_looser_default_tolerance(tmp_path: Path) -> None:
    system = MLP().half()
    system.example_input_array = system.example_input_array.half()
    card = export(system, tmp_path / "model.pt2", verbose=False)
    assert (card["check"]["rtol"], card["check"]["atol"]) == (1e-2, 1e-3)
    assert card["inputs"][0]["dtype"] == card["outputs"][0]["dtype"] == "float16"


def test_an_example_batch_of_one_still_gives_a_dynamic_batch(tmp_path: Path) -> None:
    card = export(MLP(example=False), tmp_path / "model.pt2", input=torch.randn(1, 8), verbose=False)
    assert card["inputs"][0]["shape"] == [None, 8] and card["check"]["batch_sizes"] == [1, 2]
    module = torch.export.load(str(tmp_path / "model.pt2")).module()
    assert module(torch.randn(6, 8)).shape == (6, 2)
