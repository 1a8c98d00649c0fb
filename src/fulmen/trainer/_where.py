"""Where in a run an exception was raised: one note added to it on its way out of the loops.

An exception raised in a step, a data hook, a dataloader, any other hook of the system, the
datamodule or a callback keeps its type (the same object is re-raised) and gains one note::

    [fulmen] raised in Digits.training_step during fit, epoch 2, global step 130, batch 17

Nothing here runs unless something raised, and nothing is recorded per call: the loops' ``except``
clauses (the batch loops in ``fulmen.trainer._fit`` and ``fulmen.trainer._eval``, then
``Trainer._run`` for the hooks around them) call ``note_batch_error`` / ``note_run_error``, which
read the hook from the traceback's frames afterwards:

- a frame of a function whose name is a hook (``HOOK_NAMES``) and whose first argument (``self``)
  is the run's system, datamodule or one of its callbacks;
- a frame of the hook dispatch (``call_hooks``, ``HookTable.call_kw``), whose ``fn`` is the hook
  it was calling (this finds hooks that are not methods, such as ``LambdaCallback``'s functions).

The outermost hook is the one the loop called; when another hook raised inside it (a callback's
``on_before_optimizer_step`` under ``opt.step()`` in a manual ``training_step``) both are named.
``forward`` is named only when no other hook is on the way. A batch loop also tells a failure of
the dataloader itself (fetching the next batch: the loop's frame stopped at its ``for``) from one
in the loop's body, and gives the index of the batch being fetched.

The innermost loop that catches the exception adds the note (it knows the batch and dataloader
indices); the loops around it see that a note is there and add none, so there is one note.
"""

from __future__ import annotations

import dis
import sys
from functools import partial
from types import CodeType, FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from fulmen.trainer._hooks import CALLBACK_HOOKS, LIGHTNING_ONLY_HOOKS, SYSTEM_HOOKS

if TYPE_CHECKING:
    from fulmen.trainer.trainer import Trainer

#: Every note of this module starts so (a loop that finds one adds none).
PREFIX = "[fulmen] raised"

#: Names of the functions the loops call on a system, datamodule or callback.
HOOK_NAMES: frozenset[str] = frozenset(
    (
        *SYSTEM_HOOKS,
        *CALLBACK_HOOKS,
        *LIGHTNING_ONLY_HOOKS,  # fulmen.lightning.LightningModule runs some of them
        "on_validation_model_zero_grad",
        "state_dict",
        "load_state_dict",
    )
)

#: Hooks that run before training starts: a note for them gives no epoch or global step.
_BEFORE_TRAINING = frozenset(
    (
        "prepare_data",
        "setup",
        "configure_callbacks",
        "configure_model",
        "configure_optimizers",
        "on_fit_start",
        "on_load_checkpoint",
        "load_state_dict",
        "on_sanity_check_start",
        "on_sanity_check_end",
    )
)

_LOADER_NAME = {
    "train": "the train dataloader",
    "val": "the validation dataloader",
    "test": "the test dataloader",
    "predict": "the predict dataloader",
}
_FOR_ITER = dis.opmap["FOR_ITER"]
_dispatch_codes: frozenset[CodeType] | None = None


def _dispatch() -> frozenset[CodeType]:
    """The code objects of the hook dispatch functions (their local ``fn`` is the hook called)."""
    global _dispatch_codes
    if _dispatch_codes is None:
        from fulmen.trainer._hooks import HookTable, call_hooks

        _dispatch_codes = frozenset((call_hooks.__code__, HookTable.call_kw.__code__))
    return _dispatch_codes


def _unwrap(fn: Any) -> tuple[Any, str]:
    """The owner (``__self__``) and name of a hook function as the dispatch tables hold it: a bound
    method, a ``partial`` of one (callbacks), either timed by a profiler, or a stand-in with
    ``__self__`` and ``__name__`` (``LambdaCallback``, a batch hook called without ``dataloader_idx``)."""
    from fulmen.profilers import _call_timed

    if isinstance(fn, partial) and fn.func is _call_timed:
        fn = fn.args[2]
    target = fn.func if isinstance(fn, partial) else getattr(fn, "__wrapped__", fn)
    if isinstance(target, partial):
        target = target.func
    return getattr(target, "__self__", None), getattr(target, "__name__", type(target).__name__)


def _first_argument(frame: FrameType) -> Any:
    code = frame.f_code
    if not code.co_argcount:
        return None
    return frame.f_locals.get(code.co_varnames[0])


def _describe(owner: Any, name: str, trainer: Trainer) -> str:
    from fulmen.callbacks.base import Callback

    if owner is None:
        return name
    cls = type(owner).__name__
    if owner is trainer.system:
        return f"{cls}.{name}"
    if owner is getattr(trainer, "datamodule", None):
        return f"the datamodule {cls}.{name}"
    if isinstance(owner, Callback):
        return f"the callback {cls}.{name}"
    return f"{cls}.{name}"


