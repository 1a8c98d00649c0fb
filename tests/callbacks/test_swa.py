"""StochasticWeightAveraging: the averaged weights, the SWALR schedule, BatchNorm statistics, state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import SWALR

import fulmen
from fulmen.callbacks import Callback, StochasticWeightAveraging


class EpochWeights(Callback):
    """Records the system's weights (float64) and the learning rate at each epoch's end/start."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: Any, system: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
        self.weights.append({n: p.detach().double().clone() for n, p in system.named_parameters()})


def mean_of(weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([w[n] for w in weights]).mean(0) for n in weights[0]}


def fit(
    tmp_path: Any, system: fulmen.System, callbacks: list[Callback], loader: Any = None, **kwargs: Any
) -> Any:
    flags: dict[str, Any] = {
        "max_epochs": 5,
        "limit_train_batches": 4,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "callbacks": callbacks,
    }
    flags.update(kwargs)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, loader if loader is not None else make_loader(32, batch_size=4, shuffle=True))
    return trainer


@pytest.mark.parametrize("start", [3, 0.6])  # the 3rd epoch: int(0.6 * 5) == 3
def test_final_weights_are_the_mean_from_swa_epoch_start(tmp_path: Any, start: int | float) -> None:
    torch.manual_seed(0)
    record = EpochWeights()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=start, annealing_epochs=1)
    system = TinySystem(lr=0.1)
    fit(tmp_path, system, [swa, record])
    assert swa.swa_start == 2 and swa.swa_end == 4
    assert swa.n_averaged == 3
    expected = mean_of(record.weights[2:])
    for name, p in system.named_parameters():
        torch.testing.assert_close(p.detach().double(), expected[name], rtol=1e-5, atol=1e-6)
    assert swa.average_state_dict().keys() == expected.keys()


def test_swalr_replaces_the_scheduler(tmp_path: Any) -> None:
    class WithStepLR(TinySystem):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    record = EpochWeights()
    swa = StochasticWeightAveraging(swa_lrs=0.3, swa_epoch_start=3, annealing_epochs=1)
    trainer = fit(tmp_path, WithStepLR(), [swa, record])
    configs = trainer.lr_scheduler_configs
    assert len(configs) == 1 and isinstance(configs[0].scheduler, SWALR) and configs[0].interval == "epoch"
    # StepLR halves the rate for two epochs; from the 3rd epoch SWALR anneals to 0.3 over one epoch.
    assert record.lrs[:3] == pytest.approx([0.1, 0.05, 0.025])
    assert record.lrs[3:] == pytest.approx([0.3, 0.3])


def test_nothing_averaged_when_training_ends_first(tmp_path: Any) -> None:
    with pytest.warns(
        fulmen.FulmenWarning, match=r"starts at epoch 8, after the last epoch \(max_epochs=5\)"
    ):
        swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=8)
        record = EpochWeights()
        system = TinySystem()
        fit(tmp_path, system, [swa, record])
    assert swa.n_averaged == 0
    for name, p in system.named_parameters():
        torch.testing.assert_close(p.detach().double(), record.weights[-1][name])


class WithBN(fulmen.System):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.inp(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def expected_bn_stats(system: WithBN, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Running statistics update_bn gives: the average of the per-batch statistics."""
    with torch.no_grad():
        feats = [system.inp(x) for x, _ in loader]
    mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    return mean, var


def test_batchnorm_statistics_recomputed_in_a_plain_fit(tmp_path: Any) -> None:
    """update_bn runs over ``trainer.train_dataloader`` after the averaged weights are copied in."""
    loader = make_loader(32, batch_size=8)
    system = WithBN()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    fit(tmp_path, system, [swa], loader=loader, max_epochs=3)
    mean, var = expected_bn_stats(system, loader)
    torch.testing.assert_close(system.bn.running_mean, mean)
    torch.testing.assert_close(system.bn.running_var, var)
    assert system.training  # update_bn leaves the mode as it was


def test_warns_when_no_loader_for_batchnorm() -> None:
    system = WithBN()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    trainer = SimpleNamespace(
        optimizers=[torch.optim.SGD(system.parameters(), lr=0.1)],
        max_epochs=1,
        current_epoch=0,
        train_dataloader=None,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    swa.on_fit_start(trainer, system)  # type: ignore[arg-type]
    swa.on_train_epoch_end(trainer, system)  # type: ignore[arg-type]
    before = system.bn.running_mean.clone()
    with pytest.warns(
        fulmen.FulmenWarning, match="BatchNorm layers, but their running statistics were not recomputed"
    ):
        swa.on_train_end(trainer, system)  # type: ignore[arg-type]
    torch.testing.assert_close(system.bn.running_mean, before)


def test_state_round_trip_and_resume(tmp_path: Any) -> None:
    torch.manual_seed(0)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3)
    trainer = fit(tmp_path, TinySystem(), [swa])
    state = swa.state_dict()
    assert state["n_averaged"] == 3 and state["latest_update_epoch"] == 4
    path = tmp_path / "swa.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]["StochasticWeightAveraging"]
    assert saved["n_averaged"] == 3
    for name, value in state["average"].items():
        torch.testing.assert_close(saved["average"][name], value)

    resumed = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    resumed.load_state_dict(saved)
    assert resumed.n_averaged == 3
    torch.testing.assert_close(resumed.average_state_dict()["layer.weight"], state["average"]["layer.weight"])
    record = EpochWeights()
    system = TinySystem()
    fit(tmp_path, system, [resumed, record], max_epochs=1)
    assert resumed.n_averaged == 4
    for name, p in system.named_parameters():  # the saved mean of 3 epochs, plus one more epoch
        expected = (3 * state["average"][name].double() + record.weights[0][name]) / 4
        torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_float_start_needs_max_epochs(tmp_path: Any) -> None:
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=0.5)
    with pytest.raises(
        ValueError, match=r"swa_epoch_start=0.5\) is a fraction of max_epochs, but the Trainer has no"
    ):
        fit(tmp_path, TinySystem(), [swa], max_epochs=-1, max_steps=3)


def test_swa_lrs_per_group_must_match(tmp_path: Any) -> None:
    swa = StochasticWeightAveraging(swa_lrs=[0.01, 0.02, 0.03])
    with pytest.raises(
        ValueError, match=r"one learning rate per parameter group of the optimizer \(1\), got 3"
    ):
        fit(tmp_path, TinySystem(), [swa])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"swa_lrs": -1.0}, r"StochasticWeightAveraging\(swa_lrs=-1.0\): expected a positive float"),
        ({"swa_lrs": []}, r"swa_lrs=\[\]"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 0}, r"swa_epoch_start=0\): expected an int >= 1"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 1.5}, r"swa_epoch_start=1.5\)"),
        ({"swa_lrs": 0.1, "annealing_epochs": -1}, r"annealing_epochs=-1\): expected an int >= 0"),
        (
            {"swa_lrs": 0.1, "annealing_strategy": "exp"},
            r"annealing_strategy='exp'\): expected 'cos' or 'linear'",
        ),
        ({"swa_lrs": 0.1, "avg_fn": 3}, r"avg_fn=3\)"),
        ({"swa_lrs": 0.1, "device": "nodevice"}, r"device='nodevice'\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StochasticWeightAveraging(**kwargs)
