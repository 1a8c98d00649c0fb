"""Asynchronous checkpoints (``Trainer(plugins=[AsyncCheckpointIO()])``): training goes on while the
file is written, and every guarantee of a synchronous save holds (``fulmen.checkpoint.background``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn

import fulmen
from fulmen.checkpoint import AsyncCheckpointIO, CheckpointIO, load_checkpoint, read_log, verify_run
from fulmen.errors import FlagError

HELPERS = Path(__file__).parent.parent / "helpers"
SRC = Path(__file__).parent.parent.parent / "src"


class Wide(TinySystem):
    """TinySystem with a 1 MiB parameter that trains too, so snapshots are pooled buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Parameter(torch.zeros(512, 512))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) + self.wide.square().mean() + self.wide.mean()


def weights(system: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in system.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Gate:
    """Holds the background writes until released: ``fulmen.checkpoint.io.write_checkpoint``
    (what the writer thread calls) waits for ``open`` first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import fulmen.checkpoint.io as io

        self.open = threading.Event()
        self.started = threading.Event()
        real = io.write_checkpoint

        def gated(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == "fulmen-checkpoint-writer":
                self.started.set()
                assert self.open.wait(30), "the gate was never opened"
            return real(*args, **kwargs)

        monkeypatch.setattr(io, "write_checkpoint", gated)


class AtStep(fulmen.Callback):
    """Calls ``fn(trainer, system)`` at the end of each training batch."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.fn(trainer, system)


# -- the flag ----------------------------------------------------------------------------------------
def test_plugins_flag_takes_the_checkpoint_io(tmp_path: Path) -> None:
    assert type(quiet_trainer(tmp_path).strategy.checkpoint_io) is CheckpointIO
    assert isinstance(quiet_trainer(tmp_path, plugins=[AsyncCheckpointIO()]).strategy.checkpoint_io, AsyncCheckpointIO)
    assert type(quiet_trainer(tmp_path, plugins=[]).strategy.checkpoint_io) is CheckpointIO
    mine = AsyncCheckpointIO(warn_after=5)
    assert quiet_trainer(tmp_path, plugins=mine).strategy.checkpoint_io is mine
    assert isinstance(fulmen.AsyncCheckpointIO(), CheckpointIO)
    with pytest.raises(FlagError, match=r"fulmen takes one kind of plugin, fulmen.AsyncCheckpointIO\(\)"):
        quiet_trainer(tmp_path, plugins=["bf16"])
    with pytest.raises(FlagError, match=r"got the class, not an instance; write plugins=\[AsyncCheckpointIO\(\)\]"):
        quiet_trainer(tmp_path, plugins=[AsyncCheckpointIO])


# -- exact resume ------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:AsyncCheckpointIO:fulmen.errors.FulmenWarning")  # (saves every 3 tiny steps)
def test_resume_from_an_asynchronous_checkpoint_is_exact(tmp_path: Path) -> None:
    fulmen.seed_everything(3)
    full = Wide()
    start = weights(full)
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=3, save_top_k=-1, save_last=True)
    trainer = quiet_trainer(tmp_path / "a", max_epochs=3, plugins=[AsyncCheckpointIO()], callbacks=[cb])
    trainer.fit(full, make_loader(shuffle=True))
    assert trainer.global_step == 24
    names = sorted(os.listdir(tmp_path / "a"))
    assert "epoch=1-step=12.ckpt" in names and "last.ckpt" in names
    assert load_checkpoint(tmp_path / "a" / "last.ckpt")["global_step"] == 24
    assert verify_run(tmp_path / "a" / "fulmen_logs" / "version_0") == []  # every file matches its log line
    # A second run resumes from step 12 (written in the background) and ends where the first did.
    resumed = Wide()
    resumed.load_state_dict(start)
    again = quiet_trainer(tmp_path / "b", max_epochs=3, plugins=[AsyncCheckpointIO()], logger=False, enable_checkpointing=False)
    again.fit(resumed, make_loader(shuffle=True), ckpt_path=tmp_path / "a" / "epoch=1-step=12.ckpt")
    assert again.global_step == 24
    assert same(weights(resumed), weights(full))


