"""The Trainer's checkpoint entry points: writing one (``Trainer.save_checkpoint``), resolving
``ckpt_path`` (``"last"``, ``"best"``, a path, the newest run's checkpoint in a new process),
and reading one for a run (resuming a fit, or the weights for validate/test/predict).

The checkpoint's layout itself is assembled in ``fulmen.checkpoint.state.build_checkpoint`` (the
loop's section is ``trainer.loop.state_dict()``) and read back by ``fulmen.trainer._resume``;
this module only decides which file, and when it is read.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from fulmen.errors import FlagError

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


# -- writing -------------------------------------------------------------------------------------
def save_checkpoint(trainer: Trainer, filepath: str | os.PathLike[str], weights_only: bool) -> None:
    """``Trainer.save_checkpoint``'s work (see its docstring)."""
    from fulmen.checkpoint.state import build_checkpoint
    from fulmen.loggers._positions import flush_loggers

    if trainer.system is None:
        raise RuntimeError("Trainer.save_checkpoint() needs a system: call it during or after fit.")
    # The loggers' rows first: on disk before the checkpoint is, so a kill after it loses none.
    flush_loggers(trainer)
    ckpt = build_checkpoint(trainer, trainer.system, weights_only)
    # Digest of the contents, atomic durable write, and an entry in the run's checkpoints.jsonl,
    # by rank 0 (each rank writes its shards with FSDP's sharded checkpoints). The audit log
    # lives in the run folder (default_root_dir without a logger); a checkpoint written
    # elsewhere is logged in its own folder. Under Lightning's rules the log of that folder is
    # kept outside it (fulmen.checkpoint.audit.OutsideLog), so it holds Lightning's files only.
    run_dir = os.path.abspath(trainer.log_dir)
    target = os.path.abspath(filepath)
    audit_dir: str | os.PathLike[str] = (
        run_dir if os.path.commonpath([run_dir, target]) == run_dir else os.path.dirname(target)
    )
    if trainer.rules.audit_log_outside_run:
        from fulmen.checkpoint.audit import OutsideLog

        audit_dir = OutsideLog(audit_dir)
    loop = trainer.loop  # saves at one loop position share one snapshot (asynchronous writes)
    position = (loop.epoch, loop.global_step, loop.batches_done, loop.phase, trainer.state.stage)
    trainer.strategy.save_checkpoint(
        ckpt, filepath, audit_dir=audit_dir, metrics=ckpt.get("callback_metrics") or {}, position=position
    )
    if trainer.state.status != "running":  # outside a run nothing waits for a background write later
        trainer.strategy.checkpoint_io.finish()


# -- which file ----------------------------------------------------------------------------------
def resolve_ckpt(trainer: Trainer, ckpt_path: Any) -> str | None:
    """``"last"`` / ``"best"`` through the checkpoint callbacks; a path as it is."""
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "best"):
        from fulmen.callbacks.checkpoint import ModelCheckpoint

        trainer.strategy.checkpoint_io.finish()  # the files named are on disk (asynchronous writes)
        for cb in trainer.checkpoint_callbacks:
            path = ModelCheckpoint.resolve(cb, trainer, ckpt_path)
            if path:
                return str(path)
        if ckpt_path == "last" and not trainer.checkpoint_callbacks:  # a signal's stop checkpoint is still there
            from fulmen.runtime.signals import newest_stop_checkpoint

            found = newest_stop_checkpoint(trainer)
            if found is not None:
                return found
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no {ckpt_path} checkpoint was found"
            + (" (no ModelCheckpoint callback)" if not trainer.checkpoint_callbacks else "")
            + ". Pass the checkpoint's path instead."
        )
    return os.fspath(ckpt_path)


def resolve_last_run(trainer: Trainer, ckpt_path: str) -> str | None:
    """``fit(ckpt_path="last")`` in a new process: the latest checkpoint of the latest run in
    this ``default_root_dir`` (the loggers' newest version folder holding one, which the
    loggers then keep), not of a fresh one."""
    from fulmen.run_dir import newest_run_checkpoint

    def find() -> str | None:
        try:
            return trainer._resolve_ckpt(ckpt_path)
        except FileNotFoundError:
            return None

    found = newest_run_checkpoint(trainer.loggers, find, keep_version=True)
    return found if found is not None else trainer._resolve_ckpt(ckpt_path)  # (raises, saying why)


