"""configure_model: when it is called, layers built in it, and torch.compile'd submodules
(training, checkpoints without ``_orig_mod``, loading)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import make_data, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F

import fulmen
from fulmen.callbacks.checkpoint import ModelCheckpoint

# torch.compile imports torch.jit internals that warn about their own deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


class Net(fulmen.System):
    """A small MLP under ``self.net``; ``compile`` (None, "eager" or "inductor") compiles it in
    configure_model. Records the hooks it sees."""

    def __init__(self, compile: str | None = None, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.calls: list[str] = []

    def configure_model(self) -> None:
        self.calls.append("configure_model")
        if self.hparams.compile == "eager":
            self.net = torch.compile(self.net, backend="eager")  # type: ignore[assignment]
        elif self.hparams.compile == "inductor":
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", F.mse_loss(self(batch[0]), batch[1]))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.calls.append("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def trainer_for(tmp_path: Path, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    return quiet_trainer(tmp_path, **flags)


def full_mse(system: nn.Module) -> float:
    x, y = make_data(64).tensors
    with torch.no_grad():
        return float(F.mse_loss(system(x), y))


# -- when it is called ---------------------------------------------------------------------------------
def test_called_after_setup_and_before_configure_optimizers(tmp_path: Path) -> None:
    s = Net()
    trainer_for(tmp_path).fit(s, make_loader(16))
    assert s.calls == ["setup:fit", "configure_model", "configure_optimizers"]


def test_called_once_per_system(tmp_path: Path) -> None:
    s = Net()
    trainer = trainer_for(tmp_path)
    loader = make_loader(16)
    trainer.fit(s, loader)
    trainer.test(s, loader, verbose=False)
    trainer.validate(s, loader, verbose=False)
    trainer.predict(s, loader)
    trainer_for(tmp_path).fit(s, loader)  # another Trainer, the same system
    assert s.calls.count("configure_model") == 1
    other = Net()
    trainer.test(other, loader, verbose=False)  # a new system gets its own call
    assert other.calls == ["setup:test", "configure_model"]


class Lazy(Net):
    """Builds its layers in configure_model, not in __init__."""

    def __init__(self, width: int = 8) -> None:
        fulmen.System.__init__(self)
        self.save_hyperparameters()
        self.net: nn.Module | None = None  # type: ignore[assignment]
        self.calls = []

    def configure_model(self) -> None:
        self.calls.append("configure_model")
        if self.net is None:
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, self.hparams.width), nn.Tanh(), nn.Linear(self.hparams.width, 1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_layers_built_in_configure_model_train_and_take_the_precision(tmp_path: Path) -> None:
    s = Lazy()
    trainer = trainer_for(tmp_path, precision="64-true", max_epochs=3)
    trainer.fit(s, make_loader(64))
    assert s.net is not None
    # Built before the system moves to its device and dtype: converted with the rest.
    assert all(p.dtype == torch.float64 for p in s.parameters())
    assert trainer.optimizers[0].param_groups[0]["params"][0] is next(s.net.parameters())


def test_load_from_checkpoint_builds_the_layers_of_configure_model(tmp_path: Path) -> None:
    """As in Lightning (>= 2.2), load_from_checkpoint calls configure_model, so a system whose
    layers are built there can be loaded; it is not called again by a later fit."""
    s = Lazy(width=6)
    trainer_for(tmp_path, enable_checkpointing=True).fit(s, make_loader(32))
    (path,) = (tmp_path / "checkpoints").iterdir()
    loaded = Lazy.load_from_checkpoint(path)
    assert loaded.calls == ["configure_model"]
    assert loaded.net is not None and loaded.net[0].out_features == 6
    for name, value in s.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    trainer_for(tmp_path).fit(loaded, make_loader(16))
    assert loaded.calls == ["configure_model", "setup:fit"]


# -- torch.compile -------------------------------------------------------------------------------------
def test_a_compiled_submodule_trains_like_the_plain_one(tmp_path: Path) -> None:
    plain, compiled = Net(), Net(compile="eager")
    start = full_mse(plain)
    trainer_for(tmp_path, max_epochs=3).fit(plain, make_loader(64))
    trainer = trainer_for(tmp_path, max_epochs=3)
    trainer.fit(compiled, make_loader(64), make_loader(16))
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule)
    assert full_mse(compiled) < 0.5 * start
    for a, b in zip(plain.parameters(), compiled.parameters()):  # the eager backend runs the same ops
        torch.testing.assert_close(a, b)
    assert trainer.optimizers[0].param_groups[0]["params"][0] is compiled.net._orig_mod[0].weight


def test_the_checkpoint_of_a_compiled_system_has_plain_keys_and_loads_uncompiled(tmp_path: Path) -> None:
    s = Net(compile="eager")
    trainer = trainer_for(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(s, make_loader(32))
    (path,) = (tmp_path / "checkpoints").iterdir()
    ckpt = torch.load(path, weights_only=True)
    plain_keys = set(Net().state_dict())
    assert set(ckpt["state_dict"]) == plain_keys == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])

    # Into a system whose configure_model does not compile (compile=None overrides the saved value).
    loaded = Net.load_from_checkpoint(path, compile=None)
    assert not isinstance(loaded.net, torch._dynamo.eval_frame.OptimizedModule)
    x = make_data(16).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), s(x))

    # Into a plain nn.Module tree through load_state_dict, as for inference without fulmen.
    bare = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    bare.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    with torch.no_grad():
        torch.testing.assert_close(bare(x), s(x))


def test_load_from_checkpoint_into_the_compiled_system(tmp_path: Path) -> None:
    """load_from_checkpoint calls configure_model, which compiles: the plain keys of the
    checkpoint still load into the compiled submodule."""
    s = Net(compile="eager")
    trainer_for(tmp_path, enable_checkpointing=True).fit(s, make_loader(32))
    (path,) = (tmp_path / "checkpoints").iterdir()
    loaded = Net.load_from_checkpoint(path)
    assert isinstance(loaded.net, torch._dynamo.eval_frame.OptimizedModule)
    for a, b in zip(loaded.parameters(), s.parameters()):
        assert torch.equal(a, b)


def test_trainer_save_checkpoint_of_a_compiled_system(tmp_path: Path) -> None:
    s = Net(compile="eager")
    trainer = trainer_for(tmp_path)
    trainer.fit(s, make_loader(16))
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    keys = set(torch.load(tmp_path / "manual.ckpt", weights_only=True)["state_dict"])
    assert keys == set(Net().state_dict())
    assert any("_orig_mod" in k for k in s.state_dict())  # the system itself keeps torch's names


def test_the_inductor_backend_compiles_and_trains(tmp_path: Path) -> None:
    """One real compilation (default backend, C++ code generated on the CPU); kept tiny."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    s = Net(compile="inductor")
    reference = copy.deepcopy(Net())
    start = full_mse(reference)
    trainer = trainer_for(tmp_path, max_epochs=3, enable_checkpointing=True)
    trainer.fit(s, make_loader(32))  # same-size batches: one graph
    try:
        assert isinstance(s.net, torch._dynamo.eval_frame.OptimizedModule)
        assert counters["stats"]["unique_graphs"] >= 1
        assert counters["inductor"], "inductor did not run"
        assert trainer.global_step == 12
        loaded = Net.load_from_checkpoint(next((tmp_path / "checkpoints").iterdir()), compile=None)
        assert full_mse(loaded) < start
        for a, b in zip(loaded.parameters(), s.parameters()):
            assert torch.equal(a, b)
    finally:
        torch._dynamo.reset()


def test_a_checkpoint_callback_with_a_compiled_system_keeps_working_across_epochs(tmp_path: Path) -> None:
    s = Net(compile="eager")
    cb = ModelCheckpoint(dirpath=tmp_path / "ckpts")
    trainer_for(tmp_path, max_epochs=3, callbacks=[cb], enable_checkpointing=True).fit(s, make_loader(16))
    assert Path(cb.last_model_path).name == "epoch=2-step=6.ckpt"


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_entry_points_call_it_too(tmp_path: Path, stage: str) -> None:
    s = Lazy()
    trainer = trainer_for(tmp_path)
    kwargs = {} if stage == "predict" else {"verbose": False}
    getattr(trainer, stage)(s, make_loader(16), **kwargs)
    assert s.calls == [f"setup:{stage}", "configure_model"]
