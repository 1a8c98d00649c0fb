"""Hyperparameters that are not plain data: recorded by description, asked for when loading;
DataModule.load_from_checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinyData
from torch import nn

import fulmen
from fulmen._hparams import UNSAVED, describe_unsaved, hparams_for_init, is_unsaved, plain_hparams
from fulmen.checkpoint import load_checkpoint, write_checkpoint
from fulmen.errors import FulmenWarning


def relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0)


def test_descriptions_name_the_type_and_repr() -> None:
    with pytest.warns(FulmenWarning) as record:
        out = plain_hparams({"lr": 0.1, "net": nn.Linear(4, 2), "act": relu, "layers": [nn.ReLU(), 3]}, "system")
    assert out["lr"] == 0.1
    assert out["net"] == {UNSAVED: "torch.nn.Linear", "repr": "Linear(in_features=4, out_features=2, bias=True)"}
    assert out["act"][UNSAVED] == "function"
    assert out["act"]["repr"].startswith("<function relu") and "0x" not in out["act"]["repr"]
    assert out["layers"] == {UNSAVED: "list", "repr": "[ReLU(), 3]"}
    assert all(is_unsaved(out[k]) for k in ("net", "act", "layers")) and not is_unsaved({"a": 1})
    (warning,) = [w for w in record if issubclass(w.category, FulmenWarning)]
    message = str(warning.message)
    assert "net (Linear), act (function), layers (list)" in message
    assert "save_hyperparameters(ignore=[...])" in message and "ignore=['net', 'act', 'layers']" in message


def test_long_reprs_are_cut() -> None:
    described = describe_unsaved(nn.Sequential(*[nn.Linear(100, 100) for _ in range(50)]))
    assert described[UNSAVED] == "torch.nn.Sequential"
    assert len(described["repr"]) == 500 and described["repr"].endswith("...")


class WithBackbone(fulmen.System):
    def __init__(self, backbone: nn.Module, head: Any = None, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = backbone


class Plain(fulmen.System):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_hparams_for_init_asks_for_each_unsaved_hyperparameter() -> None:
    saved = {"backbone": describe_unsaved(nn.Linear(4, 1)), "head": describe_unsaved(nn.ReLU()), "lr": 0.1}
    with pytest.raises(TypeError, match=r"backbone, head could not be saved.*torch\.nn\.Linear.*backbone=\.\.\., head=\.\.\.") as info:
        hparams_for_init(saved, {}, WithBackbone)
    assert "WithBackbone.load_from_checkpoint(path, backbone=..., head=...)" in str(info.value)
    with pytest.raises(TypeError, match=r"the hyperparameter\(s\) head could not"):
        hparams_for_init(saved, {"backbone": nn.Linear(4, 1)}, WithBackbone)
    net, head = nn.Linear(4, 1), nn.Tanh()
    kwargs = hparams_for_init(saved, {"backbone": net, "head": head}, WithBackbone)
    assert kwargs == {"backbone": net, "head": head, "lr": 0.1}
    assert hparams_for_init({"width": 4, "gone": 1, "x": describe_unsaved(object())}, {}, Plain) == {"width": 4}
    assert hparams_for_init({"width": 4}, {"width": 5}, Plain) == {"width": 5}


def test_checkpoint_records_the_description(tmp_path: Path) -> None:
    system = WithBackbone(nn.Linear(4, 1))
    with pytest.warns(FulmenWarning, match=r"backbone \(Linear\)"):
        hp = plain_hparams(system.hparams, "system")
    write_checkpoint({"state_dict": system.state_dict(), "hyper_parameters": hp}, tmp_path / "a.ckpt")
    saved = load_checkpoint(tmp_path / "a.ckpt")["hyper_parameters"]  # weights_only loads descriptions
    assert saved["backbone"] == {UNSAVED: "torch.nn.Linear", "repr": "Linear(in_features=4, out_features=1, bias=True)"}
    assert saved["head"] is None and saved["lr"] == 0.05
    with pytest.raises(TypeError, match="backbone"):
        hparams_for_init(saved, {}, WithBackbone)


# -- DataModule.load_from_checkpoint ----------------------------------------------------------------------------
class CountingData(TinyData):
    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__(n, batch_size)
        self.epochs_seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_seen": self.epochs_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_seen = state_dict["epochs_seen"]


def dm_checkpoint(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "dm.ckpt"
    write_checkpoint({"state_dict": {}, **extra}, path)
    return path


def test_datamodule_load_from_checkpoint(tmp_path: Path) -> None:
    path = dm_checkpoint(tmp_path, datamodule_hyper_parameters={"n": 32, "batch_size": 4}, datamodule={"epochs_seen": 3})
    dm = CountingData.load_from_checkpoint(path)
    assert isinstance(dm, CountingData)
    assert dict(dm.hparams) == {"n": 32, "batch_size": 4}
    assert dm.epochs_seen == 3
    assert CountingData.load_from_checkpoint(path, batch_size=16).hparams.batch_size == 16


def test_datamodule_from_a_real_run(tmp_path: Path) -> None:
    from helpers.systems import TinySystem, quiet_trainer

    trainer = quiet_trainer(tmp_path, enable_checkpointing=False, logger=False)
    trainer.fit(TinySystem(), datamodule=TinyData(n=24, batch_size=6))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    dm = TinyData.load_from_checkpoint(tmp_path / "run.ckpt")
    assert (dm.hparams.n, dm.hparams.batch_size) == (24, 6)


class NeedsLoader(fulmen.DataModule):
    def __init__(self, source: Any, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.source = source


def test_datamodule_unsaved_and_missing_hyperparameters(tmp_path: Path) -> None:
    with pytest.warns(FulmenWarning, match=r"datamodule's hyperparameters source"):
        hp = plain_hparams(NeedsLoader(object()).hparams, "datamodule")
    path = dm_checkpoint(tmp_path, datamodule_hyper_parameters=hp)
    with pytest.raises(TypeError, match=r"NeedsLoader\.load_from_checkpoint\(\): the hyperparameter\(s\) source"):
        NeedsLoader.load_from_checkpoint(path)
    source = [1, 2]
    assert NeedsLoader.load_from_checkpoint(path, source=source).source is source

    bare = tmp_path / "bare"
    bare.mkdir()
    no_hparams = dm_checkpoint(bare)
    with pytest.raises(TypeError, match=r"could not build NeedsLoader.*holds no datamodule hyperparameters"):
        NeedsLoader.load_from_checkpoint(no_hparams)
    assert NeedsLoader.load_from_checkpoint(no_hparams, source=3).hparams.source == 3
