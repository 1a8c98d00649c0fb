"""ModelCheckpoint: top-k by a monitored metric, names, last.ckpt, triggers, state, resolve."""

from __future__ import annotations

import datetime
import filecmp
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.callbacks import checkpoint as ckpt_module
from fulmen.callbacks.base import Callback
from fulmen.callbacks.checkpoint import ModelCheckpoint
from fulmen.errors import FulmenWarning
from fulmen.trainer._hooks import overrides

# The training loader has 16 samples in batches of 8: two optimizer steps per epoch.


class Scripted(TinySystem):
    """Logs ``metric`` in validation: the scripted value for the current epoch."""

    def __init__(self, values: list[float], name: str = "val_loss") -> None:
        super().__init__()
        self.values = values
        self.metric = name

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log(self.metric, torch.tensor(self.values[min(self.current_epoch, len(self.values) - 1)]))


class Saves(Callback):
    """Where each checkpoint was written: the hook that ran last before it, epoch, step, batch."""

    def __init__(self) -> None:
        self.hook = ""
        self.batch = -1
        self.saves: list[tuple[str, int, int, int]] = []

    def on_train_batch_start(self, trainer, system, batch, batch_idx) -> None:
        self.batch = batch_idx

    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx) -> None:
        self.hook = "batch_end"

    def on_validation_end(self, trainer, system) -> None:
        self.hook = "sanity" if trainer.sanity_checking else "validation_end"

    def on_train_epoch_end(self, trainer, system) -> None:
        self.hook = "train_epoch_end"

    def on_save_checkpoint(self, trainer, system, checkpoint) -> None:
        self.saves.append((self.hook, trainer.current_epoch, trainer.global_step, self.batch))


