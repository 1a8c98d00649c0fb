"""ModelCheckpoint and the checkpoint files as Lightning users see them under ``fulmen.lightning``:
``save_on_exception``, the audit log kept out of the folders the program chose (and ``fulmen
verify`` still finding it), ``to_yaml``, ``save_last`` with ``save_top_k=0``, NaN scores, metrics
missing from a file name, the validation schedule, argument errors, ``pl_module=`` and the
constructor's annotations; and the core behaviours these changes touch."""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.checkpoint import audit
from fulmen.cli import main as fulmen_cli
from fulmen.lightning.callbacks import ModelCheckpoint
from fulmen.lightning.utilities.exceptions import MisconfigurationException


def data(n: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def trainer(cls: type[fulmen.Trainer] = L.Trainer, **kwargs: Any) -> fulmen.Trainer:
    flags: dict[str, Any] = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "max_epochs": 2,
    }
    flags.update(kwargs)
    return cls(**flags)


def fit(t: fulmen.Trainer, system: fulmen.System | None = None, val: bool = True, **kwargs: Any) -> fulmen.System:
    system = system or Regressor()
    t.fit(system, data(), data(8) if val else None, **kwargs)
    return system


def names(folder: Path) -> set[str]:
    return set(os.listdir(folder))


# -- the audit log kept out of the checkpoint folder ------------------------------------------------------
def test_checkpoint_folder_holds_only_lightnings_files_and_the_log_is_kept_outside(tmp_path: Path) -> None:
    ck, root = tmp_path / "ck", tmp_path / "root"
    t = trainer(default_root_dir=root, callbacks=[ModelCheckpoint(dirpath=ck, save_top_k=-1, save_last=True)])
    fit(t)
    assert names(ck) == {"epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"}
    assert not (root / audit.AUDIT_FILE).exists() and not (ck / audit.AUDIT_FILE).exists()
    home = Path(os.environ[audit.AUDIT_HOME_ENV])  # set for every test by tests/conftest.py
    assert audit.audit_home() == str(home)
    kept = Path(audit.outside_log_dir(ck))
    assert kept.parent == home
    assert (kept / audit.FOLDER_FILE).read_text().strip() == os.path.realpath(ck)
    entries = audit.read_log(ck)
    assert [e["file"] for e in entries] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert audit.verify_run(ck) == []


def test_default_folder_without_logger_has_no_audit_log_and_verify_finds_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = trainer(default_root_dir=tmp_path)
    fit(t)
    assert names(tmp_path) == {"checkpoints"}
    assert names(tmp_path / "checkpoints") == {"epoch=1-step=8.ckpt"}
    # Logged for the run folder (default_root_dir); verify given the checkpoint folder checks that run.
    assert fulmen_cli(["verify", str(tmp_path / "checkpoints")]) == 0
    out = capsys.readouterr().out
    assert "verifying it" in out and f"OK {os.path.realpath(tmp_path)}" in out


def test_verify_detects_a_modified_checkpoint_and_an_edited_log_kept_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "ck"
    fit(trainer(default_root_dir=tmp_path / "root", callbacks=[ModelCheckpoint(dirpath=ck, save_top_k=-1)]))
    assert fulmen_cli(["verify", str(ck)]) == 0
    capsys.readouterr()

    first = ck / "epoch=0-step=4.ckpt"
    ckpt = torch.load(first, weights_only=True)
    ckpt["state_dict"]["layer.weight"] += 1.0
    torch.save(ckpt, first)
    assert fulmen_cli(["verify", str(ck)]) == 1
    assert "modified: epoch=0-step=4.ckpt" in capsys.readouterr().out

    ckpt["state_dict"]["layer.weight"] -= 1.0  # restore the tensors; now rewrite history in the log
    log = Path(audit.log_file(ck) or "")
    lines = log.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["metrics"]["val_loss"] = 0.0
    log.write_text("\n".join([json.dumps(entry, separators=(",", ":")), *lines[1:]]) + "\n")
    assert fulmen_cli(["verify", str(ck)]) == 1
    assert "history_rewritten" in capsys.readouterr().out


def test_verify_takes_the_log_file_of_a_moved_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = tmp_path / "ck"
    fit(trainer(default_root_dir=tmp_path / "root", callbacks=[ModelCheckpoint(dirpath=ck)]))
    log = audit.log_file(ck)
    assert log is not None
    moved = tmp_path / "moved"
    ck.rename(moved)
    assert fulmen_cli(["verify", str(moved)]) == 1  # no log for the new path
    assert "missing_log" in capsys.readouterr().out
    assert fulmen_cli(["verify", str(moved), "--log", log]) == 0


