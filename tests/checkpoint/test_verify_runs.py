"""``fulmen verify`` passes on every run fulmen writes, says when a run has no checkpoint yet, and
reports each problem under its real cause (issue 13, item 7)."""

from __future__ import annotations

import os
import pickle
import runpy
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import fulmen
from fulmen import cli
from fulmen.checkpoint import write_checkpoint
from fulmen.checkpoint.audit import read_artifacts, read_weight_digests
from fulmen.report import EpochTimes, save_predictions, write_report
from tests.helpers.systems import TinySystem, make_loader

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits.py"


def verify(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, list[str]]:
    """``fulmen verify ARGS``: its exit status and the lines it printed (stdout, then stderr)."""
    capsys.readouterr()  # what ran before
    status = cli.main(["verify", *map(str, args)])
    out = capsys.readouterr()
    return status, (out.out + out.err).splitlines()


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_digits_example_run_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """The run folder examples/digits.py writes (checkpoint, logs, predictions.pt, report) and tells
    the user to verify passes; its predictions are recorded, so a change to them is caught."""
    root = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["digits.py", "--epochs", "1", "--root", str(root)])
    runpy.run_path(str(EXAMPLE), run_name="not_main")["main"]()
    run_dir = root / "fulmen_logs" / "version_0"
    assert f"audit       : fulmen verify {run_dir}" in capsys.readouterr().out
    assert (run_dir / "predictions.pt").is_file() and (run_dir / "report" / "index.html").is_file()
    assert [(a["artifact"], a["kind"]) for a in read_artifacts(run_dir)] == [("predictions.pt", "predictions")]

    status, lines = verify(capsys, run_dir)
    assert status == 0, lines
    weights = len(read_weight_digests(run_dir))  # the example records a digest of the weights every 10 steps
    assert weights > 1
    assert lines[0].startswith(f"OK {run_dir}: {2 + weights} log entries, 1 checkpoint(s) on disk verified, ")
    assert "1 recorded file(s) on disk verified (predictions.pt)" in lines[0]
    assert f"{weights} weight digest(s) along the run" in lines[0]

    flip_byte(run_dir / "predictions.pt", (run_dir / "predictions.pt").stat().st_size // 2)
    status, lines = verify(capsys, run_dir)
    assert status == 1
    assert lines[0].startswith("modified: predictions.pt: its SHA-256 is ")
    assert f"when the predictions file recorded on line {2 + weights} of the log was written" in lines[0]


def test_loggers_profiler_report_and_config_runs_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """CSV, TensorBoard and MLflow loggers, the profiler, EpochTimes, a report and predictions in
    one run folder; and the runs `fulmen fit|test --config` write (config.yaml, a test run without
    a checkpoint): all verify."""
    root = tmp_path / "runs"
    loggers = [
        fulmen.CSVLogger(root),
        fulmen.TensorBoardLogger(root),
        fulmen.MLFlowLogger(tracking_uri=(root / "mlruns").as_uri()),
    ]
    trainer = fulmen.Trainer(
        max_epochs=1,
        default_root_dir=root,
        logger=loggers,
        profiler="simple",
        callbacks=[fulmen.LearningRateMonitor(), EpochTimes()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    system = TinySystem()
    trainer.fit(system, make_loader(32), make_loader(16))
    x, _ = make_loader(16).dataset.tensors
    save_predictions(trainer.log_dir, torch.randn(16, 3), torch.arange(16) % 3, inputs=x)
    write_report(trainer.log_dir)
    names = {p.name for p in Path(trainer.log_dir).iterdir()}
    assert {"checkpoints", "metrics.csv", "hparams.yaml", "run.json", "profile-fit.txt", "epoch_times.csv"} <= names
    assert {"predictions.pt", "report", "code"} <= names
    status, lines = verify(capsys, trainer.log_dir)
    assert status == 0 and lines[0].startswith(f"OK {trainer.log_dir}: 2 log entries, 1 checkpoint(s)"), lines

    monkeypatch.setattr(sys, "path", [str(ROOT / "tests"), *sys.path])
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_epochs": 1, "default_root_dir": str(tmp_path / "cli"), "enable_progress_bar": False},
                "model": {"class_path": "helpers.systems.TinySystem"},
                "data": {"class_path": "helpers.systems.TinyData", "init_args": {"n": 16}},
            }
        )
    )
    fit = cli.run_cli(["fit", "--config", str(config)])
    tested = cli.run_cli(["test", "--config", str(config), "--ckpt_path", "last"])
    capsys.readouterr()
    assert (Path(fit.trainer.log_dir) / "config.yaml").is_file()
    status, lines = verify(capsys, fit.trainer.log_dir)
    assert status == 0 and "1 checkpoint(s) on disk verified" in lines[0], lines
    status, lines = verify(capsys, tested.trainer.log_dir)  # a test run writes no checkpoint
    assert (status, lines) == (0, [f"OK {tested.trainer.log_dir}: {NO_CHECKPOINT}"])


