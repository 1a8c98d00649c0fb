"""SIGTERM and SIGINT stop a run after the batch that is running, with nothing lost (issue 13, item 1).

Real signals throughout. The subprocess tests run ``tests/helpers/signal_script.py`` (8 steps an
epoch, 3 epochs, ``log_every_n_steps=1``): the script reports reaching step 5 through a marker file
and waits there until its handler noted the signal the test sends, so the signal always lands in
that batch. The in-process tests send the signal to this process from a callback
(``signal.raise_signal``: delivered before the call returns, so the test is deterministic).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.signal_script import StatusLogger
from helpers.systems import TinySystem, make_loader

import fulmen
from fulmen.runtime.signals import CHECKPOINT_NAME, Terminated

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "helpers" / "signal_script.py"
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")
_OURS = ("FULMEN_SIGNAL_HANDLING", "FULMEN_LAUNCHED", "FULMEN_SLURM_AUTO_REQUEUE", "FULMEN_SLURM_REQUEUE_SIGNAL")


# ---------------------------------------------------------------------------------------------- helpers
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in (*_LAUNCHER_VARS, *_OURS)}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH", "")] if p)
    env.update(extra)
    return env


def _start(tmp: Path, env: dict[str, str] | None = None, **cfg: Any) -> subprocess.Popen[str]:
    cfg_file = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.json"
    cfg_file.write_text(json.dumps({"root": str(tmp), **cfg}))
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(cfg_file)], env=env or _env(), cwd=tmp, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"{path.name} never appeared (exit {proc.returncode})\n{out}\n{err}")
        time.sleep(0.02)


def _signal_at_step_5(tmp: Path, signum: int, env: dict[str, str] | None = None, **cfg: Any) -> tuple[int, str, str]:
    proc = _start(tmp, env, **cfg)
    _wait_for(tmp / "reached", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _run_dir(tmp: Path) -> Path:
    return tmp / "fulmen_logs" / "version_0"


def _fulmen_lines(stderr: str) -> list[str]:
    """What fulmen printed, without DDP's start-up description."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "DDPStrategy" not in ln and "backend gloo" not in ln]