def hooks_on_the_way(tb: TracebackType | None, trainer: Trainer) -> list[tuple[str, str]]:
    """The hooks the traceback passes through, outermost first, as (hook name, description)."""
    owners = {id(trainer.system), id(getattr(trainer, "datamodule", None)), *map(id, trainer.callbacks)}
    owners.discard(id(None))
    dispatch = _dispatch()
    found: list[tuple[Any, str]] = []
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        hit: tuple[Any, str] | None = None
        if code in dispatch:
            fn = frame.f_locals.get("fn")
            if fn is not None:
                hit = _unwrap(fn)
        elif code.co_name in HOOK_NAMES:
            first = _first_argument(frame)
            if id(first) in owners:
                hit = (first, code.co_name)
        if hit is not None and not (found and found[-1][0] is hit[0] and found[-1][1] == hit[1]):
            found.append(hit)
        tb = tb.tb_next
    if len(found) > 1:  # forward under a step says less than the step
        found = [h for h in found if h[1] != "forward"] or found
    return [(name, _describe(owner, name, trainer)) for owner, name in found]


def _fetching(err: BaseException, frame: FrameType) -> bool:
    """Whether ``err`` left ``frame`` (a batch loop) at a ``for``: the iterator, the dataloader
    fetching the next batch, raised it."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame is not frame:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code.co_code
    return 0 <= tb.tb_lasti < len(code) and code[tb.tb_lasti] == _FOR_ITER


def noted(err: BaseException) -> bool:
    """Whether ``err`` already carries a note of this module."""
    return any(isinstance(n, str) and n.startswith(PREFIX) for n in getattr(err, "__notes__", ()))


def _skip(err: BaseException) -> bool:
    from fulmen.errors import NonFiniteLossError

    # NonFiniteLossError names its step, epoch and batch in its message already; Ctrl-C and
    # sys.exit are not errors of the code that ran.
    return (
        not isinstance(err, Exception)
        or not hasattr(err, "add_note")
        or isinstance(err, NonFiniteLossError)
        or noted(err)
    )


def _stage(trainer: Trainer, kind: str | None, sanity: bool = False) -> tuple[str, bool]:
    """The stage's words, and whether the epoch and global step mean something there."""
    stage = getattr(trainer.state, "stage", None) or "the run"
    if stage != "fit":
        return stage, False
    if sanity:
        return "fit (sanity check)", False
    if kind == "val":
        return "fit (validation)", True
    return "fit", True


def _join(where: str, stage: str, position: list[str]) -> str:
    return f"{PREFIX}{where} during {stage}" + "".join(f", {p}" for p in position)


def _where(hooks: list[tuple[str, str]]) -> str:
    inner, outer = hooks[-1][1], hooks[0][1]
    return f" in {inner}" if inner == outer else f" in {inner}, called from {outer}"


def batch_note(
    err: BaseException,
    trainer: Trainer,
    kind: str,
    batch_idx: int | None,
    dataloader_idx: int | None = None,
    sanity: bool = False,
    frame: FrameType | None = None,
) -> str | None:
    """The note for ``err`` caught by a batch loop of ``kind`` ("train", "val", "test", "predict")
    in ``frame``; ``batch_idx`` is None outside the loop over batches (a hook before or after it),
    else the index of the last batch the loop started (one before the first at its start)."""
    hooks = hooks_on_the_way(err.__traceback__, trainer)
    fetching = batch_idx is not None and frame is not None and _fetching(err, frame)
    if batch_idx is None and not hooks:
        return None  # (outside the batches, not from a hook: fulmen's own work, e.g. a logger)
    stage, counts = _stage(trainer, kind, sanity)
    position = [f"epoch {trainer.current_epoch}", f"global step {trainer.global_step}"] if counts else []
    if hooks:
        where = _where(hooks)
    elif fetching:
        where = f" in {_LOADER_NAME.get(kind, 'the dataloader')} (fetching the next batch)"
    else:
        where = ""
    if dataloader_idx is not None and batch_idx is not None:
        position.append(f"dataloader {dataloader_idx}")
    if batch_idx is not None:
        position.append(f"batch {batch_idx + 1 if fetching else batch_idx}")
    return _join(where, stage, position)


def note_batch_error(
    err: BaseException,
    trainer: Trainer,
    kind: str,
    batch_idx: int | None,
    dataloader_idx: int | None = None,
    sanity: bool = False,
) -> None:
    """Add ``batch_note`` to ``err`` (called from the batch loop's ``except``: its frame is the
    caller's). Never raises: the note must not hide the error."""
    if _skip(err):
        return
    try:
        note = batch_note(err, trainer, kind, batch_idx, dataloader_idx, sanity, sys._getframe(1))
    except Exception:
        return
    if note is not None and hasattr(err, "add_note"):  # (Python 3.11+)
        err.add_note(note)


def run_note(err: BaseException, trainer: Trainer) -> str | None:
    """The note for ``err`` caught around a whole run (``Trainer._run``): only for an exception
    from a hook (setup, configure_optimizers, on_train_epoch_end, teardown, a dataloader hook...);
    the epoch and global step where training has started."""
    hooks = hooks_on_the_way(err.__traceback__, trainer)
    if not hooks:
        return None
    stage, counts = _stage(trainer, None)
    if counts and (trainer.loop.phase is None or any(name in _BEFORE_TRAINING for name, _ in hooks)):
        counts = False  # (training has not started: no epoch or step to give)
    position = [f"epoch {trainer.current_epoch}", f"global step {trainer.global_step}"] if counts else []
    return _join(_where(hooks), stage, position)


def note_run_error(err: BaseException, trainer: Trainer) -> None:
    """Add ``run_note`` to ``err`` unless a loop inside added its note already. Never raises."""
    if _skip(err):
        return
    try:
        note = run_note(err, trainer)
    except Exception:
        return
    if note is not None and hasattr(err, "add_note"):  # (Python 3.11+)
        err.add_note(note)
