"""``fulmen.System``: hyperparameters, properties, and what it does outside a run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn

import fulmen
from fulmen.errors import FulmenWarning


# -- save_hyperparameters -------------------------------------------------------------------------------
def test_all_init_args_including_defaults() -> None:
    system = TinySystem(features=3)
    assert system.hparams == {"features": 3, "lr": 0.05}
    assert system.hparams.lr == 0.05
    assert system.hparams["features"] == 3
    assert isinstance(system.hparams, fulmen.system.AttributeDict)


def test_missing_hparam_attribute_names_the_saved_ones() -> None:
    with pytest.raises(AttributeError, match=r"no hyperparameter named 'width'.*\['features', 'lr'\]"):
        _ = TinySystem().hparams.width


def test_hparams_initial_is_a_copy() -> None:
    system = TinySystem(lr=0.5)
    system.hparams.lr = 0.1
    assert system.hparams.lr == 0.1
    assert system.hparams_initial.lr == 0.5


class Named(fulmen.System):
    def __init__(self, a: int, b: str = "x", c: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters("a", "c")


class Ignoring(fulmen.System):
    def __init__(self, a: int, backbone: nn.Module, loss_fn: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "loss_fn"])


class IgnoringOne(fulmen.System):
    def __init__(self, a: int, backbone: nn.Module) -> None:
        super().__init__()
        self.save_hyperparameters(ignore="backbone")


def test_named_subset_and_ignore() -> None:
    assert Named(1, "y", 2.0).hparams == {"a": 1, "c": 2.0}
    assert Ignoring(4, nn.Linear(1, 1), loss_fn=print).hparams == {"a": 4}
    assert IgnoringOne(5, nn.Linear(1, 1)).hparams == {"a": 5}


def test_unknown_name_is_an_error() -> None:
    class Typo(fulmen.System):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters("learning_rate")

    with pytest.raises(ValueError, match=r"'learning_rate'.*not arguments of Typo\.__init__.*\['lr'\]"):
        Typo()


class FromDict(fulmen.System):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(config)


class FromLiteral(fulmen.System):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"width": 8, "act": "relu"})


class FromNamespace(fulmen.System):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.save_hyperparameters(args)


class WithKwargs(fulmen.System):
    def __init__(self, a: int, *args: Any, key: str = "k", **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_dicts_namespaces_and_kwargs() -> None:
    assert FromDict({"lr": 0.1, "layers": [1, 2]}).hparams == {"lr": 0.1, "layers": [1, 2]}
    assert FromLiteral().hparams.width == 8
    assert FromNamespace(argparse.Namespace(lr=0.3, depth=2)).hparams == {"lr": 0.3, "depth": 2}
    assert WithKwargs(1, 2, 3, extra=True, other=None).hparams == {"a": 1, "key": "k", "extra": True, "other": None}


class Base(fulmen.System):
    def __init__(self, width: int, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)


class Child(Base):
    def __init__(self, width: int, depth: int = 2, lr: float = 0.2) -> None:
        super().__init__(width * 2, lr=lr)  # the base gets a derived width
        self.depth = depth


class GrandChild(Child):
    def __init__(self, width: int, note: str = "hi") -> None:
        super().__init__(width, depth=3)


def test_subclass_arguments_are_captured_and_win() -> None:
    # Rebuilding the class from hparams must give the same system, so the hparams are the
    # arguments of the class itself, not what it passed on to its base.
    child = Child(3, lr=0.5)
    assert child.hparams == {"width": 3, "depth": 2, "lr": 0.5}
    assert Child(**child.hparams).layer.in_features == child.layer.in_features == 6
    grand = GrandChild(2)
    assert grand.hparams == {"width": 2, "note": "hi", "depth": 3, "lr": 0.2}
    assert GrandChild(**{k: grand.hparams[k] for k in ("width", "note")}).layer.in_features == 4


class ViaHelper(fulmen.System):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self._build()

    def _build(self) -> None:
        self.save_hyperparameters()


def test_save_hyperparameters_from_a_helper_that_init_calls() -> None:
    assert ViaHelper(5).hparams == {"width": 5}


def test_save_hyperparameters_outside_init_warns() -> None:
    system = TinySystem(lr=0.3)
    with pytest.warns(FulmenWarning, match=r"TinySystem\.save_hyperparameters\(\) was called outside __init__"):
        system.save_hyperparameters()
    assert system.hparams == {}
    system.save_hyperparameters({"lr": 0.3})  # a dict is fine anywhere
    assert system.hparams == {"lr": 0.3}


def test_hparams_yaml_written_during_fit(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path)
    trainer.fit(TinySystem(features=4, lr=0.01), make_loader(16, 8))
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    with open(os.path.join(trainer.logger.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f) == {"features": 4, "lr": 0.01}


class NoLogHparams(TinySystem):
    def __init__(self, features: int = 4, lr: float = 0.05) -> None:
        fulmen.System.__init__(self)
        self.save_hyperparameters(logger=False)
        self.layer = nn.Linear(features, 1)


def test_save_hyperparameters_logger_false(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path)
    system = NoLogHparams(lr=0.2)
    trainer.fit(system, make_loader(16, 8))
    assert system.hparams.lr == 0.2
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    assert not os.path.exists(os.path.join(trainer.logger.log_dir, "hparams.yaml"))


class WithBackbone(TinySystem):
    def __init__(self, backbone: nn.Module, lr: float = 0.05) -> None:
        fulmen.System.__init__(self)
        self.save_hyperparameters()
        self.layer = backbone


def test_module_hparam_is_left_out_of_checkpoints_with_one_warning(tmp_path: Path) -> None:
    system = WithBackbone(nn.Linear(4, 1))
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    with pytest.warns(FulmenWarning, match=r"backbone \(Linear\).*save_hyperparameters\(ignore=\[\.\.\.\]\)") as record:
        trainer.fit(system, make_loader(16, 8))  # a checkpoint each epoch
        trainer.save_checkpoint(tmp_path / "extra.ckpt")
    assert len([w for w in record if issubclass(w.category, FulmenWarning)]) == 1
    ckpt = torch.load(tmp_path / "extra.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"] == {
        "lr": 0.05,
        "backbone": {"__fulmen_unsaved__": "torch.nn.Linear", "repr": "Linear(in_features=4, out_features=1, bias=True)"},
    }
    rebuilt = WithBackbone.load_from_checkpoint(tmp_path / "extra.ckpt", backbone=nn.Linear(4, 1))
    assert torch.equal(rebuilt.layer.weight, system.layer.weight)


def test_numpy_and_path_hparams_are_kept_as_plain_values(tmp_path: Path) -> None:
    import numpy as np

    class Mixed(TinySystem):
        def __init__(self, lr: Any, root: Any, sizes: Any) -> None:
            fulmen.System.__init__(self)
            self.save_hyperparameters()
            self.layer = nn.Linear(4, 1)

    system = Mixed(np.float32(0.25), Path("/data"), (np.int64(2), 3))
    trainer = quiet_trainer(tmp_path, enable_checkpointing=False, logger=False)
    trainer.fit(system, make_loader(8, 8))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    assert saved == {"lr": 0.25, "root": "/data", "sizes": (2, 3)}
    assert type(saved["lr"]) is float and type(saved["sizes"][0]) is int


# -- properties ----------------------------------------------------------------------------------------
def test_trainer_property_outside_a_run() -> None:
    with pytest.raises(RuntimeError, match=r"TinySystem is not attached to a Trainer.*Trainer\.fit"):
        _ = TinySystem().trainer
    with pytest.raises(RuntimeError, match="not attached"):
        TinySystem().optimizers()


def test_device_property() -> None:
    assert TinySystem().device == torch.device("cpu")

    class Empty(fulmen.System):
        pass

    assert Empty().device == torch.device("cpu")

    class BufferOnly(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.ones(1, dtype=torch.float64))

    assert BufferOnly().device == torch.device("cpu")
    assert TinySystem().current_epoch == 0 and TinySystem().global_step == 0


class Progress(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, int]] = []
        self.sched_seen: list[Any] = []
        self.opt_seen: list[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch_idx, self.global_step))
        self.opt_seen.append(self.optimizers())
        self.sched_seen.append(self.lr_schedulers())
        assert self.trainer.training
        assert self.device == self.trainer.device
        return super().training_step(batch, batch_idx)


def test_current_epoch_and_global_step_during_a_run(tmp_path: Path) -> None:
    system = Progress()
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(system, make_loader(24, 8))
    assert system.seen == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5)]
    assert all(opt.optimizer is trainer.optimizers[0] for opt in system.opt_seen)
    assert system.sched_seen == [None] * 6
    assert system.trainer is trainer
    assert (system.current_epoch, system.global_step) == (2, 6)


def test_print_only_prints(capsys: pytest.CaptureFixture[str]) -> None:
    TinySystem().print("hello", 1)
    assert capsys.readouterr().out == "hello 1\n"


def test_default_steps() -> None:
    class Bare(fulmen.System):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    bare = Bare()
    assert torch.equal(bare.predict_step(torch.ones(2), 0), torch.full((2,), 2.0))
    with pytest.raises(NotImplementedError, match=r"Bare has no training_step"):
        bare.training_step(None, 0)
    with pytest.raises(NotImplementedError, match=r"Bare has no configure_optimizers.*torch\.optim\.Adam"):
        bare.configure_optimizers()
    assert bare.configure_callbacks() == []


def test_misspelt_hook_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"'on_train_epoch_ned'.*Did you mean 'on_train_epoch_end'"):

        class Typo(fulmen.System):
            def on_train_epoch_ned(self) -> None: ...

    class OwnHelper(fulmen.System):  # an on_* name far from every hook is fine
        def on_something_custom(self) -> None: ...

    assert OwnHelper is not None


def test_a_copy_of_the_system_leaves_the_trainer_behind(tmp_path: Path) -> None:
    import copy

    copies: list[Any] = []

    class Copying(TinySystem):
        def on_train_epoch_end(self) -> None:
            copies.append(copy.deepcopy(self))  # e.g. keeping a best-model copy during fit

    trainer = quiet_trainer(tmp_path, logger=fulmen.TensorBoardLogger(tmp_path))
    trainer.fit(Copying(), make_loader())
    assert copies and copies[0]._trainer is None
    assert torch.equal(copies[0].layer.weight, trainer.system.layer.weight)


def test_load_from_checkpoint_verifies_the_digest_unless_told_not_to(tmp_path: Path) -> None:
    from fulmen.errors import CheckpointIntegrityError

    trainer = quiet_trainer(tmp_path)
    trainer.fit(TinySystem(), make_loader())
    path = tmp_path / "edited.ckpt"
    ckpt = torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)
    ckpt["state_dict"]["layer.weight"] += 1.0  # changed after it was written; digest kept
    torch.save(ckpt, path)
    with pytest.raises(CheckpointIntegrityError):
        TinySystem.load_from_checkpoint(path)
    assert torch.equal(TinySystem.load_from_checkpoint(path, verify=False).layer.weight, ckpt["state_dict"]["layer.weight"])


def test_load_from_checkpoint_takes_weights_only_none_or_true(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path)
    trainer.fit(TinySystem(lr=0.2), make_loader())
    path = trainer.checkpoint_callback.last_model_path
    for weights_only in (None, True):
        loaded = TinySystem.load_from_checkpoint(path, weights_only=weights_only)
        assert torch.equal(loaded.layer.weight, trainer.system.layer.weight) and loaded.hparams.lr == 0.2
    with pytest.raises(ValueError, match=r"^TinySystem\.load_from_checkpoint\(weights_only=False\): .*expected None or True"):
        TinySystem.load_from_checkpoint(path, weights_only=False)
