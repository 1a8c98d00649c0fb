"""Starting the other processes of a run from a plain ``python train.py``.

With ``devices=N > 1`` and no launcher around (no torchrun, no SLURM), the first process becomes
rank 0 and starts ranks 1..N-1 by running the same command line again (``sys.orig_argv``: the
script or ``-m module`` with its arguments) with torch's variables set (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, plus ``FULMEN_LAUNCHED=1``). Each
of them builds the same Trainer, reaches the same ``fit`` and joins the process group there.

The children die with rank 0 (``PR_SET_PDEATHSIG`` on Linux), and a watchdog thread in rank 0 ends
the whole run with a clear message when a child fails, instead of leaving rank 0 waiting forever
in a collective.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

_children: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relaunch_command() -> list[str]:
    """The command line that started this process, to start it again."""
    import __main__

    orig = list(getattr(sys, "orig_argv", []))
    script = getattr(__main__, "__file__", None)
    if len(orig) >= 2 and ((script and os.path.isfile(script)) or "-m" in orig or "-c" in orig):
        return [sys.executable, *orig[1:]]
    raise RuntimeError(
        "Trainer(devices>1) in an interactive session (a notebook or the Python prompt): fulmen starts the other "
        "processes by running your script again, and there is no script here. Use Trainer(strategy='ddp_spawn') "
        "in notebooks, or put the training code in a file and run it with `python train.py`."
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def launch_children(world_size: int, num_nodes: int = 1) -> dict[str, str]:
    """Start ranks 1..world_size-1 of a one-machine run; returns the environment of rank 0
    (already set in ``os.environ``)."""
    if num_nodes != 1:
        raise RuntimeError(
            f"Trainer(num_nodes={num_nodes}) from a plain `python` command: fulmen starts processes on this machine "
            f"only. Start each node with torchrun (torchrun --nnodes={num_nodes} --nproc-per-node=<devices> "
            f"--rdzv-backend=c10d --rdzv-endpoint=<host>:<port> train.py) or submit the job with SLURM (srun)."
        )
    command = relaunch_command()
    port = free_port()
    base = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "FULMEN_LAUNCHED": "1",
    }
    for rank in range(1, world_size):
        env = {**os.environ, **base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        _children.append(subprocess.Popen(command, env=env, preexec_fn=preexec))
    own = {**base, "RANK": "0", "LOCAL_RANK": "0"}
    os.environ.update(own)
    threading.Thread(target=_watch, name="fulmen-launch-watchdog", daemon=True).start()
    # At the end of the script rank 0 waits for the others; an error in rank 0 stops them.
    atexit.register(wait_children)
    previous_hook = sys.excepthook

    def excepthook(*args: Any) -> None:
        previous_hook(*args)
        # An error in a collective often means another rank died first: say which.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and all(c.poll() is None for c in _children):
            time.sleep(0.05)
        _report_failed()
        kill_children()

    sys.excepthook = excepthook
    return own


_reported = False


def _report_failed() -> bool:
    """Print which child ranks failed (once); True when one did."""
    global _reported
    from fulmen.runtime.signals import stopping

    if stopping():  # a signal stops every process after the same step: they exit 143 / 130 too
        return False
    failed = [(i + 1, c) for i, c in enumerate(_children) if c.poll() not in (None, 0)]
    if failed and not _reported:
        _reported = True
        for rank, child in failed:
            sys.stderr.write(
                f"\n[fulmen] rank {rank} (pid {child.pid}) exited with code {child.returncode}; stopping the other "
                f"processes of this run. Its error is printed above. Checkpoints already written are complete and "
                f"can be resumed with ckpt_path='last'.\n"
            )
        sys.stderr.flush()
    return bool(failed)


def _watch() -> None:
    """End the run when a child process fails (rank 0 would otherwise wait in a collective)."""
    while True:
        if _report_failed():
            time.sleep(1.0)  # rank 0's own error (a broken collective), if any, is printed first
            kill_children()
            os._exit(1)
        if _children and all(c.poll() == 0 for c in _children):
            return
        time.sleep(0.2)


def kill_children() -> None:
    for child in _children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 5
    for child in _children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def wait_children() -> None:
    """Rank 0 at the end of the script: wait for the other ranks to finish."""
    for child in _children:
        child.wait()


def restarted_by_launcher() -> str | None:
    """Which launcher started this run again after a failure or a requeue (``"torchrun"`` for
    ``--max-restarts``, ``"SLURM"`` after a requeue), or None for a first start."""
    from fulmen.runtime import slurm

    if (os.environ.get("TORCHELASTIC_RESTART_COUNT") or "0") not in ("0", ""):
        return "torchrun"
    if slurm.restarted():
        return "SLURM"
    return None
