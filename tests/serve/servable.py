"""Systems served by the tests of ``fulmen serve`` (importable by the server subprocess)."""

from __future__ import annotations

from typing import Any

import torch
from helpers.systems import TinySystem
from torch import nn

import fulmen


class ServableSystem(TinySystem):
    """TinySystem with an example input, so a checkpoint says what a request holds."""

    def __init__(self, features: int = 4, lr: float = 0.05) -> None:
        super().__init__(features, lr)
        self.example_input_array = torch.zeros(2, features)


class MLP(fulmen.System):
    """A small network for the exported files: 8 -> 16 -> 3."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HookedSystem(TinySystem):
    """A system whose requests are records ({"a": .., "b": .., "c": .., "d": ..}) and whose answers
    are {"prediction": float}: serve_preprocess/serve_postprocess decide both."""

    FIELDS = ("a", "b", "c", "d")

    def serve_preprocess(self, inputs: Any) -> torch.Tensor:
        if not isinstance(inputs, list) or not all(isinstance(r, dict) for r in inputs):
            raise ValueError("expected a list of records")
        return torch.tensor([[float(r[k]) for k in self.FIELDS] for r in inputs])

    def serve_postprocess(self, outputs: torch.Tensor) -> Any:
        return [{"prediction": float(v)} for v in outputs[:, 0]]


class TwoWay(fulmen.System):
    """Two inputs, two outputs: (x @ W + y, (x * y).sum(1, keepdim=True))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = nn.Linear(3, 3)
        self.example_input_array = (torch.randn(4, 3), torch.randn(4, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(x) + y, (x * y).sum(1, keepdim=True)
