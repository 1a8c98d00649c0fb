"""``reproduce``: read the record, check the environment, rebuild the code, re-run, compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from fulmen.reproduce import environment
from fulmen.reproduce.compare import RunLog, compare, targets
from fulmen.reproduce.workdir import Code, ReproduceError, make_workdir, place_code

__all__ = ["ReproduceError", "reproduce"]

LOG_NAME = "reproduce.log"
_POLL = 0.2  # seconds between two looks at a re-run stopped early


def read_record(run_dir: str) -> dict[str, Any]:
    """``run_dir/run.json``, refusing a folder without one or a record this fulmen cannot read."""
    from fulmen import __version__
    from fulmen.record import RECORD_FORMAT

    path = os.path.join(run_dir, "run.json")
    if not os.path.isdir(run_dir):
        raise ReproduceError(f"{run_dir!r} is not a folder: give the run folder (the one holding run.json).")
    if not os.path.isfile(path):
        raise ReproduceError(
            f"{run_dir} has no run.json: reproduce needs the record a fit writes into its run folder (a Trainer with a "
            f"logger); give that folder (e.g. .../fulmen_logs/version_0)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ReproduceError(f"{path} cannot be read ({type(err).__name__}: {err}): the record is damaged.") from None
    if not isinstance(record, dict):
        raise ReproduceError(f"{path} is not a run record (a JSON object was expected).")
    fmt = record.get("format")
    if not isinstance(fmt, int) or fmt > RECORD_FORMAT:
        writer = (record.get("versions") or {}).get("fulmen", "?")
        raise ReproduceError(
            f"{path} has record format {fmt!r}, written by fulmen {writer}; this is fulmen {__version__}, which reads "
            f"format {RECORD_FORMAT}: upgrade fulmen to reproduce it."
        )
    return record


def _rerun_folder(record: Mapping[str, Any], run_dir: str, workdir: str, code: Code) -> str:
    """Where the re-run's run folder will be: the recorded run folder (the first file logger's
    ``log_dir``, else ``run_dir`` itself) placed as the re-run places it: relative to the re-run's
    working folder when it was relative to the original's, else under ``<work folder>/_abs/``.
    (The run folder may have been moved or copied since: the record says where it was.)"""
    from fulmen.run_dir import redirected

    cwd = str(record.get("cwd") or "")
    logged = [lg.get("log_dir") for lg in record.get("loggers") or [] if isinstance(lg, Mapping) and lg.get("log_dir")]
    where = str(logged[0]) if logged else run_dir
    if not os.path.isabs(where):
        return os.path.join(code.cwd, where)
    real = os.path.realpath(where)
    if cwd and (real == os.path.realpath(cwd) or real.startswith(os.path.realpath(cwd) + os.sep)):
        return os.path.join(code.cwd, os.path.relpath(real, os.path.realpath(cwd)))
    return redirected(real, root=workdir)


def _run(code: Code, env: dict[str, str], log_path: str, done: Callable[[], bool] | None) -> tuple[int, bool]:
    """Run the command (its output into ``log_path``); with ``done``, stop it (its whole process
    group) as soon as ``done()`` says the part to compare is written. Returns the exit status and
    whether it was stopped."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(code.command, cwd=code.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while done is not None:
                try:
                    return proc.wait(timeout=_POLL), False
                except subprocess.TimeoutExpired:
                    if done():
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        return 0, True
            return proc.wait(), False
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise


def _tail(path: str, n: int = 15) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def _failed_run(log_path: str, status: int, say: Callable[[str], None]) -> None:
    """A re-run that failed: the data check's line when that was it, else the end of its output."""
    tail = _tail(log_path, 40)
    data = [line for line in tail if "DataError" in line]
    if data:
        say(f"data: {data[-1].split('DataError:', 1)[-1].strip()}")
        return
    say(f"the re-run failed (exit status {status}); the end of its output ({log_path}):")
    for line in tail[-15:]:
        say(f"  | {line}")