def test_verify_uses_a_log_above_only_when_it_names_the_folders_checkpoints(tmp_path: Path) -> None:
    fit(trainer(default_root_dir=tmp_path / "run"))
    assert audit.find_run(tmp_path / "run" / "checkpoints") == (
        os.path.realpath(tmp_path / "run"),
        audit.log_file(tmp_path / "run"),
    )
    other = tmp_path / "run" / "other"
    other.mkdir()
    torch.save({"state_dict": {}}, other / "stray.ckpt")
    assert audit.find_run(other) is None  # the run's log names nothing in it
    assert [p.kind for p in audit.verify_run(other)] == ["unknown_checkpoint"]  # no fulmen checkpoint: no log to miss


def test_core_trainer_keeps_the_log_in_the_run_folder(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    fit(trainer(fulmen.Trainer, default_root_dir=tmp_path / "root", callbacks=[fulmen.ModelCheckpoint(dirpath=ck)]))
    assert (ck / audit.AUDIT_FILE).exists()
    assert not os.path.exists(audit.outside_log_dir(ck))
    assert audit.verify_run(ck) == []


def test_a_log_already_in_the_folder_is_continued_there(tmp_path: Path) -> None:
    ck, root = tmp_path / "ck", tmp_path / "root"
    fit(trainer(fulmen.Trainer, default_root_dir=root, callbacks=[fulmen.ModelCheckpoint(dirpath=ck, save_top_k=-1)]))
    fit(trainer(default_root_dir=root, max_epochs=3, callbacks=[ModelCheckpoint(dirpath=ck, save_top_k=-1)]))
    assert len(audit.read_log(ck)) == 5  # 2 epochs, then 3 more in the same chain
    assert not os.path.exists(audit.outside_log_dir(ck))
    assert audit.verify_run(ck) == []


def test_audit_home_defaults_to_the_users_state_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(audit.AUDIT_HOME_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert audit.audit_home() == str(tmp_path / "state" / "fulmen" / "audit")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert audit.audit_home() == str(tmp_path / "home" / ".local" / "state" / "fulmen" / "audit")


# -- save_on_exception --------------------------------------------------------------------------------------
class FailsOnce(Regressor):
    """Raises in training_step at ``fail_step`` (global step), once per instance."""

    def __init__(self, fail_step: int | None = None, where: str = "training_step") -> None:
        super().__init__()
        self.fail_step, self.where = fail_step, where

    def _maybe_fail(self, where: str) -> None:
        if where == self.where and self.fail_step is not None and self.trainer.global_step == self.fail_step:
            self.fail_step = None
            raise RuntimeError("Trouble!")

    def training_step(self, batch, batch_idx):
        self._maybe_fail("training_step")
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self):
        self._maybe_fail("on_train_epoch_end")


def test_save_on_exception_writes_a_checkpoint_that_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = fit(trainer(default_root_dir=tmp_path / "ref", callbacks=[]), FailsOnce(), val=False)

    torch.manual_seed(0)
    failing = FailsOnce(fail_step=6)
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="exception", save_on_exception=True, every_n_epochs=7)
    with pytest.raises(RuntimeError, match="Trouble!") as info:
        fit(trainer(default_root_dir=tmp_path, callbacks=[cb]), failing, val=False)
    path = tmp_path / "ck" / "exception.ckpt"
    assert path.is_file() and str(path) in " ".join(getattr(info.value, "__notes__", []))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["state_dict"]

    # The batch that failed had not stepped: the resumed run trains it again and ends where the
    # uninterrupted run ends.
    resumed = fit(trainer(default_root_dir=tmp_path, callbacks=[]), FailsOnce(), val=False, ckpt_path=path)
    assert torch.equal(resumed.layer.weight, reference.layer.weight)


def test_save_on_exception_with_save_last_links_last_ckpt(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, filename="exception", save_on_exception=True, every_n_epochs=7, save_last=True)
    with pytest.raises(RuntimeError):
        fit(trainer(default_root_dir=tmp_path, callbacks=[cb]), FailsOnce(fail_step=4, where="on_train_epoch_end"))
    assert names(tmp_path) == {"exception.ckpt", "last.ckpt"}
    assert cb.last_model_path == str(tmp_path / "last.ckpt")
    assert os.path.samefile(tmp_path / "last.ckpt", tmp_path / "exception.ckpt")


