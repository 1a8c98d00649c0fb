"""Resuming with changed settings: each change since the checkpoint gets one message saying what
differs and what the resumed fit does (fulmen.trainer._resume_checks), before anything trains.

- a hyperparameter the restored optimizer or scheduler state overrides (a warning naming the value
  training uses and the documented way to apply the new one, which these tests run);
- the batch size or the dataset's length changed in the middle of an epoch (the same samples, in
  the same order, or a refusal with the options);
- max_epochs / max_steps / a Timer budget already reached or passed by the checkpoint.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.errors import FlagError, FulmenWarning


class LrRecorder(fulmen.Callback):
    """The optimizer's lr at each training batch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class AppliesNewLr(TinySystem):
    """The documented way (docs/checkpoints.md, 'Resuming with changed settings')."""

    def on_train_start(self) -> None:
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.hparams.lr


def _epoch_checkpoint(tmp_path: Path, system: fulmen.System, **flags: Any) -> str:
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, **flags)
    trainer.fit(system, make_loader())
    return str(trainer.checkpoint_callback.last_model_path)


# -- hyperparameters ------------------------------------------------------------------------------
def test_a_new_lr_that_the_optimizer_state_overrides_is_named_with_the_value_used(tmp_path: Path) -> None:
    path = _epoch_checkpoint(tmp_path, TinySystem(lr=0.1))
    lrs = LrRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[lrs])
    with pytest.warns(FulmenWarning) as record:
        trainer.fit(TinySystem(lr=0.5), make_loader(), ckpt_path=path)
    (warning,) = [str(w.message) for w in record if "hyperparameter" in str(w.message)]  # one message
    assert "hyperparameter lr is 0.5 now but 0.1 in the checkpoint" in warning
    assert "optimizer 0 (SGD) sets lr back to 0.1, so training goes on with lr=0.1, not 0.5" in warning
    assert "def on_train_start(self):" in warning and "group['lr'] = self.hparams.lr" in warning
    assert lrs.lrs and set(lrs.lrs) == {0.1}  # what the warning says training uses


def test_the_documented_way_trains_with_the_new_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _epoch_checkpoint(tmp_path, AppliesNewLr(lr=0.1))
    capsys.readouterr()
    lrs = LrRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[lrs])
    trainer.fit(AppliesNewLr(lr=0.5), make_loader(), ckpt_path=path)  # no warning (they are errors here)
    assert lrs.lrs and set(lrs.lrs) == {0.5}
    assert trainer.global_step == 16
    out = capsys.readouterr().out
    assert "hyperparameter lr is 0.5 now, 0.1 in the checkpoint; the run goes on with 0.5" in out


class Scheduled(TinySystem):
    def __init__(self, lr: float = 0.1, gamma: float = 0.5) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=self.hparams.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ScheduledAppliesNewLr(Scheduled):
    def on_train_start(self) -> None:  # as docs/checkpoints.md shows for a scheduled lr
        sched = self.trainer.lr_scheduler_configs[0].scheduler
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] *= self.hparams.lr / group["initial_lr"]  # the same point of the schedule
            group["initial_lr"] = self.hparams.lr
        sched.base_lrs = [g["initial_lr"] for g in self.trainer.optimizers[0].param_groups]


def test_a_scheduled_lr_and_a_scheduler_setting_overridden_by_the_restored_state(tmp_path: Path) -> None:
    path = _epoch_checkpoint(tmp_path, Scheduled())  # 8 steps: lr 0.1 -> 0.05 -> 0.025
    lrs = LrRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[lrs])
    with pytest.warns(FulmenWarning) as record:
        trainer.fit(Scheduled(lr=0.5, gamma=0.9), make_loader(), ckpt_path=path)
    messages = [str(w.message) for w in record if "hyperparameter" in str(w.message)]
    assert len(messages) == 2  # one per changed hyperparameter
    lr_msg, gamma_msg = sorted(messages, key=lambda m: "gamma" in m)
    assert "hyperparameter lr is 0.5 now but 0.1" in lr_msg
    assert "lr scheduler 0 (StepLR) starts its schedule from 0.1, so training goes on with lr=0.025" in lr_msg
    assert "sched.base_lrs = " in lr_msg
    assert "lr scheduler 0 (StepLR) sets its gamma back to 0.5" in gamma_msg
    assert "self.trainer.lr_scheduler_configs[0].scheduler.gamma = self.hparams.gamma" in gamma_msg
    assert lrs.lrs == [0.025] * 4 + [0.0125] * 4  # the old schedule goes on

    applied = LrRecorder()
    again = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[applied])
    with pytest.warns(FulmenWarning, match="gamma back to 0.5"):  # only gamma remains overridden
        again.fit(ScheduledAppliesNewLr(lr=0.5, gamma=0.9), make_loader(), ckpt_path=path)
    assert applied.lrs == pytest.approx([0.125] * 4 + [0.0625] * 4)  # the same schedule, from a base of 0.5


