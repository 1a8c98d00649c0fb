"""Trainer(detect_anomaly=True): autograd's anomaly mode names the op whose backward made NaN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.nn import functional as F

import fulmen


class NaNBackward(TinySystem):
    """A finite forward whose backward makes NaN at ``bad`` (sqrt of negatives in the branch
    ``torch.where`` does not select: its gradient is 0 * NaN)."""

    def __init__(self, bad: int = 2) -> None:
        super().__init__()
        self.bad = bad

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        if batch_idx == self.bad:
            out = torch.where(out > 1e9, torch.sqrt(out - 2e9), out)
        return F.mse_loss(out, y)


def fit(tmp_path: Path, system: Any, **flags: Any) -> fulmen.Trainer:
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, **flags)
    trainer.fit(system, make_loader(32))
    return trainer


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_anomaly_mode_names_the_backward_op(tmp_path: Path) -> None:
    system = NaNBackward(bad=2)
    # torch warns with the forward's traceback of the op, then raises naming it.
    with (
        pytest.warns(UserWarning, match="Error detected in SqrtBackward0"),
        pytest.raises(RuntimeError, match=r"Function 'SqrtBackward0' returned nan values in its 0th output"),
    ):
        fit(tmp_path, system, detect_anomaly=True)
    assert not torch.is_anomaly_enabled()  # switched off again after the failure


def test_without_anomaly_mode_the_nan_goes_into_the_weights(tmp_path: Path) -> None:
    """Without it the NaN gradient is stepped into the weights, and the next loss is NaN."""
    system = NaNBackward(bad=2)
    with pytest.raises(fulmen.NonFiniteLossError, match=r"global step 3 .*first module whose output was non-finite: "
                       r"layer \(Linear\)"):
        fit(tmp_path, system)
    assert not bool(torch.isfinite(system.layer.weight).all())


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_a_healthy_run_is_unchanged(tmp_path: Path) -> None:
    results = []
    for anomaly in (False, True):
        fulmen.seed_everything(7)
        system = TinySystem()
        trainer = fit(tmp_path, system, detect_anomaly=anomaly, max_epochs=2)
        assert not torch.is_anomaly_enabled()
        results.append(([p.detach().clone() for p in system.parameters()], float(trainer.callback_metrics["train_loss"])))
    (w0, loss0), (w1, loss1) = results
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    assert loss0 == loss1