NO_CHECKPOINT = "no checkpoint yet, nothing to verify (the audit log checkpoints.jsonl starts with the run's first checkpoint)"

# A fit that SIGKILLs itself: at a training step (before any checkpoint), or while the second
# checkpoint is about to be logged (after its file is in place).
KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
import fulmen
import fulmen.checkpoint.audit as audit
from tests.helpers.systems import TinySystem, make_loader

where, run_dir = sys.argv[1], sys.argv[2]

class KillAtStep(fulmen.Callback):
    def on_train_batch_end(self, trainer, system, outputs, batch, batch_idx):
        if where == "step" and trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

append = audit.append_entry
def append_then_die(audit_dir, record, **kw):
    if where == "log" and kw["step"] == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return append(audit_dir, record, **kw)
audit.append_entry = append_then_die

trainer = fulmen.Trainer(max_epochs=4, default_root_dir=run_dir, logger=fulmen.CSVLogger(run_dir, name="", version=""),
                         callbacks=[KillAtStep(), fulmen.ModelCheckpoint(every_n_train_steps=4, save_top_k=-1)],
                         enable_progress_bar=False, enable_model_summary=False)
trainer.fit(TinySystem(), make_loader(32))
"""


def killed_run(tmp_path: Path, where: str) -> Path:
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(root=str(ROOT))))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), where, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return run


def test_a_run_killed_before_its_first_checkpoint_has_nothing_to_verify(tmp_path: Path, capsys: Any) -> None:
    run = killed_run(tmp_path, "step")
    assert (run / "run.json").is_file() and not (run / "checkpoints.jsonl").exists()
    assert verify(capsys, run) == (0, [f"OK {run}: {NO_CHECKPOINT}"])


def test_a_run_killed_between_writing_and_logging_a_checkpoint(tmp_path: Path, capsys: Any) -> None:
    run = killed_run(tmp_path, "log")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    status, lines = verify(capsys, run)
    assert status == 1
    assert lines[0].startswith(
        "unknown_checkpoint: checkpoints/epoch=1-step=8.ckpt: the log has no entry for this checkpoint, which fulmen "
        "wrote here at step 8 ("
    )
    assert lines[0].endswith(
        "right after the log's last line (complete: its own digest matches its content): the run stopped between "
        "writing it and logging it (killed), or the log's last line was removed"
    )


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A plain fulmen run: two checkpoints kept (steps 4 and 8) and their log."""
    trainer = fulmen.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path / "run",
        logger=False,
        callbacks=[fulmen.ModelCheckpoint(save_top_k=-1)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinySystem(), make_loader(32))
    return tmp_path / "run"


def test_a_tampered_checkpoint_is_modified(run: Path, capsys: Any) -> None:
    path = run / "checkpoints" / "epoch=0-step=4.ckpt"
    weight = torch.load(path, weights_only=True)["state_dict"]["layer.weight"]
    flip_byte(path, path.read_bytes().index(weight.numpy().tobytes()))
    status, lines = verify(capsys, run)
    assert status == 1 and len(lines) == 2
    assert lines[0].startswith("modified: checkpoints/epoch=0-step=4.ckpt: its SHA-256 is ")
    assert "its content digest is " in lines[0]
    assert lines[1] == f"1 problem(s) in {run}"


