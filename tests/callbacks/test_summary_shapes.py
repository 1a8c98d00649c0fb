"""summarize() with an example input: In sizes, Out sizes, FLOPs, and a forward that leaves no trace."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn

from fulmen.callbacks.base import Callback
from fulmen.callbacks.summary import summarize
from fulmen.errors import FulmenWarning
from fulmen.runtime.precision import HalfPrecision


class Pair(nn.Module):
    """Called with keyword arguments; returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        return h, h.sum(dim=-1)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.pair = Pair()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(x)
        features, score = self.pair(x=h, mask=mask)
        return {"logits": self.head(features), "score": score}


def test_nested_shapes_with_dict_input_and_tuple_output() -> None:
    model = Nested()
    model.example_input_array = {"x": torch.zeros(5, 6), "mask": torch.ones(5, 6, dtype=torch.bool)}
    s = summarize(model, max_depth=-1)
    sizes = {r.name: (r.in_sizes, r.out_sizes, r.calls) for r in s.rows}
    assert sizes == {
        "encoder": ("[5, 6]", "[5, 8]", 1),
        "encoder.0": ("[5, 6]", "[5, 8]", 1),
        "encoder.1": ("[5, 8]", "[5, 8]", 1),
        "pair": ("[x=[5, 8], mask=[5, 6]]", "[[5, 4], [5]]", 1),
        "pair.proj": ("[5, 8]", "[5, 4]", 1),
        "head": ("[5, 4]", "[5, 3]", 1),
    }
    assert s.forward_ran and s.forward_error is None
    header = str(s).splitlines()[0]
    assert [h.strip() for h in header.split(" | ")][-3:] == [
        "In sizes",
        "Out sizes",
        "FLOPs",
    ]  # no Calls column: all called once


def test_tuple_example_input_is_positional_and_list_outputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Bilinear(2, 4, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
            return [self.b(self.a(x), y), y]

    model = TwoInputs()
    model.example_input_array = (torch.zeros(2, 3), torch.zeros(2, 4))
    rows = {r.name: (r.in_sizes, r.out_sizes) for r in summarize(model).rows}
    assert rows == {"a": ("[2, 3]", "[2, 2]"), "b": ("[[2, 2], [2, 4]]", "[2, 1]")}


def test_flops_of_linear_layers_match_the_analytic_count() -> None:
    batch = 7
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10, bias=False))
    model.example_input_array = torch.randn(batch, 16)
    s = summarize(model)
    first, second = 2 * 16 * 32 * batch, 2 * 32 * 10 * batch
    assert [r.flops for r in s.rows] == [first, 0, second]
    assert s.total_flops == first + second
    assert (first + second) == 11_648
    assert str(s).splitlines()[-1] == "11.6 K    Total forward FLOPs (estimated)"


def test_module_called_several_times_shows_first_call_and_all_flops() -> None:
    class Repeat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(3):
                x = self.block(x)
            return x[:1]

    model = Repeat()
    model.example_input_array = torch.zeros(2, 4)
    s = summarize(model)
    block, unused = s.rows
    assert (block.in_sizes, block.out_sizes, block.calls, block.flops) == (
        "[2, 4]",
        "[2, 4]",
        3,
        3 * 2 * 4 * 4 * 2,
    )
    assert (unused.in_sizes, unused.out_sizes, unused.calls, unused.flops) == (None, None, 0, 0)
    lines = str(s).splitlines()
    assert lines[0].endswith("| In sizes | Out sizes | FLOPs | Calls")
    assert lines[2].endswith("| [2, 4]   | [2, 4]    | 192   | 3")
    assert lines[3].endswith("| ?        | ?         | 0     | 0")


def test_table_text_with_shapes() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    model[0].requires_grad_(False)
    model.example_input_array = torch.zeros(1, 64)
    assert str(summarize(model)).splitlines() == [
        "  | Name | Type   | Params | Trainable | In sizes | Out sizes | FLOPs",
        "---------------------------------------------------------------------",
        "0 | 0    | Linear | 2.1 K  | no        | [1, 64]  | [1, 32]   | 4.1 K",
        "1 | 1    | ReLU   | 0      | -         | [1, 32]  | [1, 32]   | 0",
        "---------------------------------------------------------------------",
        "0         Trainable params",
        "2.1 K     Frozen params",
        "2.1 K     Total params",
        "0.008     Total size (MB)",
        "4.1 K     Total forward FLOPs (estimated)",
    ]


def test_max_depth_only_hooks_the_rows_shown() -> None:
    model = Nested()
    model.example_input_array = {"x": torch.zeros(2, 6), "mask": torch.ones(2, 6)}
    depth1 = summarize(model, max_depth=1)
    assert [(r.name, r.out_sizes) for r in depth1.rows] == [
        ("encoder", "[2, 8]"),
        ("pair", "[[2, 4], [2]]"),
        ("head", "[2, 3]"),
    ]
    depth2 = summarize(model, max_depth=2)
    assert [r.name for r in depth2.rows] == ["encoder", "encoder.0", "encoder.1", "pair", "pair.proj", "head"]
    assert all(r.out_sizes is not None for r in depth2.rows)
    totals = summarize(model, max_depth=0)
    assert totals.rows == []
    assert totals.total_flops == depth2.total_flops == 2 * 2 * (6 * 8 + 8 * 4 + 4 * 3)
    assert str(totals).splitlines()[-1].endswith("Total forward FLOPs (estimated)")
    for _, sub in model.named_modules():  # every hook was removed
        assert not sub._forward_hooks and not sub._forward_pre_hooks


