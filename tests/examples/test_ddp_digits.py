"""examples/ddp_digits.py: the digits system on two processes started by fulmen itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_digits.py"


def test_ddp_digits_trains_on_two_processes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--devices", "2", "--epochs", "10", "--root", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert out.count("processes = 2") == 1  # printed by rank 0 only
    acc = float(out.split("test_acc  = ")[1].split()[0])
    assert acc >= 0.93
    run_dir = tmp_path / "fulmen_logs" / "version_0"
    assert sorted(p.name for p in (tmp_path / "fulmen_logs").iterdir()) == ["version_0"]
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "run.json").is_file()
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 1
