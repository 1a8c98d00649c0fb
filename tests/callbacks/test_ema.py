"""EMA: the average against a hand-computed one, validation with averaged weights, state, end of training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F

import fulmen
from fulmen.callbacks import EMA, Callback


def weights(system: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().clone() for n, p in system.named_parameters()}


class StepWeights(Callback):
    """The weights (float64) before training and after every optimizer step."""

    def __init__(self) -> None:
        self.history: list[dict[str, torch.Tensor]] = []
        self.step = -1

    def on_train_start(self, trainer: Any, system: Any) -> None:
        self.history = [weights(system)]
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            self.step = trainer.global_step
            self.history.append(weights(system))


def hand_ema(
    history: list[dict[str, torch.Tensor]], decay: float, every: int = 1, warmup: bool = True
) -> dict[str, torch.Tensor]:
    ema = dict(history[0])
    n = 0
    for step, w in enumerate(history[1:], start=1):
        if step % every:
            continue
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        ema = {k: d * ema[k] + (1 - d) * w[k] for k in ema}
        n += 1
    return ema


def fit(
    tmp_path: Any, system: fulmen.System, callbacks: list[Callback], val: bool = False, **kwargs: Any
) -> Any:
    flags: dict[str, Any] = {
        "max_epochs": 2,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "callbacks": callbacks,
    }
    flags.update(kwargs)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(
        system, make_loader(16, batch_size=4, shuffle=True), make_loader(8, batch_size=4) if val else None
    )
    return trainer


def assert_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k].double(), expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("decay", "every", "warmup"),
    [(0.999, 1, True), (0.7, 1, False), (0.9, 3, True), (0.5, 2, False)],
)
def test_matches_hand_computed_ema(tmp_path: Any, decay: float, every: int, warmup: bool) -> None:
    torch.manual_seed(0)
    record = StepWeights()
    ema = EMA(decay=decay, every_n_steps=every, warmup=warmup)
    system = TinySystem(lr=0.1)
    trainer = fit(tmp_path, system, [ema, record])
    assert trainer.global_step == 8
    assert ema.num_updates == 8 // every
    assert_weights(ema.average_state_dict(), hand_ema(record.history, decay, every, warmup))
    # Training weights are untouched by the average.
    assert_weights(weights(system), record.history[-1])


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Any) -> None:
    torch.manual_seed(0)
    record = StepWeights()
    ema = EMA(decay=0.8, warmup=False)
    trainer = fit(tmp_path, TinySystem(lr=0.1), [ema, record], accumulate_grad_batches=2)
    assert trainer.global_step == 4 and ema.num_updates == 4
    assert_weights(ema.average_state_dict(), hand_ema(record.history, 0.8, warmup=False))


class SeesWeights(TinySystem):
    """Records the weights each validation_step sees, and those at the end of validation."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)
        self.seen: list[dict[str, torch.Tensor]] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.seen.append(weights(self))
        super().validation_step(batch, batch_idx)


class AroundValidation(Callback):
    monitors = True  # after the EMA's and the system's hooks

    def __init__(self, ema: EMA) -> None:
        self.ema = ema
        self.averages: list[dict[str, torch.Tensor]] = []
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.last = weights(system)

    def on_validation_start(self, trainer: Any, system: Any) -> None:
        self.averages.append({k: v.double() for k, v in self.ema.average_state_dict().items()})
        self.before.append(self.last)

    def on_validation_end(self, trainer: Any, system: Any) -> None:
        self.after.append(weights(system))


def test_validation_sees_the_average_and_training_weights_come_back(tmp_path: Any) -> None:
    torch.manual_seed(0)
    ema = EMA(decay=0.9)
    around = AroundValidation(ema)
    system = SeesWeights()
    fit(tmp_path, system, [ema, around], val=True, val_check_interval=2)
    assert len(system.seen) == 4  # two validations per epoch
    for seen, average, before, after in zip(system.seen, around.averages, around.before, around.after):
        assert_weights(seen, average)
        assert_weights(after, before)
        assert not torch.allclose(seen["layer.weight"], before["layer.weight"])


def test_validate_with_ema_false(tmp_path: Any) -> None:
    ema = EMA(decay=0.9, validate_with_ema=False)
    around = AroundValidation(ema)
    system = SeesWeights()
    fit(tmp_path, system, [ema, around], val=True, max_epochs=1)
    assert_weights(system.seen[0], around.before[0])


def test_validate_and_test_after_fit_use_the_average(tmp_path: Any) -> None:
    class SeesInTest(SeesWeights):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                self.seen.append(weights(self))
            super().test_step(batch, batch_idx)

    torch.manual_seed(0)
    ema = EMA(decay=0.9)
    system = SeesInTest()
    trainer = fit(tmp_path, system, [ema])
    trained = weights(system)
    average = {k: v.double() for k, v in ema.average_state_dict().items()}
    trainer.validate(system, make_loader(8, batch_size=4), verbose=False)
    trainer.test(system, make_loader(8, batch_size=4), verbose=False)
    assert len(system.seen) == 2
    assert_weights(system.seen[0], average)
    assert_weights(system.seen[1], average)
    assert_weights(weights(system), trained)