def _train_steps(metrics: Path) -> list[int]:
    with open(metrics, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train_loss")]


def _ckpt(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return out


# ---------------------------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("writes", ["sync", "async"])
def test_sigterm_saves_every_step_exits_143_and_resume_finishes(tmp_path: Path, writes: str) -> None:
    # "async": the stop's checkpoint is written in the background, and waited for before the exit
    rc, out, err = _signal_at_step_5(tmp_path, signal.SIGTERM, **{"async": writes == "async"})
    run = _run_dir(tmp_path)
    ckpt_file = run / "checkpoints" / CHECKPOINT_NAME
    assert rc == 143, f"exit {rc}\n{out}\n{err}"
    assert _fulmen_lines(err) == [
        f"[fulmen] SIGTERM received: stopped after global step 5 (epoch 0, 5 batches into it); saved {ckpt_file} "
        f'with every step trained; resume with trainer.fit(..., ckpt_path="last"); exit status 143.'
    ]
    ckpt = _ckpt(ckpt_file)
    assert ckpt["global_step"] == 5 and ckpt["loops"]["batches_done"] == 5 and ckpt["loops"]["phase"] == "batch"
    assert _train_steps(run / "metrics.csv") == [0, 1, 2, 3, 4]  # every step trained, on disk
    assert (tmp_path / "status.txt").read_text().split() == ["interrupted"]

    resumed = _start(tmp_path, ckpt_path="last", **{"async": writes == "async"})
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, f"{out}\n{err}"
    assert f"FIT_START global_step=5 ckpt_path={ckpt_file}" in out and "DONE global_step=24" in out, out
    assert (tmp_path / "status.txt").read_text().split() == ["interrupted", "success"]
    assert _train_steps(run / "metrics.csv") == list(range(24))  # no hole, no duplicate


def test_sigint_exits_as_ctrl_c_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """Python ends on an uncaught KeyboardInterrupt by SIGINT itself: the shell reports 130."""
    rc, out, err = _signal_at_step_5(tmp_path, signal.SIGINT)
    ckpt_file = _run_dir(tmp_path) / "checkpoints" / CHECKPOINT_NAME
    assert rc == -signal.SIGINT, f"exit {rc}\n{out}\n{err}"
    assert _fulmen_lines(err) == [
        f"[fulmen] SIGINT received: stopped after global step 5 (epoch 0, 5 batches into it); saved {ckpt_file} "
        f'with every step trained; resume with trainer.fit(..., ckpt_path="last"); exit status 130.'
    ]
    assert _ckpt(ckpt_file)["global_step"] == 5
    assert _train_steps(_run_dir(tmp_path) / "metrics.csv") == [0, 1, 2, 3, 4]
    assert (tmp_path / "status.txt").read_text().split() == ["interrupted"]


def test_second_signal_ends_the_process_at_once(tmp_path: Path) -> None:
    """The batch holds 60 s after the first SIGTERM (a slow step); the second one ends it there."""
    proc = _start(tmp_path, hold=True)
    _wait_for(tmp_path / "reached", proc)
    proc.send_signal(signal.SIGTERM)
    _wait_for(tmp_path / "noted", proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, f"{out}\n{err}"  # SIGTERM's default action: no saving
    assert time.monotonic() - sent < 20
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "status.txt").exists()


def test_turned_off_or_own_handler_keeps_the_default(tmp_path: Path) -> None:
    """FULMEN_SIGNAL_HANDLING=0: SIGTERM's default action. A script's own SIGTERM handler: that
    handler runs (it exits 7), fulmen saves nothing. (Both processes run at once.)"""
    off, own = tmp_path / "off", tmp_path / "own"
    off.mkdir()
    own.mkdir()
    procs = {off: _start(off, _env(FULMEN_SIGNAL_HANDLING="0")), own: _start(own, own_handler=True)}
    for folder, proc in procs.items():
        _wait_for(folder / "reached", proc)
        proc.send_signal(signal.SIGTERM)
    (out, err), (own_out, own_err) = (proc.communicate(timeout=120) for proc in procs.values())
    assert procs[off].returncode == -signal.SIGTERM, f"{out}\n{err}"
    assert not list(off.rglob("*.ckpt")) and "[fulmen]" not in err
    assert procs[own].returncode == 7 and (own / "own").read_text() == str(int(signal.SIGTERM)), f"{own_out}\n{own_err}"
    assert not list(own.rglob(CHECKPOINT_NAME)) and "[fulmen] SIGTERM" not in own_err


def test_ddp_sigterm_to_rank_0_stops_both_processes_after_the_same_step(tmp_path: Path) -> None:
    """fulmen's launcher (2 gloo processes): only rank 0 gets SIGTERM; the ranks agree at the log
    interval, write one checkpoint together, and all exit; rank 0 with 143."""
    rc, out, err = _signal_at_step_5(tmp_path, signal.SIGTERM, devices=2, max_epochs=2)
    ckpt_file = _run_dir(tmp_path) / "checkpoints" / CHECKPOINT_NAME
    assert rc == 143, f"exit {rc}\n{out}\n{err}"
    assert _fulmen_lines(err) == [
        f"[fulmen] SIGTERM received: stopped after global step 5 (epoch 1, 1 batch into it); saved {ckpt_file} "
        f'with every step trained; resume with trainer.fit(..., ckpt_path="last"); exit status 143.'
    ]
    ckpt = _ckpt(ckpt_file)
    assert ckpt["global_step"] == 5 and ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert "DONE" not in out and (tmp_path / "status.txt").read_text().split() == ["interrupted"]


# ---------------------------------------------------------------------------------------------- in this process
class Signal(fulmen.Callback):
    """Sends ``signum`` to this process in hook ``hook`` when ``trainer`` and the batch index match."""

    def __init__(self, signum: int, hook: str, step: int = -1, batch: int = -1) -> None:
        self.signum, self.hook, self.step, self.batch = signum, hook, step, batch
        self.seen: list[tuple[str, int]] = []
        self.handlers: list[Any] = []

    def _maybe(self, hook: str, trainer: Any, batch_idx: int = -1) -> None:
        self.seen.append((hook, batch_idx))
        self.handlers.append(signal.getsignal(self.signum))
        if hook == self.hook and (self.step < 0 or trainer.global_step == self.step) and self.batch in (-1, batch_idx):
            signal.raise_signal(self.signum)

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe("train", trainer, batch_idx)

    def on_validation_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        hook = "sanity" if trainer.sanity_checking else "val" if trainer.state.stage == "fit" else "validate"
        self._maybe(hook, trainer, batch_idx)

    def on_test_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._maybe("test", trainer, batch_idx)

    def on_predict_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._maybe("predict", trainer, batch_idx)

    def on_train_epoch_end(self, trainer: Any, system: Any) -> None:
        self._maybe("epoch_end", trainer)


def _trainer(tmp_path: Path, *callbacks: fulmen.Callback, **flags: Any) -> fulmen.Trainer:
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path, "accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False,
        "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
        "logger": [fulmen.CSVLogger(tmp_path), StatusLogger(str(tmp_path / "status.txt"))],
        "callbacks": list(callbacks),
    }
    kwargs.update(flags)
    return fulmen.Trainer(**kwargs)


@pytest.fixture(autouse=True)
def _default_handlers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts with Python's default handlers, outside any SLURM job (whose requeue
    would take SIGTERM), and checks the default handlers are back afterwards."""
    for name in ("SLURM_JOB_ID", *_OURS):
        monkeypatch.delenv(name, raising=False)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    after = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, before[0] if before[0] is not None else signal.SIG_DFL)
    signal.signal(signal.SIGINT, before[1] if before[1] is not None else signal.default_int_handler)
    assert after == (signal.SIG_DFL, signal.default_int_handler)


@pytest.mark.parametrize("where", ["no ModelCheckpoint", "ModelCheckpoint(dirpath=...)"])
def test_fit_last_finds_the_stop_checkpoint(tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    plain = where == "no ModelCheckpoint"
    flags: dict[str, Any] = {"enable_checkpointing": False} if plain else {}

    def callbacks(*cbs: fulmen.Callback) -> list[fulmen.Callback]:
        return [*cbs] if plain else [*cbs, fulmen.ModelCheckpoint(dirpath=elsewhere)]

    trainer = _trainer(tmp_path, *callbacks(Signal(signal.SIGTERM, "train", step=11)), **flags)
    with pytest.raises(SystemExit) as info:
        trainer.fit(TinySystem(), make_loader(), make_loader())
    assert isinstance(info.value, Terminated) and info.value.code == 143
    folder = tmp_path / "fulmen_logs" / "version_0" / "checkpoints" if plain else elsewhere
    assert info.value.checkpoint == str(folder / CHECKPOINT_NAME)
    assert _ckpt(folder / CHECKPOINT_NAME)["global_step"] == 11

    again = _trainer(tmp_path, *callbacks(), **flags)  # a new process would do the same
    again.fit(TinySystem(), make_loader(), make_loader(), ckpt_path="last")
    assert again.ckpt_path == str(folder / CHECKPOINT_NAME) and again.global_step == 16


def test_a_caught_ctrl_c_then_fit_last_in_the_same_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As in a notebook: the KeyboardInterrupt is caught; the same trainer's fit(ckpt_path="last")
    takes the stop's checkpoint, not the older epoch checkpoint ModelCheckpoint remembers."""
    sender = Signal(signal.SIGINT, "train", step=11)
    trainer = _trainer(tmp_path, sender)
    system = TinySystem()
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit(system, make_loader(), make_loader())
    assert type(info.value) is KeyboardInterrupt  # (so that Python exits 130 when nobody catches it)
    path = info.value.checkpoint  # type: ignore[attr-defined]
    assert path.endswith(CHECKPOINT_NAME) and trainer.checkpoint_callback.last_model_path.endswith("epoch=0-step=8.ckpt")
    assert trainer.state.status == "interrupted"
    assert sender.handlers[0] not in (signal.default_int_handler, signal.SIG_DFL)  # fulmen's, during the fit
    assert capsys.readouterr().err.count("[fulmen] SIGINT received: stopped after global step 11") == 1

    sender.step = 10**9  # no more signals
    trainer.fit(system, make_loader(), make_loader(), ckpt_path="last")
    assert trainer.ckpt_path == path and trainer.global_step == 16 and trainer.state.status == "finished"
    assert (tmp_path / "status.txt").read_text().split() == ["interrupted", "success"]


