"""Loop control: the minimums against stop requests, max_time with a final checkpoint, stopping
from training_step, and reloading the dataloaders every n epochs.

64 samples in batches of 8 (8 batches an epoch) unless a test says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder, StopAt
from helpers.systems import TinyData, make_loader, quiet_trainer
from torch.utils.data import DataLoader

import fulmen
import fulmen.trainer._fit as fit_module
from fulmen.errors import FlagError

N_BATCHES = 8


def fit(tmp_path: Path, system: Any = None, train: Any = None, val: Any = None, **flags: Any) -> tuple[Any, Any]:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    trainer = quiet_trainer(tmp_path, **flags)
    system = system if system is not None else Recorder()
    trainer.fit(system, train if train is not None else make_loader(), val)
    return trainer, system


class StopAtEpochEnd(fulmen.Callback):
    """Requests a stop at the end of every epoch (as early stopping would)."""

    def __init__(self) -> None:
        self.requests = 0

    def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
        trainer.should_stop = True
        self.requests += 1


# -- the minimums win over stop requests ------------------------------------------------------------
def test_min_epochs_wins_over_a_stop_request_at_the_epoch_end(tmp_path: Path) -> None:
    stopper = StopAtEpochEnd()
    trainer, s = fit(tmp_path, max_epochs=10, min_epochs=3, callbacks=[stopper])
    assert trainer.current_epoch == 3 and stopper.requests == 3
    assert s.trained == [(e, b) for e in range(3) for b in range(N_BATCHES)]
    assert trainer.should_stop  # the request stays; it was honoured once the minimum was met


def test_without_minimums_the_stop_request_ends_the_run(tmp_path: Path) -> None:
    trainer, _ = fit(tmp_path, max_epochs=10, callbacks=[StopAtEpochEnd()])
    assert trainer.current_epoch == 1


def test_min_steps_wins_over_stop_requests_after_every_batch(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=10, min_steps=13, callbacks=[StopAt(epoch=None)])
    assert trainer.global_step == 13
    assert s.trained == [(0, b) for b in range(N_BATCHES)] + [(1, b) for b in range(5)]


def test_min_steps_counts_optimizer_steps_with_accumulation(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=10, min_steps=5, accumulate_grad_batches=2, callbacks=[StopAt(epoch=None)])
    assert trainer.global_step == 5
    assert len(s.trained) == 10


def test_both_minimums_must_be_met(tmp_path: Path) -> None:
    trainer, _ = fit(tmp_path, max_epochs=10, min_epochs=1, min_steps=10, callbacks=[StopAt(epoch=None)])
    # stopped in epoch 1 after its batch 1; the interrupted epoch still ends (current_epoch counts it)
    assert (trainer.current_epoch, trainer.global_step) == (2, 10)
    trainer, _ = fit(tmp_path, max_epochs=10, min_epochs=2, min_steps=3, callbacks=[StopAt(epoch=None)])
    assert (trainer.current_epoch, trainer.global_step) == (2, 16)


def test_max_epochs_wins_over_min_steps(tmp_path: Path) -> None:
    # The maxima end the run whatever the minimums say (max_epochs is checked between epochs).
    trainer, _ = fit(tmp_path, max_epochs=1, min_steps=100)
    assert trainer.global_step == N_BATCHES


# -- max_time -------------------------------------------------------------------------------------
class FakeClock:
    """Stands in for the ``time`` module in fulmen.trainer._fit; the system advances it."""

    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


def test_max_time_stops_cleanly_with_a_final_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(fit_module, "time", clock)
    ends: list[str] = []

    class Slow(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += 7.0  # each step "takes" 7 s
            return super().training_step(batch, batch_idx)

        def on_train_epoch_end(self) -> None:
            ends.append(f"epoch_end:{self.current_epoch}")

        def on_train_end(self) -> None:
            ends.append("train_end")

        def on_fit_end(self) -> None:
            ends.append("fit_end")

    trainer, s = fit(
        tmp_path, Slow(), make_loader(64), make_loader(16), max_epochs=100, max_time={"minutes": 1}, enable_checkpointing=True
    )
    # 60 s at 7 s a step: the 9th step (63 s) passes the limit, in epoch 1.
    assert trainer.global_step == 9 and trainer.current_epoch == 2
    assert s.trained[-1] == (1, 0)
    assert trainer.state.finished and trainer.state.status == "finished"
    assert ends == ["epoch_end:0", "epoch_end:1", "train_end", "fit_end"]
    # The interrupted epoch still ends with on_train_epoch_end, where ModelCheckpoint saves.
    (path,) = (tmp_path / "checkpoints").iterdir()
    assert path.name == "epoch=1-step=9.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 9)
    for name, value in s.state_dict().items():
        assert torch.equal(ckpt["state_dict"][name], value)
    # No validation after the stop: validation ran at the end of epoch 0 only.
    assert s.val_steps == [N_BATCHES]


def test_max_time_ignores_the_minimums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(fit_module, "time", clock)

    class Slow(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += 1.0
            return super().training_step(batch, batch_idx)

    trainer, _ = fit(tmp_path, Slow(), max_epochs=10, min_epochs=5, max_time="00:00:00:03")
    assert trainer.global_step == 3


# -- should_stop from training_step -----------------------------------------------------------------
class StopInStep(Recorder):
    def __init__(self, at: tuple[int, int]) -> None:
        super().__init__()
        self.at = at

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        if (self.current_epoch, batch_idx) == self.at:
            self.trainer.should_stop = True
        return loss


def test_should_stop_in_training_step_stops_before_the_next_step(tmp_path: Path) -> None:
    s = StopInStep(at=(1, 2))
    trainer, _ = fit(tmp_path, s, max_epochs=10)
    assert s.trained == [(0, b) for b in range(N_BATCHES)] + [(1, 0), (1, 1), (1, 2)]
    assert trainer.global_step == N_BATCHES + 3  # the batch that asked still took its optimizer step
    assert trainer.current_epoch == 2


def test_should_stop_in_training_step_waits_for_min_epochs(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, StopInStep(at=(0, 2)), max_epochs=10, min_epochs=2)
    assert trainer.current_epoch == 2
    assert len(s.trained) == 2 * N_BATCHES


def test_should_stop_inside_an_accumulation_group_drops_its_gradients(tmp_path: Path) -> None:
    s = StopInStep(at=(0, 5))
    trainer, _ = fit(tmp_path, s, max_epochs=10, accumulate_grad_batches=4)
    assert len(s.trained) == 6
    assert trainer.global_step == 1  # the group of batches 4 and 5 never stepped
    assert all(p.grad is None for p in s.parameters())


# -- reload_dataloaders_every_n_epochs ---------------------------------------------------------------
class Reloading(Recorder):
    """Its train_dataloader gives 2 batches more at each call; counts the calls per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.train_calls: list[int] = []
        self.val_calls: list[int] = []

    def train_dataloader(self) -> DataLoader:
        self.train_calls.append(self.current_epoch)
        return make_loader(16 * (len(self.train_calls) + 1), batch_size=8)

    def val_dataloader(self) -> DataLoader:
        self.val_calls.append(self.current_epoch)
        return make_loader(16)


