"""Helpers of the ``fulmen serve`` tests: real exported files, cards, and real server processes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_card(model_path: Path, fmt: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A model card in the agreed format (issue 16), written by hand beside ``model_path``."""
    data = model_path.read_bytes()
    card = {
        "format": 1,
        "created": "2026-12-07T00:00:00Z",
        "model": {"file": model_path.name, "format": fmt, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)},
        "source": {"checkpoint": None, "run_dir": None, "audit_head": None, "command": None, "system": "servable.MLP"},
        "hyperparameters": {},
        "metrics": {},
        "inputs": inputs,
        "outputs": outputs,
        "check": {"input": "given", "rtol": 1e-4, "atol": 1e-5, "max_abs_diff": 0.0, "passed": True, "forced": False},
        "versions": {"torch": torch.__version__},
    }
    Path(str(model_path) + ".json").write_text(json.dumps(card, indent=2))
    return card


_IO = ([{"name": "input", "shape": [None, 8], "dtype": "float32"}], [{"name": "output", "shape": [None, 3], "dtype": "float32"}])


def make_pt2(folder: Path, model: torch.nn.Module) -> Path:
    path = folder / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.randn(4, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    write_card(path, "pt2", *_IO)
    return path


def make_onnx(folder: Path, model: torch.nn.Module) -> Path:
    path = folder / "model.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.randn(4, 8),), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
        )
    write_card(path, "onnx", *_IO)
    return path


@contextmanager
def running_server(model: Path, *flags: str, cwd: Path | None = None) -> Iterator[str]:
    """``python -m fulmen serve MODEL`` on a free localhost port; yields its base URL once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "fulmen", "serve", str(model), "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, cwd=cwd or model.parent, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not answer /health within 90 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def refused(model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``fulmen serve`` where it must refuse to start (it would otherwise block: a timeout fails)."""
    cmd = [sys.executable, "-m", "fulmen", "serve", str(model), "--port", str(free_port()), *flags]
    return subprocess.run(cmd, cwd=model.parent, env=server_env(), capture_output=True, text=True, timeout=90)