class Stateful(nn.Module):
    """Ignores eval mode: updates a buffer, draws random numbers and writes a parameter in place."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        self.last = x.mean(0)  # replaces the buffer
        self.scale.data.mul_(2)
        random.random()
        np.random.rand()
        return x * self.scale + 0.1 * torch.rand_like(x)


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.frozen_norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.stateful = Stateful()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frozen_norm(self.norm(x))
        x = nn.functional.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=True)
        return self.out(self.drop(self.stateful(x)))


def _state(model: nn.Module) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}


def test_forward_leaves_modes_rng_parameters_buffers_and_grads_as_they_were() -> None:
    torch.manual_seed(0)
    model = Everything()
    model.train()
    model.frozen_norm.eval()  # a per-module mode that model.train() would not put back
    with torch.no_grad():
        model.norm.running_mean.fill_(0.5)
    model.out.weight.grad = torch.full_like(model.out.weight, 3.0)
    model.example_input_array = torch.randn(8, 4)
    example = model.example_input_array.clone()
    before = _state(model)
    modes = {name: m.training for name, m in model.named_modules()}
    buffer_ids = {name: id(b) for name, b in model.named_buffers()}

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    s = summarize(model, max_depth=-1)
    after_summary = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert after_summary[0] == random.random()
    assert after_summary[1] == np.random.rand()
    assert torch.equal(after_summary[2], torch.rand(3))

    assert s.forward_ran and s.forward_error is None
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = _state(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert {name: id(b) for name, b in model.named_buffers()} == buffer_ids
    assert model.stateful.seen.item() == 0 and model.norm.num_batches_tracked.item() == 0
    assert torch.equal(model.out.weight.grad, torch.full_like(model.out.weight, 3.0))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "out.weight")
    assert torch.equal(model.example_input_array, example)


def test_forward_runs_in_eval_mode_without_grad() -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x

    model = nn.Sequential(Probe())
    model.example_input_array = torch.zeros(1, requires_grad=True)
    summarize(model)
    assert seen == [(False, False)]
    assert model[0].training


def test_failing_forward_warns_and_still_prints_the_table() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(), nn.Linear(3, 2))  # 8 != 3
    model.example_input_array = torch.zeros(2, 4)
    with pytest.warns(FulmenWarning, match=r"forward\(example_input_array\) failed \(RuntimeError: "):
        s = summarize(model)
    assert not s.forward_ran and s.total_flops is None
    assert s.forward_error is not None and s.forward_error.startswith("RuntimeError")
    assert [(r.in_sizes, r.out_sizes, r.flops) for r in s.rows] == [(None, None, None)] * 3
    text = str(s)
    assert text.splitlines()[0] == "  | Name | Type    | Params | Trainable"
    assert "FLOPs" not in text
    assert all(m.training for m in model.modules())  # put back after the failure too
    for sub in model.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks


def test_failing_forward_does_not_stop_fit(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    system = TinySystem()
    system.example_input_array = torch.zeros(2, 5)  # the layer takes 4 features
    trainer = quiet_trainer(tmp_path, enable_model_summary=True, logger=False, enable_checkpointing=False)
    with pytest.warns(FulmenWarning, match="Model summary: TinySystem.forward"):
        trainer.fit(system, make_loader())
    out = capsys.readouterr().out
    assert "0 | layer | Linear | 5      | yes" in out
    assert trainer.global_step == 8


def test_lazy_module_is_not_initialized_by_the_summary() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LazyLinear(3))
    model.example_input_array = torch.zeros(1, 4)
    s = summarize(model)
    assert isinstance(model[1].weight, nn.parameter.UninitializedParameter)
    assert not s.forward_ran and s.forward_error is not None and "lazy" in s.forward_error
    assert [r.params for r in s.rows] == [20, None]
    assert str(s).splitlines()[-1].startswith("Some parameters are not initialized yet")


def test_no_example_input_no_forward() -> None:
    calls: list[int] = []
    model = nn.Sequential(nn.Linear(2, 2))
    model.register_forward_hook(lambda *args: calls.append(1))
    s = summarize(model)
    assert calls == [] and not s.forward_ran and s.forward_error is None


def test_example_input_moves_to_the_module_device_and_precision() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).to(device="meta")  # no data: any device would do
    model.example_input_array = torch.zeros(2, 4)  # on the CPU
    assert summarize(model).rows[0].out_sizes == "[2, 3]"

    half = nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16)
    half.example_input_array = torch.zeros(2, 4)  # float32: the precision converts it
    s = summarize(half, precision=HalfPrecision("bf16-true"))
    assert s.forward_ran and s.total_flops == 2 * 2 * 4 * 3


def test_printed_at_fit_start(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    class Marker(Callback):
        def on_train_start(self, trainer: Any, system: Any) -> None:
            print("TRAIN START")

    system = TinySystem()
    system.example_input_array = torch.zeros(3, 4)
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, enable_model_summary=True, callbacks=[Marker()]
    )
    trainer.fit(system, make_loader())
    out = capsys.readouterr().out
    table = out[: out.index("TRAIN START")]
    assert "0 | layer | Linear | 5      | yes       | [3, 4]   | [3, 1]    | 24" in table
    assert "24        Total forward FLOPs (estimated)" in table

    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, callbacks=[Marker()])
    trainer.fit(system, make_loader())  # enable_model_summary=False
    assert capsys.readouterr().out == "TRAIN START\n"
