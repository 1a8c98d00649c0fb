"""The audit trail: checkpoints.jsonl, and verify_run finding each kind of tampering."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from fulmen.checkpoint import chain_head, read_log, verify_run, write_checkpoint
from fulmen.checkpoint.audit import GENESIS


def save(run: Path, step: int, name: str | None = None, rotate: Path | None = None, folder: str = "checkpoints") -> Path:
    """A checkpoint as the trainer writes it; ``rotate``: the older file ModelCheckpoint then removes."""
    g = torch.Generator().manual_seed(step)
    ckpt = {
        "format": 1,
        "epoch": step // 2,
        "global_step": step,
        "state_dict": {"w": torch.randn(8, 8, generator=g), "b": torch.randn(8, generator=g)},
    }
    path = run / folder / (name or f"step={step}.ckpt")
    write_checkpoint(ckpt, path, audit_dir=run, metrics={"val_loss": 1.0 / step})
    if rotate is not None:
        rotate.unlink()
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Four checkpoints, each keeping the newest two (steps 3 and 4 remain)."""
    run = tmp_path / "version_0"
    p1 = save(run, 1)
    p2 = save(run, 2)
    save(run, 3, rotate=p1)
    save(run, 4, rotate=p2)
    return run


def kinds(run: Path) -> list[tuple[str, str]]:
    return [(p.kind, p.file) for p in verify_run(run)]


def lines(run: Path) -> list[str]:
    return (run / "checkpoints.jsonl").read_text().splitlines()


def test_log_layout_and_chain(run: Path) -> None:
    text = lines(run)
    entries = [json.loads(t) for t in text]
    assert [e["file"] for e in entries] == [f"checkpoints/step={s}.ckpt" for s in (1, 2, 3, 4)]
    assert list(entries[0]) == ["file", "step", "epoch", "time", "metrics", "digest", "state_digest", "file_sha256", "size", "prev"]
    assert entries[0]["prev"] == GENESIS
    for before, entry in zip(text, entries[1:]):
        assert entry["prev"] == hashlib.sha256(before.encode()).hexdigest()
    assert entries[3]["step"] == 4 and entries[3]["epoch"] == 2 and entries[3]["metrics"] == {"val_loss": 0.25}
    assert entries[3]["time"].endswith("Z")
    assert chain_head(run) == hashlib.sha256(text[-1].encode()).hexdigest()
    assert read_log(run) == entries
    ckpt = torch.load(run / "checkpoints" / "step=4.ckpt", weights_only=True)
    assert ckpt["audit"] == {k: entries[3][k] for k in ("file", "time", "metrics", "prev")}


def test_a_clean_run_verifies(run: Path) -> None:
    assert verify_run(run) == []
    assert verify_run(run, load=False) == []
    assert verify_run(run, expected_head=chain_head(run)) == []


def test_modified_byte(run: Path) -> None:
    path = run / "checkpoints" / "step=3.ckpt"
    weight = torch.load(path, weights_only=True)["state_dict"]["w"]
    data = bytearray(path.read_bytes())
    data[data.index(weight.numpy().tobytes()) + 7] ^= 0x10
    path.write_bytes(bytes(data))
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("modified", "checkpoints/step=3.ckpt")]
    assert "SHA-256" in problems[0].message and "content digest" in problems[0].message
    assert kinds_no_load(run) == [("modified", "checkpoints/step=3.ckpt")]


def kinds_no_load(run: Path) -> list[tuple[str, str]]:
    return [(p.kind, p.file) for p in verify_run(run, load=False)]


def test_truncated(run: Path) -> None:
    path = run / "checkpoints" / "step=4.ckpt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("truncated", "checkpoints/step=4.ckpt")]
    assert f"{len(data) // 2} bytes on disk, {len(data)} when written" in problems[0].message


def test_unreadable(run: Path) -> None:
    path = run / "checkpoints" / "step=4.ckpt"
    path.write_bytes(b"\x00" * path.stat().st_size)  # same size, not a checkpoint any more
    assert kinds(run) == [("unreadable", "checkpoints/step=4.ckpt"), ("modified", "checkpoints/step=4.ckpt")]


def test_deleting_the_newest_is_out_of_order_and_rotated_files_are_fine(run: Path) -> None:
    (run / "checkpoints" / "step=3.ckpt").unlink()  # older than the newest: top-k rotation may do this
    assert kinds(run) == []
    (run / "checkpoints" / "step=4.ckpt").unlink()
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("removed_out_of_order", "checkpoints/step=4.ckpt")]
    assert "newest checkpoint in its folder" in problems[0].message