def test_another_changed_hparam_gets_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class Weighted(TinySystem):
        def __init__(self, lr: float = 0.05, weight: float = 1.0) -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters()

    path = _epoch_checkpoint(tmp_path, Weighted(weight=1.0))
    capsys.readouterr()
    quiet_trainer(tmp_path, max_epochs=2, logger=False).fit(Weighted(weight=2.0), make_loader(), ckpt_path=path)
    out = capsys.readouterr().out
    assert out.count("Resuming from") == 1
    assert "hyperparameter weight is 2.0 now, 1.0 in the checkpoint; the run goes on with 2.0" in out


# -- data ----------------------------------------------------------------------------------------
N = 640


def _indexed(n: int = N) -> TensorDataset:
    """Samples whose first feature is their index / 1024 (exact in float32, and small)."""
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n, dtype=torch.float32) / 1024
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


class SeenSamples(fulmen.Callback):
    """The indices of the samples trained on, in order, and the batch sizes."""

    def __init__(self, save_after: int | None = None, path: Path | None = None) -> None:
        self.seen: list[int] = []
        self.sizes: list[int] = []
        self.save_after, self.path = save_after, path  # a checkpoint after this many batches

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        self.seen.extend(int(i) for i in batch[0][:, 0] * 1024)
        self.sizes.append(len(batch[0]))

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == self.save_after and trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


def _mid_epoch_checkpoint(tmp_path: Path, batch_size: int = 32, after: int = 10, **flags: Any) -> tuple[str, list[int]]:
    """A shuffled epoch of 640 samples, checkpointed after ``after`` batches; and the order it trained."""
    path = tmp_path / "mid.ckpt"
    seen = SeenSamples(after, path)
    fulmen.seed_everything(1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[seen], **flags)
    trainer.fit(TinySystem(), DataLoader(_indexed(), batch_size=batch_size, shuffle=True))
    return str(path), seen.seen


def test_a_larger_batch_size_mid_epoch_trains_the_same_remaining_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, order = _mid_epoch_checkpoint(tmp_path)
    assert sorted(order) == list(range(N)) and order != list(range(N))  # shuffled, each once
    capsys.readouterr()
    fulmen.seed_everything(99)  # the checkpoint decides the order, not the new process
    seen = SeenSamples()
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[seen])
    trainer.fit(TinySystem(), DataLoader(_indexed(), batch_size=64, shuffle=True), ckpt_path=path)
    assert seen.seen == order[320:]  # the 320 samples not yet trained, in the uninterrupted order
    assert seen.sizes == [64] * 5 and trainer.global_step == 15
    out = capsys.readouterr().out
    assert out.count("Resuming from") == 1
    assert (
        "with batch size 64 (the checkpoint's run used 32): the 320 samples trained in this epoch are 5 batches of 64, "
        "so the epoch goes on at batch 5 of 10"
    ) in out


def test_a_smaller_batch_size_mid_epoch_with_workers_and_a_generator(tmp_path: Path) -> None:
    def loader(bs: int) -> DataLoader:
        return DataLoader(_indexed(), batch_size=bs, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(3))

    path = tmp_path / "mid.ckpt"
    first = SeenSamples(6, path)
    quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[first]).fit(TinySystem(), loader(64))
    seen = SeenSamples()
    quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[seen]).fit(
        TinySystem(), loader(16), ckpt_path=path
    )
    assert seen.seen == first.seen[384:] and seen.sizes == [16] * 16


