"""``Trainer(profiler=...)``: what each profiler records and writes, and that it changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader

import fulmen
from fulmen.errors import FlagError
from fulmen.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler


class WithHook(TinySystem):
    def on_train_epoch_end(self) -> None:
        pass


class Counting(fulmen.Callback):
    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass


def fit(tmp_path: Path, profiler: Any, **flags: Any) -> fulmen.Trainer:
    trainer = fulmen.Trainer(
        max_epochs=2,
        profiler=profiler,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Counting()],
        **flags,
    )
    trainer.fit(WithHook(), make_loader(n=64, batch_size=8), make_loader(n=32, batch_size=8))
    return trainer


def test_simple_profiler_counts_every_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiler = SimpleProfiler()
    trainer = fit(tmp_path, profiler)
    out = capsys.readouterr().out
    report = (Path(trainer.log_dir) / "profile-fit.txt").read_text()
    assert report.strip() in out  # printed and written into the run folder
    # 2 epochs x 8 batches; sanity check 2 + 2 epochs x 4 validation batches
    for action, calls in [
        ("training_step", 16),
        ("backward", 16),
        ("optimizer_step", 16),
        ("optimizer_zero_grad", 16),
        ("train_dataloader_next", 16),
        ("validation_step", 10),
        ("[Callback]Counting.on_train_batch_end", 16),
        ("[System]on_train_epoch_end", 2),
        ("[Callback]ModelCheckpoint.on_validation_end", 3),  # the sanity check's too
    ]:
        line = next(ln for ln in report.splitlines() if ln.split("   ")[0].strip() == action)
        assert line.split()[-4] == str(calls), line
    assert "Action" in report and "Mean (ms)" in report and "Share" in report


def test_simple_profiler_does_not_change_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = WithHook()
    state = {k: v.clone() for k, v in a.state_dict().items()}
    torch.manual_seed(1)
    fulmen.Trainer(max_epochs=2, profiler="simple", logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(
        a, make_loader(shuffle=True)
    )
    b = WithHook()
    b.load_state_dict(state)
    torch.manual_seed(1)
    fulmen.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(b, make_loader(shuffle=True))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_each_stage_gets_its_report(tmp_path: Path) -> None:
    trainer = fit(tmp_path, "simple")
    trainer.validate(trainer.system, make_loader(n=16, batch_size=8), verbose=False)
    trainer.test(trainer.system, make_loader(n=16, batch_size=8), verbose=False)
    run = Path(trainer.log_dir)
    assert "validation_step" in (run / "profile-validate.txt").read_text()
    assert "test_step" in (run / "profile-test.txt").read_text()
    assert "training_step" not in (run / "profile-test.txt").read_text()  # each stage starts afresh


def test_advanced_profiler_shows_the_functions_inside_each_action(tmp_path: Path) -> None:
    trainer = fit(tmp_path, AdvancedProfiler(line_count=30))
    report = (Path(trainer.log_dir) / "profile-fit.txt").read_text()
    section = report.split("== training_step")[1].split("\n== ")[0]
    assert "mse_loss" in section and "systems.py" in section
    assert "== optimizer_step" in report and "== [Callback]Counting.on_train_batch_end" in report


def test_pytorch_profiler_writes_a_chrome_trace(tmp_path: Path) -> None:
    trainer = fit(tmp_path, PyTorchProfiler(wait=1, warmup=1, active=2))
    traces = list((Path(trainer.log_dir) / "profiler").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"training_step", "backward", "optimizer_step"} <= names
    assert "torch.profiler" in (Path(trainer.log_dir) / "profile-fit.txt").read_text()


def test_no_profiler_leaves_the_hooks_as_they_are(tmp_path: Path) -> None:
    from functools import partial

    trainer = fit(tmp_path, None)
    assert trainer._hooks is not None
    (fn,) = trainer._hooks.on_train_batch_end
    assert isinstance(fn, partial) and fn.func.__name__ == "on_train_batch_end"
    assert not (Path(trainer.log_dir) / "profile-fit.txt").exists()


def test_a_hook_error_under_the_profiler_still_names_the_hook(tmp_path: Path) -> None:
    class Broken(fulmen.Callback):
        def on_train_start(self, trainer: Any, system: Any) -> None:
            raise ValueError("broken on purpose")

    trainer = fulmen.Trainer(max_epochs=1, profiler="simple", logger=False, enable_progress_bar=False, callbacks=[Broken()])
    with pytest.raises(ValueError, match="broken on purpose") as err:
        trainer.fit(TinySystem(), make_loader())
    assert any("Broken.on_train_start" in note for note in getattr(err.value, "__notes__", []))


def test_unknown_profiler_is_refused() -> None:
    with pytest.raises(FlagError, match=r"Trainer\(profiler='fancy'\): expected None, 'simple', 'advanced', 'pytorch'"):
        fulmen.Trainer(profiler="fancy")
