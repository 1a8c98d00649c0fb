"""examples/gan.py: manual optimization with two optimizers moves the generator onto the ring of
8 Gaussians, counts two optimizer steps per batch, and logs both losses."""

from __future__ import annotations

import csv
import glob
import os
import runpy
import sys
from typing import Any

import pytest
import torch

import fulmen

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "gan.py")
EPOCHS, SAMPLES, BATCH_SIZE = 30, 8192, 128  # the example's defaults


def test_gan_example_learns_the_ring(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    root = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["gan.py", "--root", str(root), "--seed", "0"])
    namespace = runpy.run_path(EXAMPLE, run_name="not_main")
    result = namespace["main"]()
    out = capsys.readouterr().out
    before, after = result["before"], result["after"]

    # An untrained generator puts its samples near the centre, about 2 away from every mode.
    assert before["mode_dist"] > 1.5 and before["high_quality"] < 0.05 and before["modes_covered"] <= 1
    # Trained (seeds 0..9 give 0.13-0.19 for mode_dist, 7-8 modes, 0.59-0.81 high quality).
    assert after["mode_dist"] * 5 < before["mode_dist"]
    assert after["modes_covered"] >= 6
    assert after["high_quality"] >= 0.5
    assert after["mmd"] * 10 < before["mmd"]
    for name in before:
        assert f"{name:14} before: {before[name]:8.4f}   after: {after[name]:8.4f}" in out

    # Each batch steps the discriminator, then the generator: both count in global_step.
    batches = SAMPLES // BATCH_SIZE
    assert result["global_step"] == 2 * batches * EPOCHS
    assert f"optimizer steps : {2 * batches * EPOCHS}" in out

    run_dir = root / "fulmen_logs" / "version_0"
    assert result["log_dir"] == str(run_dir)
    assert f"logs            : {run_dir}" in out
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r["d_loss"]]
    assert len(step_rows) == 2 * batches * EPOCHS // 20  # log_every_n_steps=20 optimizer steps
    assert all(r["g_loss"] and r["r1_penalty"] for r in step_rows)
    epoch_rows = [r for r in rows if r["mode_dist"]]
    assert [int(r["epoch"]) for r in epoch_rows] == list(range(EPOCHS))
    assert float(epoch_rows[-1]["mode_dist"]) == pytest.approx(after["mode_dist"])
    assert float(epoch_rows[-1]["modes_covered"]) == after["modes_covered"]

    # The checkpoint holds both optimizers and restores the trained generator exactly.
    (ckpt_path,) = glob.glob(str(run_dir / "checkpoints" / "*.ckpt"))
    assert f"checkpoint      : {ckpt_path}" in out
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 2 * batches * EPOCHS and len(ckpt["optimizer_states"]) == 2
    fulmen.seed_everything(0)  # as main() did: the same fixed evaluation noise
    restored = namespace["RingGAN"].load_from_checkpoint(ckpt_path)
    assert restored.quality() == after