def test_reload_every_2_epochs_requests_the_train_dataloader_at_epochs_2_and_4(tmp_path: Path) -> None:
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, max_epochs=6, reload_dataloaders_every_n_epochs=2
    )
    s = Reloading()
    trainer.fit(s)
    assert s.train_calls == [0, 2, 4]
    assert s.val_calls == [0, 2, 4]
    # The new loaders are used: 4 batches in epochs 0-1, 6 in epochs 2-3, 8 in epochs 4-5.
    per_epoch = [sum(1 for e, _ in s.trained if e == epoch) for epoch in range(6)]
    assert per_epoch == [4, 4, 6, 6, 8, 8]
    assert trainer.num_training_batches == 8
    assert trainer.global_step == 36


def test_without_reload_the_dataloaders_are_requested_once(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=4)
    s = Reloading()
    trainer.fit(s)
    assert (s.train_calls, s.val_calls) == ([0], [0])


def test_reload_requests_the_datamodules_dataloader(tmp_path: Path) -> None:
    class CountingData(TinyData):
        def __init__(self) -> None:
            super().__init__(n=32)
            self.train_epochs: list[int] = []

        def train_dataloader(self) -> DataLoader:
            assert self.trainer is not None
            self.train_epochs.append(self.trainer.current_epoch)
            return super().train_dataloader()

    dm = CountingData()
    trainer = quiet_trainer(
        tmp_path, logger=False, enable_checkpointing=False, max_epochs=5, reload_dataloaders_every_n_epochs=2
    )
    trainer.fit(Recorder(), datamodule=dm)
    assert dm.train_epochs == [0, 2, 4]


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_bad_reload_dataloaders_every_n_epochs(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(FlagError, match=rf"Trainer\(reload_dataloaders_every_n_epochs={bad!r}\): expected an int >= 0 \(0: never\)"):
        quiet_trainer(tmp_path, reload_dataloaders_every_n_epochs=bad)