def fit(
    tmp_path: Path,
    values: list[float],
    *callbacks: Callback,
    system: TinySystem | None = None,
    val: bool = True,
    n_train: int = 16,
    **flags: Any,
) -> fulmen.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": len(values),
        "num_sanity_val_steps": 0,
        "logger": False,
        "callbacks": list(callbacks),
    }
    settings.update(flags)
    trainer = quiet_trainer(tmp_path, **settings)
    trainer.fit(system or Scripted(values), make_loader(n_train, 8), make_loader(8, 8) if val else None)
    return trainer


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def step_of(path: str | Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


# -- top k -------------------------------------------------------------------------------------------
class FilesAtEpochStart(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[list[str]] = []

    def on_train_epoch_start(self, trainer, system) -> None:
        self.seen.append(files(self.folder))


def test_top_k_keeps_exactly_the_k_best_files(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2)
    seen = FilesAtEpochStart(d)
    fit(tmp_path, [5.0, 3.0, 4.0, 1.0, 2.0, 6.0], seen, cb)
    assert files(d) == ["epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt"]
    assert seen.seen[1:] == [
        ["epoch=0-step=2.ckpt"],
        ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"],
        ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"],  # 4 pushed out 5
        ["epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"],
        ["epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt"],
    ]
    assert cb.best_model_path == str(d / "epoch=3-step=8.ckpt")
    assert isinstance(cb.best_model_score, torch.Tensor) and cb.best_model_score.item() == 1.0
    assert {k: v.item() for k, v in cb.best_k_models.items()} == {
        str(d / "epoch=3-step=8.ckpt"): 1.0,
        str(d / "epoch=4-step=10.ckpt"): 2.0,
    }
    assert cb.kth_best_model_path == str(d / "epoch=4-step=10.ckpt") and cb.kth_value.item() == 2.0
    assert cb.current_score is not None and cb.current_score.item() == 6.0
    assert cb.last_model_path == str(d / "epoch=4-step=10.ckpt")  # the newest file written
    assert step_of(cb.best_model_path) == 8


def test_mode_max(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="acc", mode="max", save_top_k=2)
    fit(tmp_path, [0.1, 0.3, 0.2, 0.5, 0.4], cb, system=Scripted([0.1, 0.3, 0.2, 0.5, 0.4], "acc"))
    assert files(d) == ["epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt"]
    assert cb.best_model_path == str(d / "epoch=3-step=8.ckpt")
    assert cb.best_model_score is not None and cb.best_model_score.item() == pytest.approx(0.5)


@pytest.mark.parametrize(("k", "values", "kept"), [(1, [2.0, 1.0, 1.0, 1.0], [1]), (2, [1.0, 2.0, 2.0, 2.0], [0, 1])])
def test_ties_keep_the_older_checkpoint(tmp_path: Path, k: int, values: list[float], kept: list[int]) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=k, filename="{epoch}")
    fit(tmp_path, values, cb)
    assert files(d) == [f"epoch={e}.ckpt" for e in kept]
    assert cb.best_model_path == str(d / f"epoch={kept[0]}.ckpt")


def test_nan_and_inf_never_count_as_best(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, filename="{epoch}")
    fit(tmp_path, [math.nan, 3.0, math.nan, math.inf, 2.0, math.nan], cb)
    assert files(d) == ["epoch=1.ckpt", "epoch=4.ckpt"]
    assert cb.best_model_path == str(d / "epoch=4.ckpt")
    assert cb.current_score is not None and math.isnan(cb.current_score.item())


def test_keep_all_saves_non_finite_values_but_never_calls_them_best(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=-1, filename="{epoch}")
    fit(tmp_path, [math.nan, 3.0, -math.inf, 4.0], cb)
    assert files(d) == [f"epoch={e}.ckpt" for e in range(4)]
    assert cb.best_model_path == str(d / "epoch=1.ckpt") and cb.best_model_score is not None
    assert cb.best_model_score.item() == 3.0
    only_nan = ModelCheckpoint(dirpath=tmp_path / "nan", monitor="val_loss", save_top_k=-1)
    fit(tmp_path, [math.nan], only_nan)
    assert len(files(tmp_path / "nan")) == 1
    assert only_nan.best_model_path == "" and only_nan.best_model_score is None


def test_save_top_k_zero_saves_only_last(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=0, save_last=True)
    fit(tmp_path, [3.0, 2.0, 1.0], cb)
    assert files(d) == ["last.ckpt"]
    assert step_of(d / "last.ckpt") == 6
    assert cb.best_model_path == "" and cb.best_k_models == {}
    nothing = ModelCheckpoint(dirpath=tmp_path / "none", save_top_k=0)
    fit(tmp_path, [1.0, 1.0], nothing)
    assert not (tmp_path / "none").exists() and nothing.last_model_path == ""


def test_save_top_k_minus_one_keeps_all_and_without_monitor_one_keeps_the_newest(tmp_path: Path) -> None:
    every = ModelCheckpoint(dirpath=tmp_path / "all", save_top_k=-1)
    newest = ModelCheckpoint(dirpath=tmp_path / "one")
    fit(tmp_path, [1.0, 1.0, 1.0], every, newest)
    assert files(tmp_path / "all") == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]
    assert files(tmp_path / "one") == ["epoch=2-step=6.ckpt"]
    assert newest.best_model_path == newest.last_model_path == str(tmp_path / "one" / "epoch=2-step=6.ckpt")
    assert newest.best_model_score is None


def test_a_failed_write_keeps_the_ranking_and_the_previous_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0, logger=False, callbacks=[cb])
    real, calls = trainer.save_checkpoint, []

    def flaky(path: Any, weights_only: bool = False) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, weights_only=weights_only)

    monkeypatch.setattr(trainer, "save_checkpoint", flaky)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(Scripted([2.0, 1.0, 0.5]), make_loader(16, 8), make_loader(8, 8))
    assert files(d) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert cb.best_model_path == str(d / "epoch=0-step=2.ckpt") and cb.best_model_score is not None
    assert cb.best_model_score.item() == 2.0 and list(cb.best_k_models) == [cb.best_model_path]
    assert cb.last_model_path == str(d / "last.ckpt") and step_of(d / "last.ckpt") == 2
    assert cb._last_global_step_saved == 2


