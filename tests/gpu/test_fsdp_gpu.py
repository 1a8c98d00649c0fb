"""FSDP on CUDA with NCCL (deselected on CPU machines; ``python -m pytest -m gpu tests/gpu``).

The CPU/gloo tests in tests/runtime/test_fsdp.py cover the same paths; these check what only a GPU
has: NCCL's reduce-scatter and all-gather, pinned-memory CPU offload, and the devices the shards
live on. Two-process checks need two GPUs and are skipped with fewer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from test_fsdp import close, momentum, results, run, same  # noqa: E402

two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@two_gpus
def test_fsdp_on_two_gpus_matches_one_gpu_with_the_double_batch(tmp_path: Path) -> None:
    run(tmp_path, {"out": str(tmp_path / "fsdp"), "accelerator": "cuda", "clip": 0.5})
    r0, r1 = results(tmp_path / "fsdp", 2)
    run(tmp_path, {"out": str(tmp_path / "one"), "accelerator": "cuda", "strategy": "auto", "devices": 1, "batch_size": 16, "clip": 0.5})
    (single,) = results(tmp_path / "one", 1)
    assert r0["param_types"] == ["DTensor"]
    assert same(r0["state_dict"], r1["state_dict"])
    assert close(r0["state_dict"], single["state_dict"], atol=1e-4)
    assert close(momentum(r0["optimizer"]), momentum(single["optimizer"]), atol=1e-4)
    (path,) = (tmp_path / "fsdp" / "fulmen_logs" / "version_0" / "checkpoints").iterdir()
    ckpt = torch.load(path, weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    assert same(ckpt["state_dict"], r0["state_dict"])


@two_gpus
@pytest.mark.parametrize("cfg", [{"cpu_offload": True}, {"mixed_precision": "bf16"}, {"precision": "bf16-mixed"}])
def test_fsdp_options_on_two_gpus(tmp_path: Path, cfg: dict[str, object]) -> None:
    run(tmp_path, {**cfg, "out": str(tmp_path / "opt"), "accelerator": "cuda", "max_epochs": 1})
    run(tmp_path, {"out": str(tmp_path / "ref"), "accelerator": "cuda", "max_epochs": 1})
    (r0, r1), (ref, _) = results(tmp_path / "opt", 2), results(tmp_path / "ref", 2)
    assert same(r0["state_dict"], r1["state_dict"])
    assert close(r0["state_dict"], ref["state_dict"], atol=0.02)


@two_gpus
def test_sharded_checkpoint_on_two_gpus(tmp_path: Path) -> None:
    out = tmp_path / "rt"
    run(tmp_path, {"out": str(out), "accelerator": "cuda", "state_dict_type": "sharded", "sharded_roundtrip": True, "checkpointing": False})
    for r in results(out, 2):
        before, after = r["roundtrip"]["before"], r["roundtrip"]["after"]
        assert same(before[0], after[0]) and same(momentum(before[1]), momentum(after[1]))
