"""DDP on CUDA with NCCL (run on a GPU machine: ``pytest -m gpu tests/gpu``).

One GPU: a one-process NCCL group runs the DDP code path (wrapper, samplers, sync_dist,
checkpoints). Two or more GPUs: two processes started by fulmen train like one process with
the double batch, as on the CPU with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.gpu
SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "ddp_script.py"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _run(cfg: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[2] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT), json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]


def _results(out: Path) -> list[dict[str, Any]]:
    return [torch.load(p, weights_only=False) for p in sorted(out.glob("rank*.pt"))]


@needs_cuda
def test_one_process_nccl_group_trains_and_checkpoints(tmp_path: Path) -> None:
    _run({"out": str(tmp_path / "ddp"), "accelerator": "cuda", "devices": 1, "strategy": "ddp", "batch_size": 16})
    _run({"out": str(tmp_path / "one"), "accelerator": "cuda", "devices": 1, "strategy": "auto", "batch_size": 16})
    (ddp,) = _results(tmp_path / "ddp")
    (one,) = _results(tmp_path / "one")
    assert ddp["world_size"] == 1 and ddp["env_kind"] == "fulmen"
    for k in one["state_dict"]:
        assert torch.allclose(ddp["state_dict"][k], one["state_dict"][k], atol=1e-5)
    assert ddp["callback_metrics"]["train_count"] == 64
    assert len(list((tmp_path / "ddp" / "fulmen_logs" / "version_0" / "checkpoints").glob("*.ckpt"))) == 1


@two_gpus
def test_two_gpus_train_like_one_with_the_double_batch(tmp_path: Path) -> None:
    _run({"out": str(tmp_path / "ddp"), "accelerator": "cuda", "devices": 2, "batch_size": 8})
    _run({"out": str(tmp_path / "one"), "accelerator": "cuda", "devices": 1, "strategy": "auto", "batch_size": 16})
    r0, r1 = _results(tmp_path / "ddp")
    (one,) = _results(tmp_path / "one")
    for k in one["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k])
        assert torch.allclose(r0["state_dict"][k], one["state_dict"][k], atol=1e-5)
    assert r0["callback_metrics"]["val_count"] == 64
