"""What differs between the environment a run recorded (``run.json``) and another one.

Each difference is one line, ``"<what>: recorded <a>, now <b>"``. The environment compared is
the one that decides whether a run's floating point results can be bitwise equal: Python, torch,
CUDA, cuDNN and fulmen versions, the other installed packages, the devices, torch's CPU thread
counts and the environment variables fulmen records (``CUBLAS_WORKSPACE_CONFIG``,
``PYTHONHASHSEED``, ``OMP_NUM_THREADS``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: Recorded variables that are not handed to a re-run (they describe how that process was started).
NOT_RESTORED = ("FULMEN_LAUNCHED", "FULMEN_AUDIT_HOME")
#: The most package differences listed one by one (the rest are counted).
MAX_PACKAGES = 12


def current_environment() -> dict[str, Any]:
    """This process's environment, in ``run.json``'s layout (the parts ``differences`` reads)."""
    from fulmen import record

    return {
        "versions": record._versions(),
        "packages": record._safe(record._packages),
        "host": {"devices": record._safe(record._devices), "torch_threads": record._safe(record._torch_threads)},
        "env": {
            k: v for k, v in sorted(os.environ.items()) if k in record._ENV_KEPT or k.startswith("FULMEN_")
        },
    }


def _show(value: Any) -> str:
    return "(none)" if value in (None, "", [], {}) else str(value)


def _versions(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    names = {"python": "Python", "torch": "torch", "cuda": "CUDA", "cudnn": "cuDNN", "fulmen": "fulmen"}
    return [
        f"{label}: recorded {_show(recorded.get(key))}, now {_show(now.get(key))}"
        for key, label in names.items()
        if key in recorded and recorded.get(key) != now.get(key)
    ]


def _packages(recorded: Any, now: Any) -> list[str]:
    if not isinstance(recorded, Mapping) or not isinstance(now, Mapping) or "error" in recorded:
        return []
    skip = {"fulmen", "torch"}  # (in the versions already)
    changed = sorted(
        name
        for name in set(recorded) | set(now)
        if name.lower() not in skip and recorded.get(name) != now.get(name)
    )
    lines = [f"package {n}: recorded {_show(recorded.get(n))}, now {_show(now.get(n))}" for n in changed[:MAX_PACKAGES]]
    if len(changed) > MAX_PACKAGES:
        lines.append(f"packages: {len(changed) - MAX_PACKAGES} more differ")
    return lines


def _devices(recorded: Any, now: Any) -> list[str]:
    if not isinstance(recorded, list) or not isinstance(now, list):
        return []
    if recorded == now:
        return []
    return [f"devices: recorded {_describe_devices(recorded)}, now {_describe_devices(now)}"]


def _describe_devices(devices: list[Any]) -> str:
    if not devices:
        return "CPU only"
    names = sorted({str(d) for d in devices})
    return f"{len(devices)} GPU(s) ({', '.join(names)})"


def _threads(recorded: Any, now: Any) -> list[str]:
    if not isinstance(recorded, Mapping) or not isinstance(now, Mapping) or "error" in recorded:
        return []
    labels = {"intra_op": "torch intra-op threads (torch.get_num_threads)", "inter_op": "torch inter-op threads"}
    return [
        f"{labels[k]}: recorded {recorded[k]}, now {now.get(k)}"
        for k in labels
        if k in recorded and recorded[k] != now.get(k)
    ]


def _variables(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    keys = sorted((set(recorded) | set(now)) - set(NOT_RESTORED))
    return [
        f"${k}: recorded {_show(recorded.get(k))}, now {_show(now.get(k))}"
        for k in keys
        if not k.startswith("FULMEN_REPRODUCE") and recorded.get(k) != now.get(k)
    ]


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any], *, in_process: bool = True) -> list[str]:
    """One line per difference between two records' environments (``now``: a record of the same
    layout, ``current_environment()`` or a re-run's ``run.json``). ``in_process=False`` leaves out
    what a re-run sets for itself (the environment variables, set as recorded, and torch's thread
    counts, which the re-run's own record shows)."""
    host_r, host_n = recorded.get("host") or {}, now.get("host") or {}
    lines = [
        *_versions(recorded.get("versions") or {}, now.get("versions") or {}),
        *_packages(recorded.get("packages"), now.get("packages")),
        *_devices(host_r.get("devices"), host_n.get("devices")),
    ]
    if in_process:
        lines.extend(_threads(host_r.get("torch_threads"), host_n.get("torch_threads")))
        lines.extend(_variables(recorded.get("env") or {}, now.get("env") or {}))
    return lines


def rerun_variables(recorded: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a re-run: ``base`` with the recorded determinism variables put back (set
    as recorded; one fulmen records but the run did not have is removed)."""
    from fulmen import record

    env = dict(base)
    saved = {k: str(v) for k, v in (recorded.get("env") or {}).items() if k not in NOT_RESTORED}
    for key in list(env):
        if (key in record._ENV_KEPT or key.startswith("FULMEN_")) and key not in saved and key not in NOT_RESTORED:
            del env[key]
    env.update(saved)
    return env


def needs_gpu(recorded: Mapping[str, Any]) -> str | None:
    """When the run used a GPU (its flags asked for one, or ``"auto"`` found one) and this machine
    has none: what it used, for the refusal; else None."""
    import torch

    flags = recorded.get("trainer_flags") or {}
    devices = (recorded.get("host") or {}).get("devices")
    accelerator = str(flags.get("accelerator", "auto")).lower()
    used_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and isinstance(devices, list) and bool(devices))
    if used_gpu and not torch.cuda.is_available():
        return _describe_devices(devices if isinstance(devices, list) else [])
    return None
