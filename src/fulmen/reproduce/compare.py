"""Compare a re-run's checkpoints and weight digests with the original run's audit log.

A checkpoint is the same when its *state digest* (``fulmen.checkpoint.state_digest``: its content
digest without its own audit record, which holds the time it was written) equals the original's.
Paths a checkpoint records (``ModelCheckpoint``'s folder and best files) name the folder a run ran
in; when the re-run's differ only by that, they are mapped back (``fulmen.run_dir.original_path``)
before its digest is taken. The original's digests come from its audit log, so a checkpoint file
since deleted (``save_top_k``) is still compared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The most differing entries named for one checkpoint.
MAX_ENTRIES = 5


@dataclass
class RunLog:
    """A run folder's audit log: its checkpoint entries and its weight digests, in order."""

    run_dir: str
    checkpoints: list[dict[str, Any]]
    weights: list[dict[str, Any]]

    @classmethod
    def read(cls, run_dir: str) -> RunLog:
        from fulmen.checkpoint import audit

        log = audit.log_file(run_dir)
        entries = audit.read_log(run_dir, log=log) if log is not None else []
        weights = audit.read_weight_digests(run_dir, log=log) if log is not None else []
        return cls(run_dir, [e for e in entries if "file" in e], list(weights))

    def path_of(self, entry: Mapping[str, Any]) -> str:
        name = str(entry["file"])
        return name if os.path.isabs(name) else os.path.join(self.run_dir, name)


@dataclass
class Comparison:
    """What ``compare`` found: a line per checkpoint and per finding, and the counts."""

    lines: list[str] = field(default_factory=list)
    same: int = 0
    differ: int = 0
    not_compared: int = 0

    @property
    def reproduced(self) -> bool:
        return self.same > 0 and self.differ == 0 and self.not_compared == 0


