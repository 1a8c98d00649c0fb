"""The state digest: a checkpoint's content digest without its audit record, computed in the same
walk as the content digest and recorded in every audit log line (``state_digest``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

from fulmen.checkpoint import load_checkpoint, read_log, state_digest, tensor_digest, verify_run
from fulmen.checkpoint.integrity import digests


def _fit(folder: Path, lr: float = 0.05) -> Path:
    """A fit started in ``folder`` writing to the relative folder ``run`` (as a re-run by ``fulmen
    reproduce`` does): the checkpoints record the same paths wherever ``folder`` is."""
    folder.mkdir()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        torch.manual_seed(0)
        trainer = quiet_trainer("run", logger=False, max_epochs=2)
        trainer.fit(TinySystem(lr=lr), make_loader(shuffle=True))
    finally:
        os.chdir(cwd)
    return folder / "run"


def test_content_digest_is_tensor_digest_and_the_state_digest_leaves_out_the_audit_record() -> None:
    g = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    ckpt = {
        "state_dict": model.state_dict(),  # an OrderedDict with _metadata
        "big": torch.randn(3 << 20, generator=g),  # hashed in parallel chunks
        "half": torch.randn(5, dtype=torch.bfloat16, generator=g),
        "epoch": 2,
        7: ("a", None, 1.5),
        "audit": {"file": "x.ckpt", "time": "2026-01-01T00:00:00.000Z", "prev": "0" * 64, "metrics": {}},
        "digest": {"algorithm": "sha256-tensors-v1", "value": "ignored"},
    }
    content, state = digests(ckpt)
    assert content == tensor_digest(ckpt)
    without = {k: v for k, v in ckpt.items() if k != "audit"}
    assert state == tensor_digest(without) == state_digest(ckpt)
    assert state != content
    changed = dict(ckpt, audit={**ckpt["audit"], "time": "2027-01-01T00:00:00.000Z"})
    assert state_digest(changed) == state and tensor_digest(changed) != content
    assert digests([torch.ones(2), 3]) == (tensor_digest([torch.ones(2), 3]),) * 2


def test_two_identical_runs_in_different_folders_share_state_digests_not_content_digests(tmp_path: Path) -> None:
    a, b = _fit(tmp_path / "a"), _fit(tmp_path / "b")
    la, lb = read_log(a), read_log(b)
    assert [e["step"] for e in la] == [e["step"] for e in lb] == [8, 16]
    for ea, eb in zip(la, lb):
        assert ea["digest"] != eb["digest"]  # each embeds its own time and link to the log
        assert ea["state_digest"] == eb["state_digest"]
    for run, entries in ((a, la), (b, lb)):
        for entry in entries[-1:]:  # the newest is on disk (rotation keeps one)
            ckpt = load_checkpoint(run / entry["file"])
            assert tensor_digest(ckpt) == entry["digest"] == ckpt["digest"]["value"]
            assert state_digest(ckpt) == entry["state_digest"]
    other = read_log(_fit(tmp_path / "c", lr=0.1))
    assert other[0]["state_digest"] != la[0]["state_digest"]


def test_an_old_line_without_state_digest_still_verifies_and_a_wrong_one_is_found(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path, logger=False, max_epochs=1)
    trainer.fit(TinySystem(), make_loader())
    log = Path(trainer.log_dir) / "checkpoints.jsonl"
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert verify_run(trainer.log_dir) == []

    old = {k: v for k, v in entry.items() if k != "state_digest"}  # a line as older fulmen wrote it
    log.write_text(json.dumps(old, separators=(",", ":")) + "\n")
    assert verify_run(trainer.log_dir) == []

    wrong = dict(entry, state_digest="f" * 64)
    log.write_text(json.dumps(wrong, separators=(",", ":")) + "\n")
    problems = verify_run(trainer.log_dir)
    assert [p.kind for p in problems] == ["modified"]
    assert "state digest" in problems[0].message
