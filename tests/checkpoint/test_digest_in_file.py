"""The content digest lives in the checkpoint file's zip comment, written after the pickle (it is
computed while ``torch.save`` writes): readers find it there, older files with the digest inside
the pickle still load and verify, and every change to the file is still caught (issue 17, item 3)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import fulmen.checkpoint.io as io
from fulmen import cli
from fulmen.checkpoint import load_checkpoint, read_log, tensor_digest, verify_run, write_checkpoint
from fulmen.checkpoint.integrity import COMMENT_PREFIX, digest_comment, file_digest, zip_comment
from fulmen.errors import CheckpointIntegrityError
from tests.helpers.systems import TinySystem, make_loader, quiet_trainer


def sample() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "fulmen_version": "test",
        "global_step": 3,
        "state_dict": {
            "layer.weight": torch.randn(64, 32, generator=g),
            "layer.bias": torch.randn(64, generator=g),
        },
        "hyper_parameters": {"lr": 0.1},
    }


def comment_of(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.comment


def set_comment(path: Path, comment: bytes) -> None:
    """Give the archive at ``path`` another zip comment (b"": none), as an editor of the file would."""
    data = path.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    path.write_bytes(data[: end + 20] + len(comment).to_bytes(2, "little") + comment)


@pytest.mark.parametrize("audited", [False, True], ids=["plain", "audit_dir"])
def test_the_digest_is_in_the_zip_comment_and_the_pickle_says_so(tmp_path: Path, audited: bool) -> None:
    path = tmp_path / "a.ckpt"
    ckpt = sample()
    digest = write_checkpoint(ckpt, path, audit_dir=tmp_path if audited else None)
    assert ckpt["digest"] == {"algorithm": "sha256-tensors-v1", "value": digest}  # the caller's dict, after
    comment = comment_of(path)
    assert comment.startswith(COMMENT_PREFIX) and len(comment) < 200
    assert json.loads(comment[len(COMMENT_PREFIX) :]) == {"algorithm": "sha256-tensors-v1", "value": digest}
    assert comment == digest_comment(digest)
    assert file_digest(path) == {"algorithm": "sha256-tensors-v1", "value": digest}
    # torch.load and zipfile read the file as before; the pickle only says where the digest is
    raw = torch.load(path, weights_only=True)
    assert raw["digest"] == {"algorithm": "sha256-tensors-v1", "in": "zip-comment"}
    assert torch.equal(raw["state_dict"]["layer.weight"], sample()["state_dict"]["layer.weight"])
    assert torch.load(path, weights_only=True, mmap=True)["global_step"] == 3
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None and any(n.endswith("data.pkl") for n in z.namelist())
    loaded = load_checkpoint(path)
    assert loaded["digest"] == {"algorithm": "sha256-tensors-v1", "value": digest} == ckpt["digest"]
    assert tensor_digest(loaded) == digest
    if audited:
        (entry,) = read_log(tmp_path)
        data = path.read_bytes()
        assert data.endswith(comment)  # the file's SHA-256 covers its final bytes, the comment included
        assert entry["file_sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
        assert entry["digest"] == digest and verify_run(tmp_path) == []


def test_a_changed_digest_in_the_comment_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    digest = write_checkpoint(sample(), path)
    set_comment(path, digest_comment("0" * 64))
    with pytest.raises(
        CheckpointIntegrityError, match=f"does not match its stored digest.*computed {digest}"
    ):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False)["digest"]["value"] == "0" * 64
    set_comment(path, COMMENT_PREFIX + b"{not json")
    with pytest.raises(CheckpointIntegrityError, match="records a content digest that cannot be read"):
        load_checkpoint(path)


def test_a_removed_comment_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    ckpt = sample()
    del ckpt["fulmen_version"]  # (the pickle's note alone says the digest was in the comment)
    write_checkpoint(ckpt, path)
    set_comment(path, b"")
    assert comment_of(path) == b"" and file_digest(path) is None
    with pytest.raises(
        CheckpointIntegrityError, match=r"carries no content digest.*removed after the file was written"
    ):
        load_checkpoint(path)


def test_changed_tensor_bytes_do_not_match_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    write_checkpoint(sample(), path)
    weight = sample()["state_dict"]["layer.weight"]
    data = bytearray(path.read_bytes())
    data[data.index(weight.numpy().tobytes()) + 5] ^= 0x01  # the zip layout (and its comment) stay valid
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="does not match its stored digest"):
        load_checkpoint(path)


def test_loaded_and_saved_again_with_torch_save_is_refused(tmp_path: Path) -> None:
    """torch.save keeps no zip comment: the file still says (in its pickle) that its digest was
    there, so an edit this way cannot pass as a file from elsewhere."""
    path = tmp_path / "a.ckpt"
    ckpt = sample()
    del ckpt["fulmen_version"]
    write_checkpoint(ckpt, path)
    edited = torch.load(path, weights_only=True)
    edited["hyper_parameters"]["lr"] = 10.0
    torch.save(edited, path)
    with pytest.raises(CheckpointIntegrityError, match="carries no content digest"):
        load_checkpoint(path)


def test_a_file_cut_inside_its_comment_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    write_checkpoint(sample(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    comment = zip_comment(path)
    assert comment is not None and len(comment[0]) == comment[1] - 10
    with pytest.raises(RuntimeError, match=r"Refused to load .*damaged PyTorch checkpoint \(truncated"):
        load_checkpoint(path)


def test_an_old_file_with_the_digest_in_its_pickle_still_verifies(tmp_path: Path) -> None:
    """Files written before the digest moved to the comment: ``ckpt["digest"]`` in the pickle."""
    path = tmp_path / "old.ckpt"
    ckpt = sample()
    digest = tensor_digest(ckpt)
    ckpt["digest"] = {"algorithm": "sha256-tensors-v1", "value": digest}
    torch.save(ckpt, path)  # as fulmen wrote it then: no zip comment
    assert comment_of(path) == b"" and file_digest(path) is None
    assert load_checkpoint(path)["digest"] == {"algorithm": "sha256-tensors-v1", "value": digest}
    ckpt["state_dict"]["layer.bias"][0] += 1.0
    torch.save(ckpt, path)
    with pytest.raises(CheckpointIntegrityError, match="does not match its stored digest"):
        load_checkpoint(path)


def test_if_torch_save_ends_its_file_otherwise_the_digest_goes_into_the_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback: a file that does not end with a comment-less zip end record is written again
    the old way (digest first, inside the pickle) rather than failing."""
    monkeypatch.setattr(io._Writer, "archive_end", lambda self: False)
    monkeypatch.setattr(io, "_comment_fails", False)
    path = tmp_path / "a.ckpt"
    ckpt = sample()
    digest = write_checkpoint(ckpt, path, audit_dir=tmp_path)
    assert io._comment_fails  # later saves go the old way at once
    assert comment_of(path) == b""
    assert torch.load(path, weights_only=True)["digest"] == {
        "algorithm": "sha256-tensors-v1",
        "value": digest,
    }
    assert load_checkpoint(path)["digest"]["value"] == digest == ckpt["digest"]["value"]
    assert not [n for n in path.parent.iterdir() if n.name.startswith(".")]  # the first try's file is gone
    write_checkpoint(sample(), tmp_path / "b.ckpt", audit_dir=tmp_path)
    assert verify_run(tmp_path) == []


def test_fulmen_verify_passes_on_a_fresh_run_and_flags_a_changed_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(TinySystem(), make_loader())
    run = Path(trainer.log_dir)
    (last,) = sorted((run / "checkpoints").glob("*.ckpt"))
    assert comment_of(last).startswith(COMMENT_PREFIX)
    assert cli.main(["verify", str(run)]) == 0
    capsys.readouterr()
    set_comment(last, digest_comment("f" * 64))
    assert cli.main(["verify", str(run)]) != 0
    out = capsys.readouterr()
    assert f"modified: checkpoints/{last.name}" in out.out + out.err


def test_torch_save_replaced_by_a_mock_is_called_once_per_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning programs count torch.save calls with a mock (which writes nothing): one call per
    checkpoint, no second write the old way, and later saves still put the digest in the comment."""
    calls: list[str] = []
    monkeypatch.setattr(torch, "save", lambda obj, f: calls.append(type(f).__name__))
    for name in ("a.ckpt", "b.ckpt"):
        write_checkpoint({"state_dict": {"w": torch.ones(3)}}, tmp_path / name, audit_dir=tmp_path)
    assert len(calls) == 2 and not io._comment_fails
