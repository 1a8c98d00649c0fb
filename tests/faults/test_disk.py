"""A full disk while saving: the error names the file, the bytes needed and free, and that the
previous checkpoint is intact; that checkpoint still loads and no temporary file is left.

Each test mounts a real tmpfs of a few MiB (root only: ``mount -t tmpfs``), fills it with real
writes, and unmounts it afterwards. Where mounting is not permitted the tests skip, saying so.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fulmen.checkpoint.io import DiskFullError, load_checkpoint, write_checkpoint

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


def _mount(folder: Path, size: str) -> None:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux and the mount command to make a small real filesystem (tmpfs)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): {done.stderr.strip() or done.returncode}"
        )


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted after the test."""
    folder = tmp_path / "disk"
    _mount(folder, "3m")
    try:
        yield folder
    finally:
        _unmount(folder)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free (0: fill it to the last byte)."""
    with open(folder / "filler.bin", "wb", buffering=0) as f:
        try:
            f.write(b"\0" * max(free_bytes(folder) - leave, 0))
            while leave == 0:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    assert leave == 0 or free_bytes(folder) < leave + 8192


def leftovers(folder: Path) -> list[str]:
    """Temporary files of an interrupted write (fulmen's are dot-files with ``.tmp`` in the name)."""
    return sorted(n for n in os.listdir(folder) if n.startswith(".") or ".tmp" in n or n.endswith(".part"))


@pytest.mark.parametrize("writes", ["sync", "async"])
def test_fit_that_fills_the_disk_names_file_sizes_and_the_intact_checkpoint(small_disk: Path, writes: str) -> None:
    # A real training process, checkpointing about 1 MiB every 2 steps onto a 3 MiB filesystem;
    # "async": written in the background (AsyncCheckpointIO), the error raised between two steps.
    done = subprocess.run(
        [sys.executable, str(HELPERS / "full_disk_fit.py"), str(small_disk / "run"), writes],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    # The exception fulmen raises is the last one the traceback shows, and it says it all.
    raised = [line for line in done.stderr.splitlines() if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*:", line)]
    assert raised, done.stderr[-3000:]
    last = raised[-1]
    assert last.startswith("fulmen.checkpoint.io.DiskFullError: [Errno 28] No space left on device"), last
    folder = small_disk / "run" / "ckpts"
    saved = sorted((n for n in os.listdir(folder) if n.endswith(".ckpt")), key=lambda n: os.path.getmtime(folder / n))
    assert saved == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"], saved  # the third save did not fit
    assert "'" + str(folder / "epoch=0-step=6.ckpt") + "'" in last  # the file it was writing
    needed, free = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes", last)[:2])
    previous_size = os.path.getsize(folder / "epoch=0-step=4.ckpt")
    assert abs(needed - previous_size) < 4096, (needed, previous_size)  # this checkpoint's size, measured
    assert 0 < free < needed and f"are free on {small_disk}" in last
    assert "The previous checkpoint, epoch=0-step=4.ckpt, is intact" in last
    # ... and it is: it loads and its digest verifies; nothing half-written is left anywhere.
    assert load_checkpoint(folder / "epoch=0-step=4.ckpt")["global_step"] == 4
    assert leftovers(folder) == []
    # The underlying OSError stays in the chain ("The above exception was the direct cause ...").
    assert "OSError: [Errno 28] No space left on device" in done.stderr
    assert "unexpected pos" not in last


def test_save_checkpoint_over_a_file_keeps_it(small_disk: Path) -> None:
    from helpers.full_disk_fit import Heavy
    from helpers.systems import make_loader

    import fulmen

    trainer = fulmen.Trainer(
        default_root_dir=small_disk / "run",
        logger=False,
        enable_checkpointing=False,
        max_steps=1,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Heavy(), make_loader(16, batch_size=8))
    target = small_disk / "model.ckpt"
    trainer.save_checkpoint(target)
    size = os.path.getsize(target)
    fill(small_disk, leave=size // 2)
    with pytest.raises(DiskFullError) as caught:
        trainer.save_checkpoint(target)
    err = caught.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC  # the errno chain
    assert err.path == str(target) and abs(err.needed - size) < 4096
    assert err.free is not None and err.free < err.needed
    assert abs(err.free - free_bytes(small_disk)) <= 4096
    message = str(err)
    assert f"{err.needed:,} bytes" in message and f"{err.free:,} bytes" in message and repr(str(target)) in message
    assert "The previous model.ckpt is intact (not replaced)" in message
    assert load_checkpoint(target)["global_step"] == 1  # the old file, whole
    assert leftovers(small_disk) == []


def test_audit_log_on_a_full_disk_says_the_checkpoint_is_complete(tmp_path: Path, small_disk: Path) -> None:
    # The checkpoint goes to a roomy disk, the run folder with its checkpoints.jsonl to a full one.
    target = tmp_path / "elsewhere" / "a.ckpt"
    fill(small_disk, leave=0)
    with pytest.raises(DiskFullError) as caught:
        write_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 3}, target, audit_dir=small_disk)
    message = str(caught.value)
    assert message.startswith("[Errno 28] No space left on device while appending to the audit log")
    assert str(small_disk / "checkpoints.jsonl") in message and "is complete on disk" in message
    assert load_checkpoint(target)["global_step"] == 3
    assert leftovers(target.parent) == []


def test_export_to_a_full_disk_is_one_line(tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors")
    from fulmen import cli

    source = tmp_path / "model.ckpt"
    write_checkpoint({"state_dict": {"w": torch.zeros(512 * 1024)}}, source)  # 2 MiB of weights
    fill(small_disk, leave=256 * 1024)
    assert cli.main(["export", str(source), "--to", str(small_disk / "model.safetensors")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fulmen export: could not write {str(small_disk / 'model.safetensors')!r}: ")
    assert "No space left on device" in err and "it needs about 2,097,152 bytes (2.0 MiB)" in err and "free there" in err
    assert sorted(os.listdir(small_disk)) == ["filler.bin"]  # no partial file