def reproduce(
    run_dir: str,
    *,
    workdir: str | None = None,
    until_checkpoint: int | None = None,
    until_step: int | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """Re-run ``run_dir``'s recorded run in a fresh work folder and compare its checkpoints;
    returns the exit status (0: every compared checkpoint is the same, 1: something differs or
    the re-run failed). Raises ``ReproduceError`` for a run that cannot be reproduced here."""
    from fulmen.fingerprint import REPRODUCE_ENV
    from fulmen.run_dir import REPRODUCE_ROOT_ENV

    run_dir = os.path.abspath(run_dir)
    record = read_record(run_dir)
    original = RunLog.read(run_dir)
    if not original.checkpoints:
        raise ReproduceError(f"{run_dir} has no checkpoints in its audit log (checkpoints.jsonl): nothing to compare.")
    gpu = environment.needs_gpu(record)
    if gpu is not None:
        raise ReproduceError(f"the run used {gpu} and this machine has no GPU: reproduce it on a machine like the original.")
    before = environment.differences(record, environment.current_environment(), in_process=False)
    workdir = make_workdir(workdir, run_dir)
    code = place_code(record, run_dir, workdir)
    say(f"fulmen reproduce {run_dir}")
    say(f"work folder: {workdir}")
    say(f"code: {code.files} file(s) from the snapshot" if code.source == "snapshot" else f"code: {code.source} with the recorded diff")
    for line in code.edited + [f"not in the snapshot: {s}" for s in code.skipped]:
        say(f"  {line}")
    say("environment: as recorded" if not before else "environment differs from the recorded one:")
    for line in before:
        say(f"  {line}")
    env = environment.rerun_variables(record, os.environ)
    env[REPRODUCE_ROOT_ENV] = workdir
    env[REPRODUCE_ENV] = os.path.join(run_dir, "run.json")  # the re-run checks its data against it
    rerun_dir = _rerun_folder(record, run_dir, workdir, code)
    need = targets(original, until_checkpoint, until_step) if (until_checkpoint or until_step is not None) else None

    def done() -> bool:
        log = RunLog.read(rerun_dir) if os.path.isdir(rerun_dir) else None
        return log is not None and need is not None and len(log.checkpoints) >= need[0] and len(log.weights) >= need[1]

    log_path = os.path.join(workdir, LOG_NAME)
    say(f"re-run: {' '.join(code.command[1:])}  (in {code.cwd}, output in {LOG_NAME})")
    started = time.monotonic()
    status, stopped = _run(code, env, log_path, done if need is not None else None)
    say(f"re-run {'stopped once the part to compare was written' if stopped else f'ended with exit status {status}'} after {time.monotonic() - started:.1f} s")
    if status != 0:
        _failed_run(log_path, status, say)
        return 1
    return _compare_and_say(record, rerun_dir, workdir, code, original, until_checkpoint, until_step, say)


def _compare_and_say(
    record: Mapping[str, Any],
    rerun_dir: str,
    workdir: str,
    code: Code,
    original: RunLog,
    until_checkpoint: int | None,
    until_step: int | None,
    say: Callable[[str], None],
) -> int:
    """The re-run's environment against the record, then its checkpoints against the original's."""
    from fulmen.run_dir import original_path

    if not os.path.isfile(os.path.join(rerun_dir, "run.json")):
        say(f"the re-run wrote no run folder where the original's would be ({rerun_dir}); nothing to compare.")
        return 1
    with open(os.path.join(rerun_dir, "run.json"), encoding="utf-8") as f:
        rerun_record = json.load(f)
    after = environment.differences(record, rerun_record)
    if after:
        say("the re-run's environment differs from the recorded one:")
        for line in after:
            say(f"  {line}")
    cwd = str(record.get("cwd") or "")
    result = compare(
        original,
        RunLog.read(rerun_dir),
        lambda p: original_path(p, workdir, code.cwd, cwd),
        until_checkpoint=until_checkpoint,
        until_step=until_step,
    )
    for line in result.lines:
        say(line)
    if result.reproduced:
        say(f"reproduced bit for bit: {result.same} checkpoint(s) the same")
        return 0
    say(f"not reproduced: {result.differ} checkpoint(s) differ, {result.same} the same, {result.not_compared} not compared")
    return 1


def main(args: Any) -> int:
    """``fulmen reproduce`` (``args`` from ``add_arguments``' parser)."""
    try:
        return reproduce(
            args.run_dir, workdir=args.workdir, until_checkpoint=args.until_checkpoint, until_step=args.until_step
        )
    except ReproduceError as err:
        print(f"fulmen reproduce: {err}", file=sys.stderr)
        return 2


def add_arguments(parser: Any) -> None:
    """The ``fulmen reproduce`` options."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holding run.json, code/ and checkpoints.jsonl)")
    parser.add_argument("--workdir", metavar="DIR", help="a new or empty folder for the re-run (default: a new temporary folder)")
    until = parser.add_mutually_exclusive_group()
    until.add_argument("--until-checkpoint", type=int, metavar="N", help="compare the first N checkpoints only (stops the re-run there)")
    until.add_argument("--until-step", type=int, metavar="S", help="compare up to global step S only (stops the re-run there)")
