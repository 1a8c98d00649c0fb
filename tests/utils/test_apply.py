"""apply_to_tensors / move_to_device over nested batches."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple
from typing import Any, NamedTuple

import pytest
import torch

from fulmen.utils.apply import apply_to_tensors, move_to_device

Pair = namedtuple("Pair", ["a", "b"])


class Typed(NamedTuple):
    x: torch.Tensor
    label: str


@dataclasses.dataclass
class Sample:
    x: torch.Tensor
    meta: dict[str, Any]
    derived: torch.Tensor = dataclasses.field(init=False)
    name: str = "s"

    def __post_init__(self) -> None:
        self.derived = self.x * 10


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: torch.Tensor
    cached: torch.Tensor = dataclasses.field(init=False, default=torch.zeros(()))


class Movable:
    """A batch type of its own, with a ``to`` method."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t
        self.moved_to: list[Any] = []

    def to(self, device: Any) -> Movable:
        self.moved_to.append(device)
        return Movable(self.t.to(device))


class InPlace:
    """``to`` moves in place and returns None, like some user classes do."""

    def __init__(self) -> None:
        self.device: Any = None

    def to(self, device: Any) -> None:
        self.device = device


def plus_one(t: torch.Tensor) -> torch.Tensor:
    return t + 1


def test_nested_containers_are_rebuilt() -> None:
    batch = {
        "x": torch.zeros(2),
        "list": [torch.ones(1), 3, "s", None],
        "tuple": (torch.zeros(1), 2.5),
        "pair": Pair(torch.zeros(1), "b"),
        "typed": Typed(torch.ones(1), "lbl"),
        "nested": {"deep": [{"t": torch.zeros(3)}]},
    }
    out = apply_to_tensors(batch, plus_one)
    assert torch.equal(out["x"], torch.ones(2))
    assert torch.equal(out["list"][0], torch.full((1,), 2.0)) and out["list"][1:] == [3, "s", None]
    assert type(out["tuple"]) is tuple and out["tuple"][1] == 2.5
    assert type(out["pair"]) is Pair and out["pair"].b == "b" and torch.equal(out["pair"].a, torch.ones(1))
    assert type(out["typed"]) is Typed and out["typed"].label == "lbl"
    assert torch.equal(out["nested"]["deep"][0]["t"], torch.ones(3))
    assert torch.equal(batch["x"], torch.zeros(2))  # the input is not changed


def test_mapping_types_are_kept() -> None:
    ordered = OrderedDict([("b", torch.zeros(1)), ("a", torch.zeros(1))])
    out = apply_to_tensors(ordered, plus_one)
    assert type(out) is OrderedDict and list(out) == ["b", "a"]

    dd: defaultdict[str, Any] = defaultdict(list, {"x": torch.zeros(1)})
    out_dd = apply_to_tensors(dd, plus_one)
    assert type(out_dd) is defaultdict and out_dd.default_factory is list
    assert torch.equal(out_dd["x"], torch.ones(1))


def test_dataclasses_including_fields_outside_init() -> None:
    s = Sample(torch.ones(2), {"k": torch.zeros(1)})
    out = apply_to_tensors(s, plus_one)
    assert type(out) is Sample and out is not s
    assert torch.equal(out.x, torch.full((2,), 2.0))
    assert torch.equal(out.meta["k"], torch.ones(1))
    # derived is mapped from the original's value (10 + 1), not recomputed from the new x (20)
    assert torch.equal(out.derived, torch.full((2,), 11.0))
    assert out.name == "s"

    f = apply_to_tensors(Frozen(torch.zeros(1)), plus_one)
    assert torch.equal(f.x, torch.ones(1)) and torch.equal(f.cached, torch.ones(()))


def test_non_tensor_leaves_are_untouched() -> None:
    obj = object()
    batch = [obj, "text", 1, 2.0, None, b"bytes", {"set": {1, 2}}]
    out = apply_to_tensors(batch, plus_one)
    assert out[0] is obj
    assert out[1:] == ["text", 1, 2.0, None, b"bytes", {"set": {1, 2}}]
    assert apply_to_tensors("plain", plus_one) == "plain"


def test_move_to_device_on_cpu() -> None:
    cpu = torch.device("cpu")
    m = Movable(torch.ones(1))
    batch = {"x": torch.zeros(2), "m": m, "items": [Movable(torch.zeros(1))], "s": Sample(torch.ones(1), {})}
    out = move_to_device(batch, cpu)
    assert out["x"].device == cpu
    assert m.moved_to == [cpu]  # found inside the dict too
    assert isinstance(out["m"], Movable)
    assert batch["items"][0].moved_to == [cpu]
    assert isinstance(out["s"], Sample)
    t = torch.zeros(1)
    assert move_to_device(t, cpu) is t  # already there: no copy

    top = Movable(torch.zeros(1))
    assert isinstance(move_to_device(top, cpu), Movable) and top.moved_to == [cpu]
    inplace = InPlace()
    assert move_to_device([inplace], cpu)[0] is inplace and inplace.device == cpu
    assert move_to_device("label", cpu) == "label"


def test_move_to_device_changes_dtype_nowhere() -> None:
    batch = (torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.float16))
    out = move_to_device(batch, torch.device("cpu"))
    assert [t.dtype for t in out] == [torch.int64, torch.float16]


@pytest.mark.gpu  # runs with `pytest -m gpu` on a GPU machine
def test_move_to_cuda() -> None:
    dev = torch.device("cuda", 0)
    batch = {"x": torch.zeros(2), "m": Movable(torch.ones(1)), "s": Sample(torch.ones(1), {"k": torch.zeros(1)})}
    out = move_to_device(batch, dev)
    assert out["x"].device == dev
    assert out["m"].t.device == dev
    assert out["s"].x.device == dev and out["s"].meta["k"].device == dev and out["s"].derived.device == dev


def test_dataclass_post_init_and_initvar_are_not_run_again() -> None:
    import dataclasses

    from fulmen.utils.apply import move_to_device

    @dataclasses.dataclass
    class Scaled:
        x: torch.Tensor
        scale: dataclasses.InitVar[float] = 255.0

        def __post_init__(self, scale: float) -> None:
            self.x = self.x / scale

    batch = Scaled(torch.tensor([255.0]))
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved is not batch
    assert torch.equal(moved.x, torch.tensor([1.0]))  # normalised once, not twice


def test_mapping_with_its_own_to_moves_itself() -> None:
    from collections import UserDict

    from fulmen.utils.apply import move_to_device

    class Encoding(UserDict):  # shaped like a tokenizer's BatchEncoding
        def __init__(self, data: dict, extra: str) -> None:
            super().__init__(data)
            self.extra = extra

        def to(self, device: torch.device) -> Encoding:
            return Encoding({k: v.to(device) for k, v in self.data.items()}, self.extra)

    enc = Encoding({"ids": torch.arange(3)}, extra="word ids")
    moved = move_to_device([enc], torch.device("cpu"))[0]
    assert isinstance(moved, Encoding) and moved.extra == "word ids"