def test_the_newest_of_each_folder_must_exist(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save(run, 1, folder="best")
    save(run, 2, folder="periodic")
    save(run, 3, folder="periodic", rotate=run / "periodic" / "step=2.ckpt")
    assert kinds(run) == []
    (run / "best" / "step=1.ckpt").unlink()  # not the newest overall, but the newest in best/
    assert kinds(run) == [("removed_out_of_order", "best/step=1.ckpt")]


def test_a_file_written_again_is_checked_against_its_last_entry(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save(run, 1, name="last.ckpt")
    save(run, 2, name="last.ckpt")
    assert kinds(run) == []
    assert len(lines(run)) == 2


def test_edited_line_in_the_middle(run: Path) -> None:
    text = lines(run)
    entry = json.loads(text[1])
    entry["metrics"]["val_loss"] = 0.001  # a better score for a checkpoint that rotation removed
    text[1] = json.dumps(entry, separators=(",", ":"))
    (run / "checkpoints.jsonl").write_text("\n".join(text) + "\n")
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("history_rewritten", "checkpoints/step=3.ckpt")]
    assert "line 3's link to the line before it is broken" in problems[0].message


def test_edited_last_line_disagrees_with_its_checkpoint(run: Path) -> None:
    text = lines(run)
    entry = json.loads(text[-1])
    entry["metrics"]["val_loss"] = 0.001
    text[-1] = json.dumps(entry, separators=(",", ":"))
    (run / "checkpoints.jsonl").write_text("\n".join(text) + "\n")
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("history_rewritten", "checkpoints/step=4.ckpt")]
    assert "metrics is {'val_loss': 0.001} in the log, {'val_loss': 0.25} in the file" in problems[0].message


def test_deleted_line(run: Path) -> None:
    text = lines(run)
    (run / "checkpoints.jsonl").write_text("\n".join(text[:1] + text[2:]) + "\n")
    assert kinds(run) == [("history_rewritten", "checkpoints/step=3.ckpt")]
    (run / "checkpoints.jsonl").write_text("\n".join(text[1:]) + "\n")  # the first line
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("history_rewritten", "checkpoints/step=2.ckpt")]
    assert "lines before it were removed" in problems[0].message


def test_deleted_last_line_leaves_an_unknown_checkpoint(run: Path) -> None:
    head = chain_head(run)
    text = lines(run)
    (run / "checkpoints.jsonl").write_text("\n".join(text[:-1]) + "\n")
    assert kinds(run) == [("unknown_checkpoint", "checkpoints/step=4.ckpt")]
    problems = verify_run(run, expected_head=head)
    assert ("history_rewritten", "checkpoints.jsonl") in [(p.kind, p.file) for p in problems]


def test_unknown_checkpoint(run: Path) -> None:
    torch.save({"state_dict": {}}, run / "checkpoints" / "sneaky.ckpt")
    torch.save({"state_dict": {}}, run / "best.pt")
    (run / "notes.txt").write_text("not a checkpoint")
    (run / "checkpoints" / ".step=5.ckpt.tmp-123").write_bytes(b"partial")  # a crashed write's temp file
    assert kinds(run) == [("unknown_checkpoint", "best.pt"), ("unknown_checkpoint", "checkpoints/sneaky.ckpt")]


def test_links_to_logged_checkpoints_are_known(run: Path) -> None:
    os.symlink("step=4.ckpt", run / "checkpoints" / "last.ckpt")
    os.link(run / "checkpoints" / "step=3.ckpt", run / "checkpoints" / "best.ckpt")
    (run / "checkpoints" / "copy.ckpt").write_bytes((run / "checkpoints" / "step=3.ckpt").read_bytes())
    assert kinds(run) == []
    (run / "checkpoints" / "rotated.ckpt").write_bytes((run / "checkpoints" / "step=3.ckpt").read_bytes()[:-1] + b"!")
    assert kinds(run) == [("unknown_checkpoint", "checkpoints/rotated.ckpt")]


def test_garbage_line(run: Path) -> None:
    with open(run / "checkpoints.jsonl", "a") as f:
        f.write("not json\n")
    problems = verify_run(run)
    assert [(p.kind, p.file) for p in problems] == [("history_rewritten", "checkpoints.jsonl")]
    assert "line 5 is not a valid log entry" in problems[0].message