def test_failure_in_validation_puts_training_weights_back(tmp_path: Any) -> None:
    class Fails(TinySystem):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            raise ValueError("boom")

    torch.manual_seed(0)
    ema = EMA(decay=0.9)
    record = StepWeights()
    system = Fails(lr=0.1)
    with pytest.raises(ValueError, match="boom"):
        fit(tmp_path, system, [ema, record], val=True)
    assert_weights(weights(system), record.history[-1])


def test_apply_at_end(tmp_path: Any) -> None:
    torch.manual_seed(0)
    ema = EMA(decay=0.9, apply_at_end=True)
    system = TinySystem(lr=0.1)
    fit(tmp_path, system, [ema])
    assert_weights(weights(system), {k: v.double() for k, v in ema.average_state_dict().items()})


def test_average_state_dict_has_buffers_and_loads() -> None:
    class WithBN(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

    system = WithBN()
    ema = EMA()
    assert ema.average_state_dict() == {}
    ema.on_fit_start(None, system)  # type: ignore[arg-type]
    system.bn.running_mean.fill_(3.0)
    state = ema.average_state_dict()
    assert state.keys() == system.state_dict().keys()
    assert torch.equal(state["bn.running_mean"], torch.full((4,), 3.0))
    assert state["bn.running_mean"].data_ptr() != system.bn.running_mean.data_ptr()  # a copy
    WithBN().load_state_dict(state)


def test_state_round_trip_and_resume(tmp_path: Any) -> None:
    torch.manual_seed(0)
    ema = EMA(decay=0.9)
    trainer = fit(tmp_path, TinySystem(lr=0.1), [ema])
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]["EMA"]
    assert saved["num_updates"] == 8
    assert_weights(
        {k: v.double() for k, v in saved["average"].items()},
        {k: v.double() for k, v in ema.average_state_dict().items()},
    )

    # Loaded before fit: applied when fitting starts, and the average goes on from there.
    resumed = EMA(decay=0.9)
    resumed.load_state_dict(saved)
    assert resumed.num_updates == 8
    assert torch.equal(resumed.average_state_dict()["layer.weight"], saved["average"]["layer.weight"])
    record = StepWeights()
    system = TinySystem(lr=0.1)
    fit(tmp_path, system, [resumed, record], max_epochs=1, limit_train_batches=1)
    d = min(0.9, (1 + 8) / (10 + 8))
    expected = {
        k: d * saved["average"][k].double() + (1 - d) * record.history[1][k] for k in record.history[1]
    }
    assert_weights(resumed.average_state_dict(), expected)
    assert resumed.num_updates == 9

    # Loaded into an EMA that is already tracking a system: copied in place.
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.average_state_dict()["layer.weight"], saved["average"]["layer.weight"])
    assert resumed.num_updates == 8


def test_load_state_for_another_model_fails(tmp_path: Any) -> None:
    ema = EMA()
    ema.load_state_dict({"num_updates": 1, "average": {"other.weight": torch.zeros(1)}})
    with pytest.raises(
        KeyError, match=r"EMA.load_state_dict: the saved average has no values for \['layer.weight'"
    ):
        fit(tmp_path, TinySystem(), [ema])


def test_only_floating_point_parameters_are_averaged() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("count", torch.zeros((), dtype=torch.long))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.lin(x))

    m = Mixed()
    ema = EMA(decay=0.5, warmup=False)
    ema.on_fit_start(None, m)  # type: ignore[arg-type]
    with torch.no_grad():
        m.lin.weight.add_(2.0)
    m.count.fill_(7)
    ema.update()
    state = ema.average_state_dict()
    torch.testing.assert_close(state["lin.weight"], m.lin.weight.detach() - 1.0)
    assert state["count"].item() == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.5}, r"EMA\(decay=1.5\): expected a number in \[0, 1\]"),
        ({"decay": "high"}, r"EMA\(decay='high'\)"),
        ({"every_n_steps": 0}, r"EMA\(every_n_steps=0\): expected an int >= 1"),
        ({"validate_with_ema": 1}, r"EMA\(validate_with_ema=1\): expected True or False"),
        ({"apply_at_end": None}, r"EMA\(apply_at_end=None\)"),
        ({"warmup": "yes"}, r"EMA\(warmup='yes'\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMA(**kwargs)


def test_bf16_parameters_are_averaged_in_float32(tmp_path: Any) -> None:
    """In bfloat16, (1 - decay) * difference rounds to zero: the average would never move."""
    import fulmen

    ema = fulmen.EMA(decay=0.999, warmup=False)
    trainer = quiet_trainer(tmp_path, precision="bf16-true", max_epochs=3, callbacks=[ema], logger=False)
    system = TinySystem(lr=0.5)
    start = system.layer.weight.detach().clone().to(torch.bfloat16)
    trainer.fit(system, make_loader())
    averaged = ema.average_state_dict()["layer.weight"]
    assert averaged.dtype == torch.bfloat16
    assert not torch.equal(averaged, start)  # it moved towards the trained weights
