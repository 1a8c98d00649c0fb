"""SLURM: reading the job's environment, and auto-requeue on the time-limit warning signal.

The fast tests need no SLURM: host lists, ``detect()`` on SLURM environments, the devices/tasks
mismatch error, and a requeue + resume in real processes with a fake ``scontrol``.

The tests marked ``slurm`` start a real single-node SLURM cluster on this machine
(``tests/fixtures/slurm/start-local-slurm.sh``; root, Debian; they install munge/slurm with apt
when missing), submit jobs with ``sbatch --signal=USR1@30 --time=1 --requeue`` and check that they
are signalled, requeued, resumed and finish with the weights of an uninterrupted run. They are
left out by default; run them with ``./dev.sh slurm`` (``pytest -m slurm tests/runtime/test_slurm.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import fulmen
from fulmen.runtime import slurm
from fulmen.runtime.environment import detect, expand_nodelist
from fulmen.trainer.state import LoopState

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "helpers" / "slurm_script.py"
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "NODE_RANK")


# ---------------------------------------------------------------------------------------------- host lists
@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a1,b[2-3]", ["a1", "b2", "b3"]),
        ("gpu[1-2]-ib", ["gpu1-ib", "gpu2-ib"]),
        ("n[008-011]", ["n008", "n009", "n010", "n011"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("x[1,3],y[05-06]-ib,z", ["x1", "x3", "y05-ib", "y06-ib", "z"]),
        (" c[1-2] ", ["c1", "c2"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


# ---------------------------------------------------------------------------------------------- detect()
def _slurm_env(**extra: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NODELIST": "gpu[07-08,10-11]",
        "SLURM_STEP_ID": "0",  # srun's tasks are in a job step
    }
    env.update(extra)
    return env


def test_detect_reads_ranks_and_rendezvous_from_slurm() -> None:
    env = detect(_slurm_env())
    assert env.kind == "slurm" and env.managed
    assert (env.world_size, env.global_rank, env.local_rank, env.node_rank) == (8, 5, 1, 1)
    assert env.local_world_size == 2 and env.num_nodes == 4  # 8 tasks over 4 hosts
    assert env.main_address == "gpu07"  # the first host of the list
    assert env.job_id == "123456"
    # the port comes from the job id: every task computes the same one, and another job another one
    assert 15000 < env.main_port < 25002
    assert detect(_slurm_env(SLURM_PROCID="0")).main_port == env.main_port
    assert detect(_slurm_env(SLURM_JOB_ID="123457")).main_port != env.main_port


def test_detect_slurm_details() -> None:
    # --ntasks-per-node wins over the division; the step's node list over the job's
    env = detect(_slurm_env(SLURM_NTASKS_PER_NODE="4", SLURM_NODELIST="big[1-2]", SLURM_STEP_NODELIST="small[3-4]"))
    assert env.local_world_size == 4 and env.num_nodes == 2 and env.main_address == "small3"
    # an explicit MASTER_ADDR/PORT (only some of torch's variables: not torchrun) is honoured
    env = detect(_slurm_env(MASTER_ADDR="10.0.0.1", MASTER_PORT="29999"))
    assert env.kind == "slurm" and (env.main_address, env.main_port) == ("10.0.0.1", 29999)
    # a single task on one node
    env = detect({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_NODELIST": "vm", "SLURM_STEPID": "0"})
    assert (env.kind, env.world_size, env.local_world_size, env.main_address) == ("slurm", 1, 1, "vm")


def test_detect_ignores_the_batch_script_itself() -> None:
    """`python train.py` run directly in an `sbatch --ntasks=2` script sees SLURM_NTASKS=2 and
    SLURM_PROCID=0 (checked on a real SLURM 22.05), but it is one process, not srun's rank 0 of 2:
    no SLURM_STEP_ID there. fulmen then starts its processes itself, and the requeue still works."""
    batch = {k: v for k, v in _slurm_env(SLURM_PROCID="0", SLURM_NTASKS="2").items() if k != "SLURM_STEP_ID"}
    assert detect(batch).kind == "none"
    assert slurm.in_slurm_job(batch) and slurm.auto_requeue_enabled(batch)


@pytest.mark.parametrize("name", ["bash", "interactive"])
def test_detect_ignores_an_interactive_allocation(name: str) -> None:
    env = _slurm_env(SLURM_JOB_NAME=name)
    assert detect(env).kind == "none"
    assert not slurm.in_slurm_job(env) and not slurm.auto_requeue_enabled(env)


def test_torchrun_variables_win_over_slurm() -> None:
    env = _slurm_env(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="h0", MASTER_PORT="29500")
    found = detect(env)
    assert found.kind == "torchrun"
    assert (found.world_size, found.global_rank, found.local_rank, found.node_rank) == (4, 3, 1, 1)
    assert (found.main_address, found.main_port) == ("h0", 29500)


def test_no_launcher() -> None:
    assert detect({}).kind == "none" and not detect({}).managed


def test_slurm_requeue_settings() -> None:
    env = _slurm_env()
    assert slurm.in_slurm_job(env) and slurm.auto_requeue_enabled(env) and not slurm.restarted(env)
    assert not slurm.auto_requeue_enabled({**env, "FULMEN_SLURM_AUTO_REQUEUE": "0"})
    assert slurm.restarted({**env, "SLURM_RESTART_COUNT": "2"})
    assert not slurm.restarted({**env, "SLURM_RESTART_COUNT": "0"})
    assert not slurm.restarted({"SLURM_RESTART_COUNT": "1"})  # not in a job
    assert slurm.requeue_signal(env) == signal.SIGUSR1
    assert slurm.requeue_signal({"FULMEN_SLURM_REQUEUE_SIGNAL": "sigusr2"}) == signal.SIGUSR2
    assert slurm.requeue_signal({"FULMEN_SLURM_REQUEUE_SIGNAL": "TERM"}) == signal.SIGTERM
    with pytest.raises(ValueError, match="FULMEN_SLURM_REQUEUE_SIGNAL"):
        slurm.requeue_signal({"FULMEN_SLURM_REQUEUE_SIGNAL": "NOPE"})
    assert slurm.job_id(env) == "123456"
    assert slurm.job_id({**env, "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "7"}) == "100_7"


def test_devices_must_match_the_tasks_slurm_started(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in _slurm_env(SLURM_NTASKS="2", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="vm").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(fulmen.FlagError, match="--ntasks-per-node=4"):
        fulmen.Trainer(accelerator="cpu", devices=4)


# ---------------------------------------------------------------------------------------------- requeue, fake scontrol
def _clean_env() -> dict[str, str]:
    """This process's environment without any launcher's variables (the tests may run in a job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_", "FULMEN_")) and k not in _LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH", "")] if p)
    return env


