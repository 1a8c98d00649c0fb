"""``ModelCheckpoint``: save checkpoints during ``fit``, keep the best ``k`` by a monitored metric,
and keep a ``last.ckpt`` that always holds the newest state."""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import os
import re
import time
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from fulmen.callbacks import _checkpoint_args as args
from fulmen.callbacks._failure import FailureTracker
from fulmen.callbacks._filename import Naming, name_pattern, render
from fulmen.callbacks._monitor import no_metric_message
from fulmen.callbacks._topk import Ranking, as_tensor, score, state_score, state_score_or_none, worst_value
from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError, warn_once
from fulmen.trainer._rules import FULMEN_RULES, LoopRules
from fulmen.utils.files import link_atomic, write_text_atomic

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class ModelCheckpoint(Callback):
    """Save checkpoints while ``fit`` runs; keep the ``save_top_k`` best by ``monitor``.

    **Where.** Files go to ``dirpath``, by default ``<trainer.log_dir>/checkpoints`` (the first
    logger's folder, or ``default_root_dir`` without a logger), resolved when the run is set up.

    **Names.** ``filename`` is a template filled from the epoch, the global step and the logged
    metrics (``trainer.callback_metrics``); the default ``"{epoch}-{step}"`` gives
    ``epoch=3-step=120.ckpt``. With ``auto_insert_metric_name=True`` each field is written as
    ``name=value``: ``"{epoch}-{val_loss:.2f}"`` gives ``epoch=3-val_loss=0.12.ckpt``; a ``/`` in a
    metric name (``"{val/loss:.2f}"``) is written as ``_`` (``val_loss=0.12``), so it never makes a
    subfolder. Pass ``auto_insert_metric_name=False`` to write the template's text as it is
    (``"e{epoch:03d}"`` gives ``e003.ckpt``). A field naming a metric that was not logged raises
    ``RuntimeError`` listing the metrics there are. When a file of that name exists already and is
    not one this callback is replacing, ``-v1``, ``-v2``, ... is appended
    (``enable_version_counter``; with ``False`` the file is overwritten). The class attributes
    ``CHECKPOINT_JOIN_CHAR``, ``CHECKPOINT_EQUALS_CHAR``, ``CHECKPOINT_NAME_LAST`` and
    ``FILE_EXTENSION`` may be changed on a subclass or an instance.

    **Which files are kept.** With ``monitor``, a checkpoint is written only when the value
    enters the best ``save_top_k`` (lower is better for ``mode="min"``, higher for ``"max"``);
    the file it pushes out is deleted after the new one is complete. An equal value does not
    enter (the older checkpoint is kept); NaN and infinite values never enter and never count as
    best. ``save_top_k=-1`` keeps every checkpoint (``best_model_path`` is still the best finite
    one) and ``0`` writes none (only ``last.ckpt``, with ``save_last``). Without ``monitor``,
    ``save_top_k`` is ``1`` (the newest checkpoint replaces the previous one), ``-1`` (keep all)
    or ``0``.

    **When.** ``every_n_epochs`` (the default, ``1``, when no other trigger is given): at the end
    of every n-th epoch. Where the epoch ends depends on ``save_on_train_epoch_end``: ``True``, in
    ``on_train_epoch_end``; ``False``, at the end of each validation run (so also after a
    mid-epoch validation); ``None``, after validation when validation runs in this epoch, and in
    ``on_train_epoch_end`` otherwise. ``every_n_train_steps``: after every n-th optimizer step
    (with gradient accumulation only a batch that stepped counts). ``train_time_interval`` (a
    ``datetime.timedelta``): after the first optimizer step once that much time
    (``time.monotonic``) has passed since training started or since the last timed save. The
    three triggers exclude each other; use two callbacks to combine them. Nothing is saved during
    the sanity check, with ``fast_dev_run``, outside ``fit``, at global step 0 (before any
    optimizer step), or twice for one global step (a step trigger and an epoch end on the same
    step write once).

    **last.ckpt.** ``save_last=True`` makes every save trigger (and the end of each epoch) also
    update ``last.ckpt`` (``CHECKPOINT_NAME_LAST`` plus ``FILE_EXTENSION``; a template there is
    filled like ``filename``). When a top-k checkpoint was written at the same moment,
    ``last.ckpt`` becomes a hard link to it, made under a temporary name and renamed into place,
    so it is never half-written and never dangles when the other file is deleted; where hard
    links are not supported it is a copy, written the same way. ``save_last="link"`` uses a
    relative symbolic link instead (replaced atomically; it dangles if you delete its target
    yourself). When no top-k checkpoint was written, ``last.ckpt`` is written in full.

    **On an exception.** ``save_on_exception=True``: when ``fit`` fails once training started
    (not in the sanity check, not with ``fast_dev_run``, not when a checkpoint was saved at this
    global step already), a checkpoint named by ``filename`` is written (``last.ckpt`` too with
    ``save_last``) before the exception propagates. When the batch that failed had not reached
    its optimizer step, the checkpoint is positioned before it, so ``fit(ckpt_path=...)`` trains
    it again. With several processes nothing is written (saving is collective), with a warning.

    **Results.** ``best_model_path``, ``best_model_score`` (a tensor, or None),
    ``best_k_models`` (``{path: score tensor}``), ``kth_best_model_path`` and ``kth_value`` (the
    worst kept), ``current_score`` (the value at the latest check), ``last_model_path``.

    ``to_yaml(filepath=None)`` writes ``best_k_models`` as YAML (default
    ``<dirpath>/best_k_models.yaml``). Scores logged as float32 tensors are kept as the shortest
    decimal naming the same float32 (``0.3``, not ``0.30000001192092896``).

    **State.** ``state_dict()`` holds plain Python data only (``torch.load(weights_only=True)``
    reads it), so a resumed run continues the same top-k. ``state_key`` includes ``monitor``,
    ``mode`` and the triggers, so two callbacks in one trainer keep separate states. A state saved
    with another ``dirpath`` restores only ``best_model_path``.

    ``resolve(trainer, "best" | "last")`` finds the checkpoint ``fit``/``validate``/``test``
    load for ``ckpt_path="best"`` / ``"last"``.

    Only rank zero touches files; the others wait at the strategy's barriers.

    Differences from PyTorch Lightning (with examples in docs/from-lightning.md; under
    ``fulmen.lightning.Trainer`` most follow Lightning, see docs/migrating-from-lightning.md):
    ``last_model_path`` is set also without ``save_last`` (the newest top-k file); a template
    field for a metric that was not logged raises (Lightning writes 0); ``/`` in a metric name is
    written as ``_`` (Lightning makes a subfolder); NaN and infinite values never enter the top k;
    ``save_on_train_epoch_end=None`` decides per epoch, not once per run, and at the end of an
    epoch without validation no top-k checkpoint is ranked by a validation metric (it is the
    previous validation's); ``last.ckpt`` is refreshed at every epoch end (Lightning: only with a
    checkpoint written then) and is a hard link (``"link"``: a symbolic link) to a checkpoint of
    the same step, never an older one; ``kth_best_model_path``/``kth_value`` describe the worst
    kept checkpoint also while fewer than ``k`` are kept.
    """

    monitors = True  # runs after the system's hooks,
    saves_checkpoints = True  # and after the other monitoring callbacks (subclasses too)

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: datetime.timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        save_on_exception: bool = False,
    ) -> None:
        args.check_names(dirpath, filename)
        args.check_kept(monitor, mode, save_last, save_top_k)
        args.check_schedule(every_n_train_steps, every_n_epochs, train_time_interval, save_on_train_epoch_end)
        args.check_flags(
            verbose=verbose,
            save_weights_only=save_weights_only,
            auto_insert_metric_name=auto_insert_metric_name,
            enable_version_counter=enable_version_counter,
            save_on_exception=save_on_exception,
        )
        args.check_one_trigger(every_n_train_steps, every_n_epochs, train_time_interval)

        self.dirpath: str | None = args.absolute_folder(dirpath) if dirpath is not None else None
        self.filename = filename
        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.enable_version_counter = enable_version_counter
        self.save_on_exception = save_on_exception
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1
        self.every_n_train_steps: int = every_n_train_steps or 0
        self.every_n_epochs: int = every_n_epochs or 0
        self.train_time_interval: datetime.timedelta | None = train_time_interval

        # Results (scores kept as Python floats; the public properties give tensors).
        self.best_model_path = ""
        self.kth_best_model_path = ""
        self.last_model_path = ""
        self._best_k: dict[str, float] = {}
        self._best_score: float | None = None
        self._kth: float = worst_value(mode)
        self._current: float | None = None
        self._last_global_step_saved = 0  # as in Lightning: nothing is saved at global step 0

        # Run bookkeeping.
        self._pending_state: dict[str, Any] | None = None  # loaded before dirpath was known
        self._validated_this_epoch = False
        self._validation_ran = False
        self._fit_validates = False
        self._step_seen = 0
        self._last_time = 0.0
        self._rules: LoopRules = FULMEN_RULES  # the trainer's, from setup
        # save_on_train_epoch_end=None decided once per fit (Lightning's rules), in on_fit_start.
        self._epoch_end_fixed: bool | None = None
        self._wrote_any = False
        self._val_keys: frozenset[str] = frozenset()  # the metrics the fit's last validation produced
        self._failure = FailureTracker()
        # The per-batch hooks are hooks of this instance only when needed: the trainer dispatches
        # only hooks that are defined, so the default callback costs nothing per batch.
        if self.every_n_train_steps or self.train_time_interval is not None or save_on_exception:
            self.__dict__["on_train_batch_end"] = self._train_batch_end
        if save_on_exception:
            self.__dict__["on_train_batch_start"] = self._train_batch_start
            self.__dict__["on_before_optimizer_step"] = self._before_optimizer_step

    # -- results -----------------------------------------------------------------------------------
    @property
    def best_model_score(self) -> torch.Tensor | None:
        """The best monitored value (a float64 tensor), or None before the first one (or without ``monitor``)."""
        return as_tensor(self._best_score)

    @best_model_score.setter
    def best_model_score(self, value: torch.Tensor | float | None) -> None:
        self._best_score = state_score_or_none(value)

    @property
    def best_k_models(self) -> dict[str, torch.Tensor]:
        """``{path: score}`` of the checkpoints kept by ``monitor``, oldest first (a copy)."""
        return {p: torch.tensor(v, dtype=torch.float64) for p, v in self._best_k.items()}

    @best_k_models.setter
    def best_k_models(self, value: Mapping[str, torch.Tensor | float]) -> None:
        self._best_k = {str(p): state_score(v) for p, v in value.items()}

    @property
    def kth_value(self) -> torch.Tensor:
        """The worst kept score (``inf`` for ``mode="min"``, ``-inf`` for ``"max"`` while none is kept)."""
        return torch.tensor(self._kth, dtype=torch.float64)

    @kth_value.setter
    def kth_value(self, value: torch.Tensor | float) -> None:
        self._kth = state_score(value)

    @property
    def current_score(self) -> torch.Tensor | None:
        """The monitored value at the latest check, or None."""
        return as_tensor(self._current)

    @current_score.setter
    def current_score(self, value: torch.Tensor | float | None) -> None:
        self._current = state_score_or_none(value)

    @property
    def state_key(self) -> str:
        key = {
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_train_steps": self.every_n_train_steps,
            "every_n_epochs": self.every_n_epochs,
            "train_time_interval": self.train_time_interval,
        }
        return f"{type(self).__qualname__}{key!r}"

    # -- lifecycle -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, system: System, stage: str) -> None:
        self._rules = getattr(trainer, "rules", FULMEN_RULES)
        if self.save_last == "link" and self.dirpath is not None and args.is_remote(self.dirpath):
            raise ArgumentError(
                f"ModelCheckpoint(dirpath={self.dirpath!r}, save_last='link'): save_last='link' is only supported for "
                f"local file paths (a symbolic link cannot point into a remote filesystem); use save_last=True, which "
                f"writes last.ckpt as a file, or a local dirpath."
            )
        if self.dirpath is None:
            self.dirpath = trainer.strategy.broadcast(self._default_dirpath(trainer))
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._apply_state(state)
        self._failure.reset()

    def teardown(self, trainer: Trainer, system: System, stage: str) -> None:
        self._failure.training = False

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        # run_fit has counted the validation batches by now; none means this fit never validates.
        self._fit_validates = sum(getattr(trainer, "num_val_batches", None) or []) > 0
        self._validation_ran = False
        self._val_keys = frozenset()
        self._epoch_end_fixed = None
        if self.save_on_train_epoch_end is None and self._rules.checkpoint_lightning_schedule:
            # Lightning decides once per fit: at the training epoch's end only when every epoch
            # validates once, at its end; otherwise after each validation. (Without validation
            # data, at the training epoch's end: Lightning would then save nothing at all when
            # check_val_every_n_epoch != 1.)
            cfg = trainer.config
            self._epoch_end_fixed = not self._fit_validates or (
                getattr(cfg, "val_check_time", None) is None
                and cfg.check_val_every_n_epoch == 1
                and cfg.val_check_interval == 1.0
            )

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self._step_seen = trainer.global_step
        self._last_time = time.monotonic()
        self._failure.training = True

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._validated_this_epoch = False
        self._step_seen = trainer.global_step

    def _train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        """``on_train_batch_start`` of an instance with ``save_on_exception`` (see ``__init__``)."""
        self._failure.batch_started(trainer, batch_idx)

    def _before_optimizer_step(self, trainer: Trainer, system: System, optimizer: Any) -> None:
        """``on_before_optimizer_step`` of an instance with ``save_on_exception``: the batch counts as done."""
        self._failure.stepped()

    def _train_batch_end(self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int) -> None:
        """``on_train_batch_end`` of an instance with a step or time trigger or ``save_on_exception``
        (see ``__init__``)."""
        self._failure.unstepped = None
        step, seen = trainer.global_step, self._step_seen
        if step == seen:
            return  # no optimizer step in this batch (gradient accumulation): nothing new to save
        self._step_seen = step
        if not (self.every_n_train_steps or self.train_time_interval is not None) or self._skip(trainer):
            return
        n = self.every_n_train_steps
        due = n > 0 and step // n > seen // n  # a multiple of n was reached (several steps a batch: manual)
        if self.train_time_interval is not None:
            now = time.monotonic()
            timed = bool(trainer.strategy.broadcast(now - self._last_time >= self.train_time_interval.total_seconds()))
            if timed:
                self._last_time = now
            due = due or timed
        if due:
            self._save(trainer, topk=True, epoch_end=False)

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        if trainer.sanity_checking or trainer.state.stage != "fit":
            return
        self._validation_ran = self._validated_this_epoch = True
        if self.monitor is not None:  # which metrics validation produced (see _stale_monitor)
            self._val_keys = frozenset(_store_keys(trainer, "val"))
        if not self._at_train_epoch_end():  # False or None
            self._epoch_end_save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        when = self._at_train_epoch_end()
        if when or (when is None and not self._validated_this_epoch):
            self._epoch_end_save(trainer)

    def on_train_end(self, trainer: Trainer, system: System) -> None:
        # Lightning's rules refresh last.ckpt only with another checkpoint: when this callback
        # wrote none, save_last still leaves one last.ckpt at the end of training.
        if self.save_last and not self._wrote_any and self._rules.checkpoint_lightning_schedule and not self._skip(trainer):
            self._save(trainer, topk=False, epoch_end=False)

    def _at_train_epoch_end(self) -> bool | None:
        """``save_on_train_epoch_end``, or the choice made for this fit (Lightning's rules)."""
        return self.save_on_train_epoch_end if self.save_on_train_epoch_end is not None else self._epoch_end_fixed

    def _epoch_end_save(self, trainer: Trainer) -> None:
        if self._skip(trainer):
            return
        n = self.every_n_epochs
        topk = n > 0 and (trainer.current_epoch + 1) % n == 0
        # fulmen keeps last.ckpt current at every epoch end; Lightning's rules only with a
        # checkpoint written now (see _save).
        if topk or (self.save_last and not self._rules.checkpoint_lightning_schedule):
            self._save(trainer, topk=topk, epoch_end=True)

    def on_exception(self, trainer: Trainer, system: System, exception: BaseException) -> None:
        """With ``save_on_exception``: a checkpoint named by ``filename`` (and ``last.ckpt`` with
        ``save_last``) when a fit fails once training started, unless one was saved at this
        global step already (nor in the sanity check or with ``fast_dev_run``). When the batch that
        failed had not reached its optimizer step, the checkpoint is positioned before it, so
        ``fit(ckpt_path=...)`` trains it again. A failure to write it is a warning: the exception
        being raised is the one that matters."""
        if not self.save_on_exception or bool(trainer.fast_dev_run) or trainer.sanity_checking:
            return
        if self._last_global_step_saved == trainer.global_step or self.dirpath is None:
            return
        if not self._failure.may_save(trainer, "ModelCheckpoint(save_on_exception=True)"):
            return
        before = self._snapshot()
        try:
            metrics = self._candidates(trainer)
            path = self._free_path(trainer, metrics, self.filename, "filename", set())
            last, old_last = self._plan_last(trainer, metrics) if self.save_last else (None, [])
            self._last_global_step_saved = trainer.global_step
            with self._failure.before_unstepped_batch(trainer, system):
                trainer.save_checkpoint(path, self.save_weights_only)
                if last is not None and last != path:
                    self._link_last(trainer, path, last)
            self._wrote_any = True
            self._remove(trainer, old_last)
        except Exception as err:
            self._restore(before)
            warn_once(
                f"ModelCheckpoint(save_on_exception=True): could not write the checkpoint of the failed fit "
                f"({type(err).__name__}: {err}).",
                key=f"model-checkpoint-on-exception-failed-{self.dirpath}",
            )
            return
        self._say(trainer, f"{type(exception).__name__} raised: saved the checkpoint {path!r}")
        if hasattr(exception, "add_note"):
            exception.add_note(f"fulmen: ModelCheckpoint(save_on_exception=True) saved {path} (resume with ckpt_path=...)")

    def _skip(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.sanity_checking
            or trainer.state.stage != "fit"
            or self._last_global_step_saved == trainer.global_step
        )

    # -- saving ------------------------------------------------------------------------------------------
    def _save(self, trainer: Trainer, *, topk: bool, epoch_end: bool) -> None:
        """One save moment: the top-k checkpoint (when ``topk`` and it qualifies), then ``last.ckpt``.

        The callback's state is updated before writing, so each file's own state names it; if a
        write fails the state goes back to what it was. Files pushed out are deleted only after
        the new ones are complete.
        """
        assert self.dirpath is not None, "ModelCheckpoint.setup resolves dirpath before any save"
        metrics = self._candidates(trainer)
        before = self._snapshot()
        try:
            path, dropped = self._plan_topk(trainer, metrics, epoch_end) if topk and self.save_top_k else (None, [])
            # Lightning's rules: at an epoch's end, last.ckpt only together with a checkpoint written now.
            with_last = self.save_last and (path is not None or not (epoch_end and self._rules.checkpoint_lightning_schedule))
            last, old_last = self._plan_last(trainer, metrics) if with_last else (None, [])
            if path is None and last is None:
                return
            self._last_global_step_saved = trainer.global_step
            self._wrote_any = True
            if path is not None:
                trainer.save_checkpoint(path, self.save_weights_only)
            if last is not None and last != path:
                if path is not None:
                    self._link_last(trainer, path, last)
                else:
                    trainer.save_checkpoint(last, self.save_weights_only)
        except BaseException:
            self._restore(before)
            raise
        self._remove(trainer, [*dropped, *old_last])
        if trainer.is_global_zero and trainer.loggers:  # (once the files are on disk)
            loggers = list(trainer.loggers)

            def tell_loggers() -> None:
                for lg in loggers:
                    lg.after_save_checkpoint(self)

            trainer.strategy.checkpoint_io.done(tell_loggers)

    def _plan_topk(self, trainer: Trainer, metrics: dict[str, Any], epoch_end: bool) -> tuple[str | None, list[str]]:
        """The top-k file to write now (None: not good enough) and the files it pushes out."""
        epoch, step = trainer.current_epoch, trainer.global_step
        if self.monitor is None:
            previous = self.best_model_path if self.save_top_k == 1 else ""
            path = self._free_path(trainer, metrics, self.filename, "filename", {previous})
            self.best_model_path = path
            if not self.save_last:
                self.last_model_path = path
            self._say(trainer, f"Epoch {epoch}, global step {step}: saving the checkpoint {path!r}")
            return path, [previous] if previous and previous != path else []

        if epoch_end and self._stale_monitor(trainer):
            return None, []
        value = self._monitor_value(metrics, epoch_end)
        if value is None:
            return None, []
        ranking = self._ranking()
        if math.isnan(value) and ranking.nonfinite_as_numbers:
            nan_as = worst_value(self.mode)
            warn_once(
                f"ModelCheckpoint(monitor={self.monitor!r}) got NaN (epoch {epoch}, global step {step}): as in "
                f"Lightning it is recorded as {nan_as} (the worst score) and the checkpoint is kept while fewer than "
                f"save_top_k={self.save_top_k} are kept. A NaN usually means training diverged: that checkpoint may "
                f"hold diverged weights, and best_model_path may point to it.",
                key=f"model-checkpoint-nan-{self.monitor}",
            )
            value = nan_as
        self._current = value
        if not trainer.strategy.broadcast(ranking.enters(value, self._best_k, self.save_top_k, self._kth)):
            self._say(trainer, f"Epoch {epoch}, global step {step}: {self.monitor!r} = {value:.6g} is not in the top {self.save_top_k}")
            return None, []
        k = self.save_top_k
        pushed_out = self.kth_best_model_path if k > 0 and len(self._best_k) >= k else ""
        path = self._free_path(trainer, metrics, self.filename, "filename", {pushed_out})
        dropped = ranking.insert(self._best_k, path, value, k, pushed_out)
        self.kth_best_model_path, self._kth, self.best_model_path, self._best_score = ranking.summary(self._best_k)
        if not self.save_last:
            self.last_model_path = path
        best = f"{self._best_score:.6g}" if self._best_score is not None else "none"
        self._say(
            trainer,
            f"Epoch {epoch}, global step {step}: {self.monitor!r} = {value:.6g} enters the top {k if k > 0 else '(all kept)'} "
            f"(best {best}); saving the checkpoint {path!r}",
        )
        return path, dropped

    def _plan_last(self, trainer: Trainer, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        previous = self.last_model_path
        path = self._free_path(trainer, metrics, self.CHECKPOINT_NAME_LAST, "CHECKPOINT_NAME_LAST", {previous})
        self.last_model_path = path
        return path, [previous] if previous and previous != path else []

    def _link_last(self, trainer: Trainer, target: str, last: str) -> None:
        """Make ``last`` the same file as ``target``: a hard link (a relative symbolic link with
        ``save_last="link"``; a copy where neither works), made under a temporary name and renamed
        over ``last``, so ``last`` is at every moment a complete checkpoint."""
        io = trainer.strategy.checkpoint_io
        if trainer.is_global_zero:  # (after ``target`` is on disk: asynchronous writes finish first)
            symbolic = self.save_last == "link"
            io.then(lambda: link_atomic(target, last, symbolic=symbolic))
        if not io.asynchronous:
            trainer.strategy.barrier("ModelCheckpoint.save_last")

    def _remove(self, trainer: Trainer, paths: Iterable[str]) -> None:
        """Delete files pushed out, unless a checkpoint callback still refers to them, the run
        resumed from them, or they lie outside ``dirpath``."""
        paths = [p for p in dict.fromkeys(paths) if p]
        if not paths:
            return
        keep = {os.path.abspath(p) for cb in (self, *trainer.checkpoint_callbacks) for p in cb._referenced() if p}
        resumed = getattr(trainer, "ckpt_path", None)
        if resumed:
            keep.add(os.path.abspath(os.fspath(resumed)))
        assert self.dirpath is not None
        folder = os.path.abspath(self.dirpath)
        io = trainer.strategy.checkpoint_io
        if not io.asynchronous:
            trainer.strategy.barrier("ModelCheckpoint.remove")
        if trainer.is_global_zero:
            doomed = [
                full
                for full in map(os.path.abspath, paths)
                if full not in keep and full.startswith(folder + os.sep)
            ]
            if doomed:  # only once the files replacing them are on disk (asynchronous writes)

                def delete() -> None:
                    for full in doomed:
                        _remove_quietly(full)

                io.then(delete)
        if not io.asynchronous:
            trainer.strategy.barrier("ModelCheckpoint.remove")

    def _referenced(self) -> list[str]:
        return [*self._best_k, self.best_model_path, self.last_model_path]

    # -- names -------------------------------------------------------------------------------------------
    def format_checkpoint_name(
        self, metrics: Mapping[str, Any], filename: str | None = None, ver: int | None = None
    ) -> str:
        """The checkpoint path for ``metrics`` (a dict such as ``{"epoch": 3, "val_loss": 0.12}``):
        ``filename`` (default: this callback's) filled in, ``-v{ver}`` appended when ``ver`` is
        given, under ``dirpath`` when it is known.

        >>> ModelCheckpoint(filename="{epoch}-{val_loss:.2f}").format_checkpoint_name({"epoch": 3, "val_loss": 0.123})
        'epoch=3-val_loss=0.12.ckpt'
        """
        name = self._render(filename if filename is not None else self.filename, metrics, ver, "filename")
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _render(self, template: str | None, metrics: Mapping[str, Any], ver: int | None, label: str) -> str:
        return render(template, metrics, ver, label, self._naming())

    def _naming(self) -> Naming:
        """The naming attributes as they are now (a subclass or an instance may change them)."""
        return Naming(
            join=self.CHECKPOINT_JOIN_CHAR,
            equals=self.CHECKPOINT_EQUALS_CHAR,
            extension=self.FILE_EXTENSION,
            auto_insert=self.auto_insert_metric_name,
            missing_as_zero=self._rules.checkpoint_missing_name_metric_zero,
        )

    def _free_path(
        self, trainer: Trainer, metrics: Mapping[str, Any], template: str | None, label: str, replaceable: set[str]
    ) -> str:
        """The path for ``template``; with ``enable_version_counter``, a ``-vN`` name when a file of
        that name exists and is not one of ``replaceable`` (files this save replaces anyway)."""
        assert self.dirpath is not None
        path = os.path.join(self.dirpath, self._render(template, metrics, None, label))
        if self.enable_version_counter and trainer.is_global_zero:
            ours = {os.path.abspath(p) for p in replaceable if p}
            ver = self.STARTING_VERSION
            while os.path.lexists(path) and os.path.abspath(path) not in ours:
                path = os.path.join(self.dirpath, self._render(template, metrics, ver, label))
                ver += 1
        return str(trainer.strategy.broadcast(path))

    def _candidates(self, trainer: Trainer) -> dict[str, Any]:
        metrics: dict[str, Any] = dict(trainer.callback_metrics)
        for key, default in (("epoch", trainer.current_epoch), ("step", trainer.global_step)):
            logged = metrics.get(key)
            metrics[key] = int(logged.item() if isinstance(logged, torch.Tensor) else logged) if logged is not None else default
        return metrics

    # -- the monitored metric ----------------------------------------------------------------------------
    def _monitor_value(self, metrics: Mapping[str, Any], epoch_end: bool) -> float | None:
        assert self.monitor is not None
        if self.monitor not in metrics:
            message = no_metric_message(
                f"ModelCheckpoint(monitor={self.monitor!r})",
                self.monitor,
                metrics,
                " (in validation_step for a validation metric).",
            )
            # Before the first validation a validation metric cannot exist yet: skip, as Lightning does.
            if self._validation_ran or (epoch_end and not self._fit_validates):
                raise RuntimeError(message)
            warn_once(
                message + " Until it exists, checkpoints are not ranked (last.ckpt is still saved).",
                key=f"model-checkpoint-missing-{self.monitor}",
            )
            return None
        return score(metrics[self.monitor], f"ModelCheckpoint(monitor={self.monitor!r})")

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | float | None = None) -> bool:
        """Whether ``current`` would enter the kept top k now."""
        if current is None:
            return False
        value = score(current, "ModelCheckpoint.check_monitor_top_k(current)")
        return bool(self._ranking().enters(value, self._best_k, self.save_top_k, self._kth))

    def _ranking(self) -> Ranking:
        return Ranking(self.mode, nonfinite_as_numbers=self._rules.checkpoint_nonfinite_scores)

    def _stale_monitor(self, trainer: Trainer) -> bool:
        """True at a training epoch's end without validation, in a fit that validates, when the
        monitored metric comes from validation: its value is the previous validation's, so a
        checkpoint of these weights would be ranked by a score they never had (no top-k save then;
        ``last.ckpt`` is still written)."""
        if self._validated_this_epoch or not self._fit_validates or self.monitor not in self._val_keys:
            return False
        if self.monitor in _store_keys(trainer, "train"):
            return False  # logged in training too: the current value is this epoch's
        warn_once(
            f"ModelCheckpoint(monitor={self.monitor!r}): epochs without validation (check_val_every_n_epoch) keep "
            f"the value of the last validation, so no top-k checkpoint is written at their end (last.ckpt still "
            f"is); checkpoints are ranked after each validation.",
            key=f"model-checkpoint-stale-{self.monitor}",
        )
        return True

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` as YAML (``{path: score}``, scores as floats) to ``filepath``,
        by default ``<dirpath>/best_k_models.yaml``. The file is written atomically; it is not a
        checkpoint, and ``fulmen verify`` does not look at it."""
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise ArgumentError(
                    "ModelCheckpoint.to_yaml(): no dirpath yet (it is resolved when the run is set up); pass "
                    "filepath=... or call it after fit."
                )
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        write_text_atomic(os.path.abspath(os.fspath(filepath)), yaml.safe_dump(dict(self._best_k)))

    # -- ckpt_path="best" / "last" --------------------------------------------------------------------
    def resolve(self, trainer: Trainer, which: str) -> str | None:
        """The checkpoint ``ckpt_path="best"`` or ``"last"`` means, for ``trainer``; None when none exists.

        ``"best"``: ``best_model_path`` of the first ``ModelCheckpoint`` with a ``monitor`` (this
        one, else the trainer's in list order); ``ValueError`` when none has a monitor.
        ``"last"``: for each ``ModelCheckpoint`` (this one and the trainer's), its
        ``last_model_path`` when that file exists; otherwise (e.g. a new process, before any save)
        the newest ``last.ckpt`` / ``last-vN.ckpt`` in its ``dirpath`` (``CHECKPOINT_NAME_LAST``),
        else the newest ``*.ckpt`` there; an ``interrupted.ckpt`` or ``hpc_ckpt_<n>.ckpt`` there
        (written when a signal stopped the run) competes with these. The newest of these by
        modification time wins.

        Call it on any of the trainer's ``ModelCheckpoint`` instances: the answer is the same.
        """
        from fulmen.run_dir import newest

        if which not in ("best", "last"):
            raise ValueError(f"ModelCheckpoint.resolve(which={which!r}): expected 'best' or 'last'.")
        callbacks = [self, *(cb for cb in trainer.checkpoint_callbacks if cb is not self)]
        if which == "best":
            monitored = next((cb for cb in callbacks if cb.monitor is not None), None)
            if monitored is None:
                raise ValueError(
                    "ckpt_path='best' needs a ModelCheckpoint with a monitor (e.g. ModelCheckpoint(monitor='val_loss')) "
                    "to know which checkpoint is best; none of the trainer's ModelCheckpoint callbacks has monitor "
                    "set. Use ckpt_path='last' or a checkpoint's path."
                )
            path = monitored.best_model_path
            return path if path and os.path.exists(path) else None  # (a sharded checkpoint is a folder)
        return newest(p for p in (cb._last_on_disk(trainer) for cb in callbacks) if p)

    def _last_on_disk(self, trainer: Trainer) -> str | None:
        from fulmen.run_dir import checkpoint_files, newest, stop_checkpoints

        folder = self.dirpath or self._default_dirpath(trainer)
        # interrupted.ckpt / hpc_ckpt_<n>.ckpt, written when a signal stopped the run: newer wins
        stopped = stop_checkpoints(folder)
        if self.last_model_path and os.path.exists(self.last_model_path):  # (or a sharded folder)
            return newest([self.last_model_path, *stopped])
        files = [p for p in checkpoint_files(folder, self.FILE_EXTENSION) if p not in stopped]
        last_name = self._last_name_pattern()
        lasts = [p for p in files if last_name.fullmatch(os.path.basename(p))]
        return newest([*(lasts or files), *stopped])

    def _last_name_pattern(self) -> re.Pattern[str]:
        """Names that ``CHECKPOINT_NAME_LAST`` produces, versions included."""
        return name_pattern(self.CHECKPOINT_NAME_LAST, "CHECKPOINT_NAME_LAST", self._naming())

    def _default_dirpath(self, trainer: Trainer) -> str:
        # The first logger's run folder (its log_dir, without a TensorBoard sub_dir), as trainer.log_dir.
        from fulmen.run_dir import checkpoints_folder

        for lg in trainer.loggers:
            if lg.log_dir is not None:
                return checkpoints_folder(lg.run_dir or lg.log_dir)
        return checkpoints_folder(trainer.log_dir)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self._best_score,
            "best_model_path": self.best_model_path,
            "best_k_models": dict(self._best_k),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self._kth,
            "last_model_path": self.last_model_path,
            "dirpath": self.dirpath,
            "current_score": self._current,
            "_last_global_step_saved": self._last_global_step_saved,
            "_validated_this_epoch": self._validated_this_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath is None:  # before setup: applied once dirpath is known
            self._pending_state = dict(state_dict)
            return
        self._apply_state(state_dict)

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        saved_dir = state.get("dirpath")
        same_dir = saved_dir is None or (
            self.dirpath is not None and os.path.abspath(os.fspath(saved_dir)) == os.path.abspath(self.dirpath)
        )
        if not same_dir:
            warn_once(
                f"ModelCheckpoint(dirpath={self.dirpath!r}) restores a state saved with dirpath={saved_dir!r} (The "
                f"dirpath has changed from {saved_dir!r} to {self.dirpath!r}): only best_model_path is restored; the "
                f"top-k ranking and last_model_path start afresh in the new folder.",
                key=f"model-checkpoint-dirpath-{saved_dir}-{self.dirpath}",
            )
            self.best_model_path = str(state.get("best_model_path") or "")
            return
        self.last_model_path = str(state.get("last_model_path") or "")
        self._last_global_step_saved = int(state.get("_last_global_step_saved", 0))
        self._validated_this_epoch = bool(state.get("_validated_this_epoch", False))
        if state.get("monitor") != self.monitor:
            warn_once(
                f"ModelCheckpoint(monitor={self.monitor!r}) restores a state saved with monitor="
                f"{state.get('monitor')!r}: the saved ranking is not restored.",
                key=f"model-checkpoint-monitor-{state.get('monitor')}-{self.monitor}",
            )
            return
        self.best_model_path = str(state.get("best_model_path") or "")
        self._best_k = {str(p): state_score(v) for p, v in (state.get("best_k_models") or {}).items()}
        self._best_score = state_score_or_none(state.get("best_model_score"))
        self.kth_best_model_path = str(state.get("kth_best_model_path") or "")
        kth = state.get("kth_value")
        self._kth = worst_value(self.mode) if kth is None else state_score(kth)
        self._current = state_score_or_none(state.get("current_score"))

    # -- helpers ---------------------------------------------------------------------------------------------
    # What a save changes before writing, restored when the write fails.
    _RESULTS = (
        "_best_k", "best_model_path", "_best_score", "kth_best_model_path", "_kth", "last_model_path", "_current",
        "_last_global_step_saved",
    )

    def _snapshot(self) -> dict[str, Any]:
        return {name: copy.copy(getattr(self, name)) for name in self._RESULTS}

    def _restore(self, snap: dict[str, Any]) -> None:
        for name, value in snap.items():
            setattr(self, name, value)

    def _say(self, trainer: Trainer, message: str) -> None:
        if self.verbose and trainer.is_global_zero:
            print(f"ModelCheckpoint: {message}")


# The constructor's annotations as types, not strings (this module postpones annotations), so
# tools that read the signature (jsonargparse in `fulmen fit --config`, Lightning's CLI) parse
# e.g. save_last as bool | 'link' | None.
ModelCheckpoint.__init__.__annotations__ = typing.get_type_hints(ModelCheckpoint.__init__)


def _store_keys(trainer: Trainer, stage: str) -> set[str]:
    """The metric names the trainer's ``stage`` store ("train", "val") holds now."""
    metrics = getattr(trainer, "metrics", None)  # (a stand-in trainer may have none)
    store = metrics.stores.get(stage) if metrics is not None else None
    return set(store.callback_view()) if store is not None else set()


def _remove_quietly(path: str) -> None:
    """Delete a checkpoint: a file, a link, or a sharded checkpoint's folder (FSDP)."""
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
