"""Helpers of the ``fulmen serve`` tests: real exported files, cards, and real server processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from fulmen.export import export

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


def make_pt2(folder: Path, model: torch.nn.Module) -> Path:
    """``model`` exported (and checked) by ``fulmen.export.export``, with its model card beside it."""
    path = folder / "model.pt2"
    export(model, path, verbose=False)
    return path


def make_onnx(folder: Path, model: torch.nn.Module) -> Path:
    path = folder / "model.onnx"
    export(model, path, verbose=False)
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
