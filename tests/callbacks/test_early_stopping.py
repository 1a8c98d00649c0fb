"""EarlyStopping: patience, min_delta, modes, thresholds, NaN, min_epochs, missing metrics, state."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

from fulmen.callbacks import EarlyStopping, EarlyStoppingReason


class Scripted(TinySystem):
    """Logs ``score`` in validation with the value scripted for each validation run."""

    def __init__(self, values: list[float], name: str = "score") -> None:
        super().__init__()
        self.values = values
        self.metric = name
        self.runs = 0  # validation runs outside the sanity check

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.runs += 1

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        i = min(max(self.runs - 1, 0), len(self.values) - 1)
        self.log(self.metric, torch.tensor(self.values[i]))


def fit(tmp_path: Any, system: TinySystem, es: EarlyStopping, val: bool = True, **kwargs: Any) -> Any:
    flags: dict[str, Any] = {
        "max_epochs": 20,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "callbacks": [es],
    }
    flags.update(kwargs)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, make_loader(16, batch_size=4), make_loader(8, batch_size=4) if val else None)
    return trainer


def test_constant_metric_stops_after_patience_plus_one_checks(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=3)
    trainer = fit(tmp_path, system, es)
    assert system.runs == 4  # the baseline, then 3 checks without improvement
    assert trainer.current_epoch == 4
    assert es.wait_count == 3
    assert es.stopped_epoch == 3
    assert es.best_score == 1.0
    assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert es.stopping_reason_message is not None and "did not improve" in es.stopping_reason_message


def test_improvement_resets_patience(tmp_path: Any) -> None:
    system = Scripted([5.0, 4.0, 3.0, 3.5, 3.25, 3.125, 1.0])
    es = EarlyStopping("score", patience=2)
    trainer = fit(tmp_path, system, es)
    # 5 (baseline), 4, 3 improve; 3.5 and 3.25 do not: stop after the 5th validation.
    assert system.runs == 5
    assert trainer.current_epoch == 5
    assert es.best_score == 3.0
    assert es.wait_count == 2


def test_min_delta(tmp_path: Any) -> None:
    # Each value is better by 0.0625, which is not more than min_delta=0.125.
    system = Scripted([1.0, 0.9375, 0.875, 0.8125, 0.75, 0.6875])
    es = EarlyStopping("score", patience=2, min_delta=0.125)
    fit(tmp_path, system, es)
    assert system.runs == 3
    assert es.best_score == 1.0


def test_mode_max(tmp_path: Any) -> None:
    system = Scripted([0.5, 0.75, 0.625, 0.7, 0.74, 0.9])
    es = EarlyStopping("score", mode="max", patience=3)
    fit(tmp_path, system, es)
    assert system.runs == 5
    assert es.best_score == 0.75


def test_patience_zero_stops_at_first_non_improvement(tmp_path: Any) -> None:
    system = Scripted([2.0, 1.0, 1.5])
    es = EarlyStopping("score", patience=0)
    fit(tmp_path, system, es)
    assert system.runs == 3


def test_min_epochs_is_respected(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=1)
    trainer = fit(tmp_path, system, es, min_epochs=5)
    # The stop is asked for after the 2nd validation, but the trainer runs 5 epochs first.
    assert trainer.current_epoch == 5
    assert system.runs == 5
    assert trainer.should_stop


def test_stops_at_the_next_step_after_a_mid_epoch_validation(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=2)
    trainer = fit(tmp_path, system, es, limit_train_batches=4, val_check_interval=1)
    assert system.runs == 3
    assert trainer.global_step == 3
    assert trainer.current_epoch == 1  # the interrupted epoch still ends


def test_stopping_threshold(tmp_path: Any) -> None:
    system = Scripted([1.0, 0.5, 0.125, 0.0625])
    es = EarlyStopping("score", patience=100, stopping_threshold=0.125)
    fit(tmp_path, system, es)
    assert system.runs == 3
    assert es.stopping_reason is EarlyStoppingReason.STOPPING_THRESHOLD
    assert es.stopping_reason_message is not None and "stopping_threshold" in es.stopping_reason_message


def test_divergence_threshold(tmp_path: Any) -> None:
    system = Scripted([1.0, 2.0, 8.0, 0.5])
    es = EarlyStopping("score", patience=100, divergence_threshold=4.0)
    fit(tmp_path, system, es)
    assert system.runs == 3
    assert es.stopping_reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD
    assert es.stopping_reason_message is not None and "divergence_threshold" in es.stopping_reason_message


def test_divergence_threshold_mode_max(tmp_path: Any) -> None:
    system = Scripted([0.9, 0.8, 0.1, 0.95])
    es = EarlyStopping("score", mode="max", patience=100, divergence_threshold=0.2)
    fit(tmp_path, system, es)
    assert system.runs == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_stops(tmp_path: Any, bad: float) -> None:
    system = Scripted([1.0, 0.5, bad, 0.25])
    es = EarlyStopping("score", patience=100)
    fit(tmp_path, system, es)
    assert system.runs == 3
    assert es.best_score == 0.5
    assert es.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC
    assert es.stopping_reason_message is not None and "not finite" in es.stopping_reason_message


def test_nan_without_check_finite_counts_as_no_improvement(tmp_path: Any) -> None:
    system = Scripted([1.0, math.nan])
    es = EarlyStopping("score", patience=2, check_finite=False)
    fit(tmp_path, system, es)
    assert system.runs == 3
    assert es.best_score == 1.0


def test_missing_metric_error_names_metric_and_available(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("scor")
    with pytest.raises(RuntimeError) as info:
        fit(tmp_path, system, es)
    message = str(info.value)
    assert "EarlyStopping(monitor='scor')" in message
    assert "'score'" in message and "'train_loss'" in message  # the available metrics
    assert "self.log('scor'" in message
    assert "Did you mean 'score'?" in message


def test_missing_metric_not_strict_trains_on(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("other", strict=False)
    trainer = fit(tmp_path, system, es, max_epochs=3)
    assert trainer.current_epoch == 3
    assert not trainer.should_stop


def test_no_check_during_sanity_or_validate(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=0)
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, callbacks=[es], limit_val_batches=1
    )
    trainer.validate(system, make_loader(8), verbose=False)
    assert es.wait_count == 0 and es.best_score == math.inf
    # A missing metric is not an error outside fit either.
    trainer2 = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, callbacks=[EarlyStopping("nothing")], max_epochs=1
    )
    trainer2.validate(system, make_loader(8), verbose=False)


def test_sanity_check_is_not_a_check(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=1)
    fit(tmp_path, system, es, num_sanity_val_steps=1)
    assert system.runs == 2


class TrainScripted(TinySystem):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        value = self.values[min(self.current_epoch, len(self.values) - 1)]
        self.log("train_score", torch.tensor(value), on_step=False, on_epoch=True)
        return loss


def test_checks_at_train_epoch_end_without_validation(tmp_path: Any) -> None:
    system = TrainScripted([3.0, 2.0, 2.5, 2.5, 1.0])
    es = EarlyStopping("train_score", patience=2)
    trainer = fit(tmp_path, system, es, val=False)
    assert trainer.current_epoch == 4
    assert es.best_score == 2.0


def test_check_on_train_epoch_end_true_with_validation(tmp_path: Any) -> None:
    class Both(TrainScripted):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_score", torch.tensor(1.0))

    # Checked at the end of each training epoch: the train metric decides, though validation runs.
    es = EarlyStopping("train_score", patience=2, check_on_train_epoch_end=True)
    trainer = fit(tmp_path, Both([3.0, 2.0, 2.5, 2.5, 1.0]), es)
    assert trainer.current_epoch == 4
    assert es.best_score == 2.0
    # Checked after validation.
    es2 = EarlyStopping("val_score", patience=1, check_on_train_epoch_end=False)
    trainer2 = fit(tmp_path, Both([1.0]), es2)
    assert trainer2.current_epoch == 2


def test_verbose_prints_reason(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    system = Scripted([1.0])
    fit(tmp_path, system, EarlyStopping("score", patience=1, verbose=True))
    out = capsys.readouterr().out
    assert "EarlyStopping: score did not improve" in out


def test_state_round_trip(tmp_path: Any) -> None:
    system = Scripted([2.0, 1.0, 1.5])
    es = EarlyStopping("score", patience=5)
    trainer = fit(tmp_path, system, es, max_epochs=3)
    state = es.state_dict()
    assert state == {
        "wait_count": 1,
        "stopped_epoch": 0,
        "best_score": 1.0,
        "patience": 5,
        "stopping_reason": 0,
        "stopping_reason_message": None,
    }
    other = EarlyStopping("score", patience=2)
    other.load_state_dict(state)
    assert (other.wait_count, other.stopped_epoch, other.best_score, other.patience) == (1, 0, 1.0, 5)

    path = tmp_path / "es.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["callbacks"]["EarlyStopping{'monitor': 'score', 'mode': 'min'}"] == state


def test_stopped_state_round_trip(tmp_path: Any) -> None:
    system = Scripted([1.0])
    es = EarlyStopping("score", patience=1)
    fit(tmp_path, system, es)
    other = EarlyStopping("score")
    other.load_state_dict(es.state_dict())
    message = es.stopping_reason_message
    assert message is not None and "did not improve" in message
    assert (
        other.state_dict()
        == es.state_dict()
        == {
            "wait_count": 1,
            "stopped_epoch": 1,
            "best_score": 1.0,
            "patience": 1,
            "stopping_reason": EarlyStoppingReason.PATIENCE_EXHAUSTED.value,
            "stopping_reason_message": message,
        }
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": ""}, r"EarlyStopping\(monitor=''\)"),
        ({"monitor": "x", "mode": "avg"}, r"EarlyStopping\(mode='avg'\): expected 'min' or 'max'"),
        ({"monitor": "x", "patience": -1}, r"EarlyStopping\(patience=-1\): expected an int >= 0"),
        ({"monitor": "x", "patience": 1.5}, r"patience=1.5"),
        (
            {"monitor": "x", "min_delta": -0.1},
            r"EarlyStopping\(min_delta=-0.1\): expected a finite number >= 0",
        ),
        ({"monitor": "x", "stopping_threshold": "low"}, r"stopping_threshold='low'"),
        ({"monitor": "x", "check_on_train_epoch_end": "yes"}, r"check_on_train_epoch_end='yes'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)
