"""A callback may skip an optimizer step (``trainer.skip_optimizer_step()`` in
``on_before_optimizer_step``): the weights stay, the gradients are dropped, and under 16-mixed
the loss scaler starts the next step afresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader

import fulmen


class SkipAt(fulmen.Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.norms: dict[int, float] = {}
        self.before: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: Any, system: Any, optimizer: Any) -> None:
        grads = [p.grad for p in system.parameters() if p.grad is not None]
        self.norms[trainer.global_step] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        if trainer.global_step == self.step:
            self.before = {k: v.clone() for k, v in system.state_dict().items()}
            trainer.skip_optimizer_step()

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step + 1 and self.before:
            self.after = {k: v.clone() for k, v in system.state_dict().items()}


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_a_skipped_step_leaves_the_weights_and_the_next_step_is_normal(tmp_path: Path, precision: str) -> None:
    skip = SkipAt(4)
    trainer = fulmen.Trainer(
        max_epochs=2,
        precision=precision,
        callbacks=[skip],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    system = TinySystem()
    trainer.fit(system, make_loader(n=64, batch_size=8))
    assert trainer.global_step == 16  # the skipped step still counts
    assert all(torch.equal(skip.before[k], skip.after[k]) for k in skip.before)  # step 4 changed nothing
    # the next step sees true-scale gradients (not still multiplied by the loss scale)
    typical = max(skip.norms[3], skip.norms[6])
    assert skip.norms[5] < 10 * typical
    assert all(torch.isfinite(p).all() for p in system.parameters())