@pytest.mark.parametrize("case", ["sanity_check", "fast_dev_run", "saved_at_this_step", "off"])
def test_save_on_exception_skips(tmp_path: Path, case: str) -> None:
    class Failing(Regressor):
        def on_validation_start(self):
            if case == "sanity_check" and self.trainer.sanity_checking:
                raise RuntimeError("Trouble!")

        def on_train_batch_start(self, batch, batch_idx):
            if case != "sanity_check" and self.trainer.global_step == 1:
                raise RuntimeError("Trouble!")

    flags: dict[str, Any] = {"num_sanity_val_steps": 2} if case == "sanity_check" else {}
    if case == "fast_dev_run":
        flags["fast_dev_run"] = 2
    every = {"every_n_train_steps": 1} if case == "saved_at_this_step" else {}
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="x", save_on_exception=case != "off", **every)
    with pytest.raises(RuntimeError, match="Trouble!"):
        fit(trainer(default_root_dir=tmp_path, callbacks=[cb], **flags), Failing())
    expected = {"x.ckpt"} if case == "saved_at_this_step" else set()  # the step save, not an exception save
    assert (names(tmp_path / "ck") if (tmp_path / "ck").exists() else set()) == expected


def test_save_on_exception_does_not_hide_the_error_when_the_save_fails(tmp_path: Path) -> None:
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path, filename="{val_acc}", save_on_exception=True)
    with pytest.raises(RuntimeError, match="Trouble!"), pytest.warns(UserWarning, match="could not write"):
        fit(trainer(fulmen.Trainer, default_root_dir=tmp_path, callbacks=[cb]), FailsOnce(fail_step=2))
    assert names(tmp_path) == set()


# -- scores and names ---------------------------------------------------------------------------------------------
class LogsNaN(Regressor):
    def training_step(self, batch, batch_idx):
        self.log("foo", float("nan"))
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(("mode", "expected"), [("min", math.inf), ("max", -math.inf)])
def test_nan_score_is_recorded_as_the_worst_value(tmp_path: Path, mode: str, expected: float) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="foo", mode=mode)
    with pytest.warns(UserWarning, match="got NaN"):
        fit(trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[cb]), LogsNaN())
    assert cb.best_model_score == expected and cb.current_score == expected
    assert names(tmp_path) == {"epoch=0-step=4.ckpt"}


def test_core_never_ranks_a_nan_score(tmp_path: Path) -> None:
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path, monitor="foo")
    fit(trainer(fulmen.Trainer, default_root_dir=tmp_path, max_epochs=1, callbacks=[cb]), LogsNaN())
    assert cb.best_model_score is None and names(tmp_path) - {audit.AUDIT_FILE} == set()


def test_nan_first_then_numbers_each_enter_the_top_1(tmp_path: Path) -> None:
    values = [float("nan"), 8.0, 7.0, 5.0]

    class Scores(Regressor):
        def on_validation_epoch_end(self):
            self.log("abc", values[self.current_epoch])

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="abc", filename="{epoch}")
    with pytest.warns(UserWarning, match="got NaN"):
        fit(trainer(default_root_dir=tmp_path, max_epochs=4, callbacks=[cb]), Scores())
    assert cb.best_model_score == 5.0 and names(tmp_path) == {"epoch=3.ckpt"}


def test_float32_scores_equal_the_logged_numbers(tmp_path: Path) -> None:
    values = [0.3, 0.1, 0.2]

    class Scores(Regressor):
        def on_validation_epoch_end(self):
            self.log("score", torch.tensor(values[self.current_epoch]))

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_top_k=-1)
    fit(trainer(default_root_dir=tmp_path, max_epochs=3, callbacks=[cb]), Scores())
    assert cb.current_score == 0.2 and cb.best_model_score == 0.1
    states = [torch.load(p, weights_only=True)["callbacks"][cb.state_key] for p in cb.best_k_models]
    assert sorted(s["current_score"] for s in states) == [0.1, 0.2, 0.3]


def test_a_metric_missing_from_the_file_name_is_written_as_zero(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_acc:.2f}")
    with pytest.warns(UserWarning, match="'val_acc', which was not logged"):
        fit(trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[cb]))
    assert names(tmp_path) == {"epoch=0-val_acc=0.00.ckpt"}


