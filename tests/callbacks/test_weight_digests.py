"""WeightDigests: a digest of the weights every N optimizer steps in the run's audit log, written
from a background thread, in the same hash chain as the checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.callbacks import WeightDigests
from fulmen.checkpoint import read_log, read_weight_digests, tensor_digest, verify_run
from fulmen.errors import ArgumentError


class RecordWeights(fulmen.Callback):
    """Keeps a copy of ``system.state_dict()`` at the start and after every step."""

    def __init__(self) -> None:
        self.at: dict[int, OrderedDict[str, Any]] = {}

    def _keep(self, trainer: fulmen.Trainer, system: fulmen.System) -> None:
        sd = system.state_dict()
        copy: OrderedDict[str, Any] = OrderedDict((k, v.clone()) for k, v in sd.items())
        copy._metadata = sd._metadata  # type: ignore[attr-defined]
        self.at[trainer.global_step] = copy

    def on_train_start(self, trainer: fulmen.Trainer, system: fulmen.System) -> None:
        self._keep(trainer, system)

    def on_train_batch_end(self, trainer: fulmen.Trainer, system: fulmen.System, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._keep(trainer, system)


def _fit(root: Path, every: int = 3, lr: float = 0.05, max_epochs: int = 2, **kwargs: Any) -> tuple[fulmen.Trainer, RecordWeights]:
    torch.manual_seed(0)
    seen = RecordWeights()
    trainer = quiet_trainer(root, logger=False, max_epochs=max_epochs, callbacks=[WeightDigests(every_n_steps=every), seen], **kwargs)
    trainer.fit(TinySystem(lr=lr), make_loader(shuffle=True))
    return trainer, seen


def test_entries_at_every_n_steps_hold_the_digest_of_the_weights_at_that_step(tmp_path: Path) -> None:
    trainer, seen = _fit(tmp_path)  # 8 steps per epoch, 16 in all
    entries = read_weight_digests(trainer.log_dir)
    assert [e["weights"] for e in entries] == [0, 3, 6, 9, 12, 15]
    assert [e["epoch"] for e in entries] == [0, 0, 0, 1, 1, 1]
    for e in entries:
        assert e["digest"] == tensor_digest(seen.at[e["weights"]])
        assert set(e) == {"weights", "epoch", "digest", "time", "prev"}
    assert len({e["digest"] for e in entries}) == len(entries)  # the weights moved
    # in step order with the checkpoints, in one chain, and not among the checkpoint entries
    lines = [json.loads(x) for x in (Path(trainer.log_dir) / "checkpoints.jsonl").read_text().splitlines()]
    order = [x.get("weights", x.get("step")) for x in lines]
    assert order == sorted(order) and len(lines) == len(entries) + 2
    assert [e["step"] for e in read_log(trainer.log_dir)] == [8, 16]
    assert verify_run(trainer.log_dir) == []


def test_two_deterministic_runs_record_the_same_digests_and_another_lr_does_not(tmp_path: Path) -> None:
    a = read_weight_digests(_fit(tmp_path / "a")[0].log_dir)
    b = read_weight_digests(_fit(tmp_path / "b")[0].log_dir)
    c = read_weight_digests(_fit(tmp_path / "c", lr=0.1)[0].log_dir)
    assert [e["digest"] for e in a] == [e["digest"] for e in b]
    assert a[0]["digest"] == c[0]["digest"]  # same initial weights
    assert all(x["digest"] != y["digest"] for x, y in zip(a[1:], c[1:]))  # every later interval differs


def test_a_resumed_fit_continues_the_digests_at_the_right_steps(tmp_path: Path) -> None:
    whole = read_weight_digests(_fit(tmp_path / "whole", every=5)[0].log_dir)
    first, _ = _fit(tmp_path / "parts", every=5, max_epochs=1)
    ckpt = first.checkpoint_callback.last_model_path
    torch.manual_seed(123)  # the resume restores the random state itself
    again = quiet_trainer(tmp_path / "parts", logger=False, max_epochs=2, callbacks=[WeightDigests(every_n_steps=5)])
    again.fit(TinySystem(), make_loader(shuffle=True), ckpt_path=ckpt)
    parts = read_weight_digests(again.log_dir)
    assert [e["weights"] for e in parts] == [e["weights"] for e in whole] == [0, 5, 10, 15]
    assert [e["digest"] for e in parts] == [e["digest"] for e in whole]
    assert verify_run(again.log_dir) == []


def test_verify_checks_the_chain_through_the_entries_and_finds_an_edited_one(tmp_path: Path) -> None:
    trainer, _ = _fit(tmp_path)
    run = trainer.log_dir
    done = subprocess.run([sys.executable, "-m", "fulmen", "verify", run], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 weight digest(s)" in done.stdout
    log = Path(run) / "checkpoints.jsonl"
    lines = log.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["digest"] = "0" * 64
    lines[1] = json.dumps(edited, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("history_rewritten", "weights at step 6")]
    assert subprocess.run([sys.executable, "-m", "fulmen", "verify", run], capture_output=True).returncode != 0


def test_pending_digests_are_written_when_the_fit_fails(tmp_path: Path) -> None:
    class FailsAtStep7(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.trainer.global_step == 7:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, logger=False, callbacks=[WeightDigests(every_n_steps=3)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(FailsAtStep7(), make_loader())
    assert [e["weights"] for e in read_weight_digests(trainer.log_dir)] == [0, 3, 6]
    assert verify_run(trainer.log_dir) == []


def test_every_n_steps_must_be_a_positive_whole_number() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ArgumentError, match="every_n_steps"):
            WeightDigests(every_n_steps=bad)  # type: ignore[arg-type]


def test_a_lightning_run_keeps_the_entries_in_its_log_outside_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.checkpoint.audit import outside_log_dir
    from fulmen.lightning import Trainer as LightningTrainer

    monkeypatch.setenv("FULMEN_AUDIT_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    trainer = LightningTrainer(
        default_root_dir=tmp_path / "run", logger=False, max_epochs=1, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=[WeightDigests(every_n_steps=4)],
    )
    trainer.fit(TinySystem(), make_loader())
    assert not (tmp_path / "run" / "checkpoints.jsonl").exists()
    log = Path(outside_log_dir(trainer.log_dir)) / "checkpoints.jsonl"
    assert [e["weights"] for e in read_weight_digests(trainer.log_dir)] == [0, 4, 8]
    assert [e["weights"] for e in read_weight_digests(trainer.log_dir, log=log)] == [0, 4, 8]


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
import fulmen
from fulmen.callbacks import WeightDigests
from helpers.systems import TinySystem, make_loader

torch.manual_seed(0)
trainer = fulmen.Trainer(
    accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, default_root_dir={root!r},
    enable_progress_bar=False, enable_model_summary=False, callbacks=[WeightDigests(every_n_steps=2)],
)
trainer.fit(TinySystem(), make_loader(n=64, batch_size=8))
"""


def test_a_two_process_ddp_fit_writes_one_entry_per_interval(tmp_path: Path) -> None:
    tests = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=tests, root=str(tmp_path / "run"))))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    entries = read_weight_digests(tmp_path / "run")
    assert [e["weights"] for e in entries] == [0, 2, 4, 6, 8]  # 4 steps per epoch (32 samples per rank)
    assert verify_run(tmp_path / "run") == []
