"""Realistic Lightning scripts (tests/lightning/scripts/) run on fulmen.lightning with only their
imports changed.

Each script is run as a program, as its author would run it: a fresh interpreter with the
project's ``src`` on ``PYTHONPATH``, in an empty working directory (everything a script writes,
``lightning_logs/`` included, lands there), and must exit 0 after printing ``OK``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"
SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT_S = 120

def _scripts() -> list[object]:
    return [pytest.param(path, id=path.stem) for path in sorted(SCRIPTS.glob("*.py"))]


def _environment() -> dict[str, str]:
    # No inherited process-group or cluster settings: each script is a single local process.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
        and not k.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"  # the tests run two at a time on two cores
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_script(script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_the_scripts_are_there() -> None:
    names = sorted(p.name for p in SCRIPTS.glob("*.py"))
    assert len(names) >= 6, names


@pytest.mark.parametrize("script", _scripts())
def test_lightning_script_runs_unmodified(script: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in SCRIPTS.iterdir())
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, f"{script.name} exited with {proc.returncode}:\n{proc.stderr[-6000:]}"
    assert "OK" in proc.stdout.splitlines(), proc.stdout[-3000:]
    assert sorted(p.name for p in SCRIPTS.iterdir()) == before, "the script wrote into the repository"


def test_a_lightning_1x_argument_is_refused_with_its_replacement(tmp_path: Path) -> None:
    """Deliberately refused features are kept out of the scripts; this checks that the error a
    user meets for the most common one (an old Lightning 1.x argument) says what to do instead."""
    from fulmen.errors import FlagError
    from fulmen.lightning import Trainer

    with pytest.raises(FlagError) as err:
        Trainer(default_root_dir=tmp_path, resume_from_checkpoint="lightning_logs/version_0/checkpoints/last.ckpt")
    message = str(err.value)
    assert "resume_from_checkpoint" in message and "Lightning 2.x removed" in message
    assert "trainer.fit(model, ..., ckpt_path=path)" in message
    with pytest.raises(FlagError, match=r"Trainer\(gpus=\.\.\.\).*accelerator='gpu', devices=N"):
        Trainer(default_root_dir=tmp_path, gpus=1)
    with pytest.raises(FlagError, match=r"Trainer\(plugins=.*one kind of plugin, fulmen.AsyncCheckpointIO.*precision=\.\.\."):
        Trainer(default_root_dir=tmp_path, plugins=[object()])