def _load(path: str) -> dict[str, Any] | None:
    from fulmen.checkpoint.io import load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except (OSError, RuntimeError, ValueError):
        return None
    return ckpt if isinstance(ckpt, dict) else None


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` with every string (dict keys included) passed through ``fn``."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_strings(v, fn) for v in value)
    return value


#: The checkpoint's sections in the order a difference is reported (what made the model first).
_ORDER = ("hyper_parameters", "state_dict", "optimizer_states", "lr_schedulers", "precision", "rng", "loops")


def _differing(a: Any, b: Any, prefix: str, out: list[str]) -> None:
    """Every leaf path below ``prefix`` where ``a`` and ``b`` differ, appended to ``out``."""
    import torch

    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{prefix}/{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(f"{where} (only in the {'re-run' if key in b else 'original'})")
            else:
                _differing(a[key], b[key], where, out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _differing(x, y, f"{prefix}[{i}]", out)
    elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            out.append(prefix)
    elif type(a) is not type(b) or a != b:
        out.append(prefix)


def entries_that_differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Where two checkpoints differ, one item per top-level section (hyperparameters and weights
    first; the audit record and the digest left out), naming up to ``MAX_ENTRIES`` entries each."""
    keys = sorted((set(a) | set(b)) - {"audit", "digest"}, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), str(k)))
    out = []
    for key in keys:
        found: list[str] = []
        if key not in a or key not in b:
            found.append(f"{key} (only in the {'re-run' if key in b else 'original'})")
        else:
            _differing(a[key], b[key], str(key), found)
        if found:
            shown = ", ".join(f.split("/", 1)[1] if "/" in f else f for f in found[:MAX_ENTRIES])
            more = f" and {len(found) - MAX_ENTRIES} more" if len(found) > MAX_ENTRIES else ""
            out.append(f"{key}: {shown}{more}" if "/" in found[0] else f"{shown}{more}")
    return out


def _key(entry: Mapping[str, Any]) -> tuple[str, Any]:
    return str(entry.get("file")), entry.get("step")


class _Compare:
    """One comparison; ``back`` maps a re-run's path to the original's."""

    def __init__(self, original: RunLog, rerun: RunLog, back: Callable[[str], str]) -> None:
        self.original, self.rerun, self.back = original, rerun, back
        self.result = Comparison()
        # The re-run's checkpoints by (file, step), in order: a resumed original logs a checkpoint
        # written again after its resume twice, the uninterrupted re-run once; both pair with it.
        self.by_key: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for entry in rerun.checkpoints:  # (a file outside the run folder is logged by its path: mapped back)
            file, step = _key(entry)
            self.by_key.setdefault((back(file) if os.path.isabs(file) else file, step), []).append(entry)

    def partner(self, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        """The re-run's checkpoint written as ``entry`` was (same file, same step)."""
        found = self.by_key.get(_key(entry)) or []
        return found[0] if found else None

    def original_state(self, entry: Mapping[str, Any]) -> str | None:
        from fulmen.checkpoint import state_digest

        if entry.get("state_digest"):
            return str(entry["state_digest"])
        ckpt = _load(self.original.path_of(entry))  # a log from before state digests: from the file
        return state_digest(ckpt) if ckpt is not None else None

    def rerun_state(self, entry: Mapping[str, Any], want: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether the re-run's checkpoint has the state ``want`` (its paths mapped back), and the
        file's content when it was read."""
        from fulmen.checkpoint import state_digest

        if entry.get("state_digest") == want:
            return True, None
        ckpt = _load(self.rerun.path_of(entry))
        if ckpt is None:
            return False, None
        return state_digest(map_strings(ckpt, self.back)) == want, ckpt

    def checkpoint(self, i: int, total: int) -> None:
        o = self.original.checkpoints[i]
        head = f"checkpoint {i + 1}/{total} {o['file']} (step {o.get('step')})"
        want = self.original_state(o)
        if want is None:
            self.result.not_compared += 1
            self.result.lines.append(f"{head}: not compared (no state digest in the log and the file is gone or unreadable)")
            return
        r = self.partner(o)
        if r is None:
            self.result.differ += 1
            self.result.lines.append(
                f"{head}: differs (the re-run wrote no {o['file']} at step {o.get('step')}; it wrote "
                f"{len(self.rerun.checkpoints)} checkpoint(s))"
            )
            return
        same, ckpt = self.rerun_state(r, want)
        if same:
            self.result.same += 1
            self.result.lines.append(f"{head}: same")
            return
        self.result.differ += 1
        line = f"{head}: differs"
        original = _load(self.original.path_of(o))
        if original is not None and ckpt is None:
            ckpt = _load(self.rerun.path_of(r))
        if original is None:
            line += " (the original file is gone: its digest in the log is all there is to compare)"
        elif ckpt is not None:
            where = entries_that_differ(original, map_strings(ckpt, self.back))
            if where:
                line += " in " + "; ".join(where)
        self.result.lines.append(line)

    def weights(self, last_step: float) -> None:
        """The weight digests recorded along the run, up to ``last_step``: the first that differs."""
        wanted = [w for w in self.original.weights if int(w.get("weights", 0)) <= last_step]
        if not wanted:
            return
        got = {int(w.get("weights", -1)): w.get("digest") for w in self.rerun.weights}
        last_same = None
        for w in wanted:
            step = int(w["weights"])
            if got.get(step) != w.get("digest"):
                since = f" (the same up to step {last_same})" if last_same is not None else " (at the first recorded step)"
                what = "missing in the re-run" if step not in got else "differ"
                self.result.lines.append(f"weights: first {what} at step {step}{since}")
                return
            last_same = step
        self.result.lines.append(f"weights: the same at all {len(wanted)} recorded steps up to step {last_same}")


def compare(
    original: RunLog,
    rerun: RunLog,
    back: Callable[[str], str],
    *,
    until_checkpoint: int | None = None,
    until_step: int | None = None,
) -> Comparison:
    """Compare ``rerun`` with ``original`` checkpoint by checkpoint, in order (the first
    ``until_checkpoint``, or those up to ``until_step``), then the weight digests."""
    todo = list(range(len(original.checkpoints)))
    if until_step is not None:
        todo = [i for i in todo if int(original.checkpoints[i].get("step") or 0) <= until_step]
    if until_checkpoint is not None:
        todo = todo[:until_checkpoint]
    run = _Compare(original, rerun, back)
    for i in todo:
        run.checkpoint(i, len(original.checkpoints))
    if until_step is not None:
        last: float = until_step
    elif until_checkpoint is not None and todo:
        last = int(original.checkpoints[todo[-1]].get("step") or 0)
    else:
        last = float("inf")
    run.weights(last)
    return run.result


def targets(original: RunLog, until_checkpoint: int | None, until_step: int | None) -> tuple[int, int]:
    """How many checkpoint and weight entries a re-run must have written for ``compare`` to be
    done (for stopping it early)."""
    todo = original.checkpoints
    if until_step is not None:
        todo = [e for e in todo if int(e.get("step") or 0) <= until_step]
    if until_checkpoint is not None:
        todo = todo[:until_checkpoint]
    last = until_step if until_step is not None else int(todo[-1].get("step") or 0) if todo else 0
    return len(todo), sum(1 for w in original.weights if int(w.get("weights", 0)) <= last)