def test_core_refuses_a_metric_missing_from_the_file_name(tmp_path: Path) -> None:
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_acc:.2f}")
    with pytest.raises(RuntimeError, match="needs the metric 'val_acc'"):
        fit(trainer(fulmen.Trainer, default_root_dir=tmp_path, max_epochs=1, callbacks=[cb]))


# -- when files are written -------------------------------------------------------------------------------------
class CountingSaves(L.Trainer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saved: list[str] = []

    def save_checkpoint(self, filepath, weights_only=False):  # type: ignore[override]
        self.saved.append(os.path.basename(filepath))
        super().save_checkpoint(filepath, weights_only)


@pytest.mark.parametrize("every_n_epochs", [0, 5])
def test_save_last_with_top_k_zero_writes_last_once_when_training_ends(tmp_path: Path, every_n_epochs: int) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_epochs=every_n_epochs)
    t = trainer(CountingSaves, default_root_dir=tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[cb])
    fit(t, val=False)
    assert t.saved == ["last.ckpt"] and names(tmp_path) == {"last.ckpt"}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 12


def test_core_keeps_last_ckpt_current_at_every_epoch_end(tmp_path: Path) -> None:
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    saved: list[str] = []

    class Counting(fulmen.Trainer):
        def save_checkpoint(self, filepath, weights_only=False):  # type: ignore[override]
            saved.append(os.path.basename(filepath))
            super().save_checkpoint(filepath, weights_only)

    fit(trainer(Counting, default_root_dir=tmp_path, max_epochs=3, callbacks=[cb]), val=False)
    assert saved == ["last.ckpt"] * 3


def test_last_is_refreshed_only_with_a_new_checkpoint_at_epoch_end(tmp_path: Path) -> None:
    values = [1.0, 2.0, 0.5]

    class Scores(Regressor):
        def on_validation_epoch_end(self):
            self.log("score", values[self.current_epoch])

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_last=True, filename="{epoch}")
    t = trainer(CountingSaves, default_root_dir=tmp_path, max_epochs=3, callbacks=[cb])
    fit(t, Scores())
    assert t.saved == ["epoch=0.ckpt", "epoch=2.ckpt"]  # last.ckpt is linked to each, epoch 1 did not improve
    assert os.path.samefile(tmp_path / "last.ckpt", tmp_path / "epoch=2.ckpt")


def test_with_validation_every_second_epoch_checkpoints_follow_validation(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="epoch", save_top_k=-1, filename="{epoch}")
    fit(trainer(default_root_dir=tmp_path, max_epochs=5, check_val_every_n_epoch=2, callbacks=[cb]))
    assert names(tmp_path) == {"epoch=1.ckpt", "epoch=3.ckpt"}


