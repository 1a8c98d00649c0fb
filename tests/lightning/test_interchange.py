"""Checkpoints move between PyTorch Lightning 2.x and fulmen.lightning, both ways.

Real Lightning writes and reads the files, in subprocesses (two in all): it is installed apart
from the venv's packages (``.venv/lightning-ref``, by dev.sh), so it is never imported here and
fulmen's code never depends on it. The program both run is ``tests/helpers/interchange.py``: Adam
with a StepLR, ModelCheckpoint and EarlyStopping, a datamodule with state, all deterministic on
the CPU, so a resumed run can be compared bitwise with an uninterrupted one.

The tests without Lightning (the position translation, the digest rules, the keys written) run
everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.interchange import (
    BATCHES,
    CountingData,
    FromConfig,
    Regressor,
    config_checkpoint,
    every_7_steps,
    results,
    trainer,
)

import fulmen
from fulmen.checkpoint import load_checkpoint, write_checkpoint
from fulmen.checkpoint.lightning_format import add_fulmen_keys, lightning_position
from fulmen.errors import CheckpointIntegrityError, FulmenWarning
from fulmen.lightning.callbacks import EarlyStopping, ModelCheckpoint

ROOT = Path(__file__).resolve().parents[2]
LIGHTNING = ROOT / ".venv" / "lightning-ref"
SCRIPT = ROOT / "tests" / "helpers" / "interchange.py"

needs_lightning = pytest.mark.skipif(
    not (LIGHTNING / "lightning").is_dir(),
    reason=(
        f"PyTorch Lightning is not installed in {LIGHTNING} (./dev.sh test installs it; by hand: "
        f".venv/bin/python -m pip install --no-deps --target .venv/lightning-ref lightning==2.6.6)"
    ),
)


def run_lightning(mode: str, out: Path) -> None:
    """``interchange.py <mode> <out>`` under PyTorch Lightning, in a subprocess."""
    env = {
        **os.environ,
        "PYTHONPATH": str(LIGHTNING),
        "FULMEN_INTERCHANGE_SIDE": "lightning",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"Lightning ({mode}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def lightning_wrote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lightning's checkpoints (2 epochs: ``half``; inside epoch 1: ``mid``) and its uninterrupted runs."""
    out = tmp_path_factory.mktemp("lightning_wrote")
    run_lightning("write", out)
    return out


@pytest.fixture(scope="module")
def fulmen_wrote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fulmen.lightning's checkpoints of the same program (2 epochs; inside epoch 1; FromConfig)."""
    out = tmp_path_factory.mktemp("fulmen_wrote")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FulmenWarning)
        trainer(str(out / "fhalf"), 2).fit(Regressor(), datamodule=CountingData())
        shutil.copy(out / "fhalf" / "checkpoints" / "last.ckpt", out / "fhalf.ckpt")
        trainer(str(out / "fmid"), 2, callbacks=[every_7_steps()]).fit(Regressor(), datamodule=CountingData())
        os.replace(config_checkpoint(str(out)), out / "fconfig.ckpt")
    return out


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_float32(a: float, b: float) -> bool:
    """Equal as the float32 metric they were logged as (ModelCheckpoint keeps scores as floats
    that name a float32 value by its shortest decimal)."""
    return bool(torch.tensor(a, dtype=torch.float32) == torch.tensor(b, dtype=torch.float32))


