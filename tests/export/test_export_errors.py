"""Bad input to export: each refused in one clear line, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fulmen import cli
from fulmen.checkpoint import write_checkpoint
from fulmen.export import ExportError, export
from tests.export.export_systems import MLP, Branchy, Eigen, Noisy

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def test_data_dependent_control_flow_names_the_module_and_suggests_the_other_format(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        export(Branchy(), tmp_path / "model.pt2")
    message = one_line(str(caught.value))
    assert message.startswith("cannot export Branchy to pt2: data-dependent control flow")
    assert "in module gate (Gate)" in message and "`if x.sum() > 0:`" in message
    assert "torch.where, torch.cond" in message and ".onnx goes through torch.export too" in message
    assert "(torch: Could not guard on data-dependent expression Eq(u0, 1))" in message
    assert os.listdir(tmp_path) == []


def test_an_op_with_no_onnx_conversion_is_named_with_its_module(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        export(Eigen(), tmp_path / "model.onnx")
    message = one_line(str(caught.value))
    assert message.startswith("cannot export Eigen to onnx: an op it cannot convert, the op aten.linalg_eig")
    assert "in module eig (Eig)" in message and "export to .pt2 instead" in message
    assert os.listdir(tmp_path) == []
    assert export(Eigen(), tmp_path / "model.pt2", verbose=False)["check"]["passed"]  # the suggestion works


def test_outputs_beyond_tolerance_are_refused_then_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    with pytest.raises(ExportError) as caught:
        export(Noisy(), tmp_path / "model.pt2")
    message = one_line(str(caught.value))
    assert message.startswith(f"refused to write {tmp_path / 'model.pt2'}: the exported model's outputs differ")
    assert "nothing was written" in message and "--force" in message
    assert "largest difference" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []
    card = export(Noisy(), tmp_path / "model.pt2", force=True)
    assert card["check"]["forced"] is True and card["check"]["passed"] is False
    assert card["check"]["warning"].startswith("written with force although the check failed")
    assert sorted(os.listdir(tmp_path)) == ["model.pt2", "model.pt2.json"]


def test_the_tolerance_can_be_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = export(MLP(), tmp_path / "model.pt2", rtol=0.0, atol=0.5)
    assert (card["check"]["rtol"], card["check"]["atol"]) == (0.0, 0.5)
    assert "(tolerance rtol=0, atol=0.5)" in capsys.readouterr().out


def test_no_example_input_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        export(MLP(example=False), tmp_path / "model.onnx")
    message = one_line(str(caught.value))
    assert "self.example_input_array = torch.randn(" in message and "--input FILE.pt" in message
    card = export(MLP(example=False), tmp_path / "model.pt2", input=torch.randn(3, 8), verbose=False)
    assert card["check"]["input"] == "given" and card["check"]["batch_sizes"] == [3, 4]


def checkpoint_of(system: MLP, path: Path) -> Path:
    state = {"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams), "global_step": 0}
    write_checkpoint(state, path)  # a checkpoint outside any run folder
    return path


def test_cli_without_a_system_class_says_to_pass_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpoint_of(MLP(example=False), tmp_path / "model.ckpt")
    assert cli.main(["export", str(ckpt), "--to", str(tmp_path / "out" / "model.pt2")]) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"fulmen export: cannot tell which System class {str(ckpt)!r} is:")
    assert "pass --system package.module:Class" in err
    system = "tests.export.export_systems:MLP"
    argv = ["export", str(ckpt), "--to", str(tmp_path / "out" / "model.pt2"), "--system", system]
    assert cli.main(argv) == 1  # MLP(example=False) has no example input
    assert "--input FILE.pt" in one_line(capsys.readouterr().err)
    torch.save(torch.randn(2, 8), tmp_path / "x.pt")
    assert cli.main([*argv, "--input", str(tmp_path / "x.pt")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["model.pt2", "model.pt2.json"]
    # weights only need no class
    assert cli.main(["export", str(ckpt), "--to", str(tmp_path / "w.safetensors")]) == 0


def test_cli_refuses_a_damaged_checkpoint_in_one_line(tmp_path: Path) -> None:
    ckpt = checkpoint_of(MLP(), tmp_path / "model.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # cut short
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    argv = ["export", str(ckpt), "--to", str(tmp_path / "out" / "model.onnx"), "--system", "tests.export.export_systems:MLP"]
    done = subprocess.run([sys.executable, "-m", "fulmen", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("fulmen export: Refused to load ") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = checkpoint_of(MLP(), tmp_path / "model.ckpt")
    assert cli.main(["export", str(ckpt), "--to", str(tmp_path / "model.tflite")]) == 2
    assert "expected a file ending in .onnx, .pt2 or .safetensors" in one_line(capsys.readouterr().err)