def _run_script(cfg: dict[str, Any], tmp: Path, name: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    return subprocess.run([sys.executable, str(SCRIPT), str(cfg_file)], env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _result(folder: Path, rank: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = torch.load(folder / f"rank{rank}.pt", weights_only=False)
    return out


def test_requeue_on_signal_then_resume_exactly(tmp_path: Path) -> None:
    """One process under a (fake) SLURM job: SIGUSR1 at step 5 -> hpc_ckpt_0.ckpt, `scontrol requeue
    <job>`, exit 0; started again with SLURM_RESTART_COUNT=1, fit() resumes from it and ends with
    the weights of a run that was never interrupted."""
    ref = _run_script({"out": str(tmp_path / "ref")}, tmp_path, "ref", _clean_env())
    _check(ref)

    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    record = tmp_path / "scontrol.args"
    scontrol = fakebin / "scontrol"
    scontrol.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    scontrol.chmod(0o755)
    env = _clean_env()
    env.update(
        PATH=f"{fakebin}{os.pathsep}{env.get('PATH', '')}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="train",
        SLURM_NTASKS="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
        SLURM_STEP_ID="0",
    )
    cfg = {"out": str(tmp_path / "job"), "signal_at_step": 5}
    first = _run_script(cfg, tmp_path, "job", env)
    _check(first)
    assert "SEND_SIGNAL at global_step=5" in first.stdout
    assert "EXIT Requeued(0) at global_step=5" in first.stdout, first.stdout
    assert "requeueing job 4242" in first.stderr
    ckpts = tmp_path / "job" / "fulmen_logs" / "version_0" / "checkpoints"
    assert (ckpts / "hpc_ckpt_0.ckpt").is_file()
    assert record.read_text().split() == ["requeue", "4242"]
    assert not (tmp_path / "job" / "rank0.pt").exists()  # it did not finish

    record.unlink()
    second = _run_script(cfg, tmp_path, "job", {**env, "SLURM_RESTART_COUNT": "1"})
    _check(second)
    assert f"FIT_START global_step=5 ckpt_path={ckpts / 'hpc_ckpt_0.ckpt'}" in second.stdout, second.stdout
    assert not record.exists()  # no signal, no requeue
    got, want = _result(tmp_path / "job"), _result(tmp_path / "ref")
    assert Path(got["ckpt_path"]) == ckpts / "hpc_ckpt_0.ckpt"
    assert got["global_step"] == want["global_step"] == 24
    assert _same_weights(got["state_dict"], want["state_dict"])
    # the resumed run went on in the same run folder
    assert sorted(p.name for p in (tmp_path / "job" / "fulmen_logs").iterdir()) == ["version_0"]


def test_signal_before_fit_is_acted_on_when_fit_starts(tmp_path: Path) -> None:
    """SIGUSR1 during `import torch` (the script counts it with an early handler): fulmen's handler
    takes it over when fit starts, so the run requeues after its first step instead of dying."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    record = tmp_path / "scontrol.args"
    (fakebin / "scontrol").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    (fakebin / "scontrol").chmod(0o755)
    env = _clean_env()
    env.update(
        PATH=f"{fakebin}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID="31", SLURM_NTASKS="1", SLURM_PROCID="0",
        SLURM_SCRIPT_SIGNAL_AT_START="1",
    )
    proc = _run_script({"out": str(tmp_path / "job"), "max_epochs": 1}, tmp_path, "job", env)
    _check(proc)
    assert "FIT_START global_step=0 ckpt_path=None early_signals=1" in proc.stdout, proc.stdout
    assert "EXIT Requeued(0) at global_step=1" in proc.stdout, proc.stdout
    assert record.read_text().split() == ["requeue", "31"]
    assert (tmp_path / "job" / "fulmen_logs" / "version_0" / "checkpoints" / "hpc_ckpt_0.ckpt").is_file()


def test_requeue_handler_takes_over_an_early_signal_and_ignores_late_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FULMEN_SLURM_REQUEUE_SIGNAL", raising=False)

    class Early:
        received = 2

        def __call__(self, signum: int, frame: object) -> None:
            self.received += 1

    class FakeTrainer:
        world_size = 1
        request_stop = fulmen.Trainer.request_stop

        def __init__(self) -> None:
            self.loop = LoopState()

    before = signal.getsignal(signal.SIGUSR1)
    try:
        early = Early()
        signal.signal(signal.SIGUSR1, early)
        trainer = FakeTrainer()
        handler = slurm.RequeueHandler(trainer)  # type: ignore[arg-type]
        handler.install()
        assert trainer.loop.signalled and trainer.loop.preempted and early.received == 0
        handler.uninstall()
        assert signal.getsignal(signal.SIGUSR1) is early  # what was there before comes back
        # with nothing set before (the default action: terminate), a late signal is ignored after fit
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        trainer = FakeTrainer()
        trainer.world_size = 2
        handler = slurm.RequeueHandler(trainer)  # type: ignore[arg-type]
        handler.install()
        assert not trainer.loop.signalled
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert trainer.loop.signalled and not trainer.loop.preempted  # several processes agree first
        handler.uninstall()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, before if before is not None else signal.SIG_DFL)


def test_requeue_checkpoint_without_model_checkpoint(tmp_path: Path) -> None:
    """enable_checkpointing=False: the requeue checkpoint is still written, and
    ``latest_requeue_checkpoint`` finds it (fit(ckpt_path="last") cannot: no ModelCheckpoint)."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    (fakebin / "scontrol").chmod(0o755)
    env = _clean_env()
    env.update(PATH=f"{fakebin}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID="8", SLURM_NTASKS="1", SLURM_PROCID="0")
    cfg = {"out": str(tmp_path / "job"), "signal_at_step": 2, "max_epochs": 1, "enable_checkpointing": False}
    _check(_run_script(cfg, tmp_path, "job", env))
    folder = tmp_path / "job" / "fulmen_logs" / "version_0" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["hpc_ckpt_0.ckpt"]
    trainer = fulmen.Trainer(enable_checkpointing=False, default_root_dir=str(tmp_path / "job"), enable_progress_bar=False)
    assert slurm.latest_requeue_checkpoint(trainer) == str(folder / "hpc_ckpt_0.ckpt")
    for n in (2, 10):  # by restart number, not by name
        (folder / f"hpc_ckpt_{n}.ckpt").touch()
    assert slurm.latest_requeue_checkpoint(trainer) == str(folder / "hpc_ckpt_10.ckpt")
    fresh = fulmen.Trainer(enable_checkpointing=False, default_root_dir=str(tmp_path / "other"), enable_progress_bar=False)
    assert slurm.latest_requeue_checkpoint(fresh) is None


def _fake_slurm(tmp_path: Path, job: str) -> dict[str, str]:
    fakebin = tmp_path / "bin"
    fakebin.mkdir(exist_ok=True)
    (fakebin / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    (fakebin / "scontrol").chmod(0o755)
    env = _clean_env()
    env.update(
        PATH=f"{fakebin}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID=job, SLURM_NTASKS="1", SLURM_PROCID="0",
        SLURM_STEP_ID="0",
    )
    return env


def _requeue_then_resume(tmp_path: Path, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(uninterrupted run, requeued + resumed run) results for ``cfg`` (which sends the signal)."""
    plain = {k: v for k, v in cfg.items() if not k.startswith("signal_at")}
    _check(_run_script({**plain, "out": str(tmp_path / "ref")}, tmp_path, "ref", _clean_env()))
    env = _fake_slurm(tmp_path, "55")
    job = {**cfg, "out": str(tmp_path / "job")}
    first = _run_script(job, tmp_path, "job", env)
    _check(first)
    assert "EXIT Requeued(0)" in first.stdout, first.stdout
    _check(_run_script(job, tmp_path, "job", {**env, "SLURM_RESTART_COUNT": "1"}))
    return _result(tmp_path / "ref"), _result(tmp_path / "job")


def test_requeue_inside_an_accumulation_group_resumes_exactly(tmp_path: Path) -> None:
    want, got = _requeue_then_resume(tmp_path, {"accumulate": 2, "signal_at_batch": 5, "max_epochs": 2})
    assert got["ckpt_path"].endswith("hpc_ckpt_0.ckpt")
    assert got["global_step"] == want["global_step"] and _same_weights(got["state_dict"], want["state_dict"])


def test_sigterm_is_handled_like_the_warning_signal(tmp_path: Path) -> None:
    """SLURM sends SIGTERM at the time limit when no --signal was given, and on preemption."""
    want, got = _requeue_then_resume(tmp_path, {"signal_at_step": 5, "signal_name": "SIGTERM", "max_epochs": 2})
    assert got["ckpt_path"].endswith("hpc_ckpt_0.ckpt")
    assert got["global_step"] == want["global_step"] and _same_weights(got["state_dict"], want["state_dict"])


def test_requeue_at_a_validation_batch_resumes_exactly(tmp_path: Path) -> None:
    """The signal handled at the last batch of epoch 0 (8 batches), where the epoch's validation runs."""
    want, got = _requeue_then_resume(tmp_path, {"signal_at_step": 8, "max_epochs": 2})
    assert got["ckpt_path"].endswith("hpc_ckpt_0.ckpt")
    assert got["global_step"] == want["global_step"] and _same_weights(got["state_dict"], want["state_dict"])


def test_failed_scontrol_still_saves_and_exits(tmp_path: Path) -> None:
    """`scontrol requeue` failing (no SLURM controller): the checkpoint is written, the message says
    to resubmit, and the process still exits 0."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "scontrol").write_text('#!/bin/sh\necho "slurm_requeue error: Invalid job id" >&2\nexit 1\n')
    (fakebin / "scontrol").chmod(0o755)
    env = _clean_env()
    env.update(PATH=f"{fakebin}{os.pathsep}{env.get('PATH', '')}", SLURM_JOB_ID="77", SLURM_NTASKS="1", SLURM_PROCID="0")
    proc = _run_script({"out": str(tmp_path / "job"), "signal_at_step": 3, "max_epochs": 1}, tmp_path, "job", env)
    _check(proc)
    assert "`scontrol requeue 77` failed (slurm_requeue error: Invalid job id)" in proc.stderr
    assert (tmp_path / "job" / "fulmen_logs" / "version_0" / "checkpoints" / "hpc_ckpt_0.ckpt").is_file()


# ---------------------------------------------------------------------------------------------- real SLURM
def _sh(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


_CONFIG: list[pytest.Config] = []


def _report(msg: str) -> None:
    """Timings, shown even while pytest captures the output."""
    capture = _CONFIG[0].pluginmanager.getplugin("capturemanager") if _CONFIG else None
    if capture is None:
        print(f"[test_slurm] {msg}")
        return
    with capture.global_and_fixture_disabled():
        sys.stderr.write(f"\n[test_slurm] {msg}\n")
        sys.stderr.flush()


@pytest.fixture(scope="session")
def slurm_cluster(pytestconfig: pytest.Config) -> Iterator[None]:
    """A real single-node SLURM cluster on this machine for the session, stopped at the end."""
    _CONFIG.append(pytestconfig)
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root on Linux")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no slurm and no apt-get to install it")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(FIXTURES / "start-local-slurm.sh")], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 and shutil.which("slurmctld") is None:
            # The packages could not be installed here (no Debian mirror): say so loudly, skip.
            message = (
                "\n" + "!" * 78 + "\nSKIPPING the real-SLURM tests: munge/slurm could not be installed on this machine "
                "(apt-get failed).\n" + proc.stdout[-1500:] + proc.stderr[-1500:] + "\n" + "!" * 78
            )
            _report(message)
            pytest.skip("munge/slurm could not be installed here (apt-get failed); see the message above")
        if proc.returncode != 0:
            raise AssertionError(f"start-local-slurm.sh failed:\n{proc.stdout}\n{proc.stderr}")
        _report(f"local SLURM cluster up in {time.monotonic() - t0:.1f}s")
        yield
    finally:
        t1 = time.monotonic()
        stop = subprocess.run(["bash", str(FIXTURES / "stop-local-slurm.sh")], capture_output=True, text=True, timeout=180)
        _report(f"local SLURM cluster stopped in {time.monotonic() - t1:.1f}s (exit {stop.returncode})")


def _job_info(job: str) -> dict[str, str]:
    out = _sh("scontrol", "show", "job", "-o", job, check=False).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


class Job:
    def __init__(self, name: str, folder: Path, ntasks: int, cfg: dict[str, Any]) -> None:
        self.name, self.folder, self.ntasks, self.cfg = name, folder, ntasks, cfg
        self.log = folder / "slurm.log"
        self.out = folder / "out"
        self.id = ""
        self.submitted = 0.0

    def submit(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg_file = self.folder / "cfg.json"
        cfg_file.write_text(json.dumps({**self.cfg, "out": str(self.out)}))
        env = _clean_env()
        batch = self.folder / "job.sh"
        batch.write_text(
            "#!/bin/bash\n"
            f"export OMP_NUM_THREADS=1 PYTHONPATH={env['PYTHONPATH']}\n"
            'echo "[batch] job=$SLURM_JOB_ID restart=${SLURM_RESTART_COUNT:-0} start=$(date +%s.%N)"\n'
            f"srun {sys.executable} {SCRIPT} {cfg_file}\n"
            'rc=$?; echo "[batch] srun exit $rc at $(date +%s.%N)"; exit $rc\n'
        )
        self.submitted = time.monotonic()
        proc = subprocess.run(
            [
                "sbatch", "--parsable", f"--job-name=fulmen-{self.name}", f"--output={self.log}", "--open-mode=append",
                "--requeue", "--time=1", "--signal=USR1@30", "--nodes=1", f"--ntasks-per-node={self.ntasks}",
                "--cpus-per-task=1", f"--chdir={self.folder}", str(batch),
            ],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        self.id = proc.stdout.strip().split(";")[0]

    def wait(self, deadline_s: float = 600) -> dict[str, str]:
        end = self.submitted + deadline_s
        info: dict[str, str] = {}
        while time.monotonic() < end:
            info = _job_info(self.id)
            if info.get("JobState") in _FINAL:
                return info
            time.sleep(2)
        _sh("scancel", self.id, check=False)
        raise AssertionError(f"job {self.id} not done after {deadline_s}s: {info}\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"


@pytest.fixture(scope="session")
def slurm_jobs(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """Both jobs are submitted at once: SLURM runs one while the other waits to be restarted."""
    base = tmp_path_factory.mktemp("slurm-jobs")
    # Each run is signalled 0-30 s after it starts (slurmctld's 30 s tick, --time=1 --signal=USR1@30):
    # about 40 s of training guarantees the first run is signalled, so at least one requeue.
    # No validation (val=False) while a requeue at a validation batch does not resume exactly (see
    # test_requeue_at_a_validation_batch_resumes_exactly); the signal lands on a random batch here.
    jobs = {
        "single": Job("single", base / "single", 1, {"n": 96, "max_epochs": 4, "step_sleep": 0.85}),
        "ddp": Job("ddp", base / "ddp", 2, {"n": 128, "max_epochs": 3, "devices": 2, "step_sleep": 1.7}),
    }
    for job in jobs.values():
        job.submit()
    return jobs


def _reference(tmp: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The same training, uninterrupted and outside SLURM (fulmen starts the DDP processes itself)."""
    proc = _run_script({**cfg, "out": str(tmp / "ref"), "step_sleep": 0.0}, tmp, "ref", _clean_env())
    _check(proc)
    return _result(tmp / "ref")


def _check_requeued_job(job: Job, tmp: Path) -> None:
    want = _reference(tmp, job.cfg)
    info = job.wait()
    elapsed = time.monotonic() - job.submitted
    log = job.log_text()
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log}"
    restarts = int(info.get("Restarts", "0"))
    assert restarts >= 1, f"never requeued: {info}\n{log}"
    assert f"requeueing job {job.id}" in log, log
    # every restart resumed from the hpc checkpoint its predecessor wrote
    starts = re.findall(r"\[slurm_script rank=0 restart=(\S+)\] FIT_START global_step=(\d+) ckpt_path=(\S+) early_signals=(\d+)", log)
    assert [s[0] for s in starts] == ["-", *map(str, range(1, restarts + 1))], log
    assert starts[0][1:3] == ("0", "None")
    for restart, (_, _, path, _) in enumerate(starts[1:], start=0):
        assert Path(path).name == f"hpc_ckpt_{restart}.ckpt", log
    steps = [int(s[1]) for s in starts]
    assert steps == sorted(steps) and steps[-1] > 0
    early = sum(1 for s in starts if s[3] != "0")
    for rank in range(job.ntasks):
        got = _result(job.out, rank)
        assert got["restart_count"] == str(restarts) and got["world_size"] == job.ntasks
        assert Path(got["ckpt_path"]).name == f"hpc_ckpt_{restarts - 1}.ckpt"
        assert got["global_step"] == want["global_step"]
        assert _same_weights(got["state_dict"], want["state_dict"]), f"rank {rank}: weights differ from the uninterrupted run"
    _report(
        f"job {job.name} ({job.ntasks} task(s)): COMPLETED after {restarts} requeue(s) in {elapsed:.0f}s; "
        f"resumed at steps {steps[1:]}; the signal came before fit started in {early} of {len(starts)} run(s)"
    )


@pytest.mark.slurm
def test_real_slurm_single_task_requeue_and_resume(slurm_jobs: dict[str, Job], tmp_path: Path) -> None:
    _check_requeued_job(slurm_jobs["single"], tmp_path)


@pytest.mark.slurm
def test_real_slurm_two_task_ddp_requeue_and_resume(slurm_jobs: dict[str, Job], tmp_path: Path) -> None:
    _check_requeued_job(slurm_jobs["ddp"], tmp_path)
