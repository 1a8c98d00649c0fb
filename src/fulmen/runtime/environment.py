"""Where this process sits in a distributed job: which launcher started it, and its ranks.

Three launchers are recognised, in this order:

- ``torchrun`` (or any launcher that sets torch's variables ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): fulmen itself sets the same variables for the
  processes it starts, adding ``FULMEN_LAUNCHED=1``;
- SLURM (``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
  ``SLURM_NODELIST`` (bracket ranges such as ``node[01-04,07]``) and ``SLURM_JOB_ID``; the first
  node of the list hosts the rendezvous, on a port derived from the job id. Only in a job step
  (``SLURM_STEP_ID`` set): Python run directly in the batch script is not one of ``srun``'s tasks;
- none: a plain ``python train.py``, where fulmen starts the other processes itself when a run
  asks for more than one.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class ClusterEnvironment:
    """The ranks of this process and how to reach the rendezvous."""

    kind: str  # "torchrun", "fulmen", "slurm" or "none"
    world_size: int = 1
    global_rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    local_world_size: int = 1
    main_address: str = "127.0.0.1"
    main_port: int = 0
    job_id: str | None = None

    @property
    def managed(self) -> bool:
        """True when a launcher started this process (fulmen must join, not launch)."""
        return self.kind != "none"

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"the environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"the environment variable {name}={raw!r} is not an integer") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list, expanded: ``"gpu[01-03,07],cpu1"`` -> ``gpu01, gpu02, gpu03,
    gpu07, cpu1``. Zero padding is kept; several bracket groups in one name multiply out."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_host(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _expand_host(item: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    out: list[str] = []
    for part in match.group(1).split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                out.extend(_expand_host(f"{head}{str(n).zfill(width)}{tail}"))
        elif part:
            out.extend(_expand_host(f"{head}{part}{tail}"))
    return out


def _slurm_port(job_id: str) -> int:
    """A port every task of the job computes alike (distinct for jobs sharing a node)."""
    digits = re.sub(r"\D", "", job_id)[-4:] or "0"
    return 15000 + int(digits) % 10000 + 1


def _srun_task(env: Mapping[str, str]) -> bool:
    """A task that ``srun`` started in a batch job. Not the batch script itself: with ``sbatch
    --ntasks=2`` and ``python train.py`` run directly in it, ``SLURM_NTASKS=2`` and ``SLURM_PROCID=0``
    are set too, but only this one process exists (no ``SLURM_STEP_ID``, which only job steps
    have); taking it for rank 0 of 2 would wait for a rank 1 that never comes."""
    return (
        "SLURM_NTASKS" in env
        and "SLURM_PROCID" in env
        and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)
        and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    )


def detect(env: Mapping[str, str] | None = None) -> ClusterEnvironment:
    """The launcher and ranks of this process, read from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    if all(v in env for v in _TORCH_VARS):
        world = _int(env, "WORLD_SIZE")
        local_world = _int(env, "LOCAL_WORLD_SIZE", world)
        return ClusterEnvironment(
            kind="fulmen" if env.get("FULMEN_LAUNCHED") == "1" else "torchrun",
            world_size=world,
            global_rank=_int(env, "RANK"),
            local_rank=_int(env, "LOCAL_RANK"),
            node_rank=_int(env, "GROUP_RANK", _int(env, "NODE_RANK", _int(env, "RANK") // max(1, local_world))),
            local_world_size=local_world,
            main_address=env["MASTER_ADDR"],
            main_port=_int(env, "MASTER_PORT"),
            job_id=env.get("TORCHELASTIC_RUN_ID"),
        )
    if _srun_task(env):
        job_id = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        job_id = job_id or env.get("SLURM_JOB_ID", "0")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        hosts = expand_nodelist(nodelist) if nodelist else []
        world = _int(env, "SLURM_NTASKS")
        local_world = _int(env, "SLURM_NTASKS_PER_NODE", 0) if env.get("SLURM_NTASKS_PER_NODE", "").isdigit() else 0
        if not local_world:
            local_world = max(1, world // max(1, len(hosts))) if hosts else world
        return ClusterEnvironment(
            kind="slurm",
            world_size=world,
            global_rank=_int(env, "SLURM_PROCID"),
            local_rank=_int(env, "SLURM_LOCALID", 0),
            node_rank=_int(env, "SLURM_NODEID", 0),
            local_world_size=local_world,
            main_address=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
            main_port=_int(env, "MASTER_PORT", _slurm_port(job_id)),
            job_id=env.get("SLURM_JOB_ID"),
        )
    return ClusterEnvironment(kind="none")
