"""ProgressBar, driven directly with a stand-in trainer (no Trainer needed)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from fulmen.callbacks import progress
from fulmen.callbacks.progress import ProgressBar

# The hooks take the system, but ProgressBar never uses it.
SYSTEM: Any = None


class FakeTrainer:
    """The trainer attributes ProgressBar reads; counts reads of ``progress_bar_metrics``."""

    def __init__(self, num_training_batches: float = 35, is_global_zero: bool = True) -> None:
        self.current_epoch = 3
        self.max_epochs: int | None = 10
        self.global_step = 0
        self.num_training_batches = num_training_batches
        self.num_val_batches = [4, 6]
        self.num_test_batches = [5]
        self.num_predict_batches = [2, 2]
        self.sanity_checking = False
        self.is_global_zero = is_global_zero
        self.metrics: dict[str, float] = {"loss": 0.123456, "acc": 0.95}
        self.metric_reads = 0

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        self.metric_reads += 1
        return dict(self.metrics)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_epoch(pb: ProgressBar, trainer: Any, steps: int, clock: FakeClock | None = None) -> None:
    pb.on_train_epoch_start(trainer, SYSTEM)
    for i in range(steps):
        trainer.global_step += 1
        if clock is not None:
            clock.now += 1.0
        pb.on_train_batch_end(trainer, SYSTEM, None, None, i)
    pb.on_train_epoch_end(trainer, SYSTEM)


def run_validation(pb: ProgressBar, trainer: Any, batches: int) -> None:
    pb.on_validation_start(trainer, SYSTEM)
    for i in range(batches):
        pb.on_validation_batch_end(trainer, SYSTEM, None, None, i, 0)
    trainer.metrics["val_loss"] = 0.5
    pb.on_validation_end(trainer, SYSTEM)


def test_plain_lines_every_n_steps() -> None:
    out = io.StringIO()
    trainer: Any = FakeTrainer()
    run_epoch(ProgressBar(print_every_n_steps=10, file=out), trainer, 35)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "Epoch 3/9 step 10/35",
        "Epoch 3/9 step 20/35",
        "Epoch 3/9 step 30/35",
    ]
    assert "(global step 10)" in lines[0]
    assert lines[0].endswith("loss=0.1235 acc=0.95")
    assert lines[3].startswith("Epoch 3/9 finished (global step 35): 35 batches in ")
    assert lines[3].endswith("loss=0.1235 acc=0.95")
    assert trainer.metric_reads == 4  # one per line


def test_plain_lines_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress, "monotonic", clock)
    out = io.StringIO()
    trainer: Any = FakeTrainer(num_training_batches=float("inf"))
    trainer.max_epochs = None
    # One step per simulated second, a line every 30 s: lines at steps 30, 60, 90.
    run_epoch(ProgressBar(print_every_n_seconds=30.0, file=out), trainer, 100, clock)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0] == "Epoch 3 step 30 (global step 30) 1 it/s loss=0.1235 acc=0.95"
    assert lines[2].startswith("Epoch 3 step 90 ")
    assert lines[3].startswith("Epoch 3 finished (global step 100): 100 batches in 100.00s (1 it/s)")


def test_metrics_not_read_per_step() -> None:
    trainer: Any = FakeTrainer(num_training_batches=1000)
    for out in (io.StringIO(), FakeTTY()):
        trainer.metric_reads = 0
        pb = ProgressBar(refresh_rate=3600.0, print_every_n_seconds=3600.0, file=out)
        pb.on_train_epoch_start(trainer, SYSTEM)
        for i in range(1000):
            pb.on_train_batch_end(trainer, SYSTEM, None, None, i)
        assert trainer.metric_reads == 0
        pb.on_train_epoch_end(trainer, SYSTEM)
        assert trainer.metric_reads == 1


def test_validation_line_and_no_output_during_sanity_check() -> None:
    out = io.StringIO()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(file=out)
    trainer.sanity_checking = True
    run_validation(pb, trainer, 2)
    assert out.getvalue() == ""
    trainer.sanity_checking = False
    run_validation(pb, trainer, 10)
    (line,) = out.getvalue().splitlines()
    assert line.startswith("Validation (epoch 3, global step 0): 10 batches in ")
    assert "val_loss=0.5" in line


def test_nothing_on_other_ranks() -> None:
    out = FakeTTY()
    trainer: Any = FakeTrainer(is_global_zero=False)
    pb = ProgressBar(refresh_rate=0.0, print_every_n_steps=1, file=out)
    run_epoch(pb, trainer, 5)
    run_validation(pb, trainer, 3)
    pb.teardown(trainer, SYSTEM, "fit")
    assert out.getvalue() == ""
    assert trainer.metric_reads == 0


def test_tty_bar_final_count_and_postfix() -> None:
    out = FakeTTY()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(refresh_rate=3600.0, file=out)
    run_epoch(pb, trainer, 35)
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("Epoch 3/9: 100%")
    assert "35/35" in last
    assert "loss=0.1235, acc=0.95" in last
    assert out.getvalue().endswith("\n")  # the epoch bar is left on screen


def test_tty_refreshes_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress, "monotonic", clock)
    out = FakeTTY()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(refresh_rate=10.0, file=out)
    pb.on_train_epoch_start(trainer, SYSTEM)
    for i in range(25):
        clock.now += 1.0
        pb.on_train_batch_end(trainer, SYSTEM, None, None, i)
    assert trainer.metric_reads == 2  # at 10 s and 20 s
    assert "20/35" in out.getvalue().split("\r")[-1]
    pb.on_train_epoch_end(trainer, SYSTEM)


def test_tty_eval_bars() -> None:
    out = FakeTTY()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(refresh_rate=3600.0, file=out)
    pb.on_test_start(trainer, SYSTEM)
    for i in range(5):
        pb.on_test_batch_end(trainer, SYSTEM, None, None, i, 0)
    pb.on_test_end(trainer, SYSTEM)
    assert re.search(r"Test: 100%.*5/5", out.getvalue().split("\r")[-1])
    pb.on_predict_start(trainer, SYSTEM)
    for i in range(4):
        pb.on_predict_batch_end(trainer, SYSTEM, None, None, i, 0)
    pb.on_predict_end(trainer, SYSTEM)
    assert "4/4" in out.getvalue().split("\r")[-1]


def test_exception_closes_bars() -> None:
    out = FakeTTY()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(file=out)
    pb.on_train_epoch_start(trainer, SYSTEM)
    pb.on_validation_start(trainer, SYSTEM)
    pb.on_exception(trainer, SYSTEM, RuntimeError("boom"))
    assert pb._train.bar is None and pb._eval.bar is None
    pb.teardown(trainer, SYSTEM, "fit")  # nothing left to close


def test_default_file_is_stderr_at_use_time(capsys: pytest.CaptureFixture[str]) -> None:
    pb = ProgressBar(print_every_n_steps=1)
    run_epoch(pb, FakeTrainer(), 2)
    assert "Epoch 3/9 step 2/35" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs", [{"refresh_rate": -1.0}, {"print_every_n_steps": 0}, {"print_every_n_seconds": 0.0}]
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProgressBar(**kwargs)


def test_validation_inside_epoch_and_early_stop_on_tty() -> None:
    out = FakeTTY()
    trainer: Any = FakeTrainer()
    pb = ProgressBar(refresh_rate=0.0, file=out)
    pb.on_train_epoch_start(trainer, SYSTEM)
    for i in range(20):
        pb.on_train_batch_end(trainer, SYSTEM, None, None, i)
    run_validation(pb, trainer, 10)
    # Training stops mid-epoch (max_steps): on_train_end still finishes the bar.
    pb.on_train_end(trainer, SYSTEM)
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert "20/35" in last and "val_loss=0.5" in last
    pb.on_train_end(trainer, SYSTEM)  # a second call finds nothing open
    assert out.getvalue().rstrip("\n").split("\r")[-1] == last


def test_terminal_bar_rate_counts_training_time_not_validation(tmp_path: Any) -> None:
    """With validation inside the epoch, the bar's it/s is batches over training time: each step
    sleeps 10 ms, so the rate must be below 100 it/s (a bug once showed tens of thousands)."""
    import re
    import time

    from helpers.systems import TinySystem, make_loader

    import fulmen

    class Slow(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(0.01)
            return super().training_step(batch, batch_idx)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    trainer = fulmen.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[fulmen.ProgressBar(file=out)],
    )
    trainer.fit(Slow(), make_loader(n=80), make_loader(n=80))
    rates = [float(r) for r in re.findall(r"Epoch 0/0: 100%.*?([\d.]+)it/s", out.getvalue())]
    assert rates, out.getvalue()
    assert 20 < rates[-1] < 100
