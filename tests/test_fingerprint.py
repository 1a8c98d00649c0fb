"""Data fingerprints: files and folders (with the size/mtime cache), tensors and datasets, the
``"data"`` section of run.json, and the reproduce check (``FULMEN_REPRODUCE_RECORD``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinyData, TinySystem, make_data, quiet_trainer
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import fulmen
from fulmen.errors import DataError, HookReturnError
from fulmen.fingerprint import (
    NOT_IN_MEMORY,
    cache_path,
    compare_data,
    fingerprint,
    fingerprint_files,
    fingerprint_tensors,
)

OLD_NS = 1_600_000_000 * 10**9  # a modification time long past (files this old are cached)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own digest cache, never the real ~/.cache; no reproduce record set."""
    folder = tmp_path / "fulmen-cache"
    monkeypatch.setenv("FULMEN_CACHE_DIR", str(folder))
    monkeypatch.delenv("FULMEN_REPRODUCE_RECORD", raising=False)
    return folder


def make_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.csv").write_text("x,y\n1,2\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    return root


def age(path: Path, ns: int = OLD_NS) -> None:
    os.utime(path, ns=(ns, ns))


def cached(path: Path) -> list[Any] | None:
    data = json.loads(Path(cache_path()).read_text())
    return data["files"].get(str(path.resolve()))