def test_a_batch_size_that_does_not_divide_the_samples_trained_is_refused(tmp_path: Path) -> None:
    path, _ = _mid_epoch_checkpoint(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    expected = (
        r"Cannot resume from '.*mid\.ckpt' in the middle of epoch 0 \(after 10 of its 20 batches\) with batch size 48: "
        r"the checkpoint was written after 10 batches of 32 \(320 samples\) of this epoch, and 320 samples are not a "
        r"whole number of batches of 48.*finish epoch 0 with the settings the checkpoint was written with \(resume "
        r"with them and max_epochs=1.*or resume from a checkpoint written at an epoch's end, or use a batch size that "
        r"divides 320 \(such as 20, 40, 64\)"
    )
    with pytest.raises(FlagError, match=expected):
        trainer.fit(TinySystem(), DataLoader(_indexed(), batch_size=48, shuffle=True), ckpt_path=path)
    assert trainer.global_step == 10  # nothing trained


def test_a_new_batch_size_inside_an_accumulation_group_is_refused_unless_it_lines_up(tmp_path: Path) -> None:
    # 14 batches of 16 (224 samples): 3 steps, and 2 batches (32 samples) accumulated but not stepped
    path, order = _mid_epoch_checkpoint(tmp_path, batch_size=16, after=14, accumulate_grad_batches=4)
    assert torch.load(path, weights_only=True)["pending_gradients"]
    expected = (
        r"inside a gradient accumulation group \(2 of accumulate_grad_batches=4 batches of 16, 32 samples, accumulated "
        r"but not stepped\), and with batches of 32 \(accumulate_grad_batches=4\) that group would not end at the same"
    )
    with pytest.raises(FlagError, match=expected):  # 7 batches of 32: 3 of a group of 4 would be pending
        quiet_trainer(tmp_path, max_epochs=1, logger=False, accumulate_grad_batches=4).fit(
            TinySystem(), DataLoader(_indexed(), batch_size=32, shuffle=True), ckpt_path=path
        )
    seen = SeenSamples()  # 224 samples = 7 batches of 32, 1 pending of a group of 2: the same group boundary
    quiet_trainer(tmp_path, max_epochs=1, logger=False, accumulate_grad_batches=2, callbacks=[seen]).fit(
        TinySystem(), DataLoader(_indexed(), batch_size=32, shuffle=True), ckpt_path=path
    )
    assert seen.seen == order[224:]


def test_a_shorter_dataset_mid_epoch_is_refused(tmp_path: Path) -> None:
    path, _ = _mid_epoch_checkpoint(tmp_path)
    expected = (
        r"Cannot resume from '.*mid\.ckpt' in the middle of epoch 0 \(after 10 of its 20 batches\): the training data "
        r"has 480 samples now, 640 when the checkpoint was written\..*finish epoch 0 with the settings the checkpoint "
        r"was written with.*or resume from a checkpoint written at an epoch's end"
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.raises(FlagError, match=expected):
        trainer.fit(TinySystem(), DataLoader(_indexed(480), batch_size=32, shuffle=True), ckpt_path=path)


def test_data_changed_between_epochs_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _epoch_checkpoint(tmp_path, TinySystem())  # 64 samples in batches of 8
    capsys.readouterr()
    seen = SeenSamples()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[seen])
    trainer.fit(TinySystem(), make_loader(n=96, batch_size=16), ckpt_path=path)
    assert seen.sizes == [16] * 6 and trainer.global_step == 14  # the whole new epoch
    out = capsys.readouterr().out
    assert "between epochs with batch size 16 (the checkpoint's run used 8): the next epochs have 6 batches of 16" in out
    assert "between epochs with 96 training samples (the checkpoint's run had 64): the next epochs have 6 batches" in out


def test_lightning_rules_keep_the_batch_position_with_a_warning(tmp_path: Path) -> None:
    from fulmen.lightning import Trainer as LightningTrainer

    path = tmp_path / "mid.ckpt"
    LightningTrainer(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[SeenSamples(10, path)],
    ).fit(TinySystem(), DataLoader(_indexed(), batch_size=32, shuffle=True))
    seen = SeenSamples()
    again = LightningTrainer(
        max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[seen],
    )
    with pytest.warns(FulmenWarning, match=r"as in Lightning the epoch goes on at batch 10 of 10, which skips 640 samples"):
        again.fit(TinySystem(), DataLoader(_indexed(), batch_size=64, shuffle=True), ckpt_path=path)
    assert seen.seen == []


# -- limits --------------------------------------------------------------------------------------
def _two_epochs(tmp_path: Path) -> str:
    """The last checkpoint of a 2-epoch run: written at the end of epoch 1 (16 steps)."""
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False)
    trainer.fit(TinySystem(), make_loader())
    return str(trainer.checkpoint_callback.last_model_path)


