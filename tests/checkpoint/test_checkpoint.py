"""Checkpoints: ModelCheckpoint files, contents, load_from_checkpoint, safe loading, atomic writes."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn

import fulmen
from fulmen.checkpoint import atomic_save, load_checkpoint
from fulmen.checkpoint import io as ckpt_io


class EpochStartFiles(fulmen.Callback):
    """The checkpoint files in the checkpoint folder at the start of each epoch."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def on_train_epoch_start(self, trainer, system) -> None:
        folder = trainer.checkpoint_callback.dirpath
        self.seen.append(sorted(f for f in os.listdir(folder) if f.endswith(".ckpt")) if os.path.isdir(folder) else [])


def fitted(tmp_path: Path, epochs: int = 3, **kwargs: Any) -> tuple[fulmen.Trainer, TinySystem]:
    system = TinySystem(lr=0.1)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, **kwargs)
    trainer.fit(system, make_loader(16, 8))  # 2 steps per epoch
    return trainer, system


# -- ModelCheckpoint -------------------------------------------------------------------------------------
def test_default_folder_name_and_only_the_newest_kept(tmp_path: Path) -> None:
    files = EpochStartFiles()
    trainer, _ = fitted(tmp_path, callbacks=[files])
    cb = trainer.checkpoint_callback
    assert isinstance(cb, fulmen.ModelCheckpoint)
    assert trainer.logger is not None
    assert cb.dirpath == os.path.join(trainer.logger.log_dir, "checkpoints")
    assert files.seen == [[], ["epoch=0-step=2.ckpt"], ["epoch=1-step=4.ckpt"]]
    assert sorted(os.listdir(cb.dirpath)) == ["epoch=2-step=6.ckpt"]
    assert cb.last_model_path == cb.best_model_path == os.path.join(cb.dirpath, "epoch=2-step=6.ckpt")


def test_every_n_epochs_and_dirpath(tmp_path: Path) -> None:
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_epochs=2)
    files = EpochStartFiles()
    fitted(tmp_path, epochs=5, callbacks=[files, cb])
    assert files.seen == [[], [], ["epoch=1-step=4.ckpt"], ["epoch=1-step=4.ckpt"], ["epoch=3-step=8.ckpt"]]
    # A dirpath outside the run folder keeps its own audit log.
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["checkpoints.jsonl", "epoch=3-step=8.ckpt"]
    assert not os.path.exists(os.path.join(str(tmp_path), "fulmen_logs", "version_0", "checkpoints"))


def test_without_a_logger_checkpoints_go_under_default_root_dir(tmp_path: Path) -> None:
    trainer, _ = fitted(tmp_path, epochs=1, logger=False)
    assert os.listdir(tmp_path / "checkpoints") == ["epoch=0-step=2.ckpt"]
    assert trainer.checkpoint_callback.last_model_path == str(tmp_path / "checkpoints" / "epoch=0-step=2.ckpt")


@pytest.mark.parametrize("n", [-1, 1.5, True, "2"])
def test_every_n_epochs_must_be_none_or_an_int_at_least_zero(n: Any) -> None:
    # 0 (off) and None (the default) are valid, as in Lightning.
    with pytest.raises(ValueError, match=r"every_n_epochs=.*None or an int >= 0"):
        fulmen.ModelCheckpoint(every_n_epochs=n)


def test_malformed_filename_template_fails_early() -> None:
    # Metric fields such as {val_loss} are allowed now; a template Python cannot parse is not.
    fulmen.ModelCheckpoint(filename="{epoch}-{val_loss}")
    with pytest.raises(ValueError, match=r"filename='\{epoch-\{step\}'.*not a valid name template"):
        fulmen.ModelCheckpoint(filename="{epoch-{step}")


def test_checkpoint_contents(tmp_path: Path) -> None:
    trainer, system = fitted(tmp_path)
    path = trainer.checkpoint_callback.last_model_path
    ckpt = torch.load(path, weights_only=True)
    for key in (
        "state_dict",
        "optimizer_states",
        "hyper_parameters",
        "epoch",
        "global_step",
        "fulmen_version",
        "torch_version",
        "callbacks",
    ):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 6
    assert ckpt["fulmen_version"] == fulmen.__version__
    assert ckpt["torch_version"] == str(torch.__version__)
    assert ckpt["hyper_parameters"] == {"features": 4, "lr": 0.1}
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    assert set(ckpt["state_dict"]) == {"layer.weight", "layer.bias"}
    assert torch.equal(ckpt["state_dict"]["layer.weight"], system.layer.weight)
    cb = trainer.checkpoint_callback
    assert ckpt["callbacks"][cb.state_key]["dirpath"] == cb.dirpath  # the key names monitor, mode and triggers