# -- the snapshot ------------------------------------------------------------------------------------
def test_the_file_holds_the_weights_of_the_save_point_not_later_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    path = tmp_path / "at-step-2.ckpt"
    seen: dict[str, Any] = {}

    def at(trainer: Any, system: Any) -> None:
        step = trainer.global_step
        if step == 2:
            trainer.save_checkpoint(path)
            seen["saved"] = weights(system)
        elif step == 5:  # three optimizer steps changed the weights in place; the write had not begun
            seen["exists"] = path.exists()
            gate.open.set()

    system = Wide()
    trainer = quiet_trainer(tmp_path, max_steps=6, plugins=[AsyncCheckpointIO()], logger=False, enable_checkpointing=False, callbacks=[AtStep(at)])
    trainer.fit(system, make_loader())
    assert seen["exists"] is False
    written = load_checkpoint(path)["state_dict"]
    assert same(written, seen["saved"])
    assert not same(written, weights(system))  # the weights moved on after the save point


def test_a_save_while_one_is_writing_waits_and_keeps_one_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    io = AsyncCheckpointIO(warn_after=1)
    threading.Timer(0.5, gate.open.set).start()  # the first write is held for half a second

    def at(trainer: Any, system: Any) -> None:
        if trainer.global_step in (1, 2):
            trainer.save_checkpoint(tmp_path / f"step-{trainer.global_step}.ckpt")

    system = Wide()
    trainer = quiet_trainer(tmp_path, max_steps=3, plugins=[io], logger=False, enable_checkpointing=False, callbacks=[AtStep(at)])
    with pytest.warns(fulmen.FulmenWarning, match=r"each waited for the previous write to finish: a write takes"):
        trainer.fit(system, make_loader())
    first, second = io.blocked
    assert first < 0.4 and second >= 0.3  # the first returned at once; the second waited for its buffers
    snapshot = sum(t.numel() * t.element_size() for t in system.state_dict().values())
    assert snapshot - (1 << 16) <= io.peak_pooled_bytes < 2 * snapshot  # one snapshot's buffers, reused (small: cloned)
    assert io.pooled_bytes == 0  # freed when the fit ended
    assert load_checkpoint(tmp_path / "step-1.ckpt")["global_step"] == 1
    assert load_checkpoint(tmp_path / "step-2.ckpt")["global_step"] == 2


def test_two_checkpoint_callbacks_at_one_step_share_one_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    io = AsyncCheckpointIO()
    threading.Timer(0.6, gate.open.set).start()
    a = fulmen.ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=4, save_top_k=-1)
    b = fulmen.ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    system = Wide()
    trainer = quiet_trainer(tmp_path, max_steps=4, plugins=[io], callbacks=[a, b])
    trainer.fit(system, make_loader())
    assert len(io.blocked) == 2 and max(io.blocked) < 0.3  # the second save did not wait for the first write
    snapshot = sum(t.numel() * t.element_size() for t in system.state_dict().values())
    assert io.peak_pooled_bytes < snapshot + (1 << 20)  # the weights were copied once (plus the optimizer's state)
    one, two = load_checkpoint(tmp_path / "a" / "epoch=0-step=4.ckpt"), load_checkpoint(tmp_path / "b" / "step=4.ckpt")
    assert same(one["state_dict"], two["state_dict"]) and same(one["state_dict"], weights(system))
    assert len(read_log(tmp_path / "a")) == len(read_log(tmp_path / "b")) == 1  # each file has its audit line


