from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

from fulmen.callbacks.accumulation import GradientAccumulationScheduler
from fulmen.errors import FlagError


class CountSteps(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.steps_per_epoch: dict[int, int] = {}

    def on_before_zero_grad(self, optimizer: Any) -> None:
        e = self.current_epoch
        self.steps_per_epoch[e] = self.steps_per_epoch.get(e, 0) + 1


def test_factor_changes_by_epoch(tmp_path: Path) -> None:
    system = CountSteps()
    trainer = quiet_trainer(
        tmp_path, max_epochs=5, callbacks=[GradientAccumulationScheduler({1: 2, 3: 4})], logger=False
    )
    trainer.fit(system, make_loader(n=64, batch_size=8))  # 8 batches per epoch
    assert system.steps_per_epoch == {0: 8, 1: 4, 2: 4, 3: 2, 4: 2}
    assert trainer.global_step == 8 + 4 + 4 + 2 + 2
    assert trainer.accumulate_grad_batches == 4


@pytest.mark.parametrize(
    ("scheduling", "message"),
    [({}, "non-empty dict"), ({-1: 2}, "ints >= 0"), ({0: 0}, "expected an int >= 1"), ([1, 2], "non-empty dict")],
)
def test_bad_scheduling(scheduling: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GradientAccumulationScheduler(scheduling)


def test_conflicts_with_the_flag(tmp_path: Path) -> None:
    trainer = quiet_trainer(
        tmp_path, accumulate_grad_batches=2, callbacks=[GradientAccumulationScheduler({0: 4})], logger=False
    )
    with pytest.raises(FlagError, match=r"accumulate_grad_batches=2\) and a GradientAccumulationScheduler"):
        trainer.fit(TinySystem(), make_loader())


def test_refused_under_manual_optimization(tmp_path: Path) -> None:
    class Manual(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            x, y = batch
            self.manual_backward(torch.nn.functional.mse_loss(self(x), y))
            opt.step()
            opt.zero_grad()

    trainer = quiet_trainer(tmp_path, callbacks=[GradientAccumulationScheduler({0: 2})], logger=False)
    with pytest.raises(FlagError, match="manual optimization"):
        trainer.fit(Manual(), make_loader())