# -- load_from_checkpoint ------------------------------------------------------------------------------------
def test_load_from_checkpoint_rebuilds_the_system(tmp_path: Path) -> None:
    trainer, system = fitted(tmp_path)
    path = trainer.checkpoint_callback.last_model_path
    loaded = TinySystem.load_from_checkpoint(path)
    assert isinstance(loaded, TinySystem)
    assert loaded.hparams == system.hparams
    assert not loaded.training
    for (name, a), (_, b) in zip(system.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.device == torch.device("cpu")

    override = TinySystem.load_from_checkpoint(Path(path), map_location="cpu", lr=0.5)
    assert override.hparams.lr == 0.5 and override.hparams.features == 4
    assert torch.equal(override.layer.weight, system.layer.weight)


class NeedsArg(fulmen.System):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 1)


def test_missing_required_argument_says_to_save_hyperparameters(tmp_path: Path) -> None:
    system = NeedsArg(3)
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": {}}, tmp_path / "n.ckpt")
    with pytest.raises(TypeError, match=r"NeedsArg\.load_from_checkpoint.*width.*save_hyperparameters\(\)"):
        NeedsArg.load_from_checkpoint(tmp_path / "n.ckpt")
    loaded = NeedsArg.load_from_checkpoint(tmp_path / "n.ckpt", width=3)
    assert torch.equal(loaded.layer.weight, system.layer.weight)


class Base(fulmen.System):
    def __init__(self, width: int, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)


class Wide(Base):
    def __init__(self, size: int) -> None:  # does not take the base's arguments
        super().__init__(size * 2, lr=0.3)


def test_load_subclass_that_does_not_take_base_arguments(tmp_path: Path) -> None:
    system = Wide(2)
    assert system.hparams == {"size": 2, "width": 4, "lr": 0.3}
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams)}, tmp_path / "w.ckpt")
    loaded = Wide.load_from_checkpoint(tmp_path / "w.ckpt")
    assert loaded.layer.in_features == 4
    assert torch.equal(loaded.layer.weight, system.layer.weight)


def test_strict_false_tolerates_missing_keys(tmp_path: Path) -> None:
    system = TinySystem()
    state = {"layer.weight": system.layer.weight.detach().clone()}
    torch.save({"state_dict": state, "hyper_parameters": dict(system.hparams)}, tmp_path / "p.ckpt")
    with pytest.raises(RuntimeError, match=r"layer\.bias"):
        TinySystem.load_from_checkpoint(tmp_path / "p.ckpt")
    loaded = TinySystem.load_from_checkpoint(tmp_path / "p.ckpt", strict=False)
    assert torch.equal(loaded.layer.weight, system.layer.weight)


# -- trainer.save_checkpoint and the hooks -------------------------------------------------------------------------
class Hooked(TinySystem):
    loaded: list[Any] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["extra"] = {"note": "hi", "n": self.global_step}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        Hooked.loaded.append(checkpoint.get("extra"))


class CallbackSaver(fulmen.Callback):
    def on_save_checkpoint(self, trainer, system, checkpoint) -> None:
        checkpoint["from_callback"] = trainer.global_step


def test_save_checkpoint_and_hooks(tmp_path: Path) -> None:
    Hooked.loaded = []
    system = Hooked()
    trainer = quiet_trainer(tmp_path, callbacks=[CallbackSaver()], enable_checkpointing=False)
    trainer.fit(system, make_loader(16, 8))
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    trainer.save_checkpoint(tmp_path / "small.ckpt", weights_only=True)

    full = torch.load(tmp_path / "full.ckpt", weights_only=True)
    assert full["extra"] == {"note": "hi", "n": 2}
    assert full["from_callback"] == 2
    small = torch.load(tmp_path / "small.ckpt", weights_only=True)
    assert small["extra"] == {"note": "hi", "n": 2}
    assert "optimizer_states" not in small and "callbacks" not in small

    Hooked.load_from_checkpoint(tmp_path / "full.ckpt")
    assert Hooked.loaded == [{"note": "hi", "n": 2}]


def test_save_checkpoint_needs_a_system(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"save_checkpoint\(\) needs a system"):
        quiet_trainer(tmp_path).save_checkpoint(tmp_path / "x.ckpt")


# -- files that are not good checkpoints --------------------------------------------------------------------------
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": TinySystem().state_dict(), "hyper_parameters": {}}, path)
    return path