def test_max_epochs_already_passed_is_refused(tmp_path: Path) -> None:
    path = _two_epochs(tmp_path)
    assert torch.load(path, weights_only=True)["loops"]["phase"] == "epoch_end"
    expected = (
        r"Cannot resume from '.*\.ckpt': the checkpoint has already trained 2 complete epoch\(s\) \(global step "
        r"16\), more than the Trainer\(max_epochs=1\) this fit may run.*Raise max_epochs to 3 or more"
    )
    with pytest.raises(FlagError, match=expected):
        quiet_trainer(tmp_path, max_epochs=1, logger=False).fit(TinySystem(), make_loader(), ckpt_path=path)


def test_max_epochs_already_reached_warns_and_trains_nothing(tmp_path: Path) -> None:
    path = _two_epochs(tmp_path)
    seen = SeenSamples()
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[seen])
    expected = (
        r"Resuming from '.*\.ckpt' trains nothing: the checkpoint has already completed 2 epoch\(s\) \(global step "
        r"16\), which is Trainer\(max_epochs=2\), so fit returns at once.*Raise max_epochs \(to 3 for one more epoch\)"
    )
    with pytest.warns(FulmenWarning, match=expected):
        trainer.fit(TinySystem(), make_loader(), ckpt_path=path)
    assert seen.seen == [] and trainer.global_step == 16


def test_max_steps_already_passed_or_reached(tmp_path: Path) -> None:
    path = _two_epochs(tmp_path)
    with pytest.raises(FlagError, match=r"written at global step 16, past Trainer\(max_steps=10\).*Raise max_steps above 16"):
        quiet_trainer(tmp_path, max_steps=10, max_epochs=-1, logger=False).fit(
            TinySystem(), make_loader(), ckpt_path=path
        )
    with pytest.warns(FulmenWarning, match=r"trains nothing: the checkpoint was written at global step 16, which is Trainer\(max_steps=16\)"):
        quiet_trainer(tmp_path, max_steps=16, max_epochs=-1, logger=False).fit(
            TinySystem(), make_loader(), ckpt_path=path
        )


def test_a_spent_timer_budget_warns(tmp_path: Path) -> None:
    first = quiet_trainer(tmp_path, max_epochs=1, logger=False, callbacks=[fulmen.Timer(duration={"hours": 1})])
    first.fit(TinySystem(), make_loader())
    path = first.checkpoint_callback.last_model_path
    timer = fulmen.Timer(duration={"microseconds": 1}, verbose=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=False, callbacks=[timer])
    with pytest.warns(FulmenWarning, match=r"trains nothing: its training time .* has already spent the budget of 0\.0 s.*Raise Timer\(duration=\.\.\.\)"):
        trainer.fit(TinySystem(), make_loader(), ckpt_path=path)
    assert trainer.global_step == 8


def test_lightning_rules_return_as_lightning_does_and_say_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fulmen.lightning import Trainer as LightningTrainer

    def run(**flags: Any) -> Any:
        trainer = LightningTrainer(
            default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False, **flags
        )
        trainer.fit(TinySystem(), make_loader(), ckpt_path=path)
        return trainer

    first = LightningTrainer(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    first.fit(TinySystem(), make_loader())
    path = first.checkpoint_callback.last_model_path
    with caplog.at_level(logging.INFO, logger="fulmen.lightning"):
        assert run(max_epochs=2).global_step == 16  # Lightning returns at once: an info line, no warning
    assert re.search(r"trains nothing: the checkpoint has already completed 2 epoch\(s\)", caplog.text)
    with pytest.warns(FulmenWarning, match=r"trains nothing: the checkpoint was written at global step 16, past Trainer\(max_steps=10\)"):
        assert run(max_steps=10).global_step == 16  # Lightning returns here too (fulmen.Trainer refuses)