# -- failures ----------------------------------------------------------------------------------------
def test_a_failed_background_write_is_raised_at_the_next_step_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fulmen.checkpoint.io as io

    real = io.write_checkpoint
    calls = []

    def failing(ckpt: Any, path: Any, **kwargs: Any) -> Any:
        calls.append(os.path.basename(path))
        if len(calls) == 3:
            raise OSError(5, "Input/output error (a disk failing)")
        return real(ckpt, path, **kwargs)

    monkeypatch.setattr(io, "write_checkpoint", failing)
    raised_at: list[int] = []

    class Where(fulmen.Callback):
        def on_exception(self, trainer: Any, system: Any, exception: BaseException) -> None:
            raised_at.append(trainer.global_step)

    cb = fulmen.ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_top_k=1, monitor="train_loss")
    trainer = quiet_trainer(tmp_path, max_epochs=50, plugins=[AsyncCheckpointIO()], callbacks=[cb, Where()])
    with pytest.raises(OSError, match="Input/output error") as info:
        trainer.fit(TinySystem(), make_loader())
    assert 6 < raised_at[0] < 400  # after the failing save at step 6, long before the run's end
    assert "fulmen-checkpoint-writer" not in threading.current_thread().name
    assert info.value.__traceback__ is not None
    kept = sorted(n for n in os.listdir(tmp_path / "c") if n != "checkpoints.jsonl")
    assert kept and all(n.endswith(".ckpt") and not n.startswith(".") for n in kept)  # no partial file
    for name in kept:  # what is there is whole: nothing was deleted for a file that was never written
        load_checkpoint(tmp_path / "c" / name)


def test_fit_returns_only_after_the_last_write_is_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    threading.Timer(0.4, gate.open.set).start()
    cb = fulmen.ModelCheckpoint(dirpath=tmp_path / "c", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, plugins=[AsyncCheckpointIO()], callbacks=[cb])
    trainer.fit(TinySystem(), make_loader())
    assert gate.started.is_set()
    assert (tmp_path / "c" / "last.ckpt").is_file() and cb.best_model_path.endswith("epoch=0-step=8.ckpt")
    assert [e["step"] for e in read_log(tmp_path / "c")] == [8]
    assert trainer.strategy.checkpoint_io.pending == 0  # type: ignore[attr-defined]


def test_killed_during_a_background_write_keeps_the_previous_checkpoint_and_resumes_exactly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(HELPERS / "kill_async_write.py"), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr[-3000:]
    folder = tmp_path / "ckpts"
    assert [n for n in os.listdir(folder) if n.startswith(".epoch=1")]  # it died in the middle of that write
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 8  # last.ckpt was not moved to the unfinished file
    assert [e["step"] for e in read_log(folder)] == [8] and verify_run(folder) == []
    # A new process resumes from "last" and ends where an uninterrupted run ends, bit for bit.
    from helpers.kill_async_write import trainer_for

    fulmen.seed_everything(0)
    resumed = TinySystem()
    trainer_for(tmp_path).fit(resumed, make_loader(shuffle=True), ckpt_path="last")
    fulmen.seed_everything(0)
    straight = TinySystem()
    quiet_trainer(tmp_path / "ref", max_epochs=3, logger=False, enable_checkpointing=False).fit(
        straight, make_loader(shuffle=True)
    )
    assert same(weights(resumed), weights(straight))


def test_lightning_spelling_plugins_async_checkpoint_io(tmp_path: Path) -> None:
    import fulmen.lightning as L
    from fulmen.lightning.pytorch.plugins.io import AsyncCheckpointIO as LightningAsync

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=2, plugins=[LightningAsync()], enable_progress_bar=False, logger=False
    )
    assert isinstance(trainer.strategy.checkpoint_io, AsyncCheckpointIO)
    trainer.fit(TinySystem(), make_loader())
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["epoch=1-step=16.ckpt"]  # Lightning's file, and only it (the audit log is kept elsewhere)
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch=1-step=16.ckpt")["global_step"] == 16
    with pytest.raises(ValueError, match=r"cannot wrap another CheckpointIO"):
        LightningAsync(checkpoint_io=CheckpointIO())


def test_save_checkpoint_after_fit_is_on_disk_when_it_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    trainer = quiet_trainer(tmp_path, plugins=[AsyncCheckpointIO()], logger=False, enable_checkpointing=False)
    trainer.fit(TinySystem(), make_loader())
    threading.Timer(0.3, gate.open.set).start()  # the write is held a while
    trainer.save_checkpoint(tmp_path / "after.ckpt")  # no run is going on: nothing would wait for it later
    assert gate.started.is_set() and load_checkpoint(tmp_path / "after.ckpt")["global_step"] == 8