def test_a_deleted_checkpoint_is_removed_out_of_order(run: Path, capsys: Any) -> None:
    (run / "checkpoints" / "epoch=1-step=8.ckpt").unlink()
    assert verify(capsys, run) == (
        1,
        [
            "removed_out_of_order: checkpoints/epoch=1-step=8.ckpt: the newest checkpoint in its folder (line 2) is "
            "missing; rotation only removes a file after a newer one is written beside it",
            f"1 problem(s) in {run}",
        ],
    )


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this ran while loading",))


def test_foreign_files_each_under_their_cause(run: Path, tmp_path: Path, capsys: Any) -> None:
    torch.save({"probs": torch.rand(3, 2), "labels": torch.tensor([0, 1, 1])}, run / "outputs.pt")  # not a checkpoint
    torch.save(TinySystem().state_dict(), run / "checkpoints" / "weights.pth")  # a checkpoint fulmen did not write
    (run / "evil.pt").write_bytes(pickle.dumps(Payload(), protocol=4))  # code, not tensors
    other = fulmen.Trainer(max_epochs=1, default_root_dir=tmp_path / "other", logger=False, enable_progress_bar=False)
    other.fit(TinySystem(), make_loader(32))
    os.link(other.checkpoint_callback.best_model_path, run / "checkpoints" / "copied.ckpt")  # from another run

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verify passes on no warning of torch's about the foreign files
        status, lines = verify(capsys, run)
    assert status == 1
    by_file = {line.split(": ")[1]: line for line in lines[:-1]}
    assert sorted(by_file) == ["checkpoints/copied.ckpt", "checkpoints/weights.pth", "evil.pt", "outputs.pt"]
    assert by_file["outputs.pt"] == (
        "unknown_file: outputs.pt: fulmen recorded no file of this name, and it is not a checkpoint (it holds a dict "
        "with keys probs, labels): written by other code or added by hand. Move it out of the run folder: fulmen "
        "verify checks every .ckpt/.pt/.pth file in it"
    )
    assert by_file["evil.pt"].startswith(
        "unknown_file: evil.pt: fulmen recorded no file of this name, and it is not a checkpoint: it does not load with "
        "torch.load(weights_only=True) (UnpicklingError: it holds Python objects other than tensors"
    )
    assert "weights_only=False" not in by_file["evil.pt"]
    assert by_file["checkpoints/weights.pth"] == (
        "unknown_checkpoint: checkpoints/weights.pth: the log has no entry for this checkpoint, and fulmen's "
        "checkpointing did not write it (it holds no audit record of its own): added by hand or saved by other code"
    )
    assert by_file["checkpoints/copied.ckpt"].startswith(
        "unknown_checkpoint: checkpoints/copied.ckpt: the log has no entry for this checkpoint, fulmen wrote it at "
        "step 4 ("
    )
    assert by_file["checkpoints/copied.ckpt"].endswith("it was copied here from another run or folder")
    assert lines[-1] == f"4 problem(s) in {run}"


def test_checkpoints_without_their_log(run: Path, tmp_path: Path, capsys: Any) -> None:
    """The log is what is missing (not each checkpoint), and the first checkpoint of a run killed
    before it was logged is told apart."""
    (run / "checkpoints.jsonl").unlink()
    status, lines = verify(capsys, run)
    assert status == 1 and lines[0].startswith(f"missing_log: checkpoints.jsonl: {run} has no checkpoints.jsonl")
    assert lines[0].endswith(
        "yet fulmen wrote 2 checkpoint(s) here with an audit record (checkpoints/epoch=0-step=4.ckpt, "
        "checkpoints/epoch=1-step=8.ckpt): the log was deleted, or the folder was copied or moved from where it was "
        "written (pass the log of a moved folder with --log FILE)"
    )
    assert lines[1:] == [f"1 problem(s) in {run}"]

    first = tmp_path / "first"
    write_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 2}, first / "checkpoints" / "a.ckpt", audit_dir=first)
    (first / "checkpoints.jsonl").unlink()  # as if killed before the line was appended
    status, lines = verify(capsys, first)
    assert status == 1 and "the run was killed between writing its first checkpoint and logging it" in lines[0]
