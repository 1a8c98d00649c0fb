"""Sharded checkpoint folders (FSDP, ``state_dict_type="sharded"``) as first-class checkpoints, with
real processes on CPU/gloo (``tests/helpers/fsdp_ckpt_script.py``, started as in test_fsdp.py):
synchronous and asynchronous saves, ``ckpt_path="last"``/``"best"``, ``save_last``, top-k rotation,
``fulmen verify``, an exact resume, and resuming in another world size (2 -> 1 and 1 -> 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fulmen.checkpoint.verify import verify_run
from fulmen.runtime import fsdp
from fulmen.runtime.fsdp import MANIFEST_KEY, META_FILE, read_sharded_folder

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "fsdp_ckpt_script.py"
RUN = Path("fulmen_logs") / "version_0"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[2] / "src"), env.get("PYTHONPATH", "")])
    return env


def run(out: Path, cfg: dict[str, Any], *, check: bool = True) -> list[dict[str, Any]]:
    """Run the script with its results in ``out``; the per-rank results (none when it failed)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.name + ".log")
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), json.dumps({"out": str(out), **cfg})],
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=180,
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}\n{log.read_text()[-8000:]}")
    if not check:
        assert proc.returncode != 0, "the run was expected to be killed"
    return [torch.load(p, weights_only=False) for p in sorted(out.glob("rank*.pt"))]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5) for k in a)


def momentum(optim: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {str(i): s["momentum_buffer"] for i, s in optim["state"].items()}


def audit_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()]