# -- names ----------------------------------------------------------------------------------------------
def test_format_checkpoint_name() -> None:
    cb = ModelCheckpoint(filename="{epoch}-{val_loss:.2f}")
    assert cb.format_checkpoint_name({"epoch": 3, "val_loss": torch.tensor(0.123)}) == "epoch=3-val_loss=0.12.ckpt"
    assert cb.format_checkpoint_name({"epoch": 3, "val_loss": 0.5}, ver=2) == "epoch=3-val_loss=0.50-v2.ckpt"
    assert ModelCheckpoint().format_checkpoint_name({"epoch": 3, "step": 120}) == "epoch=3-step=120.ckpt"
    plain = ModelCheckpoint(dirpath="out", filename="e{epoch:03d}_{acc:.1f}", auto_insert_metric_name=False)
    # A relative dirpath is made absolute when the callback is made (as in Lightning).
    assert plain.format_checkpoint_name({"epoch": 7, "acc": 0.94}) == os.path.join(os.path.realpath("out"), "e007_0.9.ckpt")
    # A name that contains another ({epoch} in {epoch_test}) is filled correctly.
    both = ModelCheckpoint(filename="{epoch:02d}-{epoch_test:.1f}")
    assert both.format_checkpoint_name({"epoch": 1, "epoch_test": 2.0}) == "epoch=01-epoch_test=2.0.ckpt"
    assert ModelCheckpoint(filename="{val/loss:.1f}").format_checkpoint_name({"val/loss": 1}) == "val_loss=1.0.ckpt"
    custom = ModelCheckpoint(filename="{epoch}{step}")
    custom.CHECKPOINT_JOIN_CHAR, custom.CHECKPOINT_EQUALS_CHAR, custom.FILE_EXTENSION = "_", ":", ".pt"
    assert custom.format_checkpoint_name({"epoch": 1, "step": 2}, ver=1) == "epoch:1step:2_v1.pt"


def test_filename_templates_in_a_run(tmp_path: Path) -> None:
    named = ModelCheckpoint(dirpath=tmp_path / "a", filename="{epoch}-{val_loss:.2f}", monitor="val_loss")
    plain = ModelCheckpoint(dirpath=tmp_path / "b", filename="e{epoch:02d}-{val_loss:.1f}", auto_insert_metric_name=False)
    fit(tmp_path, [0.5, 0.123], named, plain)
    assert files(tmp_path / "a") == ["epoch=1-val_loss=0.12.ckpt"]
    assert files(tmp_path / "b") == ["e01-0.1.ckpt"]


