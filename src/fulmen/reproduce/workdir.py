"""The re-run's work folder and the code in it, as the record says it was.

The code comes from the run's snapshot (``<run>/code/``, written by ``fulmen.record``): the
script at the top, the packages of the system and datamodule under their own names, each file
checked against the SHA-256 the record lists (an edited file is reported and used as it is now:
the comparison then shows what the edit changed). Without a snapshot, the recorded git commit
is exported from the recorded repository and the recorded diff applied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fulmen.utils.files import file_sha256


class ReproduceError(Exception):
    """A run that cannot be reproduced here: the message is one line saying what and what to do."""


@dataclass
class Code:
    """The code placed in the work folder: the command to run there, and what was noticed."""

    command: list[str]
    #: Files whose content is not the recorded one, one line each.
    edited: list[str] = field(default_factory=list)
    #: Files the record lists as not copied (too large, installed, unreadable).
    skipped: list[str] = field(default_factory=list)
    #: Where the code came from: "snapshot" or "git <commit>".
    source: str = "snapshot"
    files: int = 0
    #: The re-run's working folder (the work folder, or where the recorded one is in a git export).
    cwd: str = ""


def make_workdir(workdir: str | None, run_dir: str) -> str:
    """A new, empty work folder (``workdir``, or a fresh temporary one), never inside ``run_dir``."""
    run_real = os.path.realpath(run_dir)
    if workdir is None:
        return tempfile.mkdtemp(prefix="fulmen-reproduce-")
    real = os.path.realpath(workdir)
    if real == run_real or real.startswith(run_real + os.sep):
        raise ReproduceError(
            f"--workdir {workdir!r} is inside the run folder {run_dir!r}: reproduce never writes there; choose "
            f"another folder."
        )
    if os.path.exists(real) and (not os.path.isdir(real) or os.listdir(real)):
        raise ReproduceError(f"--workdir {workdir!r} exists and is not empty: give a new or empty folder.")
    os.makedirs(real, exist_ok=True)
    return real


def script_of(record: Mapping[str, Any]) -> str:
    """The script the run was started with (``command[0]``), refusing commands that are not one."""
    command = record.get("command") or []
    if not command:
        raise ReproduceError("the record holds no command: it cannot be re-run.")
    first = str(command[0])
    if first in ("-c", "-m", "") or not first.endswith(".py"):
        raise ReproduceError(
            f"the run was started by {first!r}, not a Python script (recorded command: {' '.join(map(str, command))}); "
            f"reproduce re-runs `python <script>.py ...` runs only."
        )
    return first


def place_snapshot(record: Mapping[str, Any], run_dir: str, workdir: str) -> Code:
    """Copy the snapshot's files into ``workdir``; the command that runs the script there."""
    script = script_of(record)
    code = record.get("code") or {}
    if not isinstance(code, Mapping) or "error" in code:
        raise ReproduceError(f"the record of {run_dir} has no code snapshot ({code.get('error', 'none') if isinstance(code, Mapping) else code}).")
    folder = os.path.join(run_dir, str(code.get("dir") or "code"))
    files = list(code.get("files") or [])
    names = {str(f.get("path")) for f in files}
    if not os.path.isdir(folder) or os.path.basename(script) not in names:
        missing = folder if not os.path.isdir(folder) else f"{os.path.basename(script)} in {folder}"
        raise FileNotFoundError(missing)
    out = Code(
        command=[sys.executable, os.path.join(workdir, os.path.basename(script)), *map(str, record["command"][1:])],
        cwd=workdir,
    )
    for entry in files:
        rel = str(entry["path"])
        source = os.path.join(folder, rel)
        if not os.path.isfile(source):
            raise ReproduceError(
                f"{os.path.relpath(source, run_dir)} is listed in the record's code snapshot but missing: the code cannot be "
                f"rebuilt as it was; restore the file (from a backup of the run folder) to reproduce."
            )
        digest = file_sha256(source)
        if digest != entry.get("sha256"):
            out.edited.append(
                f"{os.path.relpath(source, run_dir)} was edited after the run (SHA-256 recorded {str(entry.get('sha256'))[:12]}…, "
                f"now {digest[:12]}…): the re-run uses it as it is now"
            )
        target = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        out.files += 1
    out.skipped = [
        f"{s.get('source')} ({s.get('reason')})"
        for s in code.get("skipped") or []
        if isinstance(s, Mapping) and s.get("reason") != "installed package"
    ]
    return out


def place_git(record: Mapping[str, Any], workdir: str) -> Code:
    """Without a snapshot: the recorded commit, exported from the recorded repository, with the
    recorded diff applied."""
    script = script_of(record)
    git = record.get("git") or {}
    root, commit = git.get("root"), git.get("commit")
    if not root or not commit or not os.path.isdir(root):
        raise ReproduceError(
            "the run folder has no code snapshot and the record names no git repository here to rebuild the code "
            f"from (git root {root!r}, commit {commit!r}); copy the run folder with its code/ folder."
        )
    if git.get("diff_truncated"):
        raise ReproduceError("the recorded git diff was cut at its size limit: the code cannot be rebuilt from git.")
    tree = os.path.join(workdir, "git")
    os.makedirs(tree)
    try:
        archive = subprocess.run(["git", "-C", root, "archive", "--format=tar", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True, capture_output=True)
        if git.get("diff"):
            subprocess.run(["git", "-C", tree, "apply", "-"], input=str(git["diff"]).encode(), check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = err.stderr.decode(errors="replace").strip().splitlines()[-1:] if isinstance(err, subprocess.CalledProcessError) and err.stderr else [str(err)]
        raise ReproduceError(f"could not rebuild the code from git commit {commit} of {root}: {' '.join(detail)}") from None
    cwd = str(record.get("cwd") or root)
    absolute = script if os.path.isabs(script) else os.path.join(cwd, script)
    rel = os.path.relpath(os.path.realpath(absolute), os.path.realpath(root))
    if rel.startswith(os.pardir):
        raise ReproduceError(f"the script {script} is outside the recorded git repository {root}: no snapshot to use.")
    where = os.path.relpath(os.path.realpath(cwd), os.path.realpath(root))
    run_cwd = os.path.join(tree, where) if not where.startswith(os.pardir) else workdir
    os.makedirs(run_cwd, exist_ok=True)
    return Code(
        command=[sys.executable, os.path.join(tree, rel), *map(str, record["command"][1:])],
        source=f"git {commit[:12]}",
        cwd=os.path.normpath(run_cwd),
    )


def place_code(record: Mapping[str, Any], run_dir: str, workdir: str) -> Code:
    """The snapshot when there is one, else git."""
    try:
        return place_snapshot(record, run_dir, workdir)
    except FileNotFoundError as missing:
        try:
            return place_git(record, workdir)
        except ReproduceError as err:
            raise ReproduceError(f"the code snapshot is missing ({missing}), and {err}") from None
