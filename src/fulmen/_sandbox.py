"""``Sandbox``: what a tool's short runs change in a system, taken before they start and put back after.

``fulmen.doctor`` and ``fulmen.tuner`` check and tune a system by running the real loop on it
(``Trainer.fit`` / ``validate`` / ``test`` / ``predict`` of a quiet Trainer, with a callback of
their own). Those runs train, move and switch the system; the sandbox makes them leave no trace::

    with Sandbox(system, datamodule, trainer) as box:
        quiet = box.quiet_trainer([probe], max_steps=3)   # steps as ``trainer`` does, writes nothing
        quiet.fit(system, datamodule=datamodule)
        box.reset()                                        # the next run starts from the same state
    # here: weights, buffers, gradients, requires_grad, modes, optimizer states, RNGs as before

What it puts back: every parameter and buffer (bitwise, on its device and in its dtype, in its
module's slot), the gradients (the same tensor objects), ``requires_grad``, each submodule's
train/eval mode, the optimizer states of ``trainer`` (the Trainer being tuned, when a callback
tunes during its fit), every random number generator (Python, NumPy, torch, CUDA and the
dataloaders' own ``torch.Generator`` given to ``keep_generators``), what a run sets on the system
and the datamodule (their Trainer, the metric store, toggled optimizers), and any attribute
``patch`` replaced. The system's own callbacks (``configure_callbacks``) are left out of the runs,
and a signal during them acts as outside a fit (``FULMEN_SIGNAL_HANDLING=0`` while they run: no
``interrupted.ckpt``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fulmen.seed import RNGState

if TYPE_CHECKING:
    from fulmen.callbacks.base import Callback
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["QUIET_FLAGS", "STEP_FLAGS", "Sandbox", "quiet_trainer"]

#: The Trainer flags that decide how a step runs (device, processes, numerics, accumulation,
#: clipping): a tool's Trainer takes them from the user's (``Trainer.flags``, as passed). The one
#: list of them; ``tests/test_sandbox.py`` checks each is a Trainer flag.
STEP_FLAGS = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "precision",
    "deterministic",
    "inference_mode",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
)

#: What a tool's Trainer never does: log, checkpoint, show progress or a summary, sanity check.
QUIET_FLAGS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}

#: What a run sets on the system itself: its Trainer, the metric store ``self.log`` writes to, and
#: the ``requires_grad`` flags kept by ``toggle_optimizer``.
_RUN_ATTRS = ("_trainer", "_log_store", "_toggled")
_MISSING = object()


class Sandbox:
    """The state of ``system`` (and ``datamodule``, and the optimizers of ``trainer``) now;
    ``reset`` puts it back between runs, ``close`` (or leaving the ``with`` block) for good."""

    def __init__(self, system: System, datamodule: Any = None, trainer: Trainer | None = None) -> None:
        self.system, self.datamodule, self.trainer = system, datamodule, trainer
        # Where each parameter and buffer lives (a run may put another tensor there), and a copy of
        # each tensor on the CPU (no accelerator memory taken from the runs) with its device/dtype.
        self._slots: list[tuple[dict[str, Any], str, Tensor]] = []
        self._tensors: list[tuple[Tensor, Tensor | None, torch.device, torch.dtype]] = []
        self._requires_grad: list[tuple[Tensor, bool]] = []
        self._grads: list[tuple[Tensor, Tensor | None]] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self._seen: set[int] = set()
        self._seen_slots: set[tuple[int, str]] = set()
        self.capture_new()
        self._optimizers = [(opt, copy.deepcopy(opt.state_dict())) for opt in (trainer.optimizers if trainer else [])]
        self._rng = RNGState()
        self._generators: list[tuple[torch.Generator, Tensor]] = []
        self._attrs = {k: system.__dict__.get(k, _MISSING) for k in _RUN_ATTRS}
        self._datamodule_trainer = getattr(datamodule, "trainer", None)
        self._patches: list[tuple[Any, str, Any]] = []
        self._own_callbacks = system.configure_callbacks  # (bound before it is patched out below)
        self._signal_env: str | None = None

    # -- entering and leaving ------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        from fulmen.runtime.signals import ENV_VAR

        # The system's own callbacks (a ModelCheckpoint...) do not run: nothing written, no state changed.
        self.patch(self.system, "configure_callbacks", list)
        # SIGTERM / Ctrl-C during a run act as outside a fit (no interrupted.ckpt written; the
        # system is put back on the way out): fulmen's handling is off for the runs.
        self._signal_env = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = "0"
        for t, _ in self._grads:
            t.grad = None  # the runs' gradients start from none and never add to the user's
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Put everything back (the gradients included) and undo every ``patch``."""
        from fulmen.runtime.signals import ENV_VAR

        try:
            self.reset()
            for t, grad in self._grads:
                t.grad = grad
        finally:
            if self._signal_env is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = self._signal_env
            while self._patches:
                obj, name, old = self._patches.pop()
                if old is _MISSING:
                    obj.__dict__.pop(name, None)
                else:
                    obj.__dict__[name] = old

    # -- what is kept --------------------------------------------------------------------------
    def capture_new(self) -> None:
        """Take what is not taken yet: everything at first, later what a run added (the layers
        ``configure_model`` builds in a first run, before it trains), so every later run and the
        user's own fit start from them as they were made."""
        for module in self.system.modules():
            if id(module) not in self._seen:
                self._seen.add(id(module))
                self._modes.append((module, module.training))
            for slots in (module._parameters, module._buffers):
                for name, t in slots.items():
                    if t is None or (id(slots), name) in self._seen_slots:
                        continue
                    self._seen_slots.add((id(slots), name))
                    self._slots.append((slots, name, t))
                    if id(t) in self._seen:
                        continue  # (a tensor shared by two modules is kept once)
                    self._seen.add(id(t))
                    saved = None if t.is_meta else t.detach().to("cpu", copy=True)
                    self._tensors.append((t, saved, t.device, t.dtype))
                    if isinstance(t, nn.Parameter):
                        self._requires_grad.append((t, t.requires_grad))
                        self._grads.append((t, t.grad))

    def keep_generators(self, *loaders: Any) -> None:
        """Also put back the ``torch.Generator`` objects that decide these dataloaders' order."""
        from fulmen.trainer._resume import loader_generators

        for loader in loaders:
            for g in loader_generators(loader) if loader is not None else ():
                if all(g is not h for h, _ in self._generators):
                    self._generators.append((g, g.get_state()))

    def patch(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` on the instance, until ``close``."""
        self._patches.append((obj, name, obj.__dict__.get(name, _MISSING)))
        obj.__dict__[name] = value

    def own_callbacks(self) -> list[Callback]:
        """The system's ``configure_callbacks()`` (which the runs leave out), as a list."""
        extra = self._own_callbacks() or []
        return list(extra) if isinstance(extra, (list, tuple)) else [extra]

    # -- putting it back -----------------------------------------------------------------------
    def reset(self) -> None:
        """Put back the tensors (gradients cleared), flags, modes, optimizer states, random number
        generators and run attributes: the next run starts where the first one did."""
        with torch.no_grad():
            for slots, name, t in self._slots:
                slots[name] = t
            for t, saved, device, dtype in self._tensors:
                if saved is None:
                    continue
                if t.device == device and t.dtype == dtype and t.shape == saved.shape:
                    t.copy_(saved)
                else:  # moved or cast by the run (a device, a "-true" precision): back where it was
                    t.data = saved.to(device=device, dtype=dtype, copy=True)
        for t, flag in self._requires_grad:
            t.requires_grad_(flag)
            t.grad = None
        for module, training in self._modes:
            module.training = training
        for opt, opt_state in self._optimizers:
            opt.load_state_dict(copy.deepcopy(opt_state))
        self._rng.restore()
        for g, g_state in self._generators:
            g.set_state(g_state)
        for key, value in self._attrs.items():
            if value is _MISSING:
                self.system.__dict__.pop(key, None)
            else:
                self.system.__dict__[key] = value
        if self.datamodule is not None:
            self.datamodule.trainer = self._datamodule_trainer

    # -- the Trainer the runs use --------------------------------------------------------------
    def quiet_trainer(self, callbacks: Sequence[Callback] = (), *, same_rules: bool = True, **run: Any) -> Trainer:
        """``quiet_trainer`` for the Trainer given to the sandbox."""
        return quiet_trainer(self.trainer, callbacks, same_rules=same_rules, **run)


def quiet_trainer(
    user: Trainer | None, callbacks: Sequence[Callback] = (), *, same_rules: bool = True, **run: Any
) -> Trainer:
    """A Trainer that steps as ``user`` does (its ``STEP_FLAGS``, its run folder and, with
    ``same_rules``, its loop rules) and writes nothing (``QUIET_FLAGS``); ``run`` sets the rest (how
    long it runs, which batches) and overrides any of those."""
    from fulmen.trainer.trainer import Trainer

    flags: dict[str, Any] = dict(_step_flags(user))
    if user is not None:
        flags["default_root_dir"] = user.default_root_dir
    flags.update(QUIET_FLAGS, callbacks=list(callbacks))
    flags.update(run)
    quiet = Trainer(**flags)
    if user is not None and same_rules:
        # The loop rules of the trainer given (fulmen.lightning's: Lightning's, e.g. a batch whose
        # training_step returned None still steps).
        quiet.__dict__["rules"] = user.rules
    return quiet


def _step_flags(user: Trainer | None) -> Iterable[tuple[str, Any]]:
    """The ``STEP_FLAGS`` the user passed to ``user`` (a Strategy object stays with its Trainer)."""
    if user is None:
        return ()
    given = user.flags
    out = [(k, given[k]) for k in STEP_FLAGS if k in given]
    return [(k, v if k != "strategy" or isinstance(v, str) else "auto") for k, v in out]
