"""The host copy an asynchronous save writes (``fulmen.checkpoint.snapshot``)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from fulmen.checkpoint.integrity import tensor_digest
from fulmen.checkpoint.snapshot import Snapshots

BIG = (256, 256)  # 256 KiB of float32: pooled (smaller tensors are cloned)


def checkpoint() -> dict:
    w = torch.randn(*BIG)
    return {
        "state_dict": OrderedDict(w=w, tied=w, b=torch.randn(3), t=torch.randn(*BIG).t()),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(*BIG)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "loops": {"epoch": 1, "phase": "batch", "rng": (torch.get_rng_state(), None)},
        "sparse": torch.eye(4).to_sparse(),
    }


def test_a_snapshot_is_an_equal_copy_that_shares_no_memory() -> None:
    ckpt = checkpoint()
    snap = Snapshots().take(ckpt).ckpt
    assert tensor_digest(snap) == tensor_digest(ckpt)
    assert type(snap["state_dict"]) is OrderedDict and isinstance(snap["loops"]["rng"], tuple)
    assert snap["state_dict"]["w"] is snap["state_dict"]["tied"]  # one tensor met twice: one copy
    for key in ("w", "b", "t"):
        assert snap["state_dict"][key].data_ptr() != ckpt["state_dict"][key].data_ptr()
    ckpt["state_dict"]["w"].add_(1)  # the model moves on: the copy does not
    ckpt["optimizer_states"][0]["state"][0]["exp_avg"].zero_()
    ckpt["loops"]["epoch"] = 2
    assert not torch.equal(snap["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert snap["optimizer_states"][0]["state"][0]["exp_avg"].abs().sum() > 0
    assert snap["loops"]["epoch"] == 1


def test_buffers_are_reused_from_one_save_to_the_next() -> None:
    snapshots = Snapshots()
    ckpt = checkpoint()
    first = snapshots.take(ckpt, position=("step", 1)).ckpt
    pooled = snapshots.pooled_bytes
    assert pooled >= 3 * 256 * 256 * 4
    ptr = first["state_dict"]["w"].data_ptr()
    ckpt["state_dict"]["w"].add_(1)
    waited = []
    second = snapshots.take(ckpt, position=("step", 2), before_reuse=lambda: waited.append(True)).ckpt
    assert waited == [True]  # told once, before overwriting a buffer the previous write may still read
    assert second["state_dict"]["w"].data_ptr() == ptr and snapshots.pooled_bytes == pooled
    assert torch.equal(second["state_dict"]["w"], ckpt["state_dict"]["w"])


def test_saves_at_one_position_share_tensors_unless_one_changed_in_place() -> None:
    snapshots = Snapshots()
    ckpt = checkpoint()
    first = snapshots.take(ckpt, position=("step", 5)).ckpt
    view = {k: v.detach() for k, v in ckpt["state_dict"].items()}  # a new state_dict() call: new tensor objects
    waited = []
    again = snapshots.take({"state_dict": view}, position=("step", 5), before_reuse=lambda: waited.append(True)).ckpt
    assert again["state_dict"]["w"] is first["state_dict"]["w"] and not waited  # not copied, nothing to wait for
    ckpt["state_dict"]["w"].mul_(2)  # changed in place (its version counter moves)
    third = snapshots.take({"state_dict": ckpt["state_dict"]}, position=("step", 5), before_reuse=lambda: waited.append(True)).ckpt
    assert waited == [True] and torch.equal(third["state_dict"]["w"], ckpt["state_dict"]["w"])