# -- Lightning wrote it, fulmen.lightning reads it ------------------------------------------------------------
@needs_lightning
def test_load_from_checkpoint_reads_lightnings_file_and_says_once_it_has_no_digest(lightning_wrote: Path) -> None:
    path = lightning_wrote / "half.ckpt"
    raw = torch.load(path, weights_only=True)
    assert "digest" not in raw and "fulmen_version" not in raw  # a file fulmen never touched
    with pytest.warns(FulmenWarning, match=r"written by PyTorch Lightning 2\.6\.6 and carries no content digest"):
        model = Regressor.load_from_checkpoint(path)
    assert dict(model.hparams) == raw["hyper_parameters"] == {"lr": 0.05, "hidden": 5}
    assert same_tensors(model.state_dict(), raw["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file
        dm = CountingData.load_from_checkpoint(path)
    assert dict(dm.hparams) == {"n": 8 * BATCHES, "batch_size": 8}
    assert dm.epochs_done == 2  # the state Lightning stored under the class name
    with pytest.warns(FulmenWarning, match="no content digest"):
        config = FromConfig.load_from_checkpoint(lightning_wrote / "config.ckpt")
    # Lightning's hparams_name: the hyperparameters were the `config` argument, and are passed as it
    assert dict(config.hparams) == {"width": 3, "name": "wide"} and config.layer.in_features == 3
    assert "lightning" not in sys.modules


@needs_lightning
def test_fit_continues_lightnings_epoch_end_checkpoint_as_the_uninterrupted_run(lightning_wrote: Path) -> None:
    """Lightning trained 2 epochs; fulmen.lightning trains epochs 2 and 3 from its checkpoint and
    ends bitwise where Lightning's uninterrupted 4-epoch run ends: weights, Adam's moments, the
    scheduler, EarlyStopping's and ModelCheckpoint's states, and the datamodule's state."""
    model, dm = Regressor(), CountingData()
    t = trainer(str(lightning_wrote / "half"), 4)  # the same folder: ModelCheckpoint's state applies in full
    with pytest.warns(FulmenWarning, match="no content digest"):
        t.fit(model, datamodule=dm, ckpt_path=lightning_wrote / "half" / "checkpoints" / "last.ckpt")
    got, full = results(model, t), torch.load(lightning_wrote / "lightning_full.pt", weights_only=True)
    assert [s[:2] for s in got["seen"]] == [(e, b) for e in (2, 3) for b in range(BATCHES)]
    assert got["seen"] == full["seen"][2 * BATCHES :]
    assert (got["global_step"], got["current_epoch"]) == (full["global_step"], full["current_epoch"]) == (20, 4)
    assert same_tensors(got["state_dict"], full["state_dict"])
    for mine, theirs in zip(got["optimizer"]["state"].values(), full["optimizer"]["state"].values()):
        assert same_tensors(mine, theirs)
    assert got["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    assert got["scheduler"] == full["scheduler"]
    assert got["early_stopping"] == full["early_stopping"]
    assert same_float32(got["best_model_score"], full["best_model_score"])
    assert got["epochs_done"] == full["epochs_done"] == 4


@needs_lightning
def test_fit_continues_lightnings_mid_epoch_checkpoint_after_the_batches_it_trained(
    lightning_wrote: Path, tmp_path: Path
) -> None:
    """``step=7.ckpt`` was written after batch 1 of epoch 1. fulmen.lightning continues with batch 2
    and that batch's data (Lightning itself would start the data again from the first batch), so it
    ends bitwise where the uninterrupted run does; a warning says what Lightning did not store."""
    model = Regressor()
    t = trainer(str(tmp_path), 2, callbacks=[], enable_checkpointing=False)
    with pytest.warns(FulmenWarning) as record:
        t.fit(model, datamodule=CountingData(), ckpt_path=lightning_wrote / "mid" / "checkpoints" / "step=7.ckpt")
    messages = " ".join(str(w.message) for w in record)
    assert "in the middle of epoch 1 (after 2 batches)" in messages
    assert "stores neither the random number generators nor the data loader's position" in messages
    full = torch.load(lightning_wrote / "lightning_mid_full.pt", weights_only=True)
    assert model.seen == full["seen"][BATCHES + 2 :]
    assert [s[:2] for s in model.seen] == [(1, 2), (1, 3), (1, 4)]
    assert t.global_step == full["global_step"] == 10
    assert same_tensors(model.state_dict(), full["state_dict"])


# -- fulmen.lightning wrote it, Lightning reads it ------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning_read(fulmen_wrote: Path) -> dict[str, Any]:
    run_lightning("read", fulmen_wrote)
    found: dict[str, Any] = torch.load(fulmen_wrote / "lightning_read.pt", weights_only=True)
    return found


@needs_lightning
def test_lightning_load_from_checkpoint_reads_fulmens_file(fulmen_wrote: Path, lightning_read: dict[str, Any]) -> None:
    """Lightning's own loader (torch.load with weights_only=True) builds the model, the datamodule
    (with its state) and a model whose hyperparameters were one dict argument."""
    ours = torch.load(fulmen_wrote / "fhalf.ckpt", weights_only=True)
    assert same_tensors(lightning_read["loaded_state_dict"], ours["state_dict"])
    assert lightning_read["loaded_hparams"] == {"lr": 0.05, "hidden": 5}
    assert lightning_read["dm_hparams"] == {"n": 8 * BATCHES, "batch_size": 8}
    assert lightning_read["dm_epochs_done"] == 2
    assert lightning_read["config"] == {"width": 3, "name": "wide"}


@needs_lightning
def test_lightning_fit_continues_fulmens_epoch_end_checkpoint(lightning_wrote: Path, lightning_read: dict[str, Any]) -> None:
    """Lightning resumes fulmen.lightning's 2-epoch checkpoint and ends bitwise where its own
    uninterrupted 4-epoch run ends (epoch, step, optimizer, scheduler, callback and datamodule states).
    This needs fulmen.lightning to step epoch-interval schedulers when Lightning does (at the epoch's
    last batch, before the checkpoint is written: LoopRules.lightning_scheduler_timing)."""
    got = lightning_read["resumed"]
    full = torch.load(lightning_wrote / "lightning_full.pt", weights_only=True)
    assert got["seen"] == full["seen"][2 * BATCHES :]
    assert (got["global_step"], got["current_epoch"]) == (20, 4)
    assert got["scheduler"] == full["scheduler"]
    assert same_tensors(got["state_dict"], full["state_dict"])
    assert got["early_stopping"] == full["early_stopping"]
    assert same_float32(got["best_model_score"], full["best_model_score"])
    assert got["epochs_done"] == 4


@needs_lightning
def test_lightning_fit_continues_fulmens_mid_epoch_checkpoint(lightning_read: dict[str, Any]) -> None:
    """Inside an epoch Lightning continues at the saved batch index and global step (and, as it
    does with its own files, starts the data again from the first batch)."""
    got = lightning_read["mid_resumed"]
    assert [s[:2] for s in got["seen"]] == [(1, 2), (1, 3), (1, 4)]
    assert (got["global_step"], got["current_epoch"]) == (10, 2)


# -- without Lightning: the translation itself ---------------------------------------------------------------
def _fit_loop(epoch: tuple[int, int, int, int], batch: tuple[int, int, int, int], last: bool) -> dict[str, Any]:
    names = ("ready", "started", "processed", "completed")
    return {
        "epoch_progress": {"current": dict(zip(names, epoch)), "total": dict(zip(names, epoch))},
        "epoch_loop.batch_progress": {
            "current": dict(zip(names, batch)),
            "total": dict(zip(names, batch)),
            "is_last_batch": last,
        },
    }


@pytest.mark.parametrize(
    ("epoch", "batch", "last", "expected"),
    [
        ((2, 2, 2, 1), (5, 5, 5, 5), True, (2, 0, "after_epoch")),  # in on_train_epoch_end of epoch 1
        ((2, 2, 1, 1), (2, 2, 2, 1), False, (1, 2, "batch")),  # in on_train_batch_end after batch 1
        ((2, 2, 1, 1), (3, 3, 3, 3), False, (1, 3, "validation")),  # in on_validation_end after batch 2
        ((2, 2, 1, 1), (5, 5, 5, 4), True, (2, 0, "after_epoch")),  # after the epoch's last batch
        ((2, 1, 1, 1), (0, 0, 0, 0), False, (1, 0, "epoch_start")),  # in on_train_epoch_start
        ((4, 4, 4, 4), (5, 5, 5, 5), True, (4, 0, "after_epoch")),  # after fit
    ],
)
def test_lightning_loop_counters_give_the_position_to_continue_from(
    epoch: tuple[int, int, int, int], batch: tuple[int, int, int, int], last: bool, expected: tuple[int, int, str]
) -> None:
    assert lightning_position(_fit_loop(epoch, batch, last)) == expected


def test_lightning_entries_are_read_beside_their_own_keys() -> None:
    scaler = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 3}
    ckpt: dict[str, Any] = {
        "pytorch-lightning_version": "2.6.6",
        "epoch": 1,
        "global_step": 7,
        "state_dict": {},
        "MixedPrecision": scaler,
        "CountingData": {"epochs_done": 1},
        "loops": {"fit_loop": _fit_loop((2, 2, 1, 1), (2, 2, 2, 1), False)},
    }
    with pytest.warns(FulmenWarning, match=r"in the middle of epoch 1 \(after 2 batches\)"):
        add_fulmen_keys(ckpt, CountingData(), "x.ckpt")
    assert ckpt["precision"] == {"scaler": scaler} and ckpt["datamodule"] == {"epochs_done": 1}
    assert {k: ckpt["loops"][k] for k in ("epoch", "global_step", "batches_done", "phase")} == {
        "epoch": 1,
        "global_step": 7,
        "batches_done": 2,
        "phase": "batch",
    }
    assert "fit_loop" in ckpt["loops"] and ckpt["MixedPrecision"] is scaler  # Lightning's entries stay
    fulmens = {"fulmen_version": fulmen.__version__, "pytorch-lightning_version": "2.6.6", "state_dict": {}}
    add_fulmen_keys(fulmens, None, "y.ckpt")
    assert "loops" not in fulmens  # only files Lightning wrote are translated


def test_a_lightning_file_without_digest_loads_and_says_so_once(tmp_path: Path) -> None:
    path = tmp_path / "from_lightning.ckpt"
    torch.save({"pytorch-lightning_version": "2.5.1", "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.warns(FulmenWarning, match=r"written by PyTorch Lightning 2\.5\.1 and carries no content digest"):
        assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path)


def test_a_fulmen_checkpoint_whose_digest_was_removed_is_refused(tmp_path: Path) -> None:
    """The digest check is not weakened by accepting Lightning's undigested files: a file that says
    fulmen wrote it must carry its digest."""
    t = trainer(str(tmp_path), 1, callbacks=[], limit_val_batches=0)
    t.fit(Regressor(), datamodule=CountingData())
    t.save_checkpoint(tmp_path / "ok.ckpt")
    ckpt = torch.load(tmp_path / "ok.ckpt", weights_only=True)
    del ckpt["digest"]
    torch.save(ckpt, tmp_path / "stripped.ckpt")
    with pytest.raises(CheckpointIntegrityError, match=r"carries no content digest.*removed after the file was written"):
        load_checkpoint(tmp_path / "stripped.ckpt")
    with pytest.raises(CheckpointIntegrityError, match="carries no content digest"):
        Regressor.load_from_checkpoint(tmp_path / "stripped.ckpt")
    with pytest.raises(CheckpointIntegrityError, match="carries no content digest"):
        trainer(str(tmp_path), 2, callbacks=[], limit_val_batches=0).fit(
            Regressor(), datamodule=CountingData(), ckpt_path=tmp_path / "stripped.ckpt"
        )
    assert "digest" not in load_checkpoint(tmp_path / "stripped.ckpt", verify=False)
    write_checkpoint(ckpt, tmp_path / "rewritten.ckpt")  # an edit on purpose gets a new digest
    load_checkpoint(tmp_path / "rewritten.ckpt")


def test_fulmen_lightning_writes_lightnings_keys_and_the_core_layout_stays(tmp_path: Path) -> None:
    class SaveMidEpoch(fulmen.lightning.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.current_epoch == 1 and batch_idx == 1:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    callbacks = [SaveMidEpoch(), ModelCheckpoint(monitor="val_loss"), EarlyStopping("val_loss", patience=3)]
    t = trainer(str(tmp_path), 2, callbacks=callbacks)
    t.fit(Regressor(), datamodule=CountingData())
    t.save_checkpoint(tmp_path / "end.ckpt")
    mid = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    assert mid["pytorch-lightning_version"] == fulmen.lightning.__version__
    assert mid["hparams_name"] == mid["datamodule_hparams_name"] == "kwargs"
    assert mid["CountingData"] == mid["datamodule"] == {"epochs_done": 1}
    # fulmen's loop entries and Lightning's loops side by side; Lightning's counters lead back to
    # the same position (after batch 1 of epoch 1, its bookkeeping left to do)
    assert (mid["loops"]["batches_done"], mid["loops"]["phase"]) == (2, "batch")
    assert set(mid["loops"]) >= {"fit_loop", "validate_loop", "test_loop", "predict_loop"}
    assert lightning_position(mid["loops"]["fit_loop"]) == (1, 2, "batch")
    assert mid["loops"]["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"][
        "completed"
    ] == mid["global_step"] == 7
    stopping = next(v for k, v in mid["callbacks"].items() if k.startswith("EarlyStopping"))
    assert isinstance(stopping["best_score"], torch.Tensor)  # Lightning's EarlyStopping calls .to() on it
    end = torch.load(tmp_path / "end.ckpt", weights_only=True)
    assert lightning_position(end["loops"]["fit_loop"]) == (2, 0, "after_epoch")
    load_checkpoint(tmp_path / "end.ckpt")  # still a checked fulmen checkpoint

    core = fulmen.Trainer(max_epochs=1, default_root_dir=tmp_path / "core", logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, enable_model_summary=False)
    core.fit(Regressor(), datamodule=CountingData())
    core.save_checkpoint(tmp_path / "core.ckpt")
    plain = torch.load(tmp_path / "core.ckpt", weights_only=True)
    assert "pytorch-lightning_version" not in plain and "fit_loop" not in plain["loops"]


def test_hyperparameters_saved_from_one_dict_argument_round_trip(tmp_path: Path) -> None:
    """``save_hyperparameters(config)``: the checkpoint names the argument (``hparams_name``, as
    Lightning writes it) and load_from_checkpoint passes the dict back as ``config``."""
    path = config_checkpoint(str(tmp_path))
    assert torch.load(path, weights_only=True)["hparams_name"] == "config"
    model = FromConfig.load_from_checkpoint(path)
    assert dict(model.hparams) == {"width": 3, "name": "wide"} and model.layer.in_features == 3
    wider = FromConfig.load_from_checkpoint(path, name="other")  # overrides go into the dict
    assert dict(wider.hparams) == {"width": 3, "name": "other"}


@pytest.mark.parametrize("lightning", [True, False])
def test_resuming_a_checkpoint_past_max_epochs_is_refused(tmp_path: Path, lightning: bool) -> None:
    """As in Lightning (MisconfigurationException): a checkpoint written after the epochs a fit may
    run would train nothing. One written in the last epoch resumes and ends at once."""
    from fulmen.lightning.utilities.exceptions import MisconfigurationException

    def make(max_epochs: int) -> Any:
        if lightning:
            return trainer(str(tmp_path), max_epochs, callbacks=[], enable_checkpointing=False, limit_val_batches=0)
        return fulmen.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, logger=False, limit_val_batches=0,
                              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)

    t = make(3)
    t.fit(Regressor(), datamodule=CountingData())
    t.save_checkpoint(tmp_path / "after3.ckpt")
    with pytest.raises(MisconfigurationException, match=r"You restored a checkpoint with current_epoch=3, but you have set Trainer\(max_epochs=2\)"):
        make(2).fit(Regressor(), datamodule=CountingData(), ckpt_path=tmp_path / "after3.ckpt")
    model, again = Regressor(), make(3)
    if lightning:  # as Lightning: an info line
        again.fit(model, datamodule=CountingData(), ckpt_path=tmp_path / "after3.ckpt")
    else:  # fulmen.Trainer warns that nothing trains (tests/trainer/test_resume_changes.py)
        with pytest.warns(FulmenWarning, match="trains nothing"):
            again.fit(model, datamodule=CountingData(), ckpt_path=tmp_path / "after3.ckpt")
    assert model.seen == [] and again.global_step == 3 * BATCHES


def test_the_loss_scaler_is_written_where_lightning_reads_it(tmp_path: Path) -> None:
    """16-mixed: Lightning's MixedPrecision plugin restores its GradScaler from the entry named after
    it; fulmen.lightning writes the same state there, beside fulmen's ``precision``."""
    t = trainer(str(tmp_path), 1, callbacks=[], enable_checkpointing=False, limit_val_batches=0, precision="16-mixed")
    t.fit(Regressor(), datamodule=CountingData())
    t.save_checkpoint(tmp_path / "amp.ckpt")
    ckpt = torch.load(tmp_path / "amp.ckpt", weights_only=True)
    assert ckpt["MixedPrecision"] == ckpt["precision"]["scaler"] == t.strategy.precision.scaler.state_dict()
    assert {"scale", "growth_factor", "_growth_tracker"} <= set(ckpt["MixedPrecision"])  # GradScaler.state_dict()


def test_core_checkpoints_name_the_dict_argument_the_hyperparameters_came_from(tmp_path: Path) -> None:
    class Configured(fulmen.System):
        def __init__(self, cfg: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters(cfg)
            self.layer = torch.nn.Linear(cfg["width"], 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    t = fulmen.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False)
    t.fit(Configured({"width": 2}), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)), batch_size=2))
    t.save_checkpoint(tmp_path / "cfg.ckpt")
    ckpt = torch.load(tmp_path / "cfg.ckpt", weights_only=True)
    assert ckpt["hparams_name"] == "cfg" and "pytorch-lightning_version" not in ckpt
    model = Configured.load_from_checkpoint(tmp_path / "cfg.ckpt")
    assert model.hparams == {"width": 2} and model.layer.in_features == 2
