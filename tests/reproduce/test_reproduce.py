"""``fulmen reproduce``: a recorded run rebuilt in a fresh folder from its record, checkpoint by
checkpoint; what differs (code, data, threads, environment) is named; bad input gets one line;
nothing in the original run folder is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fulmen.cli import main

REPO = Path(__file__).resolve().parents[2]

#: A self-contained training script: its data from a file (declared through
#: DataModule.fingerprint), torch's threads from $THREADS, checkpoints every 4 steps, weight
#: digests every 2 steps, deterministic. Extra Trainer flags come from its third argument (JSON).
SCRIPT = textwrap.dedent(
    '''
    import json, os, sys
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import fulmen
    from fulmen.fingerprint import fingerprint_files

    class Data(fulmen.DataModule):
        def __init__(self, path):
            super().__init__()
            self.path = path
        def fingerprint(self):
            return fingerprint_files(self.path)
        def train_dataloader(self):
            x, y = torch.load(self.path)
            return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)

    class Model(fulmen.System):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.layer = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self.layer(x), y)
            self.log("loss", loss)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    if __name__ == "__main__":
        torch.set_num_threads(int(os.environ.get("THREADS", "1")))
        fulmen.seed_everything(7)
        root, data = sys.argv[1], sys.argv[2]
        trainer = fulmen.Trainer(
            max_epochs=3, default_root_dir=root, deterministic=True, enable_progress_bar=False,
            enable_model_summary=False, log_every_n_steps=2,
            callbacks=[fulmen.callbacks.ModelCheckpoint(every_n_train_steps=4, save_top_k=-1),
                       fulmen.callbacks.WeightDigests(every_n_steps=2)],
            **json.loads(sys.argv[3] if len(sys.argv) > 3 else "{}"),
        )
        trainer.fit(Model(), datamodule=Data(data))
    '''
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULMEN_REPRODUCE")}
    env.pop("THREADS", None)
    env.update(extra)
    return env


def _train(where: Path, *flags: str, root: str = "runs", **env: str) -> Path:
    """Train the script in ``where`` (its data in data.pt there, its runs under ``root``); returns
    the run folder."""
    import torch

    where.mkdir(parents=True, exist_ok=True)
    (where / "train.py").write_text(SCRIPT)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    torch.save((x, x.sum(1, keepdim=True)), where / "data.pt")
    subprocess.run(
        [sys.executable, "train.py", root, str(where / "data.pt"), *flags], cwd=where, env=_env(**env), check=True, timeout=300
    )
    (run,) = [p.parent for p in (where / root).rglob("run.json")]
    return run


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _reproduce(run: Path, workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fulmen", "reproduce", str(run), "--workdir", str(workdir), *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("original"))


def test_a_run_is_reproduced_bit_for_bit_and_its_folder_is_left_alone(recorded: Path, tmp_path: Path) -> None:
    before = _files(recorded.parents[2])
    out = _reproduce(recorded, tmp_path / "re")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    checkpoints = [line for line in lines if line.startswith("checkpoint ")]
    assert len(checkpoints) == 4 and all(line.endswith(": same") for line in checkpoints)  # steps 4, 8, 12, 16
    assert "weights: the same at all 10 recorded steps up to step 18" in lines
    assert "environment: as recorded" in lines and lines[-1] == "reproduced bit for bit: 4 checkpoint(s) the same"
    assert _files(recorded.parents[2]) == before  # nothing in the original folders was written
    assert list((tmp_path / "re" / "runs").rglob("*.ckpt"))  # the re-run's files are in the work folder


def test_a_one_character_code_change_is_named_with_the_first_differing_checkpoint(tmp_path: Path) -> None:
    run = _train(tmp_path / "original")
    snapshot = run / "code" / "train.py"
    snapshot.write_text(snapshot.read_text().replace("lr=0.05", "lr=0.06"))
    out = _reproduce(run, tmp_path / "re")
    assert out.returncode == 1
    assert "code/train.py was edited after the run" in out.stdout
    assert "checkpoint 1/4 checkpoints/epoch=0-step=4.ckpt (step 4): differs in hyper_parameters: lr; state_dict:" in out.stdout
    assert "weights: first differ at step 2 (the same up to step 0)" in out.stdout


def test_changed_data_is_refused_before_training(recorded: Path, tmp_path: Path) -> None:
    import torch

    original = recorded.parents[2]
    data = tmp_path / "data.pt"  # the recorded command names the data file: change a copy of the run
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(original), str(copy)], check=True)
    run = copy / recorded.relative_to(original)
    record = json.loads((run / "run.json").read_text())
    x, y = torch.load(original / "data.pt")
    torch.save((x, y + 1.0), data)
    record["command"][2] = str(data)
    (run / "run.json").write_text(json.dumps(record))
    out = _reproduce(run, tmp_path / "re")
    assert out.returncode == 1
    data_lines = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert len(data_lines) == 1 and "datamodule" in data_lines[0], out.stdout
    assert not list((tmp_path / "re").rglob("*.ckpt"))  # refused before any training


def test_a_changed_thread_count_is_named(recorded: Path, tmp_path: Path) -> None:
    out = _reproduce(recorded, tmp_path / "re", "--until-checkpoint", "1", THREADS="2")
    assert "torch intra-op threads (torch.get_num_threads): recorded 1, now 2" in out.stdout, out.stdout


def test_until_checkpoint_stops_the_rerun_early(recorded: Path, tmp_path: Path) -> None:
    out = _reproduce(recorded, tmp_path / "re", "--until-checkpoint", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "re-run stopped once the part to compare was written" in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("checkpoint ")] == [
        "checkpoint 1/4 checkpoints/epoch=0-step=4.ckpt (step 4): same",
        "checkpoint 2/4 checkpoints/epoch=1-step=8.ckpt (step 8): same",
    ]
    assert "weights: the same at all 5 recorded steps up to step 8" in out.stdout


def test_a_run_written_to_an_absolute_folder_is_reproduced_without_touching_it(tmp_path: Path) -> None:
    """Its checkpoints record absolute paths; the re-run writes under <work>/_abs/ and its paths
    are mapped back before comparing."""
    elsewhere = tmp_path / "elsewhere"
    run = _train(tmp_path / "original", root=str(elsewhere))
    before = _files(elsewhere)
    out = _reproduce(run, tmp_path / "re", "--until-checkpoint", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "reproduced bit for bit: 2 checkpoint(s) the same"
    assert _files(elsewhere) == before
    assert list((tmp_path / "re" / "_abs").rglob("*.ckpt"))


def test_a_ddp_run_is_reproduced(tmp_path: Path) -> None:
    run = _train(tmp_path / "original", '{"strategy": "ddp", "devices": 2, "accelerator": "cpu"}')
    out = _reproduce(run, tmp_path / "re")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ranks" not in out.stdout and out.stdout.splitlines()[-1] == "reproduced bit for bit: 2 checkpoint(s) the same"


# -- bad input: one line each, exit status 2, nothing written to the run folder --------------------------
def _one_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["reproduce", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fulmen reproduce: ")
    return err[0]


def test_bad_input_gets_one_line(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _files(recorded.parents[2])
    assert "has no run.json" in _one_line(capsys, str(tmp_path))
    assert "is inside the run folder" in _one_line(capsys, str(recorded), "--workdir", str(recorded / "re"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "exists and is not empty" in _one_line(capsys, str(recorded), "--workdir", str(tmp_path / "full"))
    assert _files(recorded.parents[2]) == before


def _edited_copy(recorded: Path, tmp_path: Path, edit: object) -> Path:
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(recorded), str(copy)], check=True)
    record = json.loads((copy / "run.json").read_text())
    edit(record)  # type: ignore[operator]
    (copy / "run.json").write_text(json.dumps(record))
    return copy


def test_a_record_from_a_newer_fulmen_is_refused(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _edited_copy(recorded, tmp_path, lambda r: r.update(format=99))
    assert "record format 99" in _one_line(capsys, str(copy), "--workdir", str(tmp_path / "re"))


def test_a_command_that_is_not_a_script_is_refused(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _edited_copy(recorded, tmp_path, lambda r: r.update(command=["-c", "pass"]))
    assert "not a Python script" in _one_line(capsys, str(copy), "--workdir", str(tmp_path / "re"))


def test_a_gpu_run_is_refused_without_a_gpu(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # (also on a machine with a GPU)

    def on_gpu(record: dict) -> None:  # type: ignore[type-arg]
        record["trainer_flags"]["accelerator"] = "gpu"
        record["host"]["devices"] = ["NVIDIA H100 80GB HBM3"]

    copy = _edited_copy(recorded, tmp_path, on_gpu)
    line = _one_line(capsys, str(copy), "--workdir", str(tmp_path / "re"))
    assert "1 GPU(s) (NVIDIA H100 80GB HBM3)" in line and "no GPU" in line


def test_a_missing_snapshot_without_git_is_refused(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _edited_copy(recorded, tmp_path, lambda r: r.update(git=None))
    subprocess.run(["rm", "-r", str(copy / "code")], check=True)
    line = _one_line(capsys, str(copy), "--workdir", str(tmp_path / "re"))
    assert "the code snapshot is missing" in line and "git" in line


def test_a_deleted_snapshot_file_is_refused(recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _edited_copy(recorded, tmp_path, lambda r: r["code"]["files"].append({"path": "gone.py", "sha256": "0" * 64}))
    line = _one_line(capsys, str(copy), "--workdir", str(tmp_path / "re"))
    assert "code/gone.py is listed in the record's code snapshot but missing" in line
