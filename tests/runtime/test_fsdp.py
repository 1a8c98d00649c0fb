"""Fully sharded data parallel (FSDP2) with real processes: two CPU processes on gloo, started by
fulmen's own launcher. Each multi-process test runs ``tests/helpers/fsdp_script.py`` and reads
back what every rank wrote; the configuration checks run in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fulmen.errors import FlagError
from fulmen.runtime.fsdp import FSDPStrategy, consolidate_checkpoint, optimizer_state_by_index
from fulmen.runtime.strategy import SingleDeviceStrategy, Strategy

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "fsdp_script.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[2] / "src"), env.get("PYTHONPATH", "")])
    return env


def run(tmp_path: Path, cfg: dict[str, Any], *, check: bool = True, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Run the script; its output goes to a file (not a pipe that could fill up)."""
    log = tmp_path / f"{Path(cfg['out']).name}.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), json.dumps(cfg)], env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout
        )
    output = log.read_text()
    if check and proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}\n{output[-8000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, "")


def results(out: Path, world_size: int) -> list[dict[str, Any]]:
    found = sorted(out.glob("rank*.pt"))
    assert [p.name for p in found] == [f"rank{i}.pt" for i in range(world_size)], found
    return [torch.load(p, weights_only=False) for p in found]


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-5) for k in a)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def momentum(optim: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {str(i): s["momentum_buffer"] for i, s in optim["state"].items()}


def _script_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fsdp_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- two processes ---------------------------------------------------------------------------------------
def test_fsdp_trains_like_one_process_with_the_double_batch_and_writes_one_full_checkpoint(tmp_path: Path) -> None:
    """Sharded Linear layers plus a parameter of the system itself (the root unit), two parameter
    groups, gradient-norm clipping on DTensor gradients."""
    run(tmp_path, {"out": str(tmp_path / "fsdp"), "clip": 0.5})
    r0, r1 = results(tmp_path / "fsdp", 2)
    run(tmp_path, {"out": str(tmp_path / "one"), "strategy": "auto", "devices": 1, "batch_size": 16, "clip": 0.5})
    (single,) = results(tmp_path / "one", 1)

    assert r0["param_types"] == r1["param_types"] == ["DTensor"]  # really sharded
    assert single["param_types"] == ["Parameter"]
    assert r0["global_step"] == single["global_step"] == 8
    assert same(r0["state_dict"], r1["state_dict"])
    assert close(r0["state_dict"], single["state_dict"])
    # the optimizer state (gathered from the shards, in torch's format) is the single process's too
    assert r0["optimizer"]["param_groups"] == single["optimizer"]["param_groups"]
    assert close(momentum(r0["optimizer"]), momentum(single["optimizer"]))
    assert r0["callback_metrics"]["val_loss"] == pytest.approx(single["callback_metrics"]["val_loss"], rel=1e-5)

    # one checkpoint, written by rank 0, an ordinary file with full tensors
    folder = tmp_path / "fsdp" / "fulmen_logs" / "version_0" / "checkpoints"
    (path,) = folder.iterdir()
    assert path.name == "epoch=1-step=8.ckpt"
    ckpt = torch.load(path, weights_only=True)
    assert {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()} == {
        k: tuple(v.shape) for k, v in single["state_dict"].items()
    }
    assert same(ckpt["state_dict"], r0["state_dict"])
    (opt_state,) = ckpt["optimizer_states"]
    assert opt_state["param_groups"] == r0["optimizer"]["param_groups"]
    assert same(momentum(opt_state), momentum(r0["optimizer"]))
    # and it loads in one process, without FSDP
    system = _script_module().ShardedRegressor.load_from_checkpoint(path)
    assert same(system.state_dict(), r0["state_dict"])


def test_gradient_accumulation_and_value_clipping_match_one_process(tmp_path: Path) -> None:
    cfg = {"accumulate": 2, "clip": 0.3, "clip_algorithm": "value", "max_epochs": 1}
    run(tmp_path, {**cfg, "out": str(tmp_path / "fsdp"), "batch_size": 4})
    r0, r1 = results(tmp_path / "fsdp", 2)
    run(tmp_path, {**cfg, "out": str(tmp_path / "one"), "strategy": "auto", "devices": 1, "batch_size": 8})
    (single,) = results(tmp_path / "one", 1)
    assert r0["global_step"] == single["global_step"] == 4
    assert same(r0["state_dict"], r1["state_dict"])
    assert close(r0["state_dict"], single["state_dict"])


def test_killed_fsdp_run_resumes_bitwise_and_its_checkpoint_resumes_in_one_process(tmp_path: Path) -> None:
    cfg = {"shuffle": True, "max_epochs": 3, "every_n_train_steps": 1, "batch_size": 4}
    run(tmp_path, {**cfg, "out": str(tmp_path / "full"), "root": str(tmp_path / "full")})
    full = results(tmp_path / "full", 2)
    # 64 samples / 2 ranks / 4 per batch = 8 steps per epoch: killed in the middle of epoch 1
    proc = run(tmp_path, {**cfg, "out": str(tmp_path / "cut"), "root": str(tmp_path / "run"), "kill_after_step": 10}, check=False)
    assert proc.returncode != 0
    assert not list((tmp_path / "cut").glob("rank*.pt"))
    run(tmp_path, {**cfg, "out": str(tmp_path / "resumed"), "root": str(tmp_path / "run"), "ckpt_path": "last"})
    resumed = results(tmp_path / "resumed", 2)
    assert resumed[0]["global_step"] == full[0]["global_step"] == 24
    for a, b in zip(full, resumed):
        assert same(a["state_dict"], b["state_dict"])
        assert same(momentum(a["optimizer"]), momentum(b["optimizer"]))

    # the FSDP checkpoint written at the end of epoch 0 resumes without FSDP, in one process
    # (with the double batch, unshuffled: the same steps for both runs)
    cfg = {"max_epochs": 2, "every_n_train_steps": 1, "batch_size": 4}
    run(tmp_path, {**cfg, "out": str(tmp_path / "plain"), "root": str(tmp_path / "plain")})
    (fsdp_end, _) = results(tmp_path / "plain", 2)
    ckpt = tmp_path / "plain" / "fulmen_logs" / "version_0" / "checkpoints" / "epoch=0-step=8.ckpt"
    run(
        tmp_path,
        {**cfg, "out": str(tmp_path / "single"), "strategy": "auto", "devices": 1, "batch_size": 8, "ckpt_path": str(ckpt)},
    )
    (single,) = results(tmp_path / "single", 1)
    assert single["global_step"] == 16
    assert close(single["state_dict"], fsdp_end["state_dict"])


def test_sharded_checkpoint_folder_round_trips_and_consolidates(tmp_path: Path) -> None:
    out = tmp_path / "rt"
    run(tmp_path, {"out": str(out), "state_dict_type": "sharded", "sharded_roundtrip": True, "checkpointing": False})
    r0, r1 = results(out, 2)
    folder = out / "sharded.ckpt"
    # the layout: DCP's metadata, one shard file per rank, and the rest of the checkpoint
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.ckpt"]
    meta = torch.load(folder / "meta.ckpt", weights_only=True)
    assert meta["state_dict"] == {} and meta["state_dict_type"] == "sharded" and meta["global_step"] == 8
    for r in (r0, r1):
        rt = r["roundtrip"]
        before, scrambled, after = rt["before"], rt["scrambled"], rt["after"]
        assert not same(before[0], scrambled[0])  # the load had something to do
        assert same(before[0], after[0]) and same(before[0], r["state_dict"])
        assert same(momentum(before[1]), momentum(after[1]))
        assert before[1]["param_groups"] == after[1]["param_groups"]
        assert rt["meta_step"] == 8
    # one ordinary checkpoint from the folder, in this process (no process group)
    ckpt = consolidate_checkpoint(folder, tmp_path / "one.ckpt")
    assert same(ckpt["state_dict"], r0["state_dict"])
    assert same(momentum(ckpt["optimizer_states"][0]), momentum(r0["optimizer"]))
    assert ckpt["optimizer_states"][0]["param_groups"] == r0["optimizer"]["param_groups"]
    system = _script_module().ShardedRegressor.load_from_checkpoint(tmp_path / "one.ckpt")
    assert same(system.state_dict(), r0["state_dict"])


@pytest.mark.parametrize(
    ("cfg", "atol"),
    [
        ({"mixed_precision": "bf16"}, 0.02),  # MixedPrecisionPolicy(param_dtype=bfloat16)
        ({"precision": "bf16-mixed"}, 0.02),  # the Trainer's autocast
        ({"cpu_offload": True, "reshard_after_forward": False}, 0.0),
    ],
    ids=["mixed_precision_bf16", "precision_bf16_mixed", "cpu_offload"],
)
def test_precision_and_offload_options_train_close_to_float32(tmp_path: Path, cfg: dict[str, Any], atol: float) -> None:
    run(tmp_path, {**cfg, "out": str(tmp_path / "opt"), "max_epochs": 1})
    r0, r1 = results(tmp_path / "opt", 2)
    run(tmp_path, {"out": str(tmp_path / "ref"), "max_epochs": 1})
    ref, _ = results(tmp_path / "ref", 2)
    assert same(r0["state_dict"], r1["state_dict"])
    assert all(v.dtype == torch.float32 for v in r0["state_dict"].values())  # sharded weights stay float32
    if atol == 0.0:
        assert same(r0["state_dict"], ref["state_dict"])
    else:
        assert close(r0["state_dict"], ref["state_dict"], atol=atol)
        assert not same(r0["state_dict"], ref["state_dict"])  # lower precision really was used


# -- configuration (no processes) ----------------------------------------------------------------------
def test_trainer_builds_an_fsdp_strategy_without_starting_processes() -> None:
    import fulmen

    trainer = fulmen.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, FSDPStrategy)
    assert trainer.world_size == 2 and trainer.global_rank == 0
    assert trainer.strategy.state_dict_type == "full"
    assert trainer.strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}
    assert trainer.strategy.model is None


