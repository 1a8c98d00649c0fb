"""Behaviours a review of the loop found wrong or missing (each was a real bug or gap)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer


def test_gradients_left_before_fit_do_not_leak_into_the_first_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    clean = TinySystem()
    dirty = copy.deepcopy(clean)
    x, y = make_loader().dataset[:8]
    torch.nn.functional.mse_loss(dirty(x), y).backward()  # stale .grad on every parameter
    for system, sub in ((clean, "clean"), (dirty, "dirty")):
        quiet_trainer(tmp_path / sub, max_steps=1, logger=False, enable_checkpointing=False).fit(system, make_loader())
    for a, b in zip(clean.parameters(), dirty.parameters()):
        assert torch.equal(a, b)


def test_limit_train_batches_zero_skips_the_training_loop(tmp_path: Path) -> None:
    epochs: list[int] = []

    class Count(TinySystem):
        def on_train_epoch_start(self) -> None:
            epochs.append(self.current_epoch)

    trainer = quiet_trainer(tmp_path, max_epochs=5, limit_train_batches=0)
    trainer.fit(Count(), make_loader())
    assert epochs == [] and trainer.global_step == 0 and trainer.current_epoch == 0
    assert trainer.checkpoint_callback.last_model_path == ""  # no empty epochs checkpointed


def test_a_tensor_subclass_loss_is_accepted(tmp_path: Path) -> None:
    class Tagged(torch.Tensor):
        pass

    class Sub(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx).as_subclass(Tagged)

    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    trainer.fit(Sub(), make_loader())
    assert trainer.global_step == 8


def test_estimated_stepping_batches_in_configure_optimizers(tmp_path: Path) -> None:
    seen: list[Any] = []

    class OneCycle(TinySystem):
        def configure_optimizers(self) -> Any:
            total = self.trainer.estimated_stepping_batches
            seen.append(total)
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=3, logger=False)
    trainer.fit(OneCycle(), make_loader())  # 8 batches: groups of 3, 3, 2 -> 3 steps per epoch
    assert seen == [9] and trainer.global_step == 9
    seen.clear()
    quiet_trainer(tmp_path, max_epochs=3, max_steps=4, logger=False).fit(OneCycle(), make_loader())
    assert seen == [4]


def test_system_logger_properties(tmp_path: Path) -> None:
    system = TinySystem()
    assert system.logger is None and system.loggers == []
    trainer = quiet_trainer(tmp_path)
    trainer.fit(system, make_loader())
    assert system.logger is trainer.logger and system.loggers == trainer.loggers