def test_core_writes_no_top_k_checkpoint_ranked_by_a_stale_validation_metric(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    cb = fulmen.ModelCheckpoint(dirpath=ck, monitor="val_loss", save_top_k=-1, save_last=True, filename="{epoch}")
    with pytest.warns(UserWarning) as caught:
        fit(trainer(fulmen.Trainer, default_root_dir=tmp_path, max_epochs=4, check_val_every_n_epoch=2, callbacks=[cb]))
    # Epoch 0: no val_loss yet; epoch 2: val_loss is epoch 1's.
    assert any("keep the value of the last validation" in str(w.message) for w in caught)
    assert names(ck) - {audit.AUDIT_FILE} == {"epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"}
    # last.ckpt still follows every epoch: it holds the final weights.
    assert torch.load(ck / "last.ckpt", weights_only=True)["global_step"] == 16


def test_core_ranks_a_training_metric_in_epochs_without_validation(tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    cb = fulmen.ModelCheckpoint(dirpath=ck, monitor="train_loss", save_top_k=-1, filename="{epoch}")
    fit(trainer(fulmen.Trainer, default_root_dir=tmp_path, max_epochs=3, check_val_every_n_epoch=2, callbacks=[cb]))
    assert names(ck) - {audit.AUDIT_FILE} == {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"}


def test_limit_val_batches_none_means_all_batches(tmp_path: Path) -> None:
    t = trainer(default_root_dir=tmp_path, max_epochs=1, limit_val_batches=None)
    fit(t)
    assert t.num_val_batches == [2]


# -- to_yaml ----------------------------------------------------------------------------------------------------
def test_to_yaml_writes_best_k_models(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2)
    fit(trainer(default_root_dir=tmp_path, max_epochs=3, callbacks=[cb]))
    cb.to_yaml()
    written = yaml.safe_load((tmp_path / "ck" / "best_k_models.yaml").read_text())
    assert written == {p: v.item() for p, v in cb.best_k_models.items()} and len(written) == 2
    cb.to_yaml(tmp_path / "other.yaml")
    assert yaml.safe_load((tmp_path / "other.yaml").read_text()) == written


# -- arguments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"save_top_k": -3}, r"Must be >= -1"),
        ({"save_top_k": 3}, r"ModelCheckpoint\(save_top_k=3, monitor=None\) is not a valid configuration"),
        ({"every_n_epochs": -1}, r"Must be >= 0"),
        ({"every_n_train_steps": -1}, r"Must be >= 0"),
        ({"every_n_train_steps": 2, "every_n_epochs": 1}, r"Combination of parameters every_n_train_steps"),
        ({"mode": "avg"}, r"`mode` can be .* but got avg"),
        ({"save_on_exception": "yes"}, r"save_on_exception='yes'.*True or False"),
    ],
)
def test_bad_arguments_raise_misconfiguration_exception(kwargs: dict[str, Any], phrase: str) -> None:
    with pytest.raises(MisconfigurationException, match=phrase) as info:
        ModelCheckpoint(**kwargs)
    assert isinstance(info.value, ValueError)


def test_enable_checkpointing_false_with_a_model_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="`enable_checkpointing=False` but found `ModelCheckpoint`"):
        L.Trainer(default_root_dir=tmp_path, enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_save_last_link_needs_a_local_folder(tmp_path: Path) -> None:
    cb = ModelCheckpoint(dirpath="memory://bucket/run", save_last="link")
    assert cb.dirpath == "memory://bucket/run"  # a URL is kept as given
    with pytest.raises(ValueError, match=r"save_last='link'.* is only supported for local file paths"):
        cb.setup(trainer=L.Trainer(default_root_dir=tmp_path), pl_module=Regressor(), stage="fit")


def test_dirpath_is_expanded_and_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert ModelCheckpoint(dirpath="~/ck").dirpath == str(tmp_path / "home" / "ck")
    assert ModelCheckpoint(dirpath=Path("~/ck")).dirpath == str(tmp_path / "home" / "ck")
    assert ModelCheckpoint(dirpath="./~/ck").dirpath == str(tmp_path / "~" / "ck")
    assert ModelCheckpoint(dirpath="rel").dirpath == str(tmp_path / "rel")


def test_constructor_annotations_are_types_for_cli_parsers() -> None:
    from jsonargparse import ArgumentParser

    params = inspect.signature(ModelCheckpoint).parameters
    assert all(not isinstance(p.annotation, str) for p in params.values())
    parser = ArgumentParser()
    parser.add_argument("--a", type=params["save_last"].annotation)
    for text, value in [("yes", True), ("false", False), ("link", "link")]:
        assert parser.parse_args(["--a", text]).a == value


# -- pl_module= ---------------------------------------------------------------------------------------------------
def test_callback_hooks_take_lightnings_keyword(tmp_path: Path) -> None:
    seen: list[Any] = []

    class FulmenStyle(fulmen.Callback):
        def on_fit_start(self, trainer, system):
            seen.append(system)

    class LightningStyle(L.Callback if hasattr(L, "Callback") else fulmen.Callback):  # type: ignore[misc]
        def on_fit_start(self, trainer, pl_module):
            seen.append(pl_module)

    m = Regressor()
    FulmenStyle().on_fit_start(trainer=None, pl_module=m)
    LightningStyle().on_fit_start(trainer=None, system=m)
    LightningStyle().on_fit_start(None, pl_module=m)
    fulmen.Callback().setup(trainer=None, pl_module=m, stage="fit")  # the base class's no-op hooks too
    assert seen == [m, m, m]
    cb = ModelCheckpoint(dirpath=tmp_path)
    cb.setup(trainer=L.Trainer(default_root_dir=tmp_path), pl_module=m, stage="fit")
    assert cb.dirpath == str(tmp_path)
    # Per-batch hooks are not wrapped: the keyword translation never costs per step.
    assert not hasattr(FulmenStyle.on_train_batch_end, "_fulmen_both_keywords")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[FulmenStyle(), LightningStyle()]), m)
    assert seen[-2:] == [m, m]