# -- files and folders --------------------------------------------------------------------------------
def test_a_folder_fingerprint_changes_when_a_file_is_edited_renamed_added_or_removed(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    seen = {fingerprint_files(data)}
    assert fingerprint_files(data) in seen  # stable
    (data / "a.csv").write_text("x,y\n1,3\n")  # edited, same size
    seen.add(fingerprint_files(data))
    (data / "a.csv").rename(data / "c.csv")  # renamed
    seen.add(fingerprint_files(data))
    (data / "sub" / "new.txt").write_text("")  # added (even empty)
    seen.add(fingerprint_files(data))
    (data / "sub" / "b.bin").unlink()  # removed
    seen.add(fingerprint_files(data))
    assert len(seen) == 5
    assert all(fp.startswith("sha256:") and len(fp) == len("sha256:") + 64 for fp in seen)


def test_where_the_data_lives_does_not_count_but_the_order_of_the_arguments_does(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(data, copy)
    assert fingerprint_files(data) == fingerprint_files(copy)
    a, b = data / "a.csv", data / "sub" / "b.bin"
    assert fingerprint_files(a, b) != fingerprint_files(b, a)
    assert fingerprint_files(a) != fingerprint_files(b)
    assert fingerprint_files(data) != fingerprint_files(data / "sub")


def test_touching_a_file_keeps_the_fingerprint_and_refreshes_the_cache(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data")
    csv = data / "a.csv"
    age(csv)
    before = fingerprint_files(data)
    size, mtime, sha = cached(csv)  # type: ignore[misc]
    assert (size, mtime) == (csv.stat().st_size, OLD_NS)
    age(csv, OLD_NS + 5 * 10**9)  # touched: a new mtime, the same content
    assert fingerprint_files(data) == before
    assert cached(csv) == [size, OLD_NS + 5 * 10**9, sha]


def test_an_unchanged_size_and_mtime_is_not_read_again(tmp_path: Path) -> None:
    """The fast path: the cache is trusted while size and mtime match (the content is not read)."""
    csv = tmp_path / "a.csv"
    csv.write_text("x,y\n1,2\n")
    age(csv)
    first = fingerprint_files(csv)
    csv.write_text("x,y\n9,9\n")  # same size; mtime put back: only the cache can still answer `first`
    age(csv)
    assert fingerprint_files(csv) == first
    Path(cache_path()).unlink()
    assert fingerprint_files(csv) != first


def test_a_file_modified_just_now_is_hashed_but_not_cached(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh.txt", tmp_path / "old.txt"
    fresh.write_text("new")
    old.write_text("old")
    age(old)
    fingerprint_files(fresh, old)
    assert cached(fresh) is None
    assert cached(old) is not None


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "files": [1, 2]}', '["a list"]', ""])
def test_a_corrupt_cache_is_ignored_and_replaced(tmp_path: Path, _cache_dir: Path, content: str) -> None:
    data = make_folder(tmp_path / "data")
    for f in (data / "a.csv", data / "sub" / "b.bin"):
        age(f)
    expected = fingerprint_files(data)
    Path(cache_path()).write_text(content)
    assert fingerprint_files(data) == expected
    assert cached(data / "a.csv") is not None  # written anew, readable


def test_an_unwritable_cache_folder_does_not_stop_fingerprinting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data = make_folder(tmp_path / "data")
    expected = fingerprint_files(data)
    monkeypatch.setenv("FULMEN_CACHE_DIR", str(blocker / "cache"))  # a folder inside a file: cannot exist
    assert fingerprint_files(data) == expected


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.*is not a file or folder"):
        fingerprint_files(tmp_path / "nope")


# -- tensors, datasets, dispatch ----------------------------------------------------------------------
def test_tensor_fingerprints_see_dtype_shape_and_values() -> None:
    x = torch.arange(12, dtype=torch.float32)
    base = fingerprint_tensors(x)
    assert fingerprint_tensors(x.clone()) == base
    assert fingerprint_tensors(x.double()) != base
    assert fingerprint_tensors(x.reshape(3, 4)) != base
    y = x.clone()
    y[5] += 1
    assert fingerprint_tensors(y) != base
    assert fingerprint_tensors(x, x) != base
    assert fingerprint_tensors(np.arange(12, dtype=np.float32)) == fingerprint_tensors(np.arange(12, dtype=np.float32))
    assert fingerprint_tensors(np.arange(12, dtype=np.float32)) != fingerprint_tensors(np.arange(12, dtype=np.int32))
    with pytest.raises(TypeError, match="expected torch tensors or NumPy arrays"):
        fingerprint_tensors([1, 2, 3])


def test_fingerprint_dispatches_on_what_it_is_given(tmp_path: Path) -> None:
    ds = make_data(16)
    assert fingerprint(ds) == fingerprint_tensors(*ds.tensors)
    assert fingerprint(ds.tensors[0]) == fingerprint_tensors(ds.tensors[0])
    assert fingerprint(Subset(ds, [0, 1, 2])) != fingerprint(Subset(ds, [0, 1, 3]))
    assert fingerprint(Subset(ds, [0, 1, 2])) == fingerprint(Subset(make_data(16), [0, 1, 2]))
    assert fingerprint(Subset(ds, [0, 1, 2])) != fingerprint(Subset(make_data(16, seed=1), [0, 1, 2]))
    csv = tmp_path / "a.csv"
    csv.write_text("1\n")
    assert fingerprint(csv) == fingerprint(str(csv)) == fingerprint_files(csv)
    assert fingerprint({"a": ds, "b": csv}) != fingerprint({"a": ds, "c": csv})
    assert fingerprint([ds, csv]) != fingerprint([csv, ds])
    with pytest.raises(TypeError, match=r"cannot fingerprint a builtins\.int"):
        fingerprint(3)


# -- the record ---------------------------------------------------------------------------------------
class Squares(Dataset[Any]):
    """A dataset computed on the fly: not in memory, so not fingerprinted automatically."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> Any:
        x = torch.full((4,), float(i))
        return x, x.sum(dim=0, keepdim=True)


class TwoValSystem(TinySystem):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx)


class FileData(TinyData):
    """TinyData that declares its data as the files of ``data_dir`` (or a dict of parts)."""

    def __init__(self, data_dir: str = "", parts: bool = False) -> None:
        super().__init__(n=16)
        self.data_dir, self.parts = data_dir, parts

    def fingerprint(self) -> Any:
        if self.parts:
            return {"csv": fingerprint_files(Path(self.data_dir) / "a.csv"), "bin": fingerprint_files(Path(self.data_dir) / "sub")}
        return fingerprint_files(self.data_dir)


class BadData(TinyData):
    def fingerprint(self) -> Any:
        return 42


def fit(tmp_path: Path, system: TinySystem | None = None, **kwargs: Any) -> tuple[fulmen.Trainer, dict[str, Any]]:
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(system or TinySystem(), **kwargs)
    return trainer, json.loads((Path(trainer.log_dir) / "run.json").read_text())["data"]


def test_a_fit_on_tensor_datasets_records_their_fingerprints(tmp_path: Path) -> None:
    train, val = make_data(32), make_data(16, seed=1)
    _, data = fit(
        tmp_path,
        TwoValSystem(),
        train_dataloaders=DataLoader(train, batch_size=8, shuffle=True),
        val_dataloaders=[DataLoader(Subset(val, [0, 2, 4]), batch_size=8), DataLoader(Squares(), batch_size=8)],
    )
    assert data["datamodule"] is None
    assert data["train"] == {"dataset": "torch.utils.data.dataset.TensorDataset", "fingerprint": fingerprint_tensors(*train.tensors)}
    assert data["val"][0]["fingerprint"] == fingerprint(Subset(val, [0, 2, 4]))
    assert data["val"][1] == {"dataset": f"{__name__}.Squares", "fingerprint": None, "reason": NOT_IN_MEMORY}


def test_the_datamodule_declaration_is_recorded(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "data")
    _, data = fit(tmp_path / "one", datamodule=FileData(str(folder)))
    assert data["datamodule"] == {"class": f"{__name__}.FileData", "fingerprint": fingerprint_files(folder)}
    assert data["train"]["fingerprint"] == fingerprint(make_data(16))  # its loaders are in memory too
    _, parts = fit(tmp_path / "two", datamodule=FileData(str(folder), parts=True))
    assert parts["datamodule"]["fingerprint"] == {
        "csv": fingerprint_files(folder / "a.csv"),
        "bin": fingerprint_files(folder / "sub"),
    }
    _, undeclared = fit(tmp_path / "three", datamodule=TinyData(n=16))
    assert undeclared["datamodule"]["fingerprint"] is None
    assert "TinyData.fingerprint() returned None" in undeclared["datamodule"]["reason"]


def test_a_fingerprint_that_is_not_a_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HookReturnError, match=r"BadData.fingerprint\(\) returned 42 \(type int\); expected a str"):
        fit(tmp_path, datamodule=BadData(n=16))


def test_under_fulmen_lightning_a_method_of_that_name_only_warns(tmp_path: Path) -> None:
    """A LightningDataModule may have its own ``fingerprint`` method, written for something else:
    the program still runs (as under Lightning), with one warning and no fingerprint recorded."""
    import fulmen.lightning as fl
    from fulmen.errors import FulmenWarning

    class OwnMethod(fl.LightningDataModule):
        def fingerprint(self) -> int:
            return 42

        def train_dataloader(self) -> DataLoader:
            return DataLoader(make_data(16), batch_size=8)

    trainer = fl.Trainer(
        max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
        logger=fl.loggers.CSVLogger(tmp_path),
    )
    with pytest.warns(FulmenWarning, match=r"OwnMethod.fingerprint\(\) returned 42"):
        trainer.fit(TinySystem(), datamodule=OwnMethod())
    (record,) = tmp_path.rglob("run.json")
    assert json.loads(record.read_text())["data"]["datamodule"]["fingerprint"] is None
    assert trainer.global_step == 2


def test_under_fulmen_lightning_an_undeclared_fingerprint_is_not_called(tmp_path: Path) -> None:
    """Lightning has no ``fingerprint`` hook: a LightningDataModule that does not declare one sees no
    call to it (Lightning's own tests record every method a datamodule is asked for)."""
    import fulmen.lightning as fl

    class Plain(fl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(make_data(16), batch_size=8)

    data, calls = Plain(), []
    inherited = data.fingerprint
    data.fingerprint = lambda: calls.append("fingerprint") or inherited()  # type: ignore[method-assign]
    trainer = fl.Trainer(
        max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
        logger=fl.loggers.CSVLogger(tmp_path),
    )
    trainer.fit(TinySystem(), datamodule=data)
    assert calls == []
    (record,) = tmp_path.rglob("run.json")
    assert json.loads(record.read_text())["data"]["train"]["fingerprint"] == fingerprint(make_data(16))


# -- the reproduce check ------------------------------------------------------------------------------
class StepCounter(fulmen.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_before_optimizer_step(self, trainer: Any, system: Any, optimizer: Any) -> None:
        self.steps += 1


def reproduce_fit(tmp_path: Path, train: TensorDataset, **kwargs: Any) -> tuple[fulmen.Trainer, TinySystem, StepCounter]:
    counter = StepCounter()
    system = TinySystem()
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=[counter])
    trainer.fit(system, DataLoader(train, batch_size=8), **kwargs)
    return trainer, system, counter


def test_a_reproduced_run_on_changed_data_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, _, _ = reproduce_fit(tmp_path / "original", make_data(32))
    record = Path(original.log_dir) / "run.json"
    monkeypatch.setenv("FULMEN_REPRODUCE_RECORD", str(record))
    changed = make_data(32)
    changed.tensors[0][3, 1] += 1.0  # one number of the inputs
    torch.manual_seed(0)
    counter, system = StepCounter(), TinySystem()
    weights = system.layer.weight.detach().clone()
    trainer = quiet_trainer(tmp_path / "again", max_epochs=1, enable_checkpointing=False, callbacks=[counter])
    with pytest.raises(DataError) as err:
        trainer.fit(system, DataLoader(changed, batch_size=8))
    message = str(err.value)
    assert "\n" not in message
    assert f"train: recorded {fingerprint(make_data(32))}, now {fingerprint(changed)}" in message
    assert str(record) in message and "Restore the recorded data" in message
    assert counter.steps == 0
    assert trainer.global_step == 0
    assert torch.equal(system.layer.weight, weights)


def test_a_reproduced_run_on_the_same_data_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, _, _ = reproduce_fit(tmp_path / "original", make_data(32))
    monkeypatch.setenv("FULMEN_REPRODUCE_RECORD", str(Path(original.log_dir) / "run.json"))
    trainer, _, counter = reproduce_fit(tmp_path / "again", make_data(32))
    assert counter.steps == 4 and trainer.global_step == 4


def test_a_changed_declared_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_folder(tmp_path / "data")
    original, _ = fit(tmp_path / "original", datamodule=FileData(str(folder), parts=True))
    monkeypatch.setenv("FULMEN_REPRODUCE_RECORD", str(Path(original.log_dir) / "run.json"))
    (folder / "sub" / "b.bin").write_bytes(b"changed")
    with pytest.raises(DataError, match=r"datamodule\[bin\]: recorded sha256:[0-9a-f]{64}, now sha256:") as err:
        fit(tmp_path / "again", datamodule=FileData(str(folder), parts=True))
    assert "datamodule[csv]" not in str(err.value)


def test_unknown_or_unrecorded_data_is_not_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, _, _ = reproduce_fit(tmp_path / "original", make_data(32))
    record = json.loads((Path(original.log_dir) / "run.json").read_text())
    unknown = tmp_path / "unknown.json"  # the train data recorded as unknown
    record["data"]["train"] = {"dataset": "x.Y", "fingerprint": None, "reason": NOT_IN_MEMORY}
    unknown.write_text(json.dumps(record))
    old = tmp_path / "old.json"  # a record from before "data" existed
    del record["data"]
    old.write_text(json.dumps(record))
    for i, path in enumerate((unknown, old)):
        monkeypatch.setenv("FULMEN_REPRODUCE_RECORD", str(path))
        _, _, counter = reproduce_fit(tmp_path / f"again{i}", make_data(32, seed=5))
        assert counter.steps == 4


def test_an_unreadable_reproduce_record_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_REPRODUCE_RECORD", str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match=r"FULMEN_REPRODUCE_RECORD=.*missing\.json.* cannot be read"):
        reproduce_fit(tmp_path, make_data(32))


def test_compare_data_names_each_difference() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    recorded = {
        "datamodule": {"class": "m.D", "fingerprint": {"x": a, "y": a}},
        "train": {"dataset": "t", "fingerprint": a},
        "val": [{"dataset": "t", "fingerprint": a}, {"dataset": "t", "fingerprint": None, "reason": NOT_IN_MEMORY}],
    }
    assert compare_data(recorded, recorded) == []
    current = {
        "datamodule": {"class": "m.D", "fingerprint": {"x": a, "y": b}},
        "train": {"dataset": "t", "fingerprint": None, "reason": NOT_IN_MEMORY},
        "val": [],
    }
    assert compare_data(recorded, current) == [
        f"datamodule[y]: recorded {a}, now {b}",
        f"train: recorded {a}, now unknown ({NOT_IN_MEMORY})",
        f"val[0]: recorded {a}, now no such entry",
    ]
    extra = dict(recorded, val=[*recorded["val"], {"dataset": "t", "fingerprint": b}])
    assert compare_data(recorded, extra) == [f"val[2]: not in the recorded run, now {b}"]


DDP_SCRIPT = """
import sys
import torch
from torch.utils.data import DataLoader, TensorDataset
sys.path.insert(0, {tests!r})
from helpers.systems import TinySystem, make_data
import fulmen

data = make_data(64)
data.tensors[0][0, 0] += 1.0  # not the recorded data
trainer = fulmen.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, default_root_dir={root!r},
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
trainer.fit(TinySystem(), DataLoader(data, batch_size=8))
print("trained", trainer.global_rank, trainer.global_step)
"""


def test_a_ddp_reproduction_on_changed_data_ends_before_training(tmp_path: Path) -> None:
    """Rank 0 checks the data; the run ends (every process) with its message, not a hang."""
    original, _, _ = reproduce_fit(tmp_path / "original", make_data(64))
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path / "again")))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", FULMEN_REPRODUCE_RECORD=str(Path(original.log_dir) / "run.json"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode != 0
    assert "DataError: The data differs from the run being reproduced" in proc.stderr
    assert "train: recorded " + fingerprint(make_data(64)) in proc.stderr
    assert "trained" not in proc.stdout
