"""Content digests, write_checkpoint, and the errors of load_checkpoint."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem

from fulmen.checkpoint import (
    CHECKPOINT_FORMAT,
    DIGEST_ALGORITHM,
    atomic_save,
    load_checkpoint,
    tensor_digest,
    write_checkpoint,
)
from fulmen.checkpoint import io as ckpt_io
from fulmen.errors import CheckpointIntegrityError, FulmenWarning


def sample() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": 1,
        "global_step": 10,
        "state_dict": collections.OrderedDict(
            [
                ("w", torch.randn(3, 4, generator=g)),
                ("half", torch.randn(5, generator=g).half()),
                ("bf16", torch.randn(5, generator=g).bfloat16()),
                ("f8", torch.randn(4, generator=g).to(torch.float8_e4m3fn)),
                ("mask", torch.tensor([True, False])),
                ("idx", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
                ("z", torch.complex(torch.ones(2), torch.zeros(2))),
                ("scalar", torch.tensor(3.5)),
                ("empty", torch.empty(0, 3)),
            ]
        ),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "hyper_parameters": {"lr": 0.1, "sizes": (1, 2), "name": "x", "flag": True, "none": None},
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
    }


def test_digest_survives_a_save_and_load(tmp_path: Path) -> None:
    ckpt = sample()
    before = tensor_digest(ckpt)
    assert len(before) == 64 and before == tensor_digest(sample())  # deterministic
    torch.save(ckpt, tmp_path / "a.pt")
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert tensor_digest(loaded) == before
    mapped = torch.load(tmp_path / "a.pt", weights_only=True, mmap=True)
    assert tensor_digest(mapped) == before


def test_digest_ignores_key_order_layout_and_its_own_field() -> None:
    a = sample()
    b = dict(reversed(list(sample().items())))
    b["state_dict"] = collections.OrderedDict(reversed(list(b["state_dict"].items())))
    assert tensor_digest(a) == tensor_digest(b)
    t = torch.randn(4, 6)
    assert tensor_digest({"t": t.t()}) == tensor_digest({"t": t.t().contiguous()})  # not contiguous
    assert tensor_digest({"t": t[1:3]}) == tensor_digest({"t": t[1:3].clone()})  # offset into a storage
    assert tensor_digest({"t": t.requires_grad_()}) == tensor_digest({"t": t.detach()})
    c = sample()
    c["digest"] = {"algorithm": DIGEST_ALGORITHM, "value": "f" * 64}
    assert tensor_digest(c) == tensor_digest(a)
    nested = {"x": {"digest": 1}}
    assert tensor_digest(nested) != tensor_digest({"x": {}})  # only the top-level entry is left out


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["state_dict"]["w"].view(-1)[5].add_(1e-6),
        lambda c: c["state_dict"].__setitem__("w", c["state_dict"]["w"].double()),
        lambda c: c["state_dict"].__setitem__("w", c["state_dict"]["w"].reshape(4, 3)),
        lambda c: c["state_dict"]["bf16"].view(torch.int16).view(-1)[0].add_(1),
        lambda c: c["hyper_parameters"].__setitem__("lr", 0.1000001),
        lambda c: c["hyper_parameters"].__setitem__("flag", 1),  # True and 1 differ
        lambda c: c["hyper_parameters"].__setitem__("sizes", [1, 2]),  # a tuple and a list differ
        lambda c: c.__setitem__("epoch", "1"),
        lambda c: c["optimizer_states"][0]["state"].__setitem__("0", c["optimizer_states"][0]["state"].pop(0)),
        lambda c: c.__setitem__("extra", None),
    ],
)
def test_any_change_changes_the_digest(change: Any) -> None:
    ckpt = sample()
    before = tensor_digest(ckpt)
    change(ckpt)
    assert tensor_digest(ckpt) != before


def test_large_tensors_hash_the_same_on_any_number_of_threads() -> None:
    big = {"a": torch.randn(5_000_000), "b": torch.randn(3, 1_000_000), "c": torch.ones(10)}  # 20 MB: 2 chunks
    one = tensor_digest(big, workers=1)
    assert tensor_digest(big, workers=4) == one == tensor_digest(big)
    big["a"][4_999_999] += 1  # in the last chunk
    assert tensor_digest(big) != one


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_sparse_and_quantized_tensors() -> None:
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    sp = torch.sparse_coo_tensor(i, torch.tensor([3.0, 4.0, 5.0]), (2, 3), check_invariants=True)
    assert tensor_digest({"s": sp}) == tensor_digest({"s": sp.coalesce()})
    assert tensor_digest({"s": sp}) != tensor_digest({"s": sp.to_dense()})
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 2, torch.qint8)
    q2 = torch.quantize_per_tensor(q.dequantize(), 0.2, 2, torch.qint8)
    assert tensor_digest({"q": q}) == tensor_digest({"q": q.clone()})
    assert tensor_digest({"q": q}) != tensor_digest({"q": q2})


def test_unknown_objects_hash_by_type_and_repr_without_addresses() -> None:
    def f() -> None: ...

    assert tensor_digest({"f": f}) == tensor_digest({"f": f})
    assert "0x" not in repr(tensor_digest({"f": f}))


# -- write_checkpoint ------------------------------------------------------------------------------------------
def test_write_checkpoint_stores_and_returns_the_digest(tmp_path: Path) -> None:
    ckpt = sample()
    digest = write_checkpoint(ckpt, tmp_path / "a.ckpt")
    assert ckpt["digest"] == {"algorithm": "sha256-tensors-v1", "value": digest}
    assert digest == tensor_digest(sample())
    assert os.listdir(tmp_path) == ["a.ckpt"]  # no audit log without audit_dir, no temp file
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert loaded["digest"]["value"] == digest
    assert torch.equal(loaded["state_dict"]["w"], ckpt["state_dict"]["w"])
    write_checkpoint(loaded, tmp_path / "b.ckpt")  # a loaded checkpoint written again: same digest
    assert load_checkpoint(tmp_path / "b.ckpt")["digest"]["value"] == digest


def test_audit_entry_hashes_the_file_as_written(tmp_path: Path) -> None:
    ckpt = {"state_dict": {"w": torch.randn(300_000)}, "global_step": 4, "epoch": 1}  # > one 1 MB piece
    digest = write_checkpoint(ckpt, tmp_path / "checkpoints" / "a.ckpt", audit_dir=tmp_path, metrics={"loss": 0.5})
    (line,) = (tmp_path / "checkpoints.jsonl").read_text().splitlines()
    entry = json.loads(line)
    data = (tmp_path / "checkpoints" / "a.ckpt").read_bytes()
    assert entry["file_sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["size"] == len(data)
    assert entry["digest"] == digest
    assert entry["file"] == "checkpoints/a.ckpt"
    assert (entry["step"], entry["epoch"], entry["metrics"]) == (4, 1, {"loss": 0.5})


def test_a_failed_write_keeps_the_old_file_and_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.ckpt"
    write_checkpoint({"state_dict": {"w": torch.ones(3)}}, target, audit_dir=tmp_path)
    before = target.read_bytes()
    log_before = (tmp_path / "checkpoints.jsonl").read_bytes()

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target, audit_dir=tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "checkpoints.jsonl"]
    assert target.read_bytes() == before
    assert (tmp_path / "checkpoints.jsonl").read_bytes() == log_before


def test_metrics_accept_tensors_and_non_finite_values(tmp_path: Path) -> None:
    metrics = {"b": torch.tensor(0.25), "a": float("nan"), "c": float("-inf"), "vector": torch.ones(3), "s": "text"}
    write_checkpoint({"state_dict": {}}, tmp_path / "a.ckpt", audit_dir=tmp_path, metrics=metrics)
    entry = json.loads((tmp_path / "checkpoints.jsonl").read_text())
    assert entry["metrics"] == {"a": "nan", "b": 0.25, "c": "-inf"}


# -- load_checkpoint ---------------------------------------------------------------------------------------------
def written(tmp_path: Path, name: str = "good.ckpt", **extra: Any) -> Path:
    path = tmp_path / name
    write_checkpoint({"state_dict": TinySystem().state_dict(), "hyper_parameters": {}, **extra}, path)
    return path


def test_folder_is_a_clear_error(tmp_path: Path) -> None:
    written(tmp_path, "epoch=0.ckpt")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a checkpoint file.*epoch=0\.ckpt"):
        load_checkpoint(tmp_path)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at .*nope\.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_truncated_file_names_it(tmp_path: Path) -> None:
    data = written(tmp_path).read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(RuntimeError, match=r"Refused to load .*cut\.ckpt.*damaged"):
        load_checkpoint(bad)


def tamper_tensor_bytes(path: Path) -> None:
    """Flip one bit of the stored weights in place (the zip layout stays valid)."""
    weight = torch.load(path, weights_only=True)["state_dict"]["layer.weight"]
    data = bytearray(path.read_bytes())
    at = data.index(weight.numpy().tobytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_digest_mismatch_is_an_integrity_error(tmp_path: Path) -> None:
    path = written(tmp_path)
    original = load_checkpoint(path)["state_dict"]
    tamper_tensor_bytes(path)
    with pytest.raises(CheckpointIntegrityError, match=r"good\.ckpt.*does not match its stored digest.*verify=False"):
        load_checkpoint(path)
    with pytest.raises(ValueError):  # a subclass of ValueError
        TinySystem.load_from_checkpoint(path)
    unchecked = load_checkpoint(path, verify=False)
    assert any(not torch.equal(unchecked["state_dict"][k], original[k]) for k in original)


def test_edited_hyperparameters_are_an_integrity_error(tmp_path: Path) -> None:
    path = written(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"] = {"lr": 10.0}  # re-saved with plain torch.save: the stored digest is stale
    torch.save(ckpt, path)
    with pytest.raises(CheckpointIntegrityError):
        load_checkpoint(path)


def test_unknown_digest_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    atomic_save({"state_dict": {}, "digest": {"algorithm": "blake3-v9", "value": "00"}}, path)
    with pytest.raises(CheckpointIntegrityError, match=r"unknown kind \('blake3-v9'.*Upgrade fulmen"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False)["digest"]["algorithm"] == "blake3-v9"


def test_checkpoints_without_a_digest_still_load(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "plain.ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "plain.ckpt")["state_dict"]["w"], torch.ones(1))


def test_newer_format_says_to_upgrade(tmp_path: Path) -> None:
    path = written(tmp_path, format=CHECKPOINT_FORMAT + 1, fulmen_version="9.0.0")
    with pytest.raises(ValueError, match=r"newer fulmen \(checkpoint format 2, fulmen 9\.0\.0\).*Upgrade fulmen"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="Upgrade fulmen"):
        load_checkpoint(path, verify=False)


def test_weights_only_false_warns_once(tmp_path: Path) -> None:
    path = written(tmp_path)
    with pytest.warns(FulmenWarning, match=r"weights_only=False.*can run any code"):
        load_checkpoint(path, weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, weights_only=False)  # once per process
        load_checkpoint(path)


def test_map_location_still_verifies(tmp_path: Path) -> None:
    path = written(tmp_path)
    ckpt = load_checkpoint(path, map_location=lambda storage, loc: storage)
    assert ckpt["digest"]["value"] == tensor_digest(ckpt)


@pytest.mark.gpu  # runs with `pytest -m gpu` on a GPU machine
def test_cuda_tensors_hash_like_their_cpu_copies(tmp_path: Path) -> None:
    cpu = {"state_dict": {"w": torch.randn(3, 4), "big": torch.randn(2_000_000), "h": torch.randn(5).bfloat16()}}
    cuda = {"state_dict": {k: v.cuda() for k, v in cpu["state_dict"].items()}}
    assert tensor_digest(cuda) == tensor_digest(cpu)
    digest = write_checkpoint(cuda, tmp_path / "a.ckpt", audit_dir=tmp_path)
    cpu["audit"] = cuda["audit"]  # write_checkpoint adds its own log entry, covered by the digest
    assert digest == tensor_digest(cpu)
    loaded = load_checkpoint(tmp_path / "a.ckpt", map_location="cuda")
    assert loaded["state_dict"]["w"].device.type == "cuda"
    from fulmen.checkpoint import verify_run

    assert verify_run(tmp_path) == []