@pytest.mark.parametrize(
    ("stage", "signum"),
    [("validate", signal.SIGTERM), ("test", signal.SIGINT), ("predict", signal.SIGTERM), ("sanity", signal.SIGINT)],
)
def test_outside_the_training_loop_a_signal_stops_at_once(
    tmp_path: Path, stage: str, signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate/test/predict and the sanity check: nothing to save, the run stops in the batch
    that got the signal, the loggers are finalised as interrupted."""
    sender = Signal(signum, stage, batch=1)
    trainer = _trainer(tmp_path, sender, num_sanity_val_steps=3 if stage == "sanity" else 0)
    run = getattr(trainer, "fit" if stage == "sanity" else stage)
    with pytest.raises(SystemExit if signum == signal.SIGTERM else KeyboardInterrupt) as info:
        run(TinySystem(), make_loader(), *([make_loader()] if stage == "sanity" else []))
    assert sender.seen == [(stage, 0), (stage, 1)]  # not one more batch
    assert info.value.checkpoint is None and not list(tmp_path.rglob("*.ckpt"))  # type: ignore[union-attr]
    assert trainer.global_step == 0 and (tmp_path / "status.txt").read_text().split() == ["interrupted"]
    name, status = signal.Signals(signum).name, {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    what = (
        "during the sanity check, before training started: stopped, nothing trained or saved"
        if stage == "sanity"
        else f"during {stage}: stopped ({stage} does not train: nothing to save)"
    )
    assert capsys.readouterr().err.splitlines() == [f"[fulmen] {name} received {what}; exit status {status}."]


def test_during_validation_in_fit_it_stops_at_the_next_training_batch(tmp_path: Path) -> None:
    """The epoch-end validation (at step 8) finishes; the stop comes after training batch 9."""
    sender = Signal(signal.SIGTERM, "val", batch=2)
    trainer = _trainer(tmp_path, sender)
    with pytest.raises(SystemExit) as info:
        trainer.fit(TinySystem(), make_loader(), make_loader())
    assert [s for s in sender.seen if s[0] == "val"] == [("val", i) for i in range(8)]  # all of it
    assert sender.seen[-1] == ("train", 0) and trainer.global_step == 9
    assert _ckpt(Path(info.value.checkpoint))["global_step"] == 9  # type: ignore[union-attr]


def test_a_signal_after_the_last_batch_lets_the_fit_finish_then_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = _trainer(tmp_path, Signal(signal.SIGTERM, "epoch_end", step=16))
    with pytest.raises(SystemExit) as info:
        trainer.fit(TinySystem(), make_loader(), make_loader())
    assert info.value.code == 143 and trainer.global_step == 16 and trainer.state.status == "finished"
    assert (tmp_path / "status.txt").read_text().split() == ["success"]
    assert capsys.readouterr().err.splitlines() == [
        "[fulmen] SIGTERM received as the fit was ending: it finished first (its checkpoints and logs are "
        "written); exit status 143."
    ]
