"""Hyperparameter search with Optuna: ``PruningCallback``, ``run_study`` and ``suggest``.

Optuna is an optional dependency (``pip install fulmen[optuna]``); it is imported only when one of
these is used, so ``import fulmen`` stays cheap.

A search is a function ``objective(trial) -> float`` that builds a system from ``trial.suggest_*``
values, trains it and returns the validation metric; ``run_study`` runs it ``n_trials`` times in a
study stored in a SQLite file (or any database Optuna supports), so several processes or cluster
jobs can add trials to the same study.

How pruning ends a trial: when the pruner says so, ``PruningCallback`` sets ``trainer.should_stop``
and remembers the decision. ``fit`` then ends the normal way (checkpoints written, loggers
finalized with status ``"success"``), and the trial is marked pruned once ``fit`` has returned:
``run_study`` does it by itself when the objective returns; with ``study.optimize`` call
``callback.check_pruned()`` after ``fit`` (it raises ``optuna.TrialPruned``).
"""

from __future__ import annotations

import os
import random
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks._monitor import no_metric_message
from fulmen.callbacks.base import Callback
from fulmen.errors import warn_once

if TYPE_CHECKING:
    import optuna

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["DEFAULT_STORAGE_FILE", "PruningCallback", "default_storage", "run_study", "suggest"]

#: The SQLite file ``run_study`` keeps its studies in when no ``storage`` URL is given.
DEFAULT_STORAGE_FILE = "fulmen-optuna.db"

_STEPS = ("epoch", "global_step")

# Trials a PruningCallback pruned in this process, with the reason: run_study marks them pruned
# once the objective returns. Weak keys, so finished trials are forgotten.
_pruned_trials: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
# Its own generator, so waiting for a database never draws from the user's seeded ``random``.
_JITTER = random.Random()


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - optuna is a dev dependency
        raise ImportError(
            "fulmen.search needs Optuna: pip install 'fulmen[optuna]' (or pip install optuna)."
        ) from err
    return optuna