def test_a_torn_last_line_is_reported_and_the_next_write_keeps_the_chain(run: Path) -> None:
    with open(run / "checkpoints.jsonl", "a") as f:
        f.write('{"file":"checkpoints/step=5.ck')  # the process died mid-write
    save(run, 6)
    text = lines(run)
    assert text[-2] == '{"file":"checkpoints/step=5.ck'
    assert json.loads(text[-1])["prev"] == hashlib.sha256(text[-2].encode()).hexdigest()
    assert kinds(run) == [("history_rewritten", "checkpoints.jsonl")]


def test_no_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, run / "checkpoints" / "a.ckpt")
    # not written by fulmen: the file is the problem, not a missing log (tests/checkpoint/test_verify_runs.py)
    assert kinds(run) == [("unknown_checkpoint", "checkpoints/a.ckpt")]


def test_checkpoints_outside_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shared = tmp_path / "shared"
    path = shared / "a.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path, audit_dir=run)
    torch.save({"state_dict": {}}, shared / "other_run.ckpt")  # a shared folder: not this run's business
    assert json.loads(lines(run)[0])["file"] == str(path)
    assert kinds(run) == []
    path.unlink()
    assert kinds(run) == [("removed_out_of_order", str(path))]


def test_problem_str(run: Path) -> None:
    (run / "checkpoints" / "step=4.ckpt").unlink()
    (problem,) = verify_run(run)
    assert str(problem).startswith("removed_out_of_order: checkpoints/step=4.ckpt: ")


def test_relative_run_dir(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(run.parent)
    assert verify_run("version_0") == []
    save(Path("version_0"), 5)
    assert json.loads(lines(run)[-1])["file"] == "checkpoints/step=5.ckpt"
    assert verify_run(os.path.join(".", "version_0")) == []


def test_a_training_run_with_rotation_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainer.save_checkpoint as the trainer wires write_checkpoint (patched in here)."""
    from helpers.systems import TinySystem, make_loader, quiet_trainer

    import fulmen
    from fulmen.checkpoint.state import build_checkpoint

    def save_checkpoint(self: fulmen.Trainer, filepath: str, weights_only: bool = False) -> None:
        assert self.system is not None
        ckpt = build_checkpoint(self, self.system, weights_only)
        if self.is_global_zero:
            write_checkpoint(ckpt, filepath, audit_dir=self.log_dir, metrics=self.callback_metrics)
        self.strategy.barrier("save_checkpoint")

    monkeypatch.setattr(fulmen.Trainer, "save_checkpoint", save_checkpoint)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    trainer.fit(TinySystem(), make_loader(16, 8), make_loader(16, 8))
    run = Path(trainer.log_dir)
    entries = read_log(run)
    assert [e["step"] for e in entries] == [2, 4, 6]
    assert set(entries[-1]["metrics"]) >= {"train_loss", "val_loss"}
    assert len(os.listdir(run / "checkpoints")) == 1  # ModelCheckpoint kept the newest only
    assert verify_run(run) == []
    last = trainer.checkpoint_callback.last_model_path
    assert TinySystem.load_from_checkpoint(last) is not None  # digest checked on load
    data = Path(last).read_bytes()
    with open(last, "r+b") as f:
        f.seek(data.rindex(b"PK\x05\x06") - 8)
        f.write(b"\0" * 8)  # the zip directory's end: the file no longer loads
    assert [p.kind for p in verify_run(run)] == ["unreadable", "modified"]


def test_top_k_and_save_last_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.systems import TinySystem, make_loader, quiet_trainer

    import fulmen
    from fulmen.checkpoint.state import build_checkpoint

    def save_checkpoint(self: fulmen.Trainer, filepath: str, weights_only: bool = False) -> None:
        assert self.system is not None
        ckpt = build_checkpoint(self, self.system, weights_only)
        if self.is_global_zero:
            write_checkpoint(ckpt, filepath, audit_dir=self.log_dir, metrics=self.callback_metrics)
        self.strategy.barrier("save_checkpoint")

    monkeypatch.setattr(fulmen.Trainer, "save_checkpoint", save_checkpoint)
    cb = fulmen.ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[cb])
    trainer.fit(TinySystem(lr=0.01), make_loader(16, 8), make_loader(16, 8))
    run = Path(trainer.log_dir)
    assert "last.ckpt" in os.listdir(run / "checkpoints")
    assert len(read_log(run)) == 4
    assert verify_run(run) == []
