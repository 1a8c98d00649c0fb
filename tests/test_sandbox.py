"""``fulmen._sandbox``: the state doctor and the tuner put back after their runs, and their quiet Trainer."""

from __future__ import annotations

import inspect
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinySystem, make_loader
from torch import nn

import fulmen
from fulmen._sandbox import QUIET_FLAGS, STEP_FLAGS, Sandbox, quiet_trainer


def test_the_copied_flags_are_trainer_flags() -> None:
    flags = set(inspect.signature(fulmen.Trainer.__init__).parameters) - {"self"}
    assert set(STEP_FLAGS) <= flags
    assert set(QUIET_FLAGS) <= flags
    assert not set(STEP_FLAGS) & set(QUIET_FLAGS)


class _Sys(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(1)
        self.counter = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.norm(self(x)), y)

    def configure_callbacks(self) -> Any:
        raise AssertionError("a sandboxed run must not ask for the system's own callbacks")


def test_a_fit_in_the_sandbox_leaves_no_trace(tmp_path: Path) -> None:
    system = _Sys()
    system.eval()  # the fit switches it to train mode: switched back afterwards
    grad = torch.ones_like(system.layer.weight)
    system.layer.weight.grad = grad
    system.layer.bias.requires_grad_(False)
    loader = make_loader(32, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    weights = {k: v.clone() for k, v in system.state_dict().items()}
    modes = [m.training for m in system.modules()]
    gen = loader.generator.get_state()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    user = fulmen.Trainer(default_root_dir=tmp_path, accumulate_grad_batches=2, precision="32-true")
    signal_env = os.environ.get("FULMEN_SIGNAL_HANDLING")

    with Sandbox(system, trainer=user) as box:
        assert system.layer.weight.grad is None  # the runs' gradients start from none
        assert os.environ["FULMEN_SIGNAL_HANDLING"] == "0"  # a signal stops a run as outside a fit
        box.keep_generators(loader)
        box.patch(system, "counter", 5)
        quiet = box.quiet_trainer(max_steps=3, limit_val_batches=0)
        assert quiet.config.accumulate_grad_batches == 2 and quiet.loggers == [] and quiet.checkpoint_callback is None
        quiet.fit(system, loader)
        assert system.counter == 5 and system.trainer is quiet
        assert not torch.equal(system.layer.weight, weights["layer.weight"])
        box.reset()
        assert torch.equal(system.layer.weight, weights["layer.weight"]) and system.layer.weight.grad is None
        quiet.fit(system, loader)

    for k, v in system.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert [m.training for m in system.modules()] == modes
    assert system.layer.weight.grad is grad and not system.layer.bias.requires_grad
    assert system.counter == 0 and "configure_callbacks" not in system.__dict__
    assert system._trainer is None and system._log_store is None
    assert torch.equal(loader.generator.get_state(), gen)
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    assert list(tmp_path.iterdir()) == []  # the quiet Trainer wrote nothing
    assert os.environ.get("FULMEN_SIGNAL_HANDLING") == signal_env


def test_quiet_trainer_copies_the_step_flags_only(tmp_path: Path) -> None:
    user = fulmen.Trainer(
        default_root_dir=tmp_path, gradient_clip_val=0.5, max_epochs=7, log_every_n_steps=3, enable_progress_bar=False
    )
    quiet = quiet_trainer(user, max_steps=2)
    assert quiet.config.gradient_clip_val == 0.5 and quiet.default_root_dir == user.default_root_dir
    assert quiet.max_epochs != 7 and quiet.log_every_n_steps != 3 and quiet.max_steps == 2
    assert quiet_trainer(None).loggers == []
    with pytest.raises(TypeError):
        quiet_trainer(user, no_such_flag=1)
