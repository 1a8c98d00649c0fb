"""summarize() and the ModelSummary callback."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from fulmen.callbacks.summary import ModelSummary, human_count, summarize


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 32))
        self.head = nn.Linear(64, 10)


def make_model() -> Model:
    return Model()


def test_counts_match_numel() -> None:
    model = make_model()
    s = summarize(model)
    expected = sum(p.numel() for p in model.parameters())
    assert s.total_params == s.trainable_params == expected
    assert s.frozen_params == 0
    assert [(r.name, r.type, r.params) for r in s.rows] == [
        ("encoder", "Sequential", sum(p.numel() for p in model.encoder.parameters())),
        ("head", "Linear", 650),
    ]


def test_frozen_and_partly_frozen() -> None:
    model = make_model()
    first = model.encoder[0]
    model.head.requires_grad_(False)
    first.requires_grad_(False)
    s = summarize(model, max_depth=2)
    frozen = 650 + sum(p.numel() for p in first.parameters())
    assert s.frozen_params == frozen
    assert s.trainable_params == sum(p.numel() for p in model.parameters()) - frozen
    modes = {r.name: r.trainable for r in s.rows}
    assert modes == {
        "encoder": "partly",
        "encoder.0": "no",
        "encoder.1": "-",
        "encoder.2": "yes",
        "head": "no",
    }


def test_shared_parameter_counted_once() -> None:
    embed = nn.Embedding(100, 8)
    out = nn.Linear(8, 100, bias=False)
    out.weight = embed.weight  # tied weights
    model = nn.Sequential(embed, out)
    s = summarize(model)
    assert s.total_params == 800
    assert [r.params for r in s.rows] == [800, 800]  # each row counts what its module holds


def test_depth() -> None:
    model = make_model()
    assert [r.name for r in summarize(model, max_depth=1).rows] == ["encoder", "head"]
    assert [r.name for r in summarize(model, max_depth=2).rows] == [
        "encoder",
        "encoder.0",
        "encoder.1",
        "encoder.2",
        "head",
    ]
    assert summarize(model, max_depth=-1).rows == summarize(model, max_depth=5).rows
    totals_only = summarize(model, max_depth=0)
    assert totals_only.rows == []
    assert str(totals_only).splitlines()[0].endswith("Trainable params")
    with pytest.raises(ValueError):
        summarize(model, max_depth=-2)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1.0 K"),
        (8_320, "8.3 K"),
        (999_960, "1.0 M"),
        (1_234_567, "1.2 M"),
        (3_400_000_000, "3.4 B"),
        (5_600_000_000_000, "5.6 T"),
    ],
)
def test_human_count(n: int, text: str) -> None:
    assert human_count(n) == text


def test_size_in_mb_counts_params_and_buffers_at_their_dtypes() -> None:
    model = nn.Sequential(nn.Linear(10, 10).to(torch.float64), nn.BatchNorm1d(10).half())
    s = summarize(model)
    tensors = [*model.parameters(), *model.buffers()]
    # MB here means 10**6 bytes.
    assert s.size_mb == sum(t.numel() * t.element_size() for t in tensors) / 1e6
    assert s.size_bytes == 110 * 8 + (20 + 20) * 2 + 8  # num_batches_tracked is an int64 buffer


def test_table_text() -> None:
    model = make_model()
    model.head.requires_grad_(False)
    lines = str(summarize(model)).splitlines()
    assert lines[0] == "  | Name    | Type       | Params | Trainable"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "0 | encoder | Sequential | 8.4 K  | yes"
    assert lines[3] == "1 | head    | Linear     | 650    | no"
    assert lines[5:] == [
        "8.4 K     Trainable params",
        "650       Frozen params",
        "9.0 K     Total params",
        "0.036     Total size (MB)",
    ]


def test_lazy_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LazyLinear(3))
    s = summarize(model)
    assert [r.params for r in s.rows] == [20, None]
    assert s.total_params == 20
    assert s.has_lazy
    text = str(s)
    assert "| ?" in text
    assert text.splitlines()[-1].startswith("Some parameters are not initialized yet")


def test_callback_prints_on_global_zero_only(capsys: pytest.CaptureFixture[str]) -> None:
    model: Any = make_model()
    callback = ModelSummary(max_depth=2)
    other_rank: Any = SimpleNamespace(is_global_zero=False)
    rank_zero: Any = SimpleNamespace(is_global_zero=True)
    callback.on_fit_start(other_rank, model)
    assert capsys.readouterr().out == ""
    callback.on_fit_start(rank_zero, model)
    assert capsys.readouterr().out == str(summarize(model, max_depth=2)) + "\n"
    assert callback.state_dict() == {}
