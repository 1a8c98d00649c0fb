"""fulmen.run_dir: version numbering, run folders, the newest run with a checkpoint; and
``Logger.pin_version`` / ``Logger.pinned_version``, the one way a logger's version is fixed."""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path
from typing import Any

from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen import run_dir
from fulmen.loggers import CSVLogger, Logger

SRC = Path(fulmen.__file__).parent


def _touch(path: Path, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def test_numbering_and_folders(tmp_path: Path) -> None:
    root = str(tmp_path / "logs")
    assert run_dir.next_version(root) == 0 and run_dir.newest_run(root) is None
    for n in (0, 3):
        os.makedirs(run_dir.version_folder(root, n))
    _touch(tmp_path / "logs" / "version_9")  # a file, not a run folder
    os.makedirs(os.path.join(root, "version_x"))
    assert run_dir.next_version(root) == 4
    assert run_dir.newest_run(root) == os.path.join(root, "version_3")
    assert run_dir.version_folder(root, "named") == os.path.join(root, "named")
    assert run_dir.checkpoints_folder(root) == os.path.join(root, "checkpoints")
    run_dir.make_run_folder(os.path.join(root, "version_4", "deeper"))
    assert run_dir.next_version(root) == 5
    run_dir.make_run_folder("memory://fulmen-run-dir/logs/version_0")
    assert run_dir.next_version("memory://fulmen-run-dir/logs") == 1


def test_the_checkpoints_in_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert run_dir.checkpoint_files(str(folder)) == [] and run_dir.stop_checkpoints(str(folder)) == []
    assert run_dir.newest_requeue_checkpoint(str(folder)) is None and run_dir.newest([]) is None
    old = _touch(folder / "epoch=0.ckpt", age=30)
    new = _touch(folder / "epoch=1.ckpt", age=10)
    _touch(folder / ".hidden.ckpt")
    _touch(folder / "notes.txt")
    (folder / "dir.ckpt").mkdir()
    stop = _touch(folder / "interrupted.ckpt", age=20)
    for n in (2, 10):
        _touch(folder / f"hpc_ckpt_{n}.ckpt", age=40)
    found = sorted(run_dir.checkpoint_files(str(folder)))
    assert [os.path.basename(p) for p in found] == [
        "epoch=0.ckpt",
        "epoch=1.ckpt",
        "hpc_ckpt_10.ckpt",
        "hpc_ckpt_2.ckpt",
        "interrupted.ckpt",
    ]
    assert sorted(map(os.path.basename, run_dir.stop_checkpoints(str(folder)))) == [
        "hpc_ckpt_10.ckpt",
        "hpc_ckpt_2.ckpt",
        "interrupted.ckpt",
    ]
    assert run_dir.newest_requeue_checkpoint(str(folder)) == str(folder / "hpc_ckpt_10.ckpt")  # by number
    assert run_dir.newest([str(old), str(stop), str(new), str(folder / "gone.ckpt")]) == str(new)


class _Versioned(Logger):
    """A logger written after Lightning's: it keeps its version in ``_version``."""

    def __init__(self) -> None:
        self._version: int | str | None = None

    @property
    def version(self) -> int | str | None:
        if self._version is None:
            self._version = "chosen"
        return self._version

    def log_metrics(self, metrics: Any, step: int) -> None: ...


class _Plain(Logger):
    version = "fixed"  # type: ignore[assignment]

    def log_metrics(self, metrics: Any, step: int) -> None: ...


def test_pin_version(tmp_path: Path) -> None:
    lg = CSVLogger(tmp_path)
    assert lg.pinned_version is None and lg.pinned_version is None  # reading it chooses nothing
    assert lg.pin_version(4) and lg.pinned_version == 4 and lg.version == 4
    assert not lg.pin_version(5) and lg.version == 4  # fixed already: kept
    assert lg.pin_version(None) and lg.pinned_version is None
    assert lg.version == 0 and lg.pinned_version == 0  # chosen on first use
    given = CSVLogger(tmp_path, version="mine")
    assert not given.pin_version(1) and given.log_dir == os.path.join(str(tmp_path), "fulmen_logs", "mine")
    custom = _Versioned()
    assert custom.pinned_version is None and custom.pin_version(7) and custom.version == 7
    plain = _Plain()
    assert not plain.pin_version(3) and not plain.pin_version(None) and plain.pinned_version == "fixed"
    assert "_version" not in vars(plain)


def test_newest_run_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "fulmen_logs"
    for n, has in ((0, True), (1, True), (2, False)):  # version_2: a test run since, no checkpoint
        os.makedirs(root / f"version_{n}")
        if has:
            _touch(root / f"version_{n}" / "checkpoints" / "last.ckpt")
    loggers = [CSVLogger(tmp_path), CSVLogger(tmp_path), _Plain()]
    asked: list[Any] = []

    def find() -> str | None:
        asked.append(loggers[0].pinned_version)
        return run_dir.newest(run_dir.checkpoint_files(run_dir.checkpoints_folder(loggers[0].log_dir)))

    found = run_dir.newest_run_checkpoint(loggers, find, keep_version=True)
    assert found == str(root / "version_1" / "checkpoints" / "last.ckpt") and asked == [2, 1]
    assert [lg.pinned_version for lg in loggers[:2]] == [1, 1]  # they stay on that run
    assert run_dir.newest_run_checkpoint(loggers, find, keep_version=True) == found  # not fresh: as they are
    loggers = [CSVLogger(tmp_path)]
    assert run_dir.newest_run_checkpoint(loggers, find, keep_version=False) == found
    assert loggers[0].pinned_version is None  # unpinned again
    assert run_dir.newest_run_checkpoint(loggers, lambda: None, keep_version=True) is None
    assert loggers[0].pinned_version is None
    assert run_dir.fresh_folder_loggers([CSVLogger(tmp_path), CSVLogger(tmp_path, version=1), _Plain()]) != []


def test_fit_last_resumes_in_the_newest_run_with_a_checkpoint(tmp_path: Path) -> None:
    quiet_trainer(tmp_path, limit_train_batches=2).fit(TinySystem(), make_loader(16))
    quiet_trainer(tmp_path).test(TinySystem(), make_loader(16))  # version_1: no checkpoint
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    trainer.fit(TinySystem(), make_loader(16), ckpt_path="last")
    assert trainer.logger is not None and trainer.logger.version == 0 and trainer.current_epoch == 2
    assert trainer.ckpt_path is not None and "version_0" in trainer.ckpt_path


def _version_writes(tree: ast.AST) -> list[int]:
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr == "_version"
        and isinstance(n.ctx, ast.Store)
        and not (isinstance(n.value, ast.Name) and n.value.id == "self")
    ]


def test_only_loggers_write_their_version() -> None:
    """Everyone else goes through ``Logger.pin_version`` (issue 14, item 6)."""
    found = {
        str(p.relative_to(SRC)): lines
        for p in SRC.rglob("*.py")
        if (lines := _version_writes(ast.parse(p.read_text())))
    }
    assert found == {}


def test_stop_checkpoints_are_files_or_sharded_folders(tmp_path: Path) -> None:
    (tmp_path / "hpc_ckpt_0.ckpt").write_bytes(b"x")
    (tmp_path / "interrupted.ckpt").mkdir()
    (tmp_path / "interrupted.ckpt" / "meta.ckpt").write_bytes(b"x")  # FSDP's sharded stop checkpoint
    (tmp_path / "hpc_ckpt_1.ckpt").mkdir()  # a folder without meta.ckpt is no checkpoint
    (tmp_path / "epoch=0-step=1.ckpt").write_bytes(b"x")  # not a stop's
    found = sorted(os.path.basename(p) for p in run_dir.stop_checkpoints(str(tmp_path)))
    assert found == ["hpc_ckpt_0.ckpt", "interrupted.ckpt"]
