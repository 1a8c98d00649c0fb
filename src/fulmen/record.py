"""The run record: what ran, where, with what code and versions, written to ``run_dir/run.json``.

``write_run_record`` is called once when a run starts. It records the command line, working
folder, hyperparameters, seed, Trainer flags, the versions of Python, torch, fulmen and every
installed package, the host, OS, CPU count and GPUs, the git commit, branch and uncommitted
changes (the ``git diff``, up to 1 MB) of the user's code, and copies the user's source files to
``run_dir/code/``: the script that was run and the ``.py`` files of the package that defines the
system (and the datamodule), unless they are installed packages (site-packages or the Python
install). Files beyond 10 MB in all are listed as skipped, not copied. Under ``"data"``, the
fingerprints of the data the run trained on (``fulmen.fingerprint``). Nothing here may stop a
run: git missing, a folder that is not a repository, or a git that hangs (5 s timeout) give
``"git": null``; only a reproduced run (``FULMEN_REPRODUCE_RECORD``) whose data differs from the
original's is stopped, with ``DataError``.

A second record in the same folder (a resumed run) goes to ``run-2.json`` and ``code-2/``, and
so on, so the first run's record is never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from typing import Any

RECORD_FORMAT = 1
DIFF_LIMIT = 1 << 20  # bytes of `git diff` text kept
CODE_LIMIT = 10 << 20  # bytes of source files copied
CODE_FILES_LIMIT = 2000
GIT_TIMEOUT = 5.0
_ENV_KEPT = ("CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}


# -- JSON ---------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Plain JSON values; large tensors by dtype and shape, non-finite floats as strings."""
    import torch

    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Tensor) and value.numel() > 64:
        return {"tensor": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    from fulmen.loggers._yaml import to_plain

    return _jsonable(to_plain(value))  # only plain types come back, so this ends


# -- git ----------------------------------------------------------------------------------------------
def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # `git status` must not take the index lock of the user's repository
    env["LC_ALL"] = "C"
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def _git(args: list[str], cwd: str, limit: int | None = None) -> tuple[bytes, bool] | None:
    """``git -C cwd args``: (stdout, truncated) or None when git is missing, fails or hangs."""
    try:
        proc = subprocess.Popen(
            ["git", "-C", cwd, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=_git_env(),
        )
    except OSError:
        return None
    try:
        if limit is None:
            out, _ = proc.communicate(timeout=GIT_TIMEOUT)
            truncated = False
        else:
            assert proc.stdout is not None
            out = proc.stdout.read(limit + 1)  # bounded by the limit, not by the diff's size
            truncated = len(out) > limit
            out = out[:limit]
            if truncated:
                proc.kill()
            proc.communicate(timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0 and not (limit is not None and truncated):
        return None
    return out, truncated


def git_info(directory: str) -> dict[str, Any] | None:
    """Commit, branch, dirty state and diff of the repository holding ``directory``; None without one."""
    status = _git(["status", "--porcelain=v2", "--branch"], directory)
    if status is None:
        return None
    commit = branch = None
    changed: list[str] = []
    untracked: list[str] = []
    for line in status[0].decode("utf-8", "replace").splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2]
            commit = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            branch = None if head == "(detached)" else head
        elif line[:2] in ("1 ", "2 ", "u "):
            fields = {"1": 8, "2": 9, "u": 10}[line[0]]  # the path follows this many fields
            parts = line.split(" ", fields)
            if len(parts) > fields:
                changed.append(parts[fields].split("\t")[0])
        elif line.startswith("? "):
            untracked.append(line[2:])
    top = _git(["rev-parse", "--show-toplevel"], directory)
    info: dict[str, Any] = {
        "root": top[0].decode("utf-8", "replace").strip() if top else None,
        "commit": commit,
        "branch": branch,
        "dirty": bool(changed),
        "changed_files": changed[:200],
        "untracked_files": untracked[:200],
        "diff": None,
        "diff_truncated": False,
    }
    if changed:
        diff = _git(["diff", "HEAD" if commit else "--cached", "--no-color", "--no-ext-diff"], directory, limit=DIFF_LIMIT)
        if diff is not None:
            info["diff"] = diff[0].decode("utf-8", "replace")
            info["diff_truncated"] = diff[1]
    return info


# -- where the user's code is ----------------------------------------------------------------------
def _installed_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(path)
    return sorted({os.path.realpath(r) for r in roots})


def _is_installed(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    parts = set(real.split(os.sep))
    if parts & {"site-packages", "dist-packages"}:
        return True
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _script() -> str | None:
    script = sys.argv[0] if sys.argv else ""
    return os.path.abspath(script) if script and os.path.isfile(script) else None


def _sources_of(obj: Any, roots: list[str]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """``(path on disk, name in code/)`` of the ``.py`` files of the top-level package (or module)
    defining ``obj``'s class, and what was skipped (an installed package is not walked)."""
    module_name = type(obj).__module__
    if module_name == "__main__":
        return [], []  # defined in the script
    top = sys.modules.get(module_name.split(".")[0])
    if top is None:
        return [], []
    paths = list(getattr(top, "__path__", []) or [])
    if not paths:
        file = getattr(top, "__file__", None)
        if not file or not file.endswith(".py"):
            return [], []
        if _is_installed(file, roots):
            return [], [{"source": file, "reason": "installed package"}]
        return [(file, os.path.basename(file))], []
    out: list[tuple[str, str]] = []
    skipped: list[dict[str, Any]] = []
    for pkg_dir in paths:
        if _is_installed(pkg_dir, roots):
            skipped.append({"source": pkg_dir, "reason": "installed package"})
            continue
        for folder, dirs, files in os.walk(pkg_dir):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    out.append((path, os.path.join(top.__name__, os.path.relpath(path, pkg_dir))))
            if len(out) > 4 * CODE_FILES_LIMIT:
                skipped.append({"source": pkg_dir, "reason": "too many files: stopped walking"})
                break
    return out, skipped


def snapshot_code(dest: str, objects: list[Any], limit: int | None = None) -> dict[str, Any]:
    """Copy the script and the packages defining ``objects``' classes to ``dest`` (at most ``limit``
    bytes, default ``CODE_LIMIT``); what was copied and what was skipped."""
    limit = CODE_LIMIT if limit is None else limit
    roots = _installed_roots()
    candidates: list[tuple[str, str]] = []
    script = _script()
    if script is not None and script.endswith(".py"):
        candidates.append((script, os.path.basename(script)))
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for obj in objects:
        if obj is not None:
            found, passed = _sources_of(obj, roots)
            candidates.extend(found)
            skipped.extend(passed)
    seen: set[str] = set()
    names: set[str] = set()
    total = 0
    for source, name in candidates:
        real = os.path.realpath(source)
        if real in seen:
            continue
        seen.add(real)
        if _is_installed(real, roots):
            skipped.append({"source": source, "reason": "installed package"})
            continue
        try:
            size = os.path.getsize(real)
        except OSError as err:
            skipped.append({"source": source, "reason": f"unreadable: {err}"})
            continue
        if total + size > limit or len(files) >= CODE_FILES_LIMIT:
            skipped.append({"source": source, "size": size, "reason": f"over the {limit} byte / {CODE_FILES_LIMIT} file limit"})
            continue
        if name in names:
            name = os.path.join("_other", str(len(files)), name)
        try:
            with open(real, "rb") as f:
                data = f.read()
            target = os.path.join(dest, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        except OSError as err:
            skipped.append({"source": source, "reason": f"could not copy: {err}"})
            continue
        names.add(name)
        total += len(data)
        files.append(
            {"path": name.replace(os.sep, "/"), "source": source, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    if len(skipped) > 200:
        skipped = [*skipped[:200], {"source": None, "reason": f"and {len(skipped) - 200} more skipped files"}]
    return {"dir": os.path.basename(dest), "files": files, "skipped": skipped, "bytes": total}


# -- the machine ----------------------------------------------------------------------------------
def _packages() -> dict[str, str]:
    """Installed distributions (name -> version), the first on sys.path winning as on import.

    Read from the ``*.dist-info`` / ``*.egg-info`` folder names, which carry both: parsing every
    METADATA file with importlib.metadata costs ~40 ms and holds the GIL while training starts.
    """
    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            stem, ext = os.path.splitext(folder)
            if ext not in (".dist-info", ".egg-info") or "-" not in stem:
                continue
            name, version = stem.split("-", 1)
            key = name.replace("_", "-").lower()
            if key not in out:
                out[key] = version.split("-py")[0]
    return dict(sorted(out.items()))


def _devices() -> list[str]:
    """GPU names, without starting CUDA in this process (that would break fork-started workers)."""
    import torch

    if torch.cuda.is_initialized():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not torch.cuda.is_available():
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [line.strip() for line in out.splitlines() if line.strip()]


def _torch_threads() -> dict[str, int]:
    """torch's intra-op and inter-op CPU thread counts in this process."""
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def _safe(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``{"error": ...}`` if it fails: gathering facts must never stop a run."""
    try:
        return fn(*args)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


def _free_names(run_dir: str) -> tuple[str, str]:
    if not os.path.exists(os.path.join(run_dir, "run.json")):
        return "run.json", "code"
    n = 2
    while os.path.exists(os.path.join(run_dir, f"run-{n}.json")):
        n += 1
    return f"run-{n}.json", f"code-{n}"


def _env_seed() -> int | None:
    """``FULMEN_GLOBAL_SEED`` from the environment, when it holds an integer."""
    env_seed = os.environ.get("FULMEN_GLOBAL_SEED")
    return int(env_seed) if env_seed is not None and env_seed.strip().lstrip("-").isdigit() else None


def _code_dir(system: Any) -> str | None:
    """The folder of the run's own code (the script, else the system's module), where its git
    state is read; None when both are installed packages."""
    script = _script()
    for candidate in (script, getattr(sys.modules.get(type(system).__module__), "__file__", None)):
        if candidate and not _is_installed(candidate, _installed_roots()):
            return os.path.dirname(candidate)
    return None


def _versions() -> dict[str, Any]:
    """Python, torch, CUDA, cuDNN and fulmen versions."""
    import torch

    import fulmen

    return {
        "python": platform.python_version(),
        "python_build": sys.version,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fulmen": fulmen.__version__,
    }


def write_run_record(
    run_dir: str | os.PathLike[str],
    *,
    system: Any,
    trainer_flags: Mapping[str, Any],
    datamodule: Any = None,
    seed: int | None = None,
    precision: str | None = None,
    config: Mapping[str, Any] | None = None,
    loggers: Sequence[Any] = (),
    data: Mapping[str, Any] | None = None,
) -> str:
    """Write ``run_dir/run.json`` (``run-2.json`` ... when one exists) and the code snapshot; return
    the path written. ``precision`` defaults to ``trainer_flags["precision"]``; ``seed`` to
    ``FULMEN_GLOBAL_SEED`` from the environment; ``config`` is the configuration the run was
    started from (``fulmen fit --config``), recorded under ``"config"``; ``loggers`` are described
    under ``"loggers"`` (class, name, version, folders; an MLflow tracking URI), which ties the
    record to the run in TensorBoard, MLflow or W&B. ``data`` is what the run trained on
    (``fulmen.fingerprint.data_fingerprints``), recorded under ``"data"``; when
    ``FULMEN_REPRODUCE_RECORD`` names the run being reproduced, it is compared with that run's
    after the record is written, and a difference raises ``DataError`` (the one thing here that
    stops a run: it is asked for)."""
    from fulmen._hparams import plain_hparams

    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    record_name, code_name = _free_names(run_dir)
    started = datetime.datetime.now(datetime.timezone.utc)

    if seed is None:
        seed = _env_seed()
    git_dir = _code_dir(system)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "start_time": started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "command": list(sys.argv),
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "seed": seed,
        "system": f"{type(system).__module__}.{type(system).__qualname__}",
        # Described like in checkpoints, without the warning (that one comes with the checkpoint).
        "hyperparameters": _jsonable(plain_hparams(getattr(system, "hparams", {}) or {}, "system", warn=False)),
        "datamodule": None,
        "data": _jsonable(dict(data)) if data is not None else None,
        "trainer_flags": _jsonable(dict(trainer_flags)),
        "config": _jsonable(dict(config)) if config is not None else None,
        "precision": precision if precision is not None else _jsonable(trainer_flags.get("precision")),
        "versions": _versions(),
        "packages": _safe(_packages),
        "host": {
            "name": platform.node(),
            "os": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": _safe(_devices),
            # torch's CPU threads: a float reduction split over more threads may round differently.
            "torch_threads": _safe(_torch_threads),
        },
        "env": {k: v for k, v in sorted(os.environ.items()) if k in _ENV_KEPT or k.startswith("FULMEN_")},
        "git": _safe(git_info, git_dir or os.getcwd()),
        "loggers": [_describe_logger(lg) for lg in loggers],
        "code": None,
    }
    if datamodule is not None:
        record["datamodule"] = {
            "class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
            "hyperparameters": _jsonable(plain_hparams(getattr(datamodule, "hparams", {}) or {}, "datamodule", warn=False)),
        }
    record["code"] = _safe(snapshot_code, os.path.join(run_dir, code_name), [system, datamodule])

    from fulmen.loggers._yaml import replace_atomic

    path = os.path.join(run_dir, record_name)
    replace_atomic(path, json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    if data is not None:
        from fulmen.fingerprint import check_reproduce_record

        check_reproduce_record(record["data"])
    return path


def _describe_logger(logger: Any) -> dict[str, Any]:
    """What identifies a logger's run: its class, name and version (a version folder, an MLflow or
    W&B run id), its folders, and an MLflow tracking URI."""
    out: dict[str, Any] = {"class": f"{type(logger).__module__}.{type(logger).__qualname__}"}
    for key in ("name", "version", "save_dir", "log_dir", "tracking_uri"):
        try:
            value = getattr(logger, key, None)
        except Exception:  # a logger property that fails must not stop the record
            value = None
        if value is not None:
            out[key] = value if isinstance(value, (int, float, bool)) else str(value)
    return out