def test_slash_in_metric_names_makes_no_subfolder(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val/loss", filename="{epoch}-{val/loss:.2f}", save_top_k=2)
    fit(tmp_path, [0.5, 0.25, 0.75], cb, system=Scripted([0.5, 0.25, 0.75], "val/loss"))
    assert files(d) == ["epoch=0-val_loss=0.50.ckpt", "epoch=1-val_loss=0.25.ckpt"]
    assert all((d / name).is_file() for name in files(d))


def test_a_metric_missing_from_the_template_names_it_and_the_available_ones(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}-{val_acc:.2f}")
    with pytest.raises(RuntimeError, match=r"filename='\{epoch\}-\{val_acc:\.2f\}'.*'val_acc'.*available metrics: "
                       r"\[.*'val_loss'.*\]"):
        fit(tmp_path, [1.0], cb)


def test_bad_format_spec_says_so(tmp_path: Path) -> None:
    cb = ModelCheckpoint(filename="{val_loss:d}")
    with pytest.raises(ValueError, match=r"formatting 'val_loss' = 0\.5 with the format spec 'd' failed"):
        cb.format_checkpoint_name({"val_loss": 0.5})


def test_version_counter(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    d.mkdir()
    (d / "epoch=0-step=2.ckpt").write_bytes(b"someone else's file")
    cb = ModelCheckpoint(dirpath=d, save_top_k=-1)
    fit(tmp_path, [1.0], cb)
    assert files(d) == ["epoch=0-step=2-v1.ckpt", "epoch=0-step=2.ckpt"]
    assert (d / "epoch=0-step=2.ckpt").read_bytes() == b"someone else's file"

    fixed = ModelCheckpoint(dirpath=tmp_path / "fixed", filename="model", save_top_k=-1)
    fit(tmp_path, [1.0, 1.0, 1.0], fixed)
    assert files(tmp_path / "fixed") == ["model-v1.ckpt", "model-v2.ckpt", "model.ckpt"]

    replaced = ModelCheckpoint(dirpath=tmp_path / "one", filename="model")  # save_top_k=1: ours to replace
    fit(tmp_path, [1.0, 1.0, 1.0], replaced)
    assert files(tmp_path / "one") == ["model.ckpt"] and step_of(tmp_path / "one" / "model.ckpt") == 6

    off = ModelCheckpoint(dirpath=d, enable_version_counter=False)
    fit(tmp_path, [1.0], off)
    assert step_of(d / "epoch=0-step=2.ckpt") == 2  # overwritten


# -- last.ckpt --------------------------------------------------------------------------------------------
class LastIsSound(Callback):
    """At every epoch start: last.ckpt, if there, is a complete checkpoint and not a dangling link."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.steps: list[int] = []

    def on_train_epoch_start(self, trainer, system) -> None:
        last = self.folder / "last.ckpt"
        if os.path.lexists(last):
            assert last.exists(), "last.ckpt dangles"
            self.steps.append(step_of(last))


def test_save_last_is_a_hard_link_to_the_latest_checkpoint_and_never_dangles(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_last=True, filename="{epoch}")
    sound = LastIsSound(d)
    trainer = fit(tmp_path, [3.0, 2.0, 1.0], sound, cb)
    assert files(d) == ["epoch=2.ckpt", "last.ckpt"]  # epoch=0 and epoch=1 were pushed out
    assert sound.steps == [2, 4]
    last = d / "last.ckpt"
    assert not last.is_symlink() and os.path.samefile(last, d / "epoch=2.ckpt")
    assert filecmp.cmp(last, d / "epoch=2.ckpt", shallow=False)
    assert cb.last_model_path == str(last)
    state = torch.load(last, weights_only=True)["callbacks"][cb.state_key]
    assert state["last_model_path"] == str(last) and state["best_model_path"] == str(d / "epoch=2.ckpt")
    os.remove(d / "epoch=2.ckpt")  # the file it was made from goes: last.ckpt is still whole
    assert step_of(last) == trainer.global_step == 6
    assert not [n for n in os.listdir(d) if n.startswith(".")]  # no temporary names left


def test_save_last_without_a_new_top_k_file_is_written_in_full(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_last=True, filename="{epoch}")
    fit(tmp_path, [3.0, 1.0, 2.0], cb)
    assert files(d) == ["epoch=1.ckpt", "last.ckpt"]
    assert not os.path.samefile(d / "last.ckpt", d / "epoch=1.ckpt")
    assert step_of(d / "last.ckpt") == 6 and step_of(d / "epoch=1.ckpt") == 4


def test_save_last_falls_back_to_a_copy_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: Any, dst: Any) -> None:
        raise OSError("hard links are not supported here")

    monkeypatch.setattr(ckpt_module.os, "link", no_links)
    d = tmp_path / "ck"
    fit(tmp_path, [1.0], ModelCheckpoint(dirpath=d, save_last=True))
    assert files(d) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert not os.path.samefile(d / "last.ckpt", d / "epoch=0-step=2.ckpt")
    assert filecmp.cmp(d / "last.ckpt", d / "epoch=0-step=2.ckpt", shallow=False)


def test_save_last_link_mode_uses_a_relative_symlink(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_last="link", filename="{epoch}")
    sound = LastIsSound(d)
    fit(tmp_path, [3.0, 2.0, 1.0], sound, cb)
    last = d / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "epoch=2.ckpt" and step_of(last) == 6
    assert sound.steps == [2, 4]
    no_new_best = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_last="link", filename="{epoch}")
    fit(tmp_path, [3.0, 1.0, 2.0], no_new_best)
    last = tmp_path / "b" / "last.ckpt"
    assert not last.is_symlink() and step_of(last) == 6  # never a link to an older checkpoint


def test_a_custom_last_name_template(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, save_top_k=0, save_last=True)
    cb.CHECKPOINT_NAME_LAST = "{epoch}-last"
    fit(tmp_path, [1.0, 1.0, 1.0], cb)
    assert files(d) == ["epoch=2-last.ckpt"]  # the previous last files were replaced
    assert cb.last_model_path == str(d / "epoch=2-last.ckpt")


def test_a_last_ckpt_from_another_run_is_not_overwritten(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    d.mkdir()
    (d / "last.ckpt").write_bytes(b"older run")
    cb = ModelCheckpoint(dirpath=d, save_top_k=0, save_last=True)
    fit(tmp_path, [1.0, 1.0], cb)
    assert files(d) == ["last-v1.ckpt", "last.ckpt"]
    assert (d / "last.ckpt").read_bytes() == b"older run" and step_of(d / "last-v1.ckpt") == 4


# -- when ----------------------------------------------------------------------------------------------------
def test_every_n_train_steps_with_accumulation_saves_only_on_stepping_batches(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    saves = Saves()
    cb = ModelCheckpoint(dirpath=d, every_n_train_steps=2, save_top_k=-1, save_last=True)
    assert overrides(cb, "on_train_batch_end", Callback)
    fit(tmp_path, [1.0, 1.0], saves, cb, n_train=64, accumulate_grad_batches=2)  # 8 batches, 4 steps an epoch
    assert saves.saves == [("batch_end", 0, 2, 3), ("batch_end", 0, 4, 7), ("batch_end", 1, 6, 3), ("batch_end", 1, 8, 7)]
    assert files(d) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "epoch=1-step=6.ckpt",
        "epoch=1-step=8.ckpt",
        "last.ckpt",
    ]  # the epoch ends (steps 4 and 8) were saved already: no second write of last.ckpt
    assert os.path.samefile(d / "last.ckpt", d / "epoch=1-step=8.ckpt")


def test_the_default_callback_adds_no_per_batch_hook() -> None:
    assert not overrides(ModelCheckpoint(), "on_train_batch_end", Callback)
    assert overrides(ModelCheckpoint(train_time_interval=datetime.timedelta(minutes=1)), "on_train_batch_end", Callback)


def test_every_n_epochs(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    fit(tmp_path, [1.0] * 5, ModelCheckpoint(dirpath=d, every_n_epochs=2, save_top_k=-1))
    assert files(d) == ["epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_train_time_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(ckpt_module, "time", clock)

    class Slow(Scripted):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += 7.0  # each step "takes" 7 s
            return super().training_step(batch, batch_idx)

    d = tmp_path / "ck"
    saves = Saves()
    cb = ModelCheckpoint(dirpath=d, train_time_interval=datetime.timedelta(seconds=20), save_top_k=-1)
    fit(tmp_path, [1.0] * 4, saves, cb, system=Slow([1.0]))  # 8 steps of 7 s
    assert [s[2] for s in saves.saves] == [3, 6]  # at 21 s, then 21 s after that
    assert files(d) == ["epoch=1-step=3.ckpt", "epoch=2-step=6.ckpt"]


@pytest.mark.parametrize(
    ("flag", "every", "expected"),
    [
        (None, 1, ["validation_end"] * 4),
        (None, 2, ["train_epoch_end", "validation_end"] * 2),  # per epoch: after validation when it runs
        (True, 1, ["train_epoch_end"] * 4),
        (False, 2, ["validation_end"] * 2),  # epochs without validation save nothing
    ],
)
def test_save_on_train_epoch_end_placement(tmp_path: Path, flag: bool | None, every: int, expected: list[str]) -> None:
    saves = Saves()
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, save_on_train_epoch_end=flag)
    fit(tmp_path, [1.0] * 4, saves, cb, check_val_every_n_epoch=every)
    assert [s[0] for s in saves.saves] == expected


def test_without_validation_data_saves_at_train_epoch_end(tmp_path: Path) -> None:
    saves = Saves()
    fit(tmp_path, [1.0, 1.0], saves, ModelCheckpoint(dirpath=tmp_path / "ck"), val=False)
    assert [s[0] for s in saves.saves] == ["train_epoch_end"] * 2


def test_no_saves_in_the_sanity_check_or_fast_dev_run(tmp_path: Path) -> None:
    saves = Saves()
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, save_last=True)
    fit(tmp_path, [1.0, 1.0], saves, cb, num_sanity_val_steps=2)
    assert [s[:2] for s in saves.saves] == [("validation_end", 0), ("validation_end", 1)]

    quick = ModelCheckpoint(dirpath=tmp_path / "quick", save_last=True, every_n_train_steps=1)
    fit(tmp_path, [1.0], quick, fast_dev_run=True)
    assert not (tmp_path / "quick").exists() and quick.last_model_path == ""


def test_validate_after_fit_saves_nothing(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=-1)
    trainer = fit(tmp_path, [2.0, 1.0], cb)
    before = files(d)
    trainer.validate(dataloaders=make_loader(8, 8), verbose=False)
    assert files(d) == before


# -- several callbacks, state -------------------------------------------------------------------------------------
def test_two_instances_keep_separate_state_and_files(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    low = ModelCheckpoint(dirpath=d, monitor="val_loss")
    high = ModelCheckpoint(dirpath=d, monitor="val_loss", mode="max")
    assert low.state_key != high.state_key
    fit(tmp_path, [3.0, 1.0, 2.0], low, high)
    # Epoch 0 both saved "epoch=0-step=2.ckpt": the second got a version; neither deleted the other's file.
    assert files(d) == ["epoch=0-step=2-v1.ckpt", "epoch=1-step=4.ckpt"]
    assert low.best_model_path == str(d / "epoch=1-step=4.ckpt")
    assert high.best_model_path == str(d / "epoch=0-step=2-v1.ckpt")
    states = torch.load(low.best_model_path, weights_only=True)["callbacks"]
    assert states[low.state_key]["best_model_path"] == low.best_model_path
    assert states[high.state_key]["best_model_path"] == high.best_model_path
    assert states[high.state_key]["best_model_score"] == 3.0


def test_state_round_trip_and_a_resumed_run_continues_the_top_k(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    first = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, save_last=True)
    fit(tmp_path, [3.0, 1.0, 4.0], first)
    state = torch.load(d / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert state == first.state_dict()
    assert state["best_k_models"] == {str(d / "epoch=0-step=2.ckpt"): 3.0, str(d / "epoch=1-step=4.ckpt"): 1.0}
    assert (state["kth_value"], state["best_model_score"], state["current_score"]) == (3.0, 1.0, 4.0)
    assert state["_last_global_step_saved"] == 6

    def plain(value: Any) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or type(value) in (str, int, float, bool)

    assert plain(state)

    second = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, save_last=True, filename="r2-{epoch}")
    second.load_state_dict(state)
    assert second.best_model_path == first.best_model_path and second.last_model_path == first.last_model_path
    assert {k: v.item() for k, v in second.best_k_models.items()} == {k: v.item() for k, v in first.best_k_models.items()}
    assert second.kth_best_model_path == first.kth_best_model_path
    fit(tmp_path, [2.0], second)  # 2.0 pushes out the old 3.0; last.ckpt is ours to replace
    assert files(d) == ["epoch=1-step=4.ckpt", "last.ckpt", "r2-epoch=0.ckpt"]
    assert second.best_model_path == str(d / "epoch=1-step=4.ckpt") and second.kth_value.item() == 2.0


def test_a_state_loaded_before_setup_waits_for_dirpath(tmp_path: Path) -> None:
    first = ModelCheckpoint(monitor="val_loss")
    fit(tmp_path, [1.0], first)
    assert first.dirpath == str(tmp_path / "checkpoints")  # default_root_dir without a logger
    later = ModelCheckpoint(monitor="val_loss")
    later.load_state_dict(first.state_dict())
    assert later.best_model_path == ""
    later.setup(quiet_trainer(tmp_path, logger=False), TinySystem(), "fit")
    assert later.best_model_path == first.best_model_path and later.dirpath == first.dirpath


def test_a_state_from_another_folder_restores_only_best_model_path(tmp_path: Path) -> None:
    first = ModelCheckpoint(dirpath=tmp_path / "a", monitor="val_loss", save_last=True)
    fit(tmp_path, [1.0], first)
    moved = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_last=True)
    with pytest.warns(FulmenWarning, match=r"dirpath=.*only best_model_path is restored"):
        moved.load_state_dict(first.state_dict())
    assert moved.best_model_path == first.best_model_path
    assert moved.last_model_path == "" and moved.best_k_models == {}


# -- resolve("best" / "last") -------------------------------------------------------------------------------------------
def test_resolve_best_and_last(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    plain = ModelCheckpoint(dirpath=tmp_path / "plain")
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=2, save_last=True)
    trainer = fit(tmp_path, [2.0, 1.0, 3.0], plain, cb)
    assert plain.resolve(trainer, "best") == cb.resolve(trainer, "best") == str(d / "epoch=1-step=4.ckpt")
    assert cb.resolve(trainer, "last") == str(d / "last.ckpt")
    with pytest.raises(ValueError, match=r"resolve\(which='newest'\).*'best' or 'last'"):
        cb.resolve(trainer, "newest")

    lonely = quiet_trainer(tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path / "x")])
    with pytest.raises(ValueError, match=r"ckpt_path='best' needs a ModelCheckpoint with a monitor"):
        lonely.checkpoint_callback.resolve(lonely, "best")
    assert lonely.checkpoint_callback.resolve(lonely, "last") is None  # no folder yet
    fresh = ModelCheckpoint(dirpath=tmp_path / "y", monitor="val_loss")
    assert fresh.resolve(quiet_trainer(tmp_path, callbacks=[fresh]), "best") is None  # nothing saved yet


def test_resolve_last_in_a_new_process_looks_in_dirpath(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    fit(tmp_path, [2.0, 1.0, 3.0], ModelCheckpoint(dirpath=d, monitor="val_loss", save_top_k=-1, save_last=True))
    data = (d / "last.ckpt").read_bytes()  # a file of its own (not a hard link), to give it its own time
    os.remove(d / "last.ckpt")
    (d / "last.ckpt").write_bytes(data)
    for i, name in enumerate(files(d)):  # last.ckpt is not the newest file: it is still preferred
        os.utime(d / name, (1000 + i, 1000 + i))
    os.utime(d / "last.ckpt", (10, 10))
    fresh = ModelCheckpoint(dirpath=d)  # a new process: no state, nothing saved yet
    trainer = quiet_trainer(tmp_path, logger=False, callbacks=[fresh])
    assert fresh.resolve(trainer, "last") == str(d / "last.ckpt")
    os.remove(d / "last.ckpt")
    assert fresh.resolve(trainer, "last") == str(d / "epoch=2-step=6.ckpt")  # the newest *.ckpt
    default = ModelCheckpoint()  # dirpath from the trainer: <default_root_dir>/checkpoints
    fit(tmp_path / "run", [1.0], ModelCheckpoint(save_last=True))
    assert default.resolve(quiet_trainer(tmp_path / "run", logger=False, callbacks=[default]), "last") == str(
        tmp_path / "run" / "checkpoints" / "last.ckpt"
    )


# -- errors --------------------------------------------------------------------------------------------------------------
def test_a_missing_monitor_lists_the_available_metrics(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_los")
    with pytest.raises(RuntimeError, match=r"ModelCheckpoint\(monitor='val_los'\).*available metrics: \[.*'val_loss'.*\]"
                       r".*Did you mean 'val_loss'\?"):
        fit(tmp_path, [1.0], cb)


def test_a_validation_metric_before_the_first_validation_warns_and_skips(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    with pytest.warns(FulmenWarning, match=r"monitor='val_loss'.*not ranked"):
        fit(tmp_path, [1.0, 1.0], cb)
    assert files(d) == ["step=3.ckpt", "step=4.ckpt"]  # steps 1 and 2 came before the first validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"save_top_k": 2}, r"save_top_k=2, monitor=None.*expected save_top_k 1 .*-1 .* or 0"),
        ({"monitor": "x", "save_top_k": -2}, r"save_top_k=-2.*int >= -1"),
        ({"mode": "avg"}, r"mode='avg'.*'min' or 'max'"),
        ({"save_last": "yes"}, r"save_last='yes'.*True, False, None or 'link'"),
        ({"every_n_train_steps": -1}, r"every_n_train_steps=-1.*None or an int >= 0"),
        ({"train_time_interval": 60}, r"train_time_interval=60.*datetime\.timedelta"),
        ({"every_n_train_steps": 5, "every_n_epochs": 1}, r"every_n_train_steps=5, every_n_epochs=1.*at most one"),
        ({"save_on_train_epoch_end": "x"}, r"save_on_train_epoch_end='x'.*True, False or None"),
        ({"monitor": ""}, r"monitor=''.*name of a logged metric"),
        ({"filename": "{}"}, r"filename='\{\}'.*positional field"),
        ({"verbose": 1}, r"verbose=1.*True or False"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


def test_weights_only_and_verbose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "ck"
    cb = ModelCheckpoint(dirpath=d, monitor="val_loss", save_weights_only=True, verbose=True)
    fit(tmp_path, [2.0, 3.0], cb)
    ckpt = torch.load(cb.best_model_path, weights_only=True)
    assert "optimizer_states" not in ckpt and "callbacks" not in ckpt
    out = capsys.readouterr().out
    assert "'val_loss' = 2 enters the top 1" in out and "'val_loss' = 3 is not in the top 1" in out