class PruningCallback(Callback):
    """Report ``monitor`` to an Optuna trial after every validation, and stop hopeless trials early.

    After each validation run of ``fit`` (not the sanity check), the callback reads
    ``trainer.callback_metrics[monitor]`` and calls ``trial.report(value, step)``, where ``step`` is
    ``trainer.current_epoch`` (``step="epoch"``, the default) or ``trainer.global_step``
    (``step="global_step"``; use it when validation runs several times per epoch, e.g.
    ``val_check_interval=0.25``). Then it asks ``trial.should_prune()``. When the answer is yes,
    it sets ``trainer.should_stop``, so ``fit`` ends at the next boundary the normal way
    (checkpoints and logs are finalized; ``min_epochs``/``min_steps`` are honoured), and records
    the decision in ``pruned``, ``pruned_step`` and ``reason``. The trial becomes *pruned* after
    ``fit`` returns: ``run_study`` raises ``optuna.TrialPruned`` for you when your objective
    returns; inside ``study.optimize`` call ``check_pruned()`` after ``fit``.

    A missing metric raises ``RuntimeError`` naming the metrics that exist. With several
    processes, rank zero alone reports to the trial and decides; the other processes take its
    decision (``trainer.strategy.broadcast``) and never touch their ``trial`` argument, which may
    be ``None`` there.
    """

    monitors = True  # runs after the system's hook, so it sees what the system logged there

    def __init__(self, trial: optuna.trial.BaseTrial | None, monitor: str = "val_loss", step: str = "epoch") -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"PruningCallback(monitor={monitor!r}): expected the name of a logged metric, such as 'val_loss'."
            )
        if step not in _STEPS:
            raise ValueError(f"PruningCallback(step={step!r}): expected 'epoch' or 'global_step'.")
        self.trial = trial
        self.monitor = monitor
        self.step = step
        #: True once the pruner asked to stop this trial.
        self.pruned = False
        #: The step of the report that led to pruning.
        self.pruned_step: int | None = None
        #: Why the trial was pruned, for messages.
        self.reason: str | None = None
        self._reported: set[int] = set()

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if trainer.is_global_zero and self.trial is None:
            raise ValueError(
                "PruningCallback(trial=None) on rank zero: pass the Optuna trial the objective received; only "
                "the other processes of a multi-process run may pass None."
            )

    def on_validation_end(self, trainer: Trainer, system: System) -> None:
        if trainer.sanity_checking or trainer.state.stage != "fit" or trainer.fast_dev_run:
            return
        value = self._value(trainer)  # on every rank: a missing metric fails everywhere, no hang
        prune = False
        if trainer.is_global_zero:
            prune = self._report(value, trainer)
        # Every process takes rank zero's decision, so all of them stop at the same step.
        prune = bool(trainer.strategy.broadcast(prune))
        if prune and not self.pruned:
            self.pruned = True
            self.pruned_step = self._step(trainer)
            self.reason = (
                f"Trial pruned at {self.step} {self.pruned_step}: {self.monitor} = {float(value):.6g} "
                f"(the pruner judged it unpromising)."
            )
            if self.trial is not None:
                _pruned_trials[self.trial] = self.reason
        if prune:
            trainer.should_stop = True

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when this callback pruned the trial (call it after ``fit``)."""
        if self.pruned:
            raise _import_optuna().TrialPruned(self.reason)

    # -- helpers ---------------------------------------------------------------------------------
    def _step(self, trainer: Trainer) -> int:
        return int(trainer.current_epoch if self.step == "epoch" else trainer.global_step)

    def _value(self, trainer: Trainer) -> Any:
        metrics = trainer.callback_metrics
        value = metrics.get(self.monitor)
        if value is None:
            raise RuntimeError(
                no_metric_message(
                    f"PruningCallback(monitor={self.monitor!r})",
                    self.monitor,
                    metrics,
                    " in validation_step, or pass the name of a logged metric.",
                )
            )
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise RuntimeError(
                f"PruningCallback(monitor={self.monitor!r}): the metric has shape {tuple(value.shape)}; expected "
                f"a single number. Log a scalar, e.g. its mean."
            )
        return value

    def _report(self, value: Any, trainer: Trainer) -> bool:
        assert self.trial is not None  # checked in on_fit_start
        # host sync, once per validation
        current = float(value.item() if isinstance(value, torch.Tensor) else value)
        step = self._step(trainer)
        if step in self._reported:
            warn_once(
                f"PruningCallback: validation ran twice in {self.step} {step}; Optuna keeps one value per step, so "
                f"this one is not reported. Use PruningCallback(..., step='global_step') when validating more "
                f"than once per epoch.",
                key=f"pruning-callback-step-{id(self)}",
            )
        else:
            self._reported.add(step)
            self.trial.report(current, step)
        return bool(self.trial.should_prune())


def default_storage(storage_dir: str | os.PathLike[str] | None = None) -> str:
    """The SQLite URL ``run_study`` uses by default: ``<storage_dir or cwd>/fulmen-optuna.db``."""
    folder = os.path.abspath(os.fspath(storage_dir) if storage_dir is not None else os.getcwd())
    os.makedirs(folder, exist_ok=True)
    return f"sqlite:///{os.path.join(folder, DEFAULT_STORAGE_FILE)}"


def _make_storage(optuna: Any, url: str) -> Any:
    if url.startswith("sqlite:"):
        # Several processes write one SQLite file: wait for the lock instead of failing after 5 s.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def _open_study(optuna: Any, storage: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """``optuna.create_study`` that survives processes starting at the same moment.

    Two jobs opening a fresh database together both try to create its tables; the loser gets a
    database error (a UNIQUE constraint, "table already exists", "database is locked"). Trying
    again a moment later finds the tables there and joins the study.
    """
    for attempt in range(attempts):
        try:
            opened = _make_storage(optuna, storage) if isinstance(storage, str) else storage
            return optuna.create_study(storage=opened, **kwargs)
        except Exception as err:
            if attempt == attempts - 1 or not type(err).__module__.startswith("sqlalchemy"):
                raise
            time.sleep(0.1 * (attempt + 1) + _JITTER.random() * 0.2)
    raise AssertionError("unreachable")  # pragma: no cover


def run_study(
    objective: Callable[[optuna.trial.Trial], float],
    n_trials: int | None,
    *,
    study_name: str | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    storage_dir: str | os.PathLike[str] | None = None,
    direction: str = "minimize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    timeout: float | None = None,
    load_if_exists: bool = True,
    seed: int | None = None,
) -> optuna.Study:
    """Run ``objective`` for ``n_trials`` trials (or until ``timeout`` seconds) and return the study.

    The study lives in ``storage``: an Optuna storage object or database URL
    (``"postgresql://..."``, ``"mysql://..."``, ``"sqlite:///path.db"``), by default the SQLite file
    ``fulmen-optuna.db`` in ``storage_dir`` (the working directory when not given). With
    ``load_if_exists=True`` an existing study of the same ``study_name`` (default ``"fulmen"``) is
    continued, so several processes or cluster jobs started with the same arguments add their
    trials to one study; ``n_trials`` counts the trials of this call only.

    ``seed`` seeds the default sampler (``optuna_.samplers.TPESampler(seed=seed)``); give either a
    ``sampler`` or a ``seed``. ``pruner`` defaults to Optuna's (``MedianPruner``).

    When a ``PruningCallback`` of a trial asked to stop training, the trial is marked pruned
    after ``objective`` returns (whatever it returned). Exceptions from ``objective`` fail the
    trial and propagate, as in ``study.optimize``.
    """
    optuna_ = _import_optuna()
    if not callable(objective):
        raise TypeError(f"run_study(objective={objective!r}): expected a function objective(trial) -> float.")
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0):
        raise ValueError(f"run_study(n_trials={n_trials!r}): expected an int >= 0, or None with a timeout.")
    if n_trials is None and timeout is None:
        raise ValueError("run_study(n_trials=None, timeout=None): give n_trials, timeout or both.")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"run_study(direction={direction!r}): expected 'minimize' or 'maximize'.")
    if sampler is not None and seed is not None:
        raise ValueError("run_study(sampler=..., seed=...): give one of the two; seed the sampler you pass yourself.")
    if storage is not None and storage_dir is not None:
        raise ValueError("run_study(storage=..., storage_dir=...): give one of the two.")
    if sampler is None and seed is not None:
        sampler = optuna_.samplers.TPESampler(seed=seed)
    if storage is None:
        storage = default_storage(storage_dir)
    study = _open_study(
        optuna_,
        storage,
        sampler=sampler,
        pruner=pruner,
        study_name=study_name or "fulmen",
        direction=direction,
        load_if_exists=load_if_exists,
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"run_study(direction={direction!r}): the stored study {study.study_name!r} was created with "
            f"direction={study.direction.name.lower()!r}. Use another study_name, or the same direction."
        )

    def wrapped(trial: optuna.trial.Trial) -> float:
        try:
            value = objective(trial)
        finally:
            reason = _pruned_trials.pop(trial, None)
        if reason is not None:
            raise optuna_.TrialPruned(reason)
        return value

    study.optimize(wrapped, n_trials=n_trials, timeout=timeout)
    return study


def suggest(trial: optuna.trial.BaseTrial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one value per entry of ``space`` from ``trial``; returns ``{name: value}``.

    Each entry is one of:

    * ``(low, high)``: ``suggest_int`` when both are ints, else ``suggest_float``;
    * ``(low, high, "log")``: the same on a log scale;
    * a list: ``suggest_categorical`` over its items;
    * a dict: keyword arguments of ``suggest_float``/``suggest_int``
      (``{"low": 1e-4, "high": 1e-1, "log": True}``, ``{"low": 16, "high": 256, "step": 16}``);
    * anything else: a fixed value, returned as is (not recorded in the trial).
    """
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"suggest: {name!r} has an empty list of choices.")
            out[name] = trial.suggest_categorical(name, spec)
        elif isinstance(spec, tuple):
            if len(spec) not in (2, 3) or (len(spec) == 3 and spec[2] != "log"):
                raise ValueError(
                    f"suggest: {name!r} = {spec!r}; expected (low, high) or (low, high, 'log'), a list of choices "
                    f"or a dict of suggest_float/suggest_int arguments."
                )
            out[name] = _suggest_range(trial, name, spec[0], spec[1], log=len(spec) == 3)
        elif isinstance(spec, Mapping):
            kwargs = dict(spec)
            if "low" not in kwargs or "high" not in kwargs:
                raise ValueError(f"suggest: {name!r} = {spec!r}; a dict needs 'low' and 'high'.")
            low, high = kwargs.pop("low"), kwargs.pop("high")
            out[name] = _suggest_range(trial, name, low, high, **kwargs)
        else:
            out[name] = spec
    return out


def _suggest_range(trial: optuna.trial.BaseTrial, name: str, low: Any, high: Any, **kwargs: Any) -> Any:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    step = kwargs.get("step")
    if ints and (step is None or isinstance(step, int)):
        return trial.suggest_int(name, low, high, **kwargs)
    return trial.suggest_float(name, float(low), float(high), **kwargs)