def test_truncated_file(tmp_path: Path) -> None:
    data = good_file(tmp_path).read_bytes()
    for cut in (len(data) // 2, 10, 0):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(data[:cut])
        with pytest.raises(RuntimeError, match=r"Refused to load .*cut.*(damaged PyTorch checkpoint|empty)"):
            load_checkpoint(bad)
        with pytest.raises(RuntimeError, match=r"damaged|empty"):
            TinySystem.load_from_checkpoint(bad)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(RuntimeError, match=r"notes\.txt.*not a PyTorch checkpoint"):
        load_checkpoint(text)
    zipped = tmp_path / "archive.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(RuntimeError, match=r"archive\.zip.*not a PyTorch checkpoint"):
        load_checkpoint(zipped)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80\x02" + bytes(range(256)))
    with pytest.raises(RuntimeError, match=r"garbage\.ckpt.*not a PyTorch checkpoint"):
        load_checkpoint(garbage)
    a_list = tmp_path / "list.pt"
    torch.save([torch.ones(1)], a_list)
    with pytest.raises(ValueError, match=r"not a fulmen checkpoint.*'state_dict'.*got list"):
        load_checkpoint(a_list)
    weights = tmp_path / "weights.pt"
    torch.save(TinySystem().state_dict(), weights)  # a bare state dict
    with pytest.raises(ValueError, match=r"not a fulmen checkpoint.*keys \['layer\.bias', 'layer\.weight'\]"):
        TinySystem.load_from_checkpoint(weights)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at .*nope\.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        TinySystem.load_from_checkpoint(tmp_path)


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path, via_system: bool) -> None:
        self.marker = str(marker)
        self.via_system = via_system

    def __reduce__(self) -> Any:
        if self.via_system:
            return (os.system, (f"touch '{self.marker}'",))
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.ckpt"  # a plain pickle, as an attacker would write it
    with open(raw, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Payload(marker, via_system=True)}, f, protocol=2)
    zipped = tmp_path / "zipped.ckpt"  # torch's own format, with the payload inside
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker, via_system=False)}}, zipped)

    for path in (raw, zipped):
        with pytest.raises(pickle.UnpicklingError, match=r"Refused to load .*run code"):
            load_checkpoint(path)
        with pytest.raises(pickle.UnpicklingError, match="Refused"):
            TinySystem.load_from_checkpoint(path)
        assert not marker.exists()

    # The payload is live: an unsafe load would have run it.
    with open(raw, "rb") as f:
        pickle.load(f)
    assert marker.exists()


# -- atomic writes ---------------------------------------------------------------------------------------------
def test_atomic_save_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.ckpt"
    assert atomic_save({"state_dict": {"w": torch.ones(2)}}, target) == str(target)
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]
    atomic_save({"state_dict": {"w": torch.zeros(2)}}, target)  # replacing
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]
    assert torch.equal(load_checkpoint(target)["state_dict"]["w"], torch.zeros(2))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["a.ckpt"]
    assert target.read_bytes() == before
    assert torch.equal(load_checkpoint(target)["state_dict"]["w"], torch.ones(3))


def test_failed_checkpoint_during_fit_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj: Any, f: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise KeyboardInterrupt  # the job is killed while writing the second checkpoint
        real_save(obj, f)

    monkeypatch.setattr(ckpt_io.torch, "save", flaky_save)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(TinySystem(), make_loader(16, 8))
    folder = trainer.checkpoint_callback.dirpath
    assert sorted(os.listdir(folder)) == ["epoch=0-step=2.ckpt"]
    assert load_checkpoint(os.path.join(folder, "epoch=0-step=2.ckpt"))["global_step"] == 2


@pytest.mark.gpu  # runs with `pytest -m gpu` on a GPU machine
def test_cuda_checkpoints_load_on_cpu_and_back(tmp_path: Path) -> None:
    system = TinySystem()
    trainer = quiet_trainer(tmp_path, accelerator="cuda")
    trainer.fit(system, make_loader(16, 8))
    path = trainer.checkpoint_callback.last_model_path
    on_cpu = TinySystem.load_from_checkpoint(path)
    assert on_cpu.device == torch.device("cpu")
    assert torch.equal(on_cpu.layer.weight, system.layer.weight.cpu())
    on_gpu = TinySystem.load_from_checkpoint(path, map_location="cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.layer.weight, system.layer.weight)


def test_numpy_learning_rate_in_scheduler_state_still_loads(tmp_path: Path) -> None:
    """A learning rate from a NumPy sweep ends up in scheduler state as a NumPy scalar; the
    checkpoint stores Python numbers so weights_only loading accepts it."""
    import numpy as np

    class NumpyLR(TinySystem):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=np.logspace(-3, -1, 3)[1])
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1)}

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(NumpyLR(), make_loader())
    path = trainer.checkpoint_callback.last_model_path
    ckpt = torch.load(path, weights_only=True)
    assert isinstance(ckpt["lr_schedulers"][0]["base_lrs"][0], float)
    assert NumpyLR.load_from_checkpoint(path) is not None
