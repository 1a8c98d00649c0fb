"""Logs that survive a kill, and read as one run after a resume (issue 13, item 2).

A real training process (``tests/helpers/logs_script.py``) is stopped at a chosen point, known
from a marker file it writes, by a real signal; the run is then resumed with
``fit(ckpt_path="last")`` and its ``metrics.csv`` must be the file of the uninterrupted run (same
deterministic run, ``deterministic=True``), byte for byte: same rows, same values, same columns.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import logs_script

SCRIPT = Path(logs_script.__file__)
METRICS = os.path.join("logs", "version_0", "metrics.csv")


@pytest.fixture(autouse=True)
def _deterministic_algorithms_restored():
    """The in-process runs use ``Trainer(deterministic=True)``, which sets a torch-wide switch."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (CSV and TensorBoard), written once for the module."""
    out = tmp_path_factory.mktemp("uninterrupted")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FULMEN_AUDIT_HOME", str(out / "audit_home"))
        trainer, system, train, val = logs_script.build(str(out), loggers="csv,tb")
        trainer.fit(system, train, val)
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.set_num_threads(threads)
    return out


def _start(out: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPT.parent), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _stopped(proc: subprocess.Popen[bytes], out: Path, timeout: float = 120) -> int:
    """Wait for the run to reach its stop point (its marker file); the global step there."""
    marker = out / "stopped"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before its stop point:\n{proc.stdout.read().decode()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run did not reach its stop point in time")
        time.sleep(0.02)
    return int(marker.read_text())


def _kill(proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def _rows(text: str) -> list[dict[str, str]]:
    """The rows of a metrics.csv, each without its empty cells (so rows compare across headers)."""
    return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(io.StringIO(text))]


def _resume(out: Path, ckpt: str, loggers: str = "csv") -> None:
    trainer, system, train, val = logs_script.build(str(out), loggers=loggers, ckpt=ckpt)
    trainer.fit(system, train, val, ckpt_path="last")


def _last_checkpoint(out: Path) -> dict[str, Any]:
    return torch.load(out / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def _check_killed_csv(out: Path, reference: Path, written_after: bool) -> None:
    """The loggers are flushed before a checkpoint is written: the rows then on disk (recorded in
    it) are the uninterrupted run's first rows, every row before the checkpoint's step among them;
    the rows due but not yet sent are in the checkpoint, and are the next ones."""
    expected = _rows((reference / METRICS).read_text())
    saved = _last_checkpoint(out)
    assert (out / METRICS).is_file()
    killed = _rows((out / METRICS).read_text())
    at_save = saved["logs"]["positions"][0]["position"]["rows"]
    assert killed[:at_save] == expected[:at_save]
    assert all(int(r["step"]) >= saved["global_step"] - 1 for r in expected[at_save:])
    carried = [
        {"epoch": str(saved["epoch"]), "step": str(r["step"]), **{k: repr(v) for k, v in r["metrics"].items()}}
        for r in saved["logs"]["pending"]
    ]
    assert expected[at_save : at_save + len(carried)] == carried
    if written_after:
        assert len(killed) > at_save  # rows written after the checkpoint, which the resume drops
    else:
        assert len(killed) == at_save and [r["step"] for r in carried] == ["9"]


@pytest.mark.parametrize(
    ("stop", "ckpt", "flush"),
    [
        # right after ModelCheckpoint(every_n_train_steps=5) wrote step 10, before that batch's row (step 9)
        # is sent; the CSV logger's own flush (every 100 rows) has not written anything yet
        ("after_save@10:block", "steps", False),
        # after the checkpoint written by the epoch-end validation, and the epoch's own row (its
        # on_epoch=True means, its on_train_epoch_end value) written after it
        ("epoch_start@1:block", "validation", True),
    ],
    ids=["right-after-a-step-checkpoint", "after-the-epoch-end"],
)
def test_sigkill_then_resume_writes_the_uninterrupted_metrics_csv(
    tmp_path: Path, reference: Path, stop: str, ckpt: str, flush: bool
) -> None:
    proc = _start(tmp_path, "--stop", stop, "--ckpt", ckpt, *(["--flush"] if flush else []))
    _stopped(proc, tmp_path)
    assert _kill(proc, signal.SIGKILL) == -signal.SIGKILL
    _check_killed_csv(tmp_path, reference, written_after=flush)

    _resume(tmp_path, ckpt)
    assert (tmp_path / METRICS).read_text() == (reference / METRICS).read_text()


def test_interrupted_by_an_exception_then_resumed_has_no_duplicate_rows(tmp_path: Path, reference: Path) -> None:
    # Ctrl-C as a script sees it: KeyboardInterrupt out of a callback two steps after a checkpoint.
    # The loggers are finalized (every row written, also those after the checkpoint).
    trainer, system, train, val = logs_script.build(str(tmp_path), "batch_start@17:raise", ckpt="steps")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(system, train, val)
    steps_written = [int(r["step"]) for r in _rows((tmp_path / METRICS).read_text())]
    assert max(steps_written) == 15 > _last_checkpoint(tmp_path)["global_step"] - 1

    _resume(tmp_path, "steps")
    text = (tmp_path / METRICS).read_text()
    rows = _rows(text)
    assert len({tuple(sorted(r.items())) for r in rows}) == len(rows)
    assert text == (reference / METRICS).read_text()


def test_sigkill_after_steps_then_resume_csv_and_tensorboard_read_as_one_run(tmp_path: Path, reference: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 2 steps after the checkpoint of step 15, with a row (and a new column, "late") logged and
    # written since, which the resumed run logs again.
    proc = _start(tmp_path, "--stop", "batch_start@17:block", "--loggers", "csv,tb", "--flush")
    _stopped(proc, tmp_path)
    assert _kill(proc, signal.SIGKILL) == -signal.SIGKILL
    _check_killed_csv(tmp_path, reference, written_after=True)
    events = str(tmp_path / "logs" / "version_0")
    killed = EventAccumulator(events)
    killed.Reload()
    assert 15 in [e.step for e in killed.Scalars("late")]  # past the checkpoint: hidden after the resume

    _resume(tmp_path, "steps", loggers="csv,tb")
    assert (tmp_path / METRICS).read_text() == (reference / METRICS).read_text()
    resumed = EventAccumulator(events)
    resumed.Reload()
    uninterrupted = EventAccumulator(str(reference / "logs" / "version_0"))
    uninterrupted.Reload()
    for tag in ("train_loss", "train_mae_step", "sometimes", "late", "val_loss", "train_mae_epoch", "epoch_marker"):
        got = [(e.step, e.value) for e in resumed.Scalars(tag)]
        assert [s for s, _ in got] == sorted({s for s, _ in got}), tag  # each step once, in order
        assert got == [(e.step, e.value) for e in uninterrupted.Scalars(tag)], tag


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_then_resume_writes_the_uninterrupted_metrics_csv(tmp_path: Path, reference: Path, sig: int) -> None:
    # The signal comes while the run goes on past step 17 (each batch then takes 0.2 s): fulmen
    # stops at the next batch boundary with a checkpoint and finalized loggers.
    proc = _start(tmp_path, "--stop", "batch_start@17:slow", "--flush")
    _stopped(proc, tmp_path)
    assert _kill(proc, sig) != 0
    assert _rows((tmp_path / METRICS).read_text())

    _resume(tmp_path, "steps")
    assert (tmp_path / METRICS).read_text() == (reference / METRICS).read_text()


def test_mlflow_after_an_interruption_and_resume_keeps_both_points_past_the_checkpoint(tmp_path: Path) -> None:
    # What docs/checkpoints.md says MLflow shows: the same run goes on; the points the stopped run
    # logged after the checkpoint stay (MLflow has no way to delete them), so those steps have two
    # points, with the same values for a deterministic run, the resumed one logged later.
    pytest.importorskip("mlflow")
    from fulmen.loggers import MLFlowLogger

    def run(stop: str | None) -> MLFlowLogger:
        trainer, system, train, val = logs_script.build(str(tmp_path), stop)
        mlflow = MLFlowLogger(save_dir=str(tmp_path / "mlruns"))
        trainer.loggers.append(mlflow)
        if stop is None:
            trainer.fit(system, train, val, ckpt_path="last")
        else:
            with pytest.raises(KeyboardInterrupt):
                trainer.fit(system, train, val)
        return mlflow

    stopped = run("batch_start@17:raise")
    resumed = run(None)
    assert resumed.run_id == stopped.run_id
    history = resumed.experiment.get_metric_history(resumed.run_id, "train_loss")
    steps = [m.step for m in history]
    assert steps == [1, 3, 5, 7, 9, 11, 13, 15, 15, 17, 19, 21, 23]  # the checkpoint was at step 15
    first, second = (m for m in history if m.step == 15)
    assert first.value == second.value and first.timestamp <= second.timestamp


def test_csv_rows_reach_the_file_after_flush_secs_without_waiting_for_100_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fulmen.loggers.csv as csv_module

    now = [1000.0]
    monkeypatch.setattr(csv_module.time, "monotonic", lambda: now[0])
    logger = csv_module.CSVLogger(tmp_path, name="", version=0)  # flush_secs: 5 on a local disk
    logger.log_metrics({"loss": 1.0}, step=0)
    now[0] += 4.9
    logger.log_metrics({"loss": 0.5}, step=1)
    assert not os.path.exists(logger.metrics_file)  # (2 rows, 4.9 s: still buffered)
    now[0] += 0.2
    logger.log_metrics({"loss": 0.25}, step=2)
    assert [r["step"] for r in _rows(Path(logger.metrics_file).read_text())] == ["0", "1", "2"]

    fast = csv_module.CSVLogger(tmp_path, name="fast", version=0, flush_secs=0)
    fast.log_metrics({"loss": 1.0}, step=0)
    assert os.path.exists(fast.metrics_file)
    with pytest.raises(ValueError, match="flush_secs"):
        csv_module.CSVLogger(tmp_path, flush_secs=-1)


@pytest.mark.parametrize("lightning", [False, True], ids=["fulmen", "fulmen.lightning"])
def test_csv_resume_at_keeps_the_rows_and_columns_of_the_checkpoint(tmp_path: Path, lightning: bool) -> None:
    if lightning:
        from fulmen.lightning.loggers import CSVLogger
    else:
        from fulmen.loggers import CSVLogger

    def logger() -> Any:
        lg = CSVLogger(tmp_path, name="run")
        lg._version = 0  # as fit sets it from the checkpoint's logger_versions
        return lg

    first = logger()
    first.log_metrics({"loss": 1.0, "epoch": 0.0}, step=0)
    first.log_metrics({"val": 2.0, "epoch": 0.0}, step=0)
    first.save()
    at_checkpoint = first.log_position()
    assert at_checkpoint == {"rows": 2}
    first.log_metrics({"loss": 0.5, "epoch": 0.0}, step=1)
    first.log_metrics({"loss": 0.4, "late": 9.0, "epoch": 0.0}, step=2)  # a column first logged after it
    first.finalize("failed")
    header_before = Path(first.metrics_file).read_text().splitlines()[0]

    second = logger()
    second.resume_at(0, at_checkpoint)
    assert second.log_position() == {"rows": 2}
    second.log_metrics({"loss": 0.5, "epoch": 0.0}, step=1)
    second.finalize("success")
    text = Path(second.metrics_file).read_text()
    assert [(r["step"], r.get("loss"), r.get("val")) for r in _rows(text)] == [
        ("0", "1.0", None), ("0", None, "2.0"), ("1", "0.5", None)
    ]
    assert "late" in header_before and "late" not in text.splitlines()[0]

    # A checkpoint that recorded no position (written by an older fulmen): the rows at its step or before stay.
    third = logger()
    third.resume_at(0, None)
    assert third.log_position() == {"rows": 2}
    assert [r["step"] for r in _rows(Path(third.metrics_file).read_text())] == ["0", "0"]
