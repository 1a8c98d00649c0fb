"""``fulmen.DataModule``: hyperparameters and the order of its hooks in each entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.systems import TinyData, TinySystem, quiet_trainer
from torch.utils.data import DataLoader

import fulmen


class Recording(TinyData):
    """TinyData that also records when its dataloaders are asked for."""

    def train_dataloader(self) -> DataLoader:
        self.calls.append("train_dataloader")
        return super().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        self.calls.append("val_dataloader")
        return super().val_dataloader()

    def test_dataloader(self) -> DataLoader:
        self.calls.append("test_dataloader")
        return super().test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        self.calls.append("predict_dataloader")
        return super().predict_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return {"seen": len(self.calls)}


class SystemCalls(TinySystem):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log_to = log

    def setup(self, stage: str) -> None:
        self.log_to.append(f"system.setup:{stage}")

    def teardown(self, stage: str) -> None:
        self.log_to.append(f"system.teardown:{stage}")

    def on_fit_start(self) -> None:
        self.log_to.append("system.on_fit_start")


def test_save_hyperparameters() -> None:
    dm = TinyData(n=32, batch_size=4)
    assert dm.hparams == {"n": 32, "batch_size": 4}
    assert dm.hparams.batch_size == 4
    assert dm.trainer is None

    class Subset(fulmen.DataModule):
        def __init__(self, root: str, workers: int = 0, cache: Any = None) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="cache")

    assert Subset("/data", cache=object()).hparams == {"root": "/data", "workers": 0}


def test_base_datamodule_without_init_call() -> None:
    class NoSuper(fulmen.DataModule):
        def __init__(self, n: int) -> None:  # forgets super().__init__()
            self.n = n

    class NoSuperSaving(fulmen.DataModule):
        def __init__(self, n: int) -> None:
            self.save_hyperparameters()

    dm = NoSuper(3)
    assert dm.hparams == {}
    assert dm.trainer is None
    assert NoSuperSaving(4).hparams == {"n": 4}


def test_hook_order_in_fit(tmp_path: Path) -> None:
    calls: list[str] = []
    dm = Recording(n=16, batch_size=8)
    dm.calls = calls
    system = SystemCalls(calls)
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(system, datamodule=dm)
    assert dm.trainer is trainer and trainer.datamodule is dm
    assert calls[:2] == ["prepare_data", "setup:fit"]
    assert calls[2] == "system.setup:fit"
    assert sorted(calls[3:5]) == ["train_dataloader", "val_dataloader"]
    assert calls[5] == "system.on_fit_start"
    assert calls[-2:] == ["teardown:fit", "system.teardown:fit"]  # datamodule first, as in Lightning
    assert len(calls) == 8


@pytest.mark.parametrize(
    ("entry", "loader"),
    [("validate", "val_dataloader"), ("test", "test_dataloader"), ("predict", "predict_dataloader")],
)
def test_hook_order_in_evaluation(tmp_path: Path, entry: str, loader: str) -> None:
    dm = Recording(n=16, batch_size=8)
    trainer = quiet_trainer(tmp_path)
    getattr(trainer, entry)(TinySystem(), datamodule=dm)
    stage = entry
    assert dm.calls == ["prepare_data", f"setup:{stage}", loader, f"teardown:{stage}"]


def test_teardown_runs_when_the_run_fails(tmp_path: Path) -> None:
    class Boom(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom")

    dm = Recording(n=16, batch_size=8)
    with pytest.raises(RuntimeError, match="boom"):
        quiet_trainer(tmp_path, num_sanity_val_steps=0).fit(Boom(), datamodule=dm)
    assert dm.calls[-1] == "teardown:fit"


def test_datamodule_hparams_in_hparams_yaml_and_checkpoint(tmp_path: Path) -> None:
    dm = Recording(n=16, batch_size=8)
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(TinySystem(lr=0.2), datamodule=dm)
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    with open(os.path.join(trainer.logger.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f) == {"n": 16, "batch_size": 8, "features": 4, "lr": 0.2}
    ckpt = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert ckpt["datamodule_hyper_parameters"] == {"n": 16, "batch_size": 8}
    # saved at the end of the epoch: after prepare_data, setup and the two dataloaders
    assert ckpt["datamodule"] == {"seen": 4}


def test_load_from_checkpoint_takes_weights_only_none_or_true(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(TinySystem(), datamodule=Recording(n=16, batch_size=4))
    path = trainer.checkpoint_callback.last_model_path
    for weights_only in (None, True):
        dm = Recording.load_from_checkpoint(path, weights_only=weights_only)
        assert isinstance(dm, Recording) and dm.hparams.n == 16 and dm.hparams.batch_size == 4
    with pytest.raises(ValueError, match=r"^Recording\.load_from_checkpoint\(weights_only=False\): .*expected None or True"):
        Recording.load_from_checkpoint(path, weights_only=False)


def test_default_hooks_return_nothing() -> None:
    dm = fulmen.DataModule()
    assert dm.train_dataloader() is None
    assert dm.state_dict() == {}
    dm.load_state_dict({})
