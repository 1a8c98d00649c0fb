"""Every Trainer flag, checked by what the run did: batches run, optimizer steps, validations, files."""

from __future__ import annotations

import csv
import datetime
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder, StopAt, indexed_loader
from helpers.systems import make_loader, quiet_trainer

import fulmen
import fulmen.trainer._fit as fit_module
from fulmen.callbacks.checkpoint import ModelCheckpoint
from fulmen.callbacks.progress import ProgressBar
from fulmen.callbacks.summary import ModelSummary
from fulmen.errors import FlagError, FulmenWarning

# 64 samples in batches of 8: 8 batches an epoch unless a test says otherwise.
N_BATCHES = 8


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_files(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def fit(tmp_path: Path, system: Any = None, train: Any = None, val: Any = None, **flags: Any) -> tuple[Any, Any]:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    trainer = quiet_trainer(tmp_path, **flags)
    system = system if system is not None else Recorder()
    trainer.fit(system, train if train is not None else make_loader(), val)
    return trainer, system


# -- epochs and steps ------------------------------------------------------------------------------
def test_max_epochs_runs_that_many_full_epochs(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=3)
    assert s.trained == [(e, b) for e in range(3) for b in range(N_BATCHES)]
    assert trainer.global_step == 3 * N_BATCHES
    assert trainer.current_epoch == 3
    assert trainer.state.finished


def test_should_stop_in_epoch_0_ends_the_run_without_min_epochs(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=10, callbacks=[StopAt(epoch=0, batch_idx=2)])
    assert s.trained == [(0, 0), (0, 1), (0, 2)]
    assert trainer.global_step == 3


def test_min_epochs_overrides_a_stop_request_in_epoch_0(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopAt(epoch=0)])
    assert s.trained == [(e, b) for e in range(3) for b in range(N_BATCHES)]
    assert trainer.global_step == 3 * N_BATCHES
    assert trainer.current_epoch == 3


def test_max_steps_stops_mid_epoch_with_exact_global_step(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=5, max_steps=11)
    assert trainer.global_step == 11
    assert s.trained == [(0, b) for b in range(N_BATCHES)] + [(1, 0), (1, 1), (1, 2)]


def test_max_steps_alone_runs_past_one_epoch(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, max_epochs=None, max_steps=20)
    assert trainer.global_step == 20
    assert len(s.trained) == 20 and s.trained[-1] == (2, 3)


def test_min_steps_overrides_a_stop_request_until_reached(tmp_path: Path) -> None:
    # should_stop is requested after every batch; min_steps=10 keeps training into epoch 1.
    trainer, s = fit(tmp_path, max_epochs=5, min_steps=10, callbacks=[StopAt(epoch=None)])
    assert trainer.global_step == 10
    assert s.trained == [(0, b) for b in range(N_BATCHES)] + [(1, 0), (1, 1)]


# -- max_time --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("00:00:00:01", 1.0),
        ("01:02:03:04", 93784.0),
        ({"minutes": 1, "seconds": 30}, 90.0),
        (datetime.timedelta(hours=2), 7200.0),
    ],
)
def test_max_time_parsing(tmp_path: Path, value: Any, seconds: float) -> None:
    assert quiet_trainer(tmp_path, max_time=value).config.max_time == seconds


