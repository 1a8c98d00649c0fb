"""Timer: stage times, stopping after a duration (on a fake clock), state across a restore."""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen.callbacks.timer as timer_module
from fulmen.callbacks import Timer


class Clock:
    """Stands in for the ``time`` module inside fulmen.callbacks.timer."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


class Ticking(TinySystem):
    """Each training step takes 10 seconds on the fake clock; validation takes 3."""

    clock: Clock  # set after construction, so save_hyperparameters does not record it

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.clock.now += 10.0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.clock.now += 3.0
        super().validation_step(batch, batch_idx)


def ticking(clock: Clock) -> Ticking:
    system = Ticking()
    system.clock = clock
    return system


def fit(tmp_path: Any, system: TinySystem, timer: Timer, val: bool = False, **kwargs: Any) -> Any:
    flags: dict[str, Any] = {
        "max_epochs": 10,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "callbacks": [timer],
    }
    flags.update(kwargs)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, make_loader(16, batch_size=4), make_loader(8, batch_size=4) if val else None)
    return trainer


def test_stops_after_duration_per_step(tmp_path: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:01:00", verbose=False)
    trainer = fit(tmp_path, ticking(clock), timer)
    assert trainer.global_step == 6  # 6 steps of 10 s reach 60 s
    assert trainer.current_epoch == 2  # the epoch in which time ran out still ends
    assert timer.time_elapsed() == 60.0
    assert timer.time_remaining() == 0.0


def test_stops_after_duration_per_epoch(tmp_path: Any, clock: Clock) -> None:
    timer = Timer(duration=datetime.timedelta(seconds=100), interval="epoch", verbose=False)
    trainer = fit(tmp_path, ticking(clock), timer)
    assert trainer.current_epoch == 3  # 40 s per epoch: checked at 40, 80, 120
    assert trainer.global_step == 12


def test_min_epochs_still_honoured(tmp_path: Any, clock: Clock) -> None:
    timer = Timer(duration={"seconds": 15}, verbose=False)
    trainer = fit(tmp_path, ticking(clock), timer, min_epochs=2)
    assert trainer.current_epoch == 2


def test_without_duration_only_measures(tmp_path: Any, clock: Clock) -> None:
    timer = Timer()
    trainer = fit(tmp_path, ticking(clock), timer, max_epochs=2, val=True)
    assert trainer.current_epoch == 2
    assert timer.time_remaining() is None
    start, end = timer.start_time("train"), timer.end_time("train")
    assert start == 1000.0 and end is not None
    assert timer.time_elapsed("train") == end - start == 2 * (40 + 3)  # validation inside fit counts
    assert timer.time_elapsed("validate") == 3.0  # the latest validation run
    assert timer.start_time("test") is None and timer.time_elapsed("test") == 0.0
    trainer.test(trainer.system, make_loader(8, batch_size=4), verbose=False)
    assert timer.end_time("test") is not None


def test_verbose_message(tmp_path: Any, clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    fit(tmp_path, ticking(clock), Timer(duration="00:00:00:30"))
    out = capsys.readouterr().out
    assert out.count("Timer: Time limit reached. The time budget of 0:00:30 is spent") == 1


def test_state_round_trip_counts_time_already_spent(tmp_path: Any, clock: Clock) -> None:
    first = Timer(duration="00:00:01:00", verbose=False)
    trainer = fit(tmp_path, ticking(clock), first, max_epochs=1)  # 4 steps: 40 s
    state = first.state_dict()
    assert state["time_elapsed"]["train"] == 40.0
    path = tmp_path / "timer.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["callbacks"]["Timer"]
    assert saved == state

    resumed = Timer(duration="00:00:01:00", verbose=False)
    resumed.load_state_dict(saved)
    assert resumed.time_elapsed() == 40.0
    trainer2 = fit(tmp_path, ticking(clock), resumed)
    assert trainer2.global_step == 2  # 40 s were spent before: 2 more steps reach 60 s
    assert resumed.time_elapsed() == 60.0


def test_spent_budget_stops_before_the_first_step(tmp_path: Any, clock: Clock) -> None:
    timer = Timer(duration="00:00:00:30", verbose=False)
    timer.load_state_dict({"time_elapsed": {"train": 45.0}})
    trainer = fit(tmp_path, ticking(clock), timer)
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"duration": "1 hour"}, r"Timer\(duration='1 hour'\): expected a duration .* format DD:HH:MM:SS"),
        ({"duration": {"hourz": 1}}, r"Timer\(duration=\{'hourz': 1\}\)"),
        ({"duration": datetime.timedelta(seconds=-1)}, r"Timer\(duration=datetime.timedelta\(days=-1"),
        ({"interval": "batch"}, r"Timer\(interval='batch'\): expected 'step' or 'epoch'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Timer(**kwargs)


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="Timer: unknown stage 'training'"):
        Timer().time_elapsed("training")