def test_16_mixed_is_refused() -> None:
    import fulmen

    with pytest.raises(FlagError, match="precision='bf16-mixed'"):
        fulmen.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), precision="16-mixed", logger=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"state_dict_type": "local"}, "expected 'full' or 'sharded'"),
        ({"auto_wrap_policy": {int}}, "set of nn.Module classes"),
        ({"auto_wrap_policy": "Linear"}, "set of nn.Module classes"),
        ({"mixed_precision": "bf16"}, "MixedPrecisionPolicy"),
        ({"mixed_precision": {"param_dtyp": torch.bfloat16}}, "param_dtyp"),
        ({"cpu_offload": "yes"}, "True or False"),
        ({"reshard_after_forward": 0}, "positive int"),
        ({"start_method": "spawn"}, "start_method='popen'"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(FlagError, match=match):
        FSDPStrategy(**kwargs)


def test_options_are_translated_to_torch_policies() -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    s = FSDPStrategy(auto_wrap_policy={nn.Linear}, mixed_precision=torch.bfloat16, reshard_after_forward=False)
    assert s.auto_wrap_policy is not None
    assert s.auto_wrap_policy(nn.Linear(1, 1)) and not s.auto_wrap_policy(nn.ReLU())
    assert s.mixed_precision == MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    assert FSDPStrategy(auto_wrap_policy=nn.Linear).auto_wrap_policy(nn.Linear(1, 1))  # type: ignore[misc]
    policy = MixedPrecisionPolicy(param_dtype=torch.float16)
    assert FSDPStrategy(mixed_precision=policy).mixed_precision is policy
    assert FSDPStrategy(mixed_precision={"param_dtype": torch.bfloat16}).mixed_precision == MixedPrecisionPolicy(
        param_dtype=torch.bfloat16
    )
    pick = FSDPStrategy(auto_wrap_policy=lambda m: isinstance(m, nn.ReLU)).auto_wrap_policy
    assert pick is not None and pick(nn.ReLU())


def test_without_a_process_group_the_state_dict_methods_are_the_modules_own() -> None:
    s = FSDPStrategy()
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert same(s.model_state_dict(net), net.state_dict())
    assert s.optimizer_state_dict(opt) == opt.state_dict()
    with pytest.raises(RuntimeError, match="process group"):
        s.setup_module(net)


def test_optimizer_state_by_index_numbers_parameters_in_group_order() -> None:
    t = torch.ones(1)
    by_name = {
        "state": {"b": {"momentum_buffer": t}, "c": {"momentum_buffer": 2 * t}},
        "param_groups": [{"lr": 1.0, "params": ["a", "b"]}, {"lr": 0.5, "params": ["c"]}],
    }
    out = optimizer_state_by_index(by_name)
    assert out["param_groups"] == [{"lr": 1.0, "params": [0, 1]}, {"lr": 0.5, "params": [2]}]
    assert set(out["state"]) == {1, 2} and torch.equal(out["state"][2]["momentum_buffer"], 2 * t)
    assert optimizer_state_by_index({}) == {}
    # the same layout torch writes itself
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[1].parameters(), "lr": 0.5}], lr=1.0, momentum=0.9)
    assert [g["params"] for g in optimizer_state_by_index(by_name)["param_groups"]] == [[0, 1], [2]]
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == [[0, 1], [2, 3]]


