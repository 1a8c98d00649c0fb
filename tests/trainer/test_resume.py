"""Exact resume: a run killed with SIGKILL and resumed from its last checkpoint ends with weights
bitwise identical to the uninterrupted run (CPU, deterministic=True), with shuffling, dropout, a
step LR scheduler, gradient accumulation and validation inside the epoch, for several kill points
and with 0 and 2 dataloader workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.utils.data import DataLoader, Dataset

import fulmen
from fulmen.checkpoint import write_checkpoint

SCRIPT = Path(__file__).parent.parent / "helpers" / "resume_script.py"
SRC = Path(__file__).parent.parent.parent / "src"


def _run(out: Path, workers: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(workers), *args], env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, torch.Tensor]]:
    """The uninterrupted runs' final weights, for 0 and 2 workers."""
    finals = {}
    for workers in (0, 2):
        out = tmp_path_factory.mktemp(f"ref{workers}")
        done = _run(out, workers)
        assert done.returncode == 0, done.stderr[-2000:]
        finals[workers] = torch.load(out / "final.pt", weights_only=True)
    return finals


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("kill_at", "phase"), [("mid_epoch", "validation"), ("epoch_boundary", "epoch_end"), ("validation", "batch")]
)
def test_sigkill_and_resume_is_bitwise_identical(
    tmp_path: Path, reference: dict[int, dict[str, torch.Tensor]], workers: int, kill_at: str, phase: str
) -> None:
    killed = _run(tmp_path, workers, "--kill-at", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["loops"]["phase"] == phase and ckpt["global_step"] > 0  # resumed from the middle, not the start
    resumed = _run(tmp_path, workers, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for name, value in reference[workers].items():
        assert torch.equal(final[name], value), name


class CountingDataset(Dataset[Any]):
    """Counts how many items were read."""

    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 4)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        self.reads += 1
        return self.x[i], self.x[i].sum(0, keepdim=True)


def _checkpoint_at(tmp_path: Path, data: CountingDataset, batches_done: int) -> str:
    """A checkpoint written after ``batches_done`` batches of epoch 0 (position edited into a real one)."""

    class SaveAt(fulmen.Callback):
        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 2:
                trainer.save_checkpoint(tmp_path / "at.ckpt")

    trainer = quiet_trainer(tmp_path, max_steps=3, logger=False, enable_checkpointing=False, callbacks=[SaveAt()])
    trainer.fit(TinySystem(), DataLoader(data, batch_size=1, shuffle=True))
    ckpt = torch.load(tmp_path / "at.ckpt", weights_only=True)
    ckpt["loops"]["batches_done"] = batches_done
    path = str(tmp_path / f"at{batches_done}.ckpt")
    # Edited on purpose: written with a new digest (a fulmen checkpoint without one is refused).
    write_checkpoint(ckpt, path)
    return path


def test_resuming_far_into_an_epoch_reads_no_skipped_data(tmp_path: Path) -> None:
    """The sampler's position is restored directly: resuming at batch 90,000 reads only the
    remaining items and costs about what resuming at batch 10 costs."""
    data = CountingDataset(90_010)
    times, reads = {}, {}
    for done in (10, 90_000):
        path = _checkpoint_at(tmp_path, data, done)  # written at global step 3
        data.reads = 0
        trainer = quiet_trainer(tmp_path, max_steps=4, logger=False, enable_checkpointing=False)
        start = time.perf_counter()
        trainer.fit(TinySystem(), DataLoader(data, batch_size=1, shuffle=True), ckpt_path=path)
        times[done], reads[done] = time.perf_counter() - start, data.reads
        assert trainer.global_step == 4  # one batch trained after the resume
    assert reads == {10: 1, 90_000: 1}  # only the batch that was trained on
    assert times[90_000] < times[10] + 0.5, times


def test_resume_with_a_different_model_lists_the_mismatches(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinySystem(features=4), make_loader())
    path = trainer.checkpoint_callback.last_model_path

    class Wider(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)
            self.extra = torch.nn.Linear(2, 1)

    with pytest.raises(RuntimeError, match=r"(?s)does not fit Wider.*layer\.weight: checkpoint \(1, 4\), model \(2, 4\).*extra\.weight"):
        quiet_trainer(tmp_path, max_epochs=2).fit(Wider(), make_loader(), ckpt_path=path)


def test_resume_with_a_different_number_of_optimizers(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinySystem(), make_loader())

    class TwoOpts(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(ValueError, match=r"holds 1 optimizer state\(s\), but configure_optimizers returned 2"):
        quiet_trainer(tmp_path, max_epochs=2).fit(TwoOpts(), make_loader(), ckpt_path=trainer.checkpoint_callback.last_model_path)


def test_resume_with_a_different_optimizer_type(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinySystem(), make_loader())

    class TwoGroups(TinySystem):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([{"params": [self.layer.weight]}, {"params": [self.layer.bias]}], lr=0.1)

    with pytest.raises(ValueError, match=r"optimizer 0 \(SGD\) does not match the saved one"):
        quiet_trainer(tmp_path, max_epochs=2).fit(TwoGroups(), make_loader(), ckpt_path=trainer.checkpoint_callback.last_model_path)


def test_resume_from_a_weights_only_checkpoint_is_refused(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinySystem(), make_loader())
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    with pytest.raises(ValueError, match="saved with weights only"):
        quiet_trainer(tmp_path, max_epochs=2).fit(TinySystem(), make_loader(), ckpt_path=tmp_path / "weights.ckpt")


def test_missing_checkpoint_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.ckpt"):
        quiet_trainer(tmp_path).fit(TinySystem(), make_loader(), ckpt_path=tmp_path / "nothing.ckpt")
    with pytest.raises((IsADirectoryError, FileNotFoundError), match=str(tmp_path.name)):
        quiet_trainer(tmp_path).fit(TinySystem(), make_loader(), ckpt_path=tmp_path)


def test_ckpt_path_for_validate_test_predict(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trained = TinySystem()
    trainer.fit(trained, make_loader())
    path = trainer.checkpoint_callback.last_model_path
    fresh = TinySystem()
    (result,) = quiet_trainer(tmp_path).test(fresh, make_loader(), verbose=False, ckpt_path=path)
    assert torch.equal(fresh.layer.weight, trained.layer.weight)
    (expected,) = quiet_trainer(tmp_path).test(trained, make_loader(), verbose=False)
    assert result == expected
    other = TinySystem()
    preds = quiet_trainer(tmp_path).predict(other, make_loader(), ckpt_path=path)
    assert preds is not None and torch.equal(other.layer.weight, trained.layer.weight)
    assert quiet_trainer(tmp_path).validate(TinySystem(), make_loader(), verbose=False, ckpt_path=path)


@pytest.mark.parametrize("weights_only", [None, True])
def test_weights_only_none_or_true_is_accepted_by_every_entry_point(tmp_path: Path, weights_only: bool | None) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=False)
    trained = TinySystem()
    trainer.fit(trained, make_loader(), weights_only=weights_only)
    path = trainer.checkpoint_callback.last_model_path
    resumed = quiet_trainer(tmp_path, max_epochs=2, logger=False)
    resumed.fit(TinySystem(), make_loader(), ckpt_path=path, weights_only=weights_only)
    assert resumed.ckpt_path == path and resumed.current_epoch == 2 and resumed.global_step == 16
    (expected,) = quiet_trainer(tmp_path).validate(trained, make_loader(), verbose=False)
    fresh = TinySystem()
    (got,) = quiet_trainer(tmp_path).validate(fresh, make_loader(), verbose=False, ckpt_path=path, weights_only=weights_only)
    assert got == expected and torch.equal(fresh.layer.weight, trained.layer.weight)
    assert quiet_trainer(tmp_path).test(TinySystem(), make_loader(), verbose=False, ckpt_path=path, weights_only=weights_only)
    other = TinySystem()
    preds = quiet_trainer(tmp_path).predict(other, make_loader(), ckpt_path=path, weights_only=weights_only)
    assert preds is not None and torch.equal(other.layer.weight, trained.layer.weight)


def test_ckpt_path_last_continues_a_finished_epoch_count(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(TinySystem(), make_loader())
    trainer2 = quiet_trainer(tmp_path, max_epochs=3)
    trainer2.callbacks[-1] = trainer.checkpoint_callback  # the same checkpoint folder and state
    trainer2.fit(TinySystem(), make_loader(), ckpt_path="last")
    assert trainer2.current_epoch == 3 and trainer2.global_step == 24


def test_resume_mid_epoch_with_an_iterable_warns(tmp_path: Path) -> None:
    class Stream(torch.utils.data.IterableDataset[Any]):
        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(0)
            for _ in range(8):
                x = torch.randn(4, generator=g)
                yield x, x.sum(0, keepdim=True)

    class SaveAt(fulmen.Callback):
        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 2:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    quiet_trainer(tmp_path, max_epochs=1, logger=False, callbacks=[SaveAt()]).fit(TinySystem(), DataLoader(Stream(), batch_size=2))
    with pytest.warns(fulmen.FulmenWarning, match="reads and discards its first 3 batches"):
        quiet_trainer(tmp_path, max_epochs=1, logger=False).fit(
            TinySystem(), DataLoader(Stream(), batch_size=2), ckpt_path=tmp_path / "mid.ckpt"
        )


def test_last_in_a_new_trainer_finds_the_latest_run_and_continues_in_its_folder(tmp_path: Path) -> None:
    first = quiet_trainer(tmp_path, max_epochs=1)
    first.fit(TinySystem(), make_loader())
    second = quiet_trainer(tmp_path, max_epochs=2)  # nothing shared with the first Trainer
    second.fit(TinySystem(), make_loader(), ckpt_path="last")
    assert (second.current_epoch, second.global_step) == (2, 16)
    assert second.log_dir == first.log_dir  # the same run folder, not version_1


def test_last_looks_past_a_newer_run_without_checkpoints(tmp_path: Path) -> None:
    first = quiet_trainer(tmp_path, max_epochs=1)
    first.fit(TinySystem(), make_loader())
    tester = quiet_trainer(tmp_path)  # a test run since: a newer version folder, no checkpoints
    tester.test(TinySystem(), make_loader(), verbose=False)
    assert tester.log_dir != first.log_dir
    second = quiet_trainer(tmp_path, max_epochs=2)
    second.fit(TinySystem(), make_loader(), ckpt_path="last")
    assert (second.current_epoch, second.global_step) == (2, 16)
    assert second.log_dir == first.log_dir


def test_resume_with_another_optimizer_class_over_the_same_parameters(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinySystem(), make_loader())

    class AdamSame(TinySystem):
        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=0.01)

    with pytest.raises(ValueError, match=r"optimizer 0 is Adam but the checkpoint holds the state of SGD"):
        quiet_trainer(tmp_path, max_epochs=2).fit(AdamSame(), make_loader(), ckpt_path=trainer.checkpoint_callback.last_model_path)


def test_a_run_stopped_by_max_steps_continues_like_one_longer_run(tmp_path: Path) -> None:
    """max_steps=12 stops inside epoch 1 (8 batches an epoch); continuing to 20 steps from its
    checkpoint gives the weights of a single 20-step run."""

    def run(root: Path, steps: int, ckpt: Any = None) -> tuple[fulmen.Trainer, TinySystem]:
        fulmen.seed_everything(3)
        system = TinySystem()
        trainer = quiet_trainer(root, max_steps=steps, max_epochs=-1, logger=False)
        trainer.fit(system, make_loader(shuffle=True), ckpt_path=ckpt)
        return trainer, system

    _, whole = run(tmp_path / "whole", 20)
    stopped, _ = run(tmp_path / "parts", 12)
    fulmen.seed_everything(99)  # whatever the new process does first, the checkpoint decides
    continued, system = run(tmp_path / "parts", 20, stopped.checkpoint_callback.last_model_path)
    assert continued.global_step == 20
    for a, b in zip(system.parameters(), whole.parameters()):
        assert torch.equal(a, b)


class _Dropout(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.drop(x))


class _Crash(fulmen.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == self.at:
            raise KeyboardInterrupt  # stands for a kill: the process stops right here


def _in_process_resume(tmp_path: Path, loader_fn: Any, crash: tuple[int, int], **flags: Any) -> None:
    """Uninterrupted run vs crash + resume from last.ckpt in a new Trainer: equal weights."""

    def trainer_for(root: Path, extra: list[Any]) -> fulmen.Trainer:
        ckpt = fulmen.ModelCheckpoint(every_n_train_steps=2, save_last=True)
        return quiet_trainer(root, max_epochs=3, deterministic=True, callbacks=[ckpt, *extra], **flags)

    fulmen.seed_everything(5)
    whole = _Dropout()
    trainer_for(tmp_path / "whole", []).fit(whole, loader_fn(), make_loader(n=16))
    fulmen.seed_everything(5)
    with pytest.raises(KeyboardInterrupt):
        trainer_for(tmp_path / "parts", [_Crash(*crash)]).fit(_Dropout(), loader_fn(), make_loader(n=16))
    fulmen.seed_everything(123)
    resumed = _Dropout()
    trainer_for(tmp_path / "parts", []).fit(resumed, loader_fn(), make_loader(n=16), ckpt_path="last")
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    from fulmen.checkpoint.audit import verify_run

    assert verify_run(tmp_path / "parts" / "fulmen_logs" / "version_0") == []


def test_resume_from_a_save_at_the_last_batch_runs_the_epochs_validation(tmp_path: Path) -> None:
    """The step-triggered save lands on the epoch's last batch, before its validation."""
    _in_process_resume(tmp_path, lambda: make_loader(shuffle=True), crash=(1, 1))


def test_resume_with_a_loader_generator(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        return make_loader(shuffle=True, generator=torch.Generator().manual_seed(1))

    _in_process_resume(tmp_path, loader, crash=(1, 5))


def test_resume_with_validation_twice_an_epoch_verifies(tmp_path: Path) -> None:
    _in_process_resume(tmp_path, lambda: make_loader(shuffle=True), crash=(1, 7), val_check_interval=0.5)


def test_persistent_workers_with_a_logger_finish(tmp_path: Path) -> None:
    """A run record written while workers fork once hung a run: it must finish."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "from helpers.systems import TinySystem, make_loader, quiet_trainer\n"
        f"t = quiet_trainer({str(tmp_path)!r}, max_epochs=2, logger=True)\n"
        "t.fit(TinySystem(), make_loader(num_workers=2, persistent_workers=True))\n"
        "print('done')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