# Two-process runs shared by several tests: 32 samples, 2 ranks x 4 per batch = 4 steps per epoch,
# a checkpoint folder every 2 steps, save_last=True.
@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("two")
    run(base / "sync", {"shuffle": False})
    run(base / "async", {"async": True})
    return {"sync": base / "sync", "async": base / "async"}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sharded_saves_of_a_two_process_fit_are_complete_logged_folders(two: dict[str, Path], mode: str) -> None:
    out = two[mode]
    r0, r1 = run_results = [torch.load(out / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    assert r0["async"] is (mode == "async") and r0["param_types"] == ["DTensor"]
    assert same(r0["state_dict"], r1["state_dict"]) and len(run_results) == 2
    folder = out / RUN / "checkpoints"
    names = sorted(os.listdir(folder))
    # every folder complete under its name, no temporary folder left, last.ckpt a link to the newest
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert (folder / "last.ckpt").is_symlink() and os.readlink(folder / "last.ckpt") == "epoch=1-step=8.ckpt"
    assert r0["last_model_path"] == str(folder / "last.ckpt")
    for name in names[:-1]:
        step = int(name.split("step=")[1].split(".")[0])
        assert sorted(os.listdir(folder / name)) == [".metadata", "__0_0.distcp", "__1_0.distcp", META_FILE]
        meta = torch.load(folder / name / META_FILE, weights_only=True)
        assert meta["global_step"] == step and meta["state_dict"] == {}
        manifest = meta[MANIFEST_KEY]
        assert sorted(manifest) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
        for shard, rec in manifest.items():
            data = (folder / name / shard).read_bytes()
            assert rec["size"] == len(data)
            import hashlib

            assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    # the audit log names each folder's meta.ckpt, in order, once it was in place
    assert [e["file"] for e in audit_lines(out / RUN)] == [f"checkpoints/{n}/{META_FILE}" for n in names[:-1]]
    assert verify_run(out / RUN) == []
    # the last folder holds the weights and optimizer state the run ended with
    final = read_sharded_folder(folder / "last.ckpt")
    assert same(final["state_dict"], r0["state_dict"])
    assert same(momentum(final["optimizer_states"][0]), momentum(r0["optimizer"]))
    assert final["optimizer_states"][0]["param_groups"] == r0["optimizer"]["param_groups"]


def test_async_fit_killed_and_resumed_from_last_is_bitwise_the_uninterrupted_run(two: dict[str, Path], tmp_path: Path) -> None:
    full = [torch.load(two["async"] / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    root = tmp_path / "run"
    assert run(tmp_path / "cut", {"async": True, "root": str(root), "kill_after_step": 5}, check=False) == []
    # what the killed run left: complete folders only, and a log they agree with. (Where the kill
    # overtook the background writes, the step-4 folder is still a hidden temporary one, and
    # last.ckpt not yet linked: "last" is then the newest folder.)
    folder = root / RUN / "checkpoints"
    visible = [n for n in os.listdir(folder) if not n.startswith(".")]
    assert "epoch=0-step=2.ckpt" in visible
    assert all((folder / n / META_FILE).is_file() for n in visible)
    assert verify_run(root / RUN) == []
    resumed = run(tmp_path / "resumed", {"async": True, "root": str(root), "ckpt_path": "last"})
    assert os.path.dirname(resumed[0]["resumed_from"]) == str(folder)
    assert os.path.basename(resumed[0]["resumed_from"]) in visible
    assert os.path.isdir(resumed[0]["resumed_from"])
    assert resumed[0]["global_step"] == full[0]["global_step"] == 8
    for a, b in zip(full, resumed):
        assert same(a["state_dict"], b["state_dict"])
        assert same(momentum(a["optimizer"]), momentum(b["optimizer"]))
    assert verify_run(root / RUN) == []
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # a killed run's leftover is gone


def test_best_resolves_to_a_folder_and_rotation_removes_pushed_out_folders(tmp_path: Path) -> None:
    cfg = {"async": True, "every_n_train_steps": None, "monitor": "val_loss", "save_top_k": 1, "max_epochs": 3}
    r0, _ = run(tmp_path / "best", {**cfg, "validate_best": True})
    folder = tmp_path / "best" / RUN / "checkpoints"
    best = r0["best_model_path"]
    assert os.path.isdir(best) and os.path.dirname(best) == str(folder)
    # validate(ckpt_path="best") read that folder (and got the val_loss it was saved for)
    log = (tmp_path / "best.log").read_text()
    assert f"[fulmen] ckpt_path='best': loading the weights of {best}" in log
    best_meta = torch.load(Path(best) / META_FILE, weights_only=True)
    assert r0["validated"][0]["val_loss"] == pytest.approx(float(best_meta["callback_metrics"]["val_loss"]), rel=1e-5)
    kept = sorted(n for n in os.listdir(folder))
    assert kept == sorted({os.path.basename(best), "last.ckpt"})  # the others were removed (whole folders)
    assert len(audit_lines(tmp_path / "best" / RUN)) == 3
    assert verify_run(tmp_path / "best" / RUN) == []  # removed by rotation: not a problem


def test_a_two_process_folder_resumes_in_one_process_without_fsdp(two: dict[str, Path], tmp_path: Path) -> None:
    """2 -> 1: no process group; the folder is read into full tensors, the optimizer state too."""
    start = two["sync"] / RUN / "checkpoints" / "epoch=0-step=4.ckpt"
    saved = read_sharded_folder(start)
    one = {"strategy": "auto", "devices": 1, "batch_size": 8, "shuffle": False, "ckpt_path": str(start)}
    (loaded,) = run(tmp_path / "loaded", {**one, "max_epochs": 1})  # nothing left to train: what was read
    assert loaded["global_step"] == 4 and loaded["param_types"] == ["Parameter"]
    assert same(loaded["state_dict"], saved["state_dict"])
    assert same(momentum(loaded["optimizer"]), momentum(saved["optimizer_states"][0]))
    (cont,) = run(tmp_path / "cont", one)  # and training goes on like the two-process run
    two_end = torch.load(two["sync"] / "rank0.pt", weights_only=False)
    assert cont["global_step"] == 8
    assert close(cont["state_dict"], two_end["state_dict"]) and not same(cont["state_dict"], saved["state_dict"])


def test_a_one_process_folder_resumes_in_a_two_process_fsdp_fit(tmp_path: Path) -> None:
    """1 -> 2: a one-process FSDP run writes the folder, a two-process FSDP fit reshards it."""
    (single,) = run(tmp_path / "one", {"devices": 1, "batch_size": 8, "shuffle": False, "every_n_train_steps": 4})
    start = tmp_path / "one" / RUN / "checkpoints" / "epoch=0-step=4.ckpt"
    assert sorted(os.listdir(start)) == [".metadata", "__0_0.distcp", META_FILE]
    saved = read_sharded_folder(start)
    two_cfg = {"shuffle": False, "ckpt_path": str(start), "every_n_train_steps": None}
    loaded = run(tmp_path / "loaded", {**two_cfg, "max_epochs": 1})
    for r in loaded:
        assert r["global_step"] == 4 and r["param_types"] == ["DTensor"]
        assert same(r["state_dict"], saved["state_dict"])
        assert same(momentum(r["optimizer"]), momentum(saved["optimizer_states"][0]))
    cont = run(tmp_path / "cont", two_cfg)
    assert cont[0]["global_step"] == single["global_step"] == 8
    assert close(cont[0]["state_dict"], single["state_dict"])


def test_verify_names_a_tampered_shard_file(two: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(two["sync"] / RUN, run_dir, symlinks=True)
    shard = run_dir / "checkpoints" / "epoch=1-step=6.ckpt" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (problem,) = verify_run(run_dir)
    assert problem.kind == "modified" and problem.file == "checkpoints/epoch=1-step=6.ckpt/__1_0.distcp"
    assert "SHA-256" in problem.message
    # the command, given the folder: exit 1, naming the file
    proc = subprocess.run(
        [sys.executable, "-m", "fulmen", "verify", str(shard.parent)], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 1 and "epoch=1-step=6.ckpt/__1_0.distcp" in proc.stdout
    # a shard cut short is found by ckpt_path="last" too, which falls back to the folder before
    from fulmen.trainer._checkpointing import newest_intact

    last = run_dir / "checkpoints" / "epoch=1-step=8.ckpt" / "__0_0.distcp"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.warns(UserWarning, match="epoch=1-step=8.ckpt"):
        found, meta = newest_intact(str(run_dir / "checkpoints" / "epoch=1-step=8.ckpt"))
    assert found.endswith("epoch=1-step=6.ckpt") and meta["global_step"] == 6


@pytest.mark.parametrize("atomic_swap", [True, False])
def test_a_folder_replaces_one_of_the_same_name_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic_swap: bool) -> None:
    if not atomic_swap:  # systems without renameat2(RENAME_EXCHANGE): moved aside, then replaced
        monkeypatch.setattr(fsdp, "_exchange", lambda a, b: False)
    final, tmp = tmp_path / "x.ckpt", tmp_path / ".x.ckpt.tmp-1"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    fsdp._place_folder(str(tmp), str(final))
    assert sorted(os.listdir(tmp_path)) == ["x.ckpt"] and os.listdir(final) == ["new"]
    # and a file of that name (a "full" checkpoint written there before)
    tmp.mkdir()
    (tmp / "newer").write_text("newer")
    shutil.rmtree(final)
    final.write_text("a file")
    fsdp._place_folder(str(tmp), str(final))
    assert sorted(os.listdir(tmp_path)) == ["x.ckpt"] and os.listdir(final) == ["newer"]


def test_a_failed_finish_leaves_the_previous_folder_and_no_temporary_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import fulmen.checkpoint.io as io

    final, tmp = tmp_path / "x.ckpt", tmp_path / ".x.ckpt.tmp-1"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"shard")

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "_save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        fsdp._finish_sharded_folder({"global_step": 1}, str(tmp), str(final), audit_dir=tmp_path, metrics=None)
    assert sorted(os.listdir(tmp_path)) == ["x.ckpt"] and os.listdir(final) == ["old"]  # and no log line


def test_a_folder_gives_its_weights_to_validate_in_one_process_without_fsdp(two: dict[str, Path], tmp_path: Path) -> None:
    """validate/test/predict(ckpt_path=FOLDER) with the default strategy: the folder is read into
    full tensors (as fit does), in this process."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "helpers"))
    from fsdp_script import Indexed, ShardedRegressor

    import fulmen

    folder = two["sync"] / RUN / "checkpoints" / "epoch=0-step=4.ckpt"
    system = ShardedRegressor()
    trainer = fulmen.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path
    )
    (metrics,) = trainer.validate(system, torch.utils.data.DataLoader(Indexed(16), batch_size=4), ckpt_path=folder)
    assert same(system.state_dict(), read_sharded_folder(folder)["state_dict"]) and "val_loss" in metrics