def newest_intact(path: str) -> tuple[str, dict[str, Any]]:
    """``ckpt_path="last"``: the latest checkpoint, or, when it is damaged (a crash while it was
    written, a bad disk), the newest one beside it that loads and verifies, with a warning."""
    from fulmen.checkpoint.io import load_checkpoint
    from fulmen.errors import warn_once

    folder = os.path.dirname(os.path.abspath(path))
    others = sorted(
        (os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt") and not f.startswith(".")),
        key=os.path.getmtime,
        reverse=True,
    )
    tried: list[str] = []
    for candidate in [path, *[o for o in others if not os.path.samefile(o, path)]]:
        try:
            if os.path.isdir(candidate):  # a sharded folder (FSDP): its meta.ckpt, and the shards it lists
                from fulmen.runtime.fsdp import META_FILE, check_shards

                ckpt = load_checkpoint(os.path.join(candidate, META_FILE), map_location="cpu")
                wrong = check_shards(candidate, ckpt, hashes=False)
                if wrong:
                    raise ValueError(f"shard file {wrong[0][0]}: {wrong[0][2]}")
            else:
                ckpt = load_checkpoint(candidate, map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            tried.append(f"{os.path.basename(candidate)} ({type(err).__name__})")
            continue
        if tried:
            warn_once(
                f"ckpt_path='last': {', '.join(tried)} could not be used (damaged or failing its digest); "
                f"resuming from {candidate}, the newest checkpoint that verifies.",
                key=f"last-fallback-{candidate}",
            )
        return candidate, ckpt
    raise RuntimeError(
        f"ckpt_path='last': no checkpoint in {folder} loads and verifies (tried {', '.join(tried)}). "
        f"Run `fulmen verify` on the run folder to see what is wrong."
    )


def check_weights_only(entry: str, weights_only: object) -> None:
    """``trainer.<entry>(weights_only=...)``: None or True only (fulmen reads checkpoints with
    ``torch.load(weights_only=True)``); anything else is a ``FlagError`` naming the entry point."""
    from fulmen.checkpoint.io import check_weights_only as check

    check(f"trainer.{entry}", weights_only, FlagError)


def say_resolved(trainer: Trainer, ckpt_path: Any, path: str | None, *, resume: bool) -> None:
    """``ckpt_path="best"`` / ``"last"``: one line on stderr (rank 0) naming the file it resolved to."""
    if path is None or not isinstance(ckpt_path, str) or ckpt_path not in ("best", "last"):
        return
    if trainer.rules.lightning or not trainer.is_global_zero:  # (Lightning programs: Lightning's own messages)
        return
    doing = "resuming from" if resume else "loading the weights of"
    print(f"[fulmen] ckpt_path={ckpt_path!r}: {doing} {path}", file=sys.stderr, flush=True)


# -- reading, for a run ----------------------------------------------------------------------------
def open_for_fit(trainer: Trainer, ckpt_path: Any, trusted_keys: Any = None) -> tuple[str | None, dict[str, Any] | None]:
    """``fit(ckpt_path=...)`` before the run starts: the checkpoint's path (also set as
    ``trainer.ckpt_path``) and, for a single file, its contents; the loggers go on in the stopped
    run's version folders and forget what it logged after the checkpoint. With ``trusted_keys``,
    a checkpoint no trusted signature covers is refused first (``require_trusted``)."""
    from fulmen.runtime import slurm
    from fulmen.runtime.launch import restarted_by_launcher

    if ckpt_path is None and restarted_by_launcher() is not None:
        # SLURM started the job again after a requeue, or torchrun restarted the workers after a
        # failure (--max-restarts): go on from the run's newest checkpoint.
        try:
            trainer._resolve_last_run("last")
            ckpt_path = "last"
        except FileNotFoundError:  # no ModelCheckpoint to ask (enable_checkpointing=False)
            ckpt_path = slurm.latest_requeue_checkpoint(trainer)
    path = trainer._resolve_last_run(ckpt_path) if ckpt_path == "last" else trainer._resolve_ckpt(ckpt_path)
    trainer.ckpt_path = path  # the checkpoint this run resumed from (ModelCheckpoint never deletes it)
    ckpt = ckpt_for_run = None
    if path is not None:
        from fulmen.checkpoint.io import load_checkpoint

        if ckpt_path == "last":  # (a sharded folder gives its meta.ckpt)
            path, ckpt = newest_intact(path)
            trainer.ckpt_path = path
        elif os.path.isdir(path):  # a sharded checkpoint (FSDP)
            meta = os.path.join(path, "meta.ckpt")
            ckpt = load_checkpoint(meta, map_location="cpu") if os.path.isfile(meta) else None
        else:
            ckpt = load_checkpoint(path, map_location="cpu")
        if trusted_keys is not None:
            from fulmen.checkpoint.signing import require_trusted

            require_trusted(path, ckpt, trusted_keys, verified=True)
        # The resumed run goes on in the same run folders (logs, checkpoints) as before.
        if not os.path.isdir(path):
            ckpt_for_run = ckpt
        elif not _reads_shards(trainer):  # another world size, no FSDP: the full tensors, read here
            from fulmen.runtime.fsdp import read_sharded_folder

            ckpt_for_run = read_sharded_folder(path)
        for lg, version in zip(trainer.loggers, (ckpt or {}).get("logger_versions") or []):
            if version is not None:  # (a logger whose version is fixed already keeps it)
                lg.pin_version(version)
        from fulmen.loggers._positions import resume_loggers

        resume_loggers(trainer, ckpt)  # they forget what the stopped run logged after the checkpoint
    say_resolved(trainer, ckpt_path, trainer.ckpt_path, resume=True)
    return path, ckpt_for_run


def _reads_shards(trainer: Trainer) -> bool:
    """Whether the trainer's strategy reads a sharded folder itself, into its shards (FSDP);
    otherwise ``open_for_fit`` reads it into full tensors."""
    from fulmen.runtime.fsdp import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def read_weights(trainer: Trainer, ckpt_path: Any, trusted_keys: Any = None) -> tuple[str, dict[str, Any] | None] | None:
    """validate/test/predict with ``ckpt_path``: the checkpoint's path and contents, read before
    the run starts, so that a wrong path or a refused file (or, with ``trusted_keys``, one no
    trusted signature covers) stops it before any run folder is made (a sharded folder is read
    inside the run, once the system is sharded)."""
    path = trainer._resolve_ckpt(ckpt_path)
    if path is None:
        return None
    if not os.path.isdir(path):
        ckpt = trainer.strategy.load_checkpoint(path, map_location="cpu")
    elif not _reads_shards(trainer):  # a sharded folder without FSDP: its full tensors, read here
        from fulmen.runtime.fsdp import read_sharded_folder

        ckpt = read_sharded_folder(path)
    else:
        ckpt = None
    if trusted_keys is not None:
        from fulmen.checkpoint.signing import require_trusted

        require_trusted(path, ckpt, trusted_keys, verified=True)
    say_resolved(trainer, ckpt_path, path, resume=False)
    return path, ckpt


def load_for_run(trainer: Trainer, path: str, system: System, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """Read a checkpoint (unless given) and restore what precedes the optimizers: weights,
    callback and datamodule states (the ``on_load_checkpoint`` hooks see the checkpoint first)."""
    from fulmen.checkpoint.lightning_format import add_fulmen_keys
    from fulmen.trainer._resume import restore_callbacks, restore_model

    if ckpt is None:
        ckpt = trainer.strategy.load_checkpoint(path, map_location="cpu")
    hooks = trainer._hooks
    assert hooks is not None
    if trainer.rules.lightning_hook_calls:  # the module's hook first: Lightning restores it before the callbacks
        from fulmen.trainer._hooks import call_hooks

        own = getattr(system, "on_load_checkpoint", None)
        fns = hooks["on_load_checkpoint"]  # (the module's may be wrapped by the profiler)
        call_hooks(sorted(fns, key=lambda fn: not (fn == own or getattr(fn, "__wrapped__", None) == own)), ckpt)
    else:
        hooks.call("on_load_checkpoint", ckpt)
    # A file Lightning wrote: fulmen's entries beside Lightning's (fulmen.checkpoint.lightning_format).
    add_fulmen_keys(ckpt, trainer.datamodule, path, resume=trainer.state.stage == "fit")
    restore_model(system, ckpt, path)
    if trainer.state.stage == "fit":  # as in Lightning: evaluation takes the weights, not callback states
        restore_callbacks(trainer, ckpt)
    if trainer.datamodule is not None and "datamodule" in ckpt:
        trainer.datamodule.load_state_dict(ckpt["datamodule"])
    return ckpt
