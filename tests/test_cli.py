"""The fulmen command: verify and export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fulmen import cli
from fulmen.checkpoint import chain_head, load_checkpoint, write_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")


def fulmen_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "fulmen.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def make_run(root: Path) -> Path:
    run = root / "version_0"
    for step in (1, 2):
        ckpt = {"global_step": step, "epoch": 0, "state_dict": {"w": torch.full((3, 3), float(step)), "b": torch.zeros(3)}}
        write_checkpoint(ckpt, run / "checkpoints" / f"step={step}.ckpt", audit_dir=run, metrics={"loss": 1.0 / step})
    return run


def test_verify_exit_codes(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    ok = fulmen_cmd("verify", str(run))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK {run}: 2 log entries, 2 checkpoint(s) on disk verified, head {chain_head(run)}")
    assert len(ok.stdout.splitlines()) == 1

    (run / "checkpoints" / "step=2.ckpt").unlink()
    torch.save({"state_dict": {}}, run / "checkpoints" / "extra.ckpt")
    bad = fulmen_cmd("verify", str(run))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "removed_out_of_order: checkpoints/step=2.ckpt: the newest checkpoint in its folder (line 2) is missing; "
        "rotation only removes a file after a newer one is written beside it",
        "unknown_checkpoint: checkpoints/extra.ckpt: the log has no entry for this checkpoint, and fulmen's "
        "checkpointing did not write it (it holds no audit record of its own): added by hand or saved by other code",
    ]
    assert "2 problem(s)" in bad.stderr

    missing = fulmen_cmd("verify", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    usage = fulmen_cmd("frobnicate")
    assert usage.returncode == 2


def test_verify_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    head = chain_head(run)
    assert head is not None
    assert cli.main(["verify", str(run), "--no-load", "--expected-head", head]) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert cli.main(["verify", str(run), "--expected-head", "0" * 64]) == 1
    assert "no line of the log has the recorded head hash" in capsys.readouterr().out


def test_export_round_trip(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    shared = torch.randn(4, 4)
    state = {"enc.weight": shared, "dec.weight": shared, "t": torch.randn(2, 3).t(), "h": torch.randn(3).bfloat16(), "n": 3}
    path = tmp_path / "model.ckpt"
    digest = write_checkpoint({"state_dict": state}, path)
    out = tmp_path / "export" / "model.safetensors"
    done = fulmen_cmd("export", str(path), "--to", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote 4 tensors" in done.stdout and "left out non-tensor entries: n" in done.stdout
    loaded = safetensors_torch.load_file(str(out))
    assert set(loaded) == {"enc.weight", "dec.weight", "t", "h"}
    for name, value in loaded.items():
        assert value.dtype == state[name].dtype and torch.equal(value, state[name]), name
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["fulmen_digest"] == f"sha256-tensors-v1:{digest}"
    assert sorted(os.listdir(out.parent)) == ["model.safetensors", "model.safetensors.json"]  # (and its model card)


def test_export_refuses_a_tampered_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "model.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(3)}, "note": "a"}, path)
    ckpt = load_checkpoint(path, verify=False)  # (its digest, from the zip comment, goes into the pickle)
    ckpt["state_dict"]["w"][0] = 5.0
    torch.save(ckpt, path)  # the stored digest no longer matches
    assert cli.main(["export", str(path), "--to", str(tmp_path / "m.safetensors")]) == 2  # a refused file
    assert "does not match its stored digest" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
    assert cli.main(["export", str(path), "--to", str(tmp_path / "m.safetensors"), "--no-verify"]) == 0


def test_export_without_safetensors_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(SystemExit, match=r"needs the safetensors package.*pip install 'fulmen\[export\]'"):
        cli.main(["export", str(path), "--to", str(tmp_path / "m.safetensors")])


def test_console_script_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["fulmen"] == "fulmen.cli:main"
    assert any(dep.startswith("safetensors") for dep in project["optional-dependencies"]["export"])


# -- fulmen doctor ------------------------------------------------------------------------------------
TESTS = str(Path(__file__).resolve().parent)


def doctor_cmd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``fulmen doctor`` in an empty folder (it must write nothing), with tests/ importable."""
    path = os.pathsep.join([SRC, TESTS, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-m", "fulmen.cli", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )


def test_doctor_exit_codes(tmp_path: Path) -> None:
    ok = doctor_cmd(tmp_path, "helpers.doctor_cases:Healthy")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("fulmen doctor: Healthy on cpu: 0 problems, 0 warnings")

    with_data = doctor_cmd(tmp_path, "helpers.doctor_cases:Healthy", "--data", "helpers.doctor_cases:HealthyData")
    assert with_data.returncode == 0, with_data.stdout + with_data.stderr

    bad = doctor_cmd(tmp_path, "helpers.doctor_cases:UnusedLayer")
    assert bad.returncode == 1
    assert "PROBLEM  2 parameters get no gradient: head.weight, head.bias" in bad.stdout
    assert os.listdir(tmp_path) == []


def test_doctor_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "helpers.doctor_cases"]) == 2
    assert "expected package.module:Class" in capsys.readouterr().err
    assert cli.main(["doctor", "helpers.doctor_cases:Nope"]) == 2
    assert "has no Nope" in capsys.readouterr().err
    assert cli.main(["doctor", "no_such_module_here:X"]) == 2
    assert "No module named" in capsys.readouterr().err
    assert cli.main(["doctor", "helpers.doctor_cases:regression_data"]) == 2
    assert "is not a fulmen.System subclass" in capsys.readouterr().err
    assert cli.main(["doctor", "helpers.doctor_cases:Healthy", "--data", "helpers.doctor_cases:Healthy"]) == 2
    assert "is not a fulmen.DataModule subclass" in capsys.readouterr().err


def test_doctor_in_process(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["doctor", "helpers.doctor_cases:TrainInValidation"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  validation_step switches the whole model to train mode" in out


def test_report_subcommand_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.systems import TinySystem, make_loader

    import fulmen
    from fulmen.cli import main

    trainer = fulmen.Trainer(max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinySystem(), make_loader(), make_loader())
    assert main(["report", trainer.log_dir, "--out", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "index.html"
    assert capsys.readouterr().out.strip().endswith(str(page))
    assert page.is_file() and (tmp_path / "report" / "curves_loss.png").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2  # a usage error (not a run folder)
