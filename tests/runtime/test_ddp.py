"""Data-parallel training with real processes: fulmen's own launcher, torchrun, two torchrun
"nodes"; gloo on the CPU. Each test runs ``tests/helpers/ddp_script.py`` and reads back what
every rank wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "ddp_script.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[2] / "src"), env.get("PYTHONPATH", "")])
    return env


def run(cfg: dict[str, Any], *, torchrun: list[str] | None = None, check: bool = True, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    command = [str(TORCHRUN), *torchrun, str(SCRIPT)] if torchrun is not None else [sys.executable, str(SCRIPT)]
    proc = subprocess.run(
        [*command, json.dumps(cfg)], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def results(out: Path, world_size: int) -> list[dict[str, Any]]:
    found = sorted(out.glob("rank*.pt"))
    assert [p.name for p in found] == [f"rank{i}.pt" for i in range(world_size)], found
    return [torch.load(p, weights_only=False) for p in found]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5) for k in a)


def test_two_processes_from_a_plain_script_train_like_one_with_the_double_batch(tmp_path: Path) -> None:
    run({"out": str(tmp_path / "ddp"), "devices": 2, "batch_size": 8})
    r0, r1 = results(tmp_path / "ddp", 2)
    run({"out": str(tmp_path / "one"), "devices": 1, "strategy": "auto", "batch_size": 16})
    (single,) = results(tmp_path / "one", 1)

    assert (r0["world_size"], r0["global_rank"], r1["global_rank"], r1["local_rank"]) == (2, 0, 1, 1)
    assert r0["env_kind"] == r1["env_kind"] == "fulmen"
    # every rank ends with the same weights, and they are those of one process on batches twice as large
    assert same_weights(r0["state_dict"], r1["state_dict"])
    assert close_weights(r0["state_dict"], single["state_dict"])
    assert r0["global_step"] == single["global_step"] == 8  # 64 samples / 16 per step, 2 epochs
    # the data is split: each rank trains on its own half every epoch, the halves cover the dataset
    assert not set(r0["seen_train"]) & set(r1["seen_train"])
    assert sorted(r0["seen_train"] + r1["seen_train"]) == sorted(list(range(64)) * 2)
    assert not set(r0["seen_val"]) & set(r1["seen_val"])
    # sync_dist: sums and maxima over the ranks, means weighted by batch sizes (= the single-process mean)
    for r in (r0, r1):
        m = r["callback_metrics"]
        assert m["train_count"] == 64 and m["val_count"] == 64 and m["rank_max"] == 1.0
        assert m["val_loss"] == pytest.approx(single["callback_metrics"]["val_loss"], rel=1e-5)
    # one set of logs and checkpoints, written by rank 0
    runs = sorted(p.name for p in (tmp_path / "ddp" / "fulmen_logs").iterdir())
    assert runs == ["version_0"]
    folder = tmp_path / "ddp" / "fulmen_logs" / "version_0"
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["epoch=1-step=8.ckpt"]
    lines = (folder / "metrics.csv").read_text().splitlines()
    assert len([ln for ln in lines[1:] if ln.split(",")[1] == "0"]) == 1  # step 0 logged once, not once per rank
    assert r0["log_dir"] == r1["log_dir"] == str(folder)


def test_gradient_accumulation_all_reduces_only_on_the_stepping_batch(tmp_path: Path) -> None:
    run({"out": str(tmp_path / "ddp"), "devices": 2, "batch_size": 4, "accumulate": 4, "max_epochs": 1})
    r0, r1 = results(tmp_path / "ddp", 2)
    run({"out": str(tmp_path / "one"), "devices": 1, "strategy": "auto", "batch_size": 8, "accumulate": 4, "max_epochs": 1})
    (single,) = results(tmp_path / "one", 1)
    assert r0["global_step"] == single["global_step"] == 2  # 8 micro-batches per rank, 4 per step
    assert same_weights(r0["state_dict"], r1["state_dict"])
    assert close_weights(r0["state_dict"], single["state_dict"])
    # one all-reduce per optimizer step (the model's gradients fit in one bucket), not one per micro-batch
    assert r0["allreduce_calls"] == r1["allreduce_calls"] == 2


def test_uneven_evaluation_shares_have_no_duplicates_and_the_exact_mean(tmp_path: Path) -> None:
    cfg = {"n": 63, "batch_size": 8, "max_epochs": 1, "test": True}
    run({**cfg, "out": str(tmp_path / "ddp"), "devices": 2})
    r0, r1 = results(tmp_path / "ddp", 2)
    # validation: 63 samples split 32/31, no sample twice, the counts add up to the dataset
    assert sorted(r0["seen_val"] + r1["seen_val"]) == list(range(63))
    assert r0["callback_metrics"]["val_count"] == r1["callback_metrics"]["val_count"] == 63
    # training pads the shorter share (both ranks must take the same steps): 32 each
    assert len(r0["seen_train"]) == len(r1["seen_train"]) == 32
    # the weighted mean over both ranks is the mean over the whole set, computed in one process
    ref = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Regressor().net
    net.load_state_dict({k.removeprefix("net."): v for k, v in ref["state_dict"].items()})
    data = mod.Indexed(63)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(net(data.x), data.y).item()
    assert r0["test_metrics"][0]["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert r1["test_metrics"][0]["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_a_stop_decided_on_one_rank_is_taken_by_all(tmp_path: Path) -> None:
    run({"out": str(tmp_path), "devices": 2, "max_epochs": 5, "early_stop_rank1": True})
    r0, r1 = results(tmp_path, 2)
    assert r0["global_step"] == r1["global_step"] == 4  # stopped after the first epoch's validation
    assert same_weights(r0["state_dict"], r1["state_dict"])


def test_a_failing_rank_ends_the_run_with_a_clear_message(tmp_path: Path) -> None:
    proc = run({"out": str(tmp_path), "devices": 2, "fail_rank1_at_step": 2}, check=False, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert "[fulmen] rank 1" in proc.stderr and "exited with code" in proc.stderr
    assert not list(tmp_path.glob("rank*.pt"))


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_ddp_run_resumes_bitwise(tmp_path: Path, workers: int) -> None:
    cfg = {
        "devices": 2,
        "shuffle": True,
        "dropout": 0.2,
        "max_epochs": 3,
        "accumulate": 2,
        "batch_size": 4,
        "num_workers": workers,
        "every_n_train_steps": 1,
        "val": True,
    }
    run({**cfg, "out": str(tmp_path / "full"), "root": str(tmp_path / "full")})
    full = results(tmp_path / "full", 2)
    # 64 samples / 2 ranks / 4 per batch = 8 batches per epoch, 4 steps: killed mid-epoch 2 (after step 6)
    proc = run({**cfg, "out": str(tmp_path / "cut"), "root": str(tmp_path / "run"), "kill_after_step": 6}, check=False)
    assert proc.returncode != 0
    assert not list((tmp_path / "cut").glob("rank*.pt"))
    run({**cfg, "out": str(tmp_path / "resumed"), "root": str(tmp_path / "run"), "ckpt_path": "last"})
    resumed = results(tmp_path / "resumed", 2)
    assert resumed[0]["global_step"] == full[0]["global_step"] == 12
    for a, b in zip(full, resumed):
        assert same_weights(a["state_dict"], b["state_dict"])


def test_torchrun_two_processes(tmp_path: Path) -> None:
    proc = run({"out": str(tmp_path / "tr"), "devices": 2}, torchrun=["--nproc-per-node=2", "--standalone"])
    r0, r1 = results(tmp_path / "tr", 2)
    # rank 0 prints the resolved world once, before training
    assert proc.stderr.count("[fulmen] DDPStrategy: 2 processes on 1 node(s), 2 per node, started by torchrun") == 1
    assert "backend gloo, rendezvous" in proc.stderr
    run({"out": str(tmp_path / "own"), "devices": 2})
    own = results(tmp_path / "own", 2)
    assert r0["env_kind"] == "torchrun"
    assert same_weights(r0["state_dict"], r1["state_dict"])
    assert same_weights(r0["state_dict"], own[0]["state_dict"])  # same as fulmen's own launcher


def test_devices_that_disagree_with_torchrun_fail_before_training(tmp_path: Path) -> None:
    proc = run({"out": str(tmp_path), "devices": 3}, torchrun=["--nproc-per-node=2", "--standalone"], check=False)
    assert proc.returncode != 0
    assert "Trainer(devices=3, num_nodes=1) asks for 3 processes, but torchrun started 2" in proc.stderr
    assert "--nproc-per-node=3" in proc.stderr
    assert not (tmp_path / "fulmen_logs").exists()


def test_two_torchrun_nodes_train_one_model(tmp_path: Path) -> None:
    from fulmen.runtime.launch import free_port

    port = free_port()
    cfg = json.dumps({"out": str(tmp_path), "devices": 2, "num_nodes": 2, "n": 64, "batch_size": 4})
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]  # noqa: SIM115 (files, not pipes: no pipe fills up)
    nodes = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes=2",
                "--nproc-per-node=2",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=fulmen-test",
                f"--rdzv-conf=is_host={'true' if i == 0 else 'false'}",
                str(SCRIPT),
                cfg,
            ],
            env=_env(),
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        for node in nodes:
            node.wait(timeout=240)
    finally:
        for node, log in zip(nodes, logs):
            if node.poll() is None:
                node.send_signal(signal.SIGKILL)
            log.close()
    output = "\n".join((tmp_path / f"node{i}.log").read_text()[-3000:] for i in range(2))
    assert all(n.returncode == 0 for n in nodes), output
    ranks = results(tmp_path, 4)
    assert sorted(r["node_rank"] for r in ranks) == [0, 0, 1, 1]
    assert all(r["world_size"] == 4 for r in ranks)
    for r in ranks[1:]:
        assert same_weights(ranks[0]["state_dict"], r["state_dict"])
    seen = [i for r in ranks for i in r["seen_train"]]
    assert sorted(seen) == sorted(list(range(64)) * 2)  # each sample once per epoch, over all four ranks
    # one set of logs and checkpoints
    assert sorted(p.name for p in (tmp_path / "fulmen_logs").iterdir()) == ["version_0"]
    assert len(list((tmp_path / "fulmen_logs" / "version_0" / "checkpoints").iterdir())) == 1


@pytest.mark.parametrize("method", ["ddp_spawn", "ddp_fork"])
def test_spawned_processes_hand_their_results_back(tmp_path: Path, method: str) -> None:
    script = SCRIPT.with_name("spawn_script.py")
    proc = subprocess.run(
        [sys.executable, str(script), method, str(tmp_path / "spawn")], env=_env(), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    got = torch.load(tmp_path / "spawn" / "result.pt", weights_only=False)
    run({"out": str(tmp_path / "ddp"), "devices": 2, "batch_size": 8})
    reference = results(tmp_path / "ddp", 2)[0]
    # this process holds the trained weights: those of a 2-process run started by fulmen's launcher
    assert same_weights(got["state_dict"], reference["state_dict"])
    assert got["global_step"] == 8
    assert got["callback_metrics"]["val_count"] == 64  # metrics reduced over both processes
    assert got["best_model_path"] and Path(got["best_model_path"]).is_file()  # the callback's state came back
    assert got["validated"][0]["val_loss"] == pytest.approx(reference["callback_metrics"]["val_loss"], rel=1e-6)


def test_several_devices_from_an_interactive_session_point_to_ddp_spawn(tmp_path: Path) -> None:
    code = (
        "import fulmen, sys\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from ddp_script import Regressor, Indexed\n"
        "from torch.utils.data import DataLoader\n"
        f"t = fulmen.Trainer(accelerator='cpu', devices=2, max_epochs=1, default_root_dir={str(tmp_path)!r})\n"
        "t.fit(Regressor(), DataLoader(Indexed(16), batch_size=4))\n"
    )
    proc = subprocess.run([sys.executable, "-"], input=code, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Trainer(devices>1) in an interactive session" in proc.stderr
    assert "strategy='ddp_spawn'" in proc.stderr


def test_several_nodes_without_a_launcher_say_how_to_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    import fulmen

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(fulmen.FlagError, match=r"Trainer\(num_nodes=2\) but this process was not started by torchrun or SLURM") as err:
        fulmen.Trainer(accelerator="cpu", devices=2, num_nodes=2, logger=False)
    assert "torchrun --nnodes=2 --nproc-per-node=2" in str(err.value)
    assert "--ntasks-per-node=2" in str(err.value)


def test_an_incomplete_rendezvous_fails_within_its_timeout(tmp_path: Path) -> None:
    from fulmen.runtime.launch import free_port

    env = _env()
    # rank 1 of 2, and nobody hosts the rendezvous: it must give up, not hang
    env.update(
        {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    )
    env["FULMEN_RENDEZVOUS_TIMEOUT"] = "3"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps({"out": str(tmp_path), "devices": 2})],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "[fulmen] rank 1: the gloo rendezvous at 127.0.0.1:" in proc.stderr
    assert "did not complete within 3 s (2 processes expected" in proc.stderr
    assert not list(tmp_path.glob("rank*.pt"))


def test_torchrun_restarts_a_killed_worker_and_the_run_resumes(tmp_path: Path) -> None:
    cfg = {"devices": 2, "shuffle": True, "dropout": 0.2, "max_epochs": 2, "batch_size": 4, "every_n_train_steps": 2}
    run({**cfg, "out": str(tmp_path / "full"), "root": str(tmp_path / "full")})
    full = results(tmp_path / "full", 2)
    # rank 0 is killed after step 6 on the first attempt; torchrun starts both workers again and
    # fit (no ckpt_path in the script) resumes from the run's newest checkpoint by itself
    proc = run(
        {**cfg, "out": str(tmp_path / "restarted"), "root": str(tmp_path / "run"), "kill_after_step": 6},
        torchrun=["--nproc-per-node=2", "--standalone", "--max-restarts=1"],
    )
    assert proc.returncode == 0
    restarted = results(tmp_path / "restarted", 2)
    assert restarted[0]["ckpt_path"] is not None and restarted[0]["ckpt_path"].endswith(".ckpt")
    # from the last checkpoint (step 4: the kill at step 6 comes before that step's save), not from scratch
    assert restarted[0]["start_step"] == restarted[1]["start_step"] == 4
    assert restarted[0]["global_step"] == full[0]["global_step"] == 16
    for a, b in zip(full, restarted):
        assert same_weights(a["state_dict"], b["state_dict"])


def test_a_torchmetrics_metric_is_synchronised_across_processes(tmp_path: Path) -> None:
    run({"out": str(tmp_path), "devices": 2, "max_epochs": 1, "torchmetric": True})
    r0, r1 = results(tmp_path, 2)
    # each process saw 32 of the 64 validation samples; compute() sums over both
    assert r0["callback_metrics"]["val_metric_total"] == r1["callback_metrics"]["val_metric_total"] == 64