class FakeClock:
    """Stands in for the ``time`` module in fulmen.trainer._fit; training_step advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_max_time_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(fit_module, "time", clock)

    class Slow(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            clock.now += 0.4  # each step "takes" 0.4 s
            return super().training_step(batch, batch_idx)

    trainer, s = fit(tmp_path, Slow(), max_epochs=100, max_time="00:00:00:01")
    # After 3 steps 1.2 s have passed, more than the 1 s limit.
    assert s.trained == [(0, 0), (0, 1), (0, 2)]
    assert trainer.global_step == 3
    assert trainer.state.finished


def test_max_time_is_checked_between_epochs_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(fit_module, "time", clock)

    class Slow(Recorder):
        def on_train_epoch_end(self) -> None:
            clock.now += 0.6  # the epoch's end "takes" 0.6 s; steps take no time

    trainer, _ = fit(tmp_path, Slow(), max_epochs=100, max_time={"seconds": 1})
    assert trainer.current_epoch == 2
    assert trainer.global_step == 2 * N_BATCHES


# -- limit_*_batches -------------------------------------------------------------------------------
@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (0.25, 2), (1.0, N_BATCHES), (100, N_BATCHES)])
def test_limit_train_batches(tmp_path: Path, limit: int | float, expected: int) -> None:
    trainer, s = fit(tmp_path, max_epochs=2, limit_train_batches=limit)
    assert s.trained == [(e, b) for e in range(2) for b in range(expected)]
    assert trainer.global_step == 2 * expected
    assert trainer.num_training_batches == expected


@pytest.mark.parametrize("interval", [1.0, 0.5, 4])
def test_limit_train_batches_zero_skips_training(tmp_path: Path, interval: int | float) -> None:
    trainer, s = fit(tmp_path, max_epochs=2, limit_train_batches=0, val=make_loader(), val_check_interval=interval)
    assert s.trained == [] and trainer.global_step == 0
    assert s.val_runs == []


@pytest.mark.parametrize(("limit", "expected"), [(2, 2), (0.5, 4)])
def test_limit_val_batches(tmp_path: Path, limit: int | float, expected: int) -> None:
    trainer, s = fit(tmp_path, max_epochs=2, limit_val_batches=limit, val=make_loader())
    assert s.validated == [(False, None, b) for _ in range(2) for b in range(expected)]
    assert trainer.num_val_batches == [expected]


def test_limit_val_batches_zero_disables_validation_and_sanity_check(tmp_path: Path) -> None:
    class Hooks(fulmen.Callback):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def on_sanity_check_start(self, trainer: Any, system: Any) -> None:
            self.calls.append("sanity")

        def on_validation_start(self, trainer: Any, system: Any) -> None:
            self.calls.append("validation")

    cb = Hooks()
    trainer, s = fit(
        tmp_path, max_epochs=2, limit_val_batches=0, num_sanity_val_steps=2, val=make_loader(), callbacks=[cb]
    )
    assert s.val_runs == [] and s.validated == []
    assert cb.calls == []
    assert trainer.global_step == 2 * N_BATCHES


@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (0.5, 4)])
def test_limit_test_batches(tmp_path: Path, limit: int | float, expected: int) -> None:
    s = Recorder()
    quiet_trainer(tmp_path, logger=False, limit_test_batches=limit).test(s, make_loader(), verbose=False)
    assert s.tested == [(None, b) for b in range(expected)]


@pytest.mark.parametrize(("limit", "expected"), [(2, 2), (0.25, 2), (1.0, N_BATCHES)])
def test_limit_predict_batches(tmp_path: Path, limit: int | float, expected: int) -> None:
    preds = quiet_trainer(tmp_path, logger=False, limit_predict_batches=limit).predict(Recorder(), make_loader())
    assert isinstance(preds, list) and len(preds) == expected
    assert all(p.shape == (8, 1) for p in preds)


# -- when validation runs --------------------------------------------------------------------------
def test_val_check_interval_fraction_validates_every_3_batches_and_at_epoch_end(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, train=make_loader(80), val=make_loader(16), val_check_interval=0.3)
    assert trainer.num_training_batches == 10
    assert s.val_steps == [3, 6, 9, 10]


def test_val_check_interval_int_within_each_epoch(tmp_path: Path) -> None:
    _, s = fit(tmp_path, max_epochs=2, train=make_loader(80), val=make_loader(16), val_check_interval=4)
    # 10 batches an epoch: after batches 4 and 8 of each epoch, no extra one at the epoch's end.
    assert s.val_steps == [4, 8, 14, 18]
    assert [e for e, _, _ in s.val_runs] == [0, 0, 1, 1]


def test_val_check_interval_int_counts_across_epochs_without_check_val_every_n_epoch(tmp_path: Path) -> None:
    _, s = fit(
        tmp_path,
        max_epochs=3,
        train=make_loader(32),  # 4 batches an epoch
        val=make_loader(16),
        val_check_interval=5,
        check_val_every_n_epoch=None,
    )
    assert s.val_steps == [5, 10]
    assert [e for e, _, _ in s.val_runs] == [1, 2]


def test_val_check_interval_larger_than_the_epoch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match=r"val_check_interval=9\).*8 training batches"):
        fit(tmp_path, val=make_loader(16), val_check_interval=9)


def test_check_val_every_n_epoch(tmp_path: Path) -> None:
    _, s = fit(tmp_path, max_epochs=5, val=make_loader(16), check_val_every_n_epoch=2)
    assert [(e, step) for e, step, _ in s.val_runs] == [(1, 16), (3, 32)]


@pytest.mark.parametrize(("steps", "expected"), [(2, [0, 1]), (0, []), (-1, [0, 1, 2, 3, 4])])
def test_num_sanity_val_steps(tmp_path: Path, steps: int, expected: list[int]) -> None:
    trainer, s = fit(tmp_path, val=make_loader(40), num_sanity_val_steps=steps)  # 5 val batches
    assert [b for sanity, _, b in s.validated if sanity] == expected
    assert [b for sanity, _, b in s.validated if not sanity] == [0, 1, 2, 3, 4]
    assert s.val_runs[0][2] is bool(expected)
    assert trainer.sanity_checking is False


def test_num_sanity_val_steps_defaults_to_2(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    s = Recorder()
    trainer.fit(s, make_loader(), make_loader(40))
    assert [b for sanity, _, b in s.validated if sanity] == [0, 1]


def test_sanity_check_metrics_reach_neither_callback_metrics_nor_logger(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Spy(fulmen.Callback):
        def on_sanity_check_end(self, trainer: Any, system: Any) -> None:
            seen["after_sanity"] = set(trainer.callback_metrics)

        def on_train_start(self, trainer: Any, system: Any) -> None:
            seen["train_start"] = set(trainer.callback_metrics)

    # check_val_every_n_epoch=2 with one epoch: the sanity check is the only validation.
    trainer = quiet_trainer(
        tmp_path, enable_checkpointing=False, check_val_every_n_epoch=2, log_every_n_steps=1, callbacks=[Spy()]
    )
    s = Recorder()
    trainer.fit(s, make_loader(), make_loader(16))
    assert [sanity for _, _, sanity in s.val_runs] == [True]
    assert "val_loss" not in seen["after_sanity"] and "val_loss" not in seen["train_start"]
    assert "val_loss" not in trainer.callback_metrics
    assert "val_loss" not in trainer.logged_metrics
    rows = read_metrics(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    assert rows and "train_loss" in rows[0]
    assert all("val_loss" not in row for row in rows)


# -- logging -----------------------------------------------------------------------------------------
def test_log_every_n_steps_decides_which_steps_reach_metrics_csv(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=3, enable_checkpointing=False)
    trainer.fit(Recorder(), make_loader(80))  # 10 batches an epoch
    rows = read_metrics(tmp_path / "fulmen_logs" / "version_0" / "metrics.csv")
    logged = [(int(r["epoch"]), int(r["step"])) for r in rows if r["train_loss"]]
    # global_step 3, 6, ..., 18 reached; a row's step is the step that produced it (0-based).
    assert logged == [(0, 2), (0, 5), (0, 8), (1, 11), (1, 14), (1, 17)]


def test_logger_true_writes_csv_under_default_root_dir(tmp_path: Path) -> None:
    for version in (0, 1):
        trainer = quiet_trainer(tmp_path, log_every_n_steps=1, enable_checkpointing=False)
        assert isinstance(trainer.logger, fulmen.CSVLogger)
        trainer.fit(Recorder(), make_loader())
        run_dir = tmp_path / "fulmen_logs" / f"version_{version}"
        assert trainer.log_dir == str(run_dir)
        rows = read_metrics(run_dir / "metrics.csv")
        assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(N_BATCHES))
        assert (run_dir / "hparams.yaml").is_file()


def test_logger_false_writes_nothing(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    assert trainer.logger is None and trainer.loggers == []
    trainer.fit(Recorder(), make_loader())
    assert all_files(tmp_path) == []


class ListLogger(fulmen.Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.rows.append((step, dict(metrics)))


def test_logger_list_feeds_every_logger(tmp_path: Path) -> None:
    csv_logger, mem = fulmen.CSVLogger(tmp_path, name="exp"), ListLogger()
    trainer = quiet_trainer(tmp_path, logger=[csv_logger, mem], log_every_n_steps=4, enable_checkpointing=False)
    assert trainer.loggers == [csv_logger, mem] and trainer.logger is csv_logger
    trainer.fit(Recorder(), make_loader())
    assert [step for step, m in mem.rows if "train_loss" in m] == [3, 7]
    rows = read_metrics(tmp_path / "exp" / "version_0" / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [3, 7]
    assert [float(r["train_loss"]) for r in rows if r["train_loss"]] == pytest.approx(
        [m["train_loss"] for _, m in mem.rows if "train_loss" in m]
    )


def test_logger_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match=r"Trainer\(logger='csv'\).*expected True"):
        quiet_trainer(tmp_path, logger="csv")


def test_default_root_dir_holds_logs_and_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    quiet_trainer(root, max_epochs=2, log_every_n_steps=4).fit(Recorder(), make_loader())
    files = all_files(root)
    assert "fulmen_logs/version_0/checkpoints/epoch=1-step=16.ckpt" in files
    assert "fulmen_logs/version_0/metrics.csv" in files

    root2 = tmp_path / "no_logger"
    quiet_trainer(root2, logger=False).fit(Recorder(), make_loader())
    # Without a logger: no run record; the audit log is in default_root_dir.
    assert all_files(root2) == ["checkpoints.jsonl", "checkpoints/epoch=0-step=8.ckpt"]


def test_default_root_dir_defaults_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trainer = fulmen.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, max_epochs=1)
    assert trainer.default_root_dir == str(tmp_path)
    assert trainer.log_dir == str(tmp_path / "fulmen_logs" / "version_0")


# -- fast_dev_run / overfit_batches ---------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "n"), [(True, 1), (3, 3)])
def test_fast_dev_run(tmp_path: Path, flag: bool | int, n: int) -> None:
    trainer = quiet_trainer(tmp_path, fast_dev_run=flag, max_epochs=5, logger=True)
    assert trainer.loggers == [] and trainer.checkpoint_callback is None
    s = Recorder()
    trainer.fit(s, make_loader(), make_loader())
    assert s.trained == [(0, b) for b in range(n)]
    assert trainer.global_step == n
    assert s.validated == [(False, None, b) for b in range(n)]  # no sanity check, n batches of validation
    trainer.test(s, make_loader(), verbose=False)
    assert s.tested == [(None, b) for b in range(n)]
    assert len(trainer.predict(s, make_loader()) or []) == n
    assert all_files(tmp_path) == []  # no logs, no checkpoints


def test_fast_dev_run_stops_after_n_steps_even_in_a_long_epoch(tmp_path: Path) -> None:
    trainer, s = fit(tmp_path, fast_dev_run=2, train=make_loader(800))
    assert trainer.global_step == 2 and len(s.trained) == 2


def test_overfit_batches_reuses_the_same_batches_in_order(tmp_path: Path) -> None:
    with pytest.warns(FulmenWarning, match="overfit_batches.*shuffles"):
        trainer, s = fit(
            tmp_path, max_epochs=3, overfit_batches=2, train=indexed_loader(shuffle=True), val=make_loader()
        )
    first_two = [list(range(0, 8)), list(range(8, 16))]
    assert s.train_idx == first_two * 3
    assert trainer.global_step == 6
    assert s.validated == [(False, None, b) for _ in range(3) for b in range(2)]  # validation limited too


def test_overfit_batches_fraction_without_shuffle_does_not_warn(tmp_path: Path) -> None:
    _, s = fit(tmp_path, max_epochs=2, overfit_batches=0.25, train=indexed_loader())
    assert s.train_idx == [list(range(0, 8)), list(range(8, 16))] * 2


# -- callbacks the flags add ---------------------------------------------------------------------------
def test_enable_flags_add_the_default_callbacks(tmp_path: Path) -> None:
    on = fulmen.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1)
    assert sorted(type(c).__name__ for c in on.callbacks) == ["ModelCheckpoint", "ModelSummary", "ProgressBar"]
    assert isinstance(on.progress_bar_callback, ProgressBar)
    assert isinstance(on.checkpoint_callback, ModelCheckpoint)
    off = fulmen.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    assert off.callbacks == []
    assert off.progress_bar_callback is None and off.checkpoint_callback is None


def test_an_explicit_callback_replaces_the_default_one(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_epochs=2)
    trainer = quiet_trainer(tmp_path, callbacks=ckpt, max_epochs=2, logger=False)
    assert trainer.checkpoint_callbacks == [ckpt]
    trainer.fit(Recorder(), make_loader())
    assert all_files(tmp_path) == ["checkpoints.jsonl", "ckpts/epoch=1-step=16.ckpt"]


@pytest.mark.parametrize(
    ("flag", "callback"),
    [
        ("enable_checkpointing", ModelCheckpoint()),
        ("enable_progress_bar", ProgressBar()),
        ("enable_model_summary", ModelSummary()),
    ],
)
def test_disabling_a_flag_while_passing_its_callback_raises(tmp_path: Path, flag: str, callback: Any) -> None:
    with pytest.raises(FlagError, match=rf"{flag}=False.*{type(callback).__name__}"):
        quiet_trainer(tmp_path, callbacks=[callback], **{flag: False})


def test_callbacks_flag_takes_one_or_a_list_and_refuses_other_objects(tmp_path: Path) -> None:
    class Count(fulmen.Callback):
        def __init__(self) -> None:
            self.epochs = 0

        def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
            self.epochs += 1

    one, a, b = Count(), Count(), Count()
    fit(tmp_path, max_epochs=2, callbacks=one)
    fit(tmp_path, max_epochs=3, callbacks=[a, b])
    assert (one.epochs, a.epochs, b.epochs) == (2, 3, 3)
    with pytest.raises(FlagError, match=r"must be a fulmen\.Callback instance, got dict"):
        quiet_trainer(tmp_path, callbacks=[Count(), {"on_train_end": print}])


# -- determinism and grad modes -------------------------------------------------------------------------
@pytest.fixture
def restore_determinism() -> Any:
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic(tmp_path: Path, restore_determinism: Any, deterministic: bool) -> None:
    torch.use_deterministic_algorithms(False)
    seen: list[bool] = []

    class Spy(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            seen.append(torch.are_deterministic_algorithms_enabled())
            return super().training_step(batch, batch_idx)

    fit(tmp_path, Spy(), deterministic=deterministic, limit_train_batches=2)
    assert seen == [deterministic] * 2


class ModeSpy(Recorder):
    """Records (inference mode, grad enabled, self.training) in each evaluation step."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: dict[str, set[tuple[bool, bool, bool]]] = {"train": set(), "val": set(), "test": set(), "predict": set()}

    def _note(self, stage: str) -> None:
        self.modes[stage].add((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self._note("train")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        self._note("val")
        super().validation_step(batch, batch_idx, *rest)

    def test_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        self._note("test")
        super().test_step(batch, batch_idx, *rest)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self._note("predict")
        return super().predict_step(batch, batch_idx, dataloader_idx)


@pytest.mark.parametrize("inference_mode", [True, False])
def test_inference_mode(tmp_path: Path, inference_mode: bool) -> None:
    s = ModeSpy()
    trainer, _ = fit(tmp_path, s, val=make_loader(16), num_sanity_val_steps=1, inference_mode=inference_mode)
    assert s.modes["train"] == {(False, True, True)}
    # Inside fit (sanity check included) validation runs under no_grad, as in Lightning, so that
    # tensors it creates can be used by training afterwards.
    assert s.modes["val"] == {(False, False, False)}
    s.modes["val"].clear()
    trainer.validate(s, make_loader(16), verbose=False)
    trainer.test(s, make_loader(16), verbose=False)
    trainer.predict(s, make_loader(16))
    for stage in ("val", "test", "predict"):
        assert s.modes[stage] == {(inference_mode, False, False)}, stage


def test_a_tensor_made_during_fit_validation_can_be_used_in_training(tmp_path: Path) -> None:
    class Cached(Recorder):
        """Builds a table on first use (as rotary embeddings do); the sanity check uses it first."""

        def __init__(self) -> None:
            super().__init__()
            self.table: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.table is None:
                self.table = torch.full((1,), 2.0)
            return self.layer(x) * self.table

    trainer, s = fit(tmp_path, Cached(), val=make_loader(16), num_sanity_val_steps=1)
    assert [sanity for _, _, sanity in s.val_runs] == [True, False]
    assert trainer.global_step == N_BATCHES


# -- hardware flags -----------------------------------------------------------------------------------
def test_accelerator_cpu(tmp_path: Path) -> None:
    trainer, _ = fit(tmp_path, accelerator="cpu", limit_train_batches=1)
    assert trainer.device == torch.device("cpu")


def test_accelerator_auto_picks_cpu_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quiet_trainer(tmp_path, accelerator="auto").device == torch.device("cpu")


def test_accelerator_auto_on_this_machine(tmp_path: Path) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert quiet_trainer(tmp_path, accelerator="auto").device.type == expected


def test_accelerator_cuda_without_cuda_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlagError, match=r"accelerator='cuda'.*CUDA is not available.*accelerator='cpu'"):
        quiet_trainer(tmp_path, accelerator="cuda")


@pytest.mark.parametrize("devices", [1, "auto", -1, [0], "1"])
def test_devices_for_one_cpu(tmp_path: Path, devices: Any) -> None:
    trainer, _ = fit(tmp_path, devices=devices, limit_train_batches=2)
    assert trainer.device == torch.device("cpu") and trainer.world_size == 1
    assert trainer.global_step == 2


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([0, 1], "CPU processes have no indices; pass the number of processes instead, e.g. devices=2"),
        (0, "expected 'auto', a positive int (how many devices), -1 (all)"),
        ("0,x", "expected 'auto', a positive int"),
        (2.5, "expected 'auto', a positive int"),
    ],
)
def test_bad_devices_raise(tmp_path: Path, devices: Any, message: str) -> None:
    with pytest.raises(FlagError, match=re.escape(f"devices={devices!r})") + ".*" + re.escape(message)):
        quiet_trainer(tmp_path, accelerator="cpu", devices=devices)


@pytest.mark.parametrize("devices", [2, "2"])
def test_several_cpu_devices_choose_ddp_without_starting_processes(tmp_path: Path, devices: Any) -> None:
    from fulmen.runtime.ddp import DDPStrategy

    trainer = quiet_trainer(tmp_path, accelerator="cpu", devices=devices)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2 and trainer.global_rank == 0 and trainer.num_devices == 2