def test_base_strategy_state_dict_methods_are_the_plain_ones() -> None:
    s: Strategy = SingleDeviceStrategy(torch.device("cpu"), __import__("fulmen").runtime.precision.Precision())
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    state, ostate = s.model_state_dict(net), s.optimizer_state_dict(opt)
    other = nn.Linear(2, 1)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    s.load_model_state_dict(other, state)
    s.load_optimizer_state_dict(other_opt, ostate)
    assert same(other.state_dict(), net.state_dict())
    assert torch.equal(other_opt.state_dict()["state"][0]["momentum_buffer"], ostate["state"][0]["momentum_buffer"])
    with pytest.raises(RuntimeError, match="Missing key"):
        s.load_model_state_dict(other, {})
    s.load_model_state_dict(other, {}, strict=False)


def test_checkpoints_go_through_the_strategy(tmp_path: Path) -> None:
    """build_checkpoint and resume call the strategy's state-dict methods (here: a spy)."""
    from helpers.systems import TinySystem, make_loader, quiet_trainer

    calls: list[str] = []

    class Spy(SingleDeviceStrategy):
        def model_state_dict(self, system: nn.Module) -> dict[str, Any]:
            calls.append("model_state_dict")
            return super().model_state_dict(system)

        def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
            calls.append("optimizer_state_dict")
            return super().optimizer_state_dict(optimizer)

        def load_model_state_dict(self, system: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
            calls.append("load_model_state_dict")
            super().load_model_state_dict(system, state, strict)

        def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
            calls.append("load_optimizer_state_dict")
            super().load_optimizer_state_dict(optimizer, state)

    from fulmen.runtime.precision import Precision

    trainer = quiet_trainer(tmp_path, max_epochs=1, strategy=Spy(torch.device("cpu"), Precision()), enable_checkpointing=False)
    trainer.fit(TinySystem(), make_loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert calls.count("model_state_dict") >= 1 and calls.count("optimizer_state_dict") >= 1
    calls.clear()
    resumed = quiet_trainer(tmp_path, max_epochs=2, strategy=Spy(torch.device("cpu"), Precision()), enable_checkpointing=False)
    resumed.fit(TinySystem(), make_loader(), ckpt_path=tmp_path / "a.ckpt")
    assert calls[:2] == ["load_model_state_dict", "load_optimizer_state_dict"]


def test_sharded_checkpoints_from_model_checkpoint_resume_exactly(tmp_path: Path) -> None:
    cfg = {"shuffle": True, "state_dict_type": "sharded", "every_n_train_steps": 4, "save_last": False}
    run(tmp_path, {**cfg, "out": str(tmp_path / "full"), "root": str(tmp_path / "full")})
    full = results(tmp_path / "full", 2)
    # ModelCheckpoint writes each checkpoint as a folder of shards, through the strategy
    folder = tmp_path / "full" / "fulmen_logs" / "version_0" / "checkpoints"
    saved = sorted(p.name for p in folder.iterdir())
    assert saved == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    assert (folder / "epoch=0-step=4.ckpt").is_dir()
    assert sorted(p.name for p in (folder / "epoch=0-step=4.ckpt").iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    proc = run(tmp_path, {**cfg, "out": str(tmp_path / "cut"), "root": str(tmp_path / "run"), "kill_after_step": 6}, check=False)
    assert proc.returncode != 0
    start = tmp_path / "run" / "fulmen_logs" / "version_0" / "checkpoints" / "epoch=0-step=4.ckpt"
    run(tmp_path, {**cfg, "out": str(tmp_path / "resumed"), "root": str(tmp_path / "run"), "ckpt_path": str(start)})
    resumed = results(tmp_path / "resumed", 2)
    assert resumed[0]["global_step"] == 8
    for a, b in zip(full, resumed):
        assert same(a["state_dict"], b["state_dict"])


def test_manual_optimization_with_clipping_matches_one_process(tmp_path: Path) -> None:
    cfg = {"manual": True, "checkpointing": False}
    run(tmp_path, {**cfg, "out": str(tmp_path / "fsdp")})
    run(tmp_path, {**cfg, "out": str(tmp_path / "one"), "strategy": "auto", "devices": 1, "batch_size": 16})
    (r0, r1), (one,) = results(tmp_path / "fsdp", 2), results(tmp_path / "one", 1)
    assert r0["global_step"] == one["global_step"] == 8
    assert same(r0["state_dict"], r1["state_dict"])
    assert close(r0["state_dict"], one["state_dict"])
