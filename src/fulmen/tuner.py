"""``fulmen.tuner.Tuner``: a learning-rate range test and a batch-size search.

Both run the system through short fits of a temporary, quiet Trainer that copies the flags of
the Trainer given that change what a step does (accelerator, devices, precision, gradient
accumulation and clipping) and writes nothing: no logger, no checkpoint, no progress bar. The
system's weights, its buffers, the modes of its submodules, the optimizers of the given Trainer
and every random number generator are put back exactly afterwards, and the given Trainer itself
is never run, so its ``global_step``, ``current_epoch`` and callbacks' states are as before.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from fulmen.callbacks.base import Callback
from fulmen.errors import ArgumentError, DataError, FlagError, NonFiniteLossError, warn_once
from fulmen.seed import RNGState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

#: Weight of the running average in the smoothed loss (as in the fast.ai / Lightning range test).
_BETA = 0.98


class LRFinder:
    """The result of ``Tuner.lr_find``: the learning rates tried and the smoothed loss at each.

    ``results`` is ``{"lr": [...], "loss": [...]}`` (the same length; the learning rates rise).
    The search stopped early when ``diverged`` is True (the smoothed loss went above
    ``early_stop_threshold`` times its best value, or the loss became NaN/inf).
    """

    def __init__(
        self, mode: str, min_lr: float, max_lr: float, num_training: int, results: dict[str, list[float]], diverged: bool
    ) -> None:
        self.mode = mode
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.num_training = num_training
        self.results = results
        self.diverged = diverged

    def __repr__(self) -> str:
        return (
            f"LRFinder(mode={self.mode!r}, steps={len(self.results['lr'])}/{self.num_training}, "
            f"diverged={self.diverged}, suggestion={self.suggestion()!r})"
        )

    def _suggestion_index(self, skip_begin: int, skip_end: int) -> int | None:
        import numpy as np

        lrs, losses = self.results["lr"], self.results["loss"]
        end = len(losses) - skip_end
        if end - skip_begin < 2:
            return None
        x = np.asarray(lrs[skip_begin:end], dtype=np.float64)
        y = np.asarray(losses[skip_begin:end], dtype=np.float64)
        # (NaN: a step whose training_step returned None under fulmen.lightning; left out, as in Lightning)
        kept = np.flatnonzero(np.isfinite(y))
        if len(kept) < 2:
            return None
        x, y = x[kept], y[kept]
        if self.mode == "exponential":
            x = np.log10(x)
        if np.any(np.diff(x) <= 0):
            return None
        # The slope at each point over +-w points (w=1: the central difference), so that the noise
        # of single steps left in the smoothed loss does not pass for a steep descent.
        m = len(y)
        w = max(1, m // 20)
        i = np.arange(m)
        lo, hi = np.maximum(i - w, 0), np.minimum(i + w, m - 1)
        slope = (y[hi] - y[lo]) / (x[hi] - x[lo])
        return skip_begin + int(kept[int(np.argmin(slope))])

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the smoothed loss falls fastest (the most negative slope, in
        log-lr for the exponential mode, taken over a window of a tenth of the points, at least
        the two neighbours), leaving out the first ``skip_begin`` points (the running average is
        still settling there) and the last ``skip_end`` (the divergence).
        None when fewer than two points remain: run more steps (``num_training``) or lower
        ``skip_begin``."""
        i = self._suggestion_index(skip_begin, skip_end)
        return None if i is None else self.results["lr"][i]

    def plot(self, suggest: bool = True, path: str | os.PathLike[str] | None = None) -> Figure:
        """The smoothed loss against the learning rate (log axis for the exponential mode), with the
        suggestion marked when ``suggest``; written to ``path`` as a PNG when given.

        Needs matplotlib (``pip install fulmen[tuner]``); draws with its Agg backend without
        touching pyplot, so it works without a display and leaves pyplot's state alone.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - matplotlib is an optional dependency
            raise ImportError(
                "LRFinder.plot() needs matplotlib: pip install matplotlib (or fulmen[tuner])."
            ) from err
        lrs, losses = self.results["lr"], self.results["loss"]
        fig = Figure(figsize=(6.4, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(lrs, losses, color="tab:blue", linewidth=1.8, label="smoothed loss")
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        ax.set_title(f"Learning-rate range test ({len(lrs)} steps{', diverged' if self.diverged else ''})")
        ax.grid(True, which="both", alpha=0.3)
        if suggest:
            i = self._suggestion_index(10, 1)
            if i is not None:
                ax.plot(
                    [lrs[i]], [losses[i]], marker="o", markersize=9, color="tab:red", linestyle="none",
                    label=f"suggestion: {lrs[i]:.3g}",
                )
                ax.axvline(lrs[i], color="tab:red", alpha=0.4, linestyle="--")
        if self.diverged and len(losses) > 2:  # the last loss would squash the curve to a line
            low, high = min(losses), max(losses[:-1])
            ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
        if lrs:
            ax.legend(loc="best")
        fig.tight_layout()
        if path is not None:
            folder = os.path.dirname(os.path.abspath(os.fspath(path)))
            os.makedirs(folder, exist_ok=True)
            fig.savefig(os.fspath(path), format="png")
        return fig


class Tuner:
    """Tuning for a Trainer's runs: ``lr_find`` (a learning-rate range test) and
    ``scale_batch_size`` (the largest batch size that fits), as Lightning's ``Tuner``.

    Neither runs ``trainer`` itself: each search fits a temporary quiet Trainer with ``trainer``'s
    accelerator, devices, precision, gradient accumulation and clipping, and puts the system back
    as it was (weights, buffers, optimizer states, train/eval modes, random number generators).
    """

    #: Refuse ``lr_find`` for a system with several optimizers (fulmen sets the same learning rate
    #: on all of them; ``fulmen.lightning``'s Tuner refuses, as Lightning does).
    _lr_find_single_optimizer = False

    def __init__(self, trainer: Trainer) -> None:
        from fulmen.trainer.trainer import Trainer

        if not isinstance(trainer, Trainer):
            raise TypeError(f"Tuner(trainer): expected a fulmen.Trainer, got {type(trainer).__name__}.")
        self.trainer = trainer
        #: One entry per trial of the last ``scale_batch_size``: ``{"batch_size", "peak_mb", "failure"}``
        #: (``failure`` None for a trial that fitted; ``peak_mb`` None where it was not measured).
        self.batch_size_trials: list[dict[str, Any]] = []

    # -- the learning-rate range test ------------------------------------------------------------
    def lr_find(
        self,
        system: System,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = False,
        attr_name: str = "",
    ) -> LRFinder:
        """Train for up to ``num_training`` optimizer steps while the learning rate rises from
        ``min_lr`` to ``max_lr`` (geometrically for ``mode="exponential"``, evenly for
        ``"linear"``), recording the smoothed training loss at each step; stop early once it
        exceeds ``early_stop_threshold`` times its lowest value (None: never) or becomes NaN/inf.

        Every parameter group of every optimizer gets the same learning rate; the system's
        schedulers are left out during the search. Validation does not run (``val_dataloaders``
        is accepted for Lightning's signature). With ``update_attr=True`` the suggestion is written
        to ``attr_name``, else to the first of ``lr`` / ``learning_rate`` found on the system or
        in ``system.hparams``. When the trainer has loggers the plot is saved into its run folder
        as ``lr_find.png``.
        """
        if mode not in ("exponential", "linear"):
            raise ValueError(f"lr_find(mode={mode!r}): expected 'exponential' or 'linear'.")
        self._check_lr_range(min_lr, max_lr)
        if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 1:
            raise ValueError(f"lr_find(num_training={num_training!r}): expected an int >= 1 (optimizer steps).")
        if early_stop_threshold is not None and not early_stop_threshold > 0:
            raise ValueError(
                f"lr_find(early_stop_threshold={early_stop_threshold!r}): expected a number > 0, or None to never stop early."
            )
        self._check_single_process("lr_find")
        names = [attr_name] if attr_name else ["lr", "learning_rate"]
        holders: list[Any] = []
        attr = ""
        if update_attr:
            for name in names:
                holders = _attr_holders(system, None, name)
                if holders:
                    attr = name
                    break
            else:
                raise AttributeError(
                    f"lr_find(update_attr=True): {type(system).__name__} has no {' or '.join(repr(n) for n in names)} "
                    f"attribute and its hparams have none (the model or its hparams should have one of these fields: "
                    f"{names}), so the suggestion has nowhere to go. Save the learning rate "
                    f"as a hyperparameter (self.save_hyperparameters() with an `lr` argument), set self.lr, or pass "
                    f"attr_name=..."
                )
        lrs = _lr_schedule(mode, float(min_lr), float(max_lr), num_training)
        search = _LRSearch(lrs, early_stop_threshold, single_optimizer=self._lr_find_single_optimizer)
        with _preserved(self.trainer, system, datamodule) as state:
            search.preserved = state
            tmp = self._quiet_trainer([search], max_steps=-1)
            try:
                tmp.fit(system, train_dataloaders, datamodule=datamodule)
            except NonFiniteLossError:  # the loss became NaN/inf: the range test ends there
                search.diverged = True
            finally:
                search.restore_generators()
                state.restore()
        finder = self._lr_finder(
            mode, float(min_lr), float(max_lr), num_training, {"lr": search.lrs, "loss": search.losses}, search.diverged
        )
        if update_attr:
            lr = finder.suggestion()
            if lr is None:
                warn_once(
                    f"lr_find(update_attr=True): too few steps ({len(finder.results['lr'])}) to suggest a learning "
                    f"rate, so {attr!r} is left as it is. Raise num_training, or early_stop_threshold if the loss "
                    f"diverged at once.",
                    key="lr-find-no-suggestion",
                )
            else:
                _set_on(holders, attr, lr)
        trainer = self.trainer
        if trainer.loggers and trainer.is_global_zero:
            try:
                finder.plot(suggest=True, path=os.path.join(trainer.log_dir, "lr_find.png"))
            except ImportError:
                warn_once(
                    "lr_find: matplotlib is not installed, so lr_find.png was not written (pip install matplotlib).",
                    key="lr-find-no-matplotlib",
                )
        return finder

    def _check_lr_range(self, min_lr: Any, max_lr: Any) -> None:
        if not (isinstance(min_lr, (int, float)) and isinstance(max_lr, (int, float)) and 0 < min_lr < max_lr):
            raise ValueError(f"lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}): expected 0 < min_lr < max_lr.")

    def _lr_finder(
        self, mode: str, min_lr: float, max_lr: float, num_training: int, results: dict[str, list[float]], diverged: bool
    ) -> LRFinder:
        """The result object ``lr_find`` returns (and whose ``suggestion()`` ``update_attr`` uses)."""
        return LRFinder(mode, min_lr, max_lr, num_training, results, diverged)

    # -- the batch-size search ---------------------------------------------------------------------
    def scale_batch_size(
        self,
        system: System,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        max_memory_mb: float | None = None,
    ) -> int:
        """The largest batch size that trains: ``steps_per_trial`` optimizer steps at ``init_val``,
        doubling while that works (``mode="power"``), then, with ``mode="binsearch"``, a binary
        search between the last size that worked and the first that failed; ``max_trials`` trials
        at most. The value found is set where ``batch_arg_name`` lives and returned.

        A trial fails when it runs out of memory (CUDA's out-of-memory error; the cache is emptied
        before the next trial), when its peak memory growth is above ``max_memory_mb`` (on CUDA the
        tensors allocated, on the CPU the resident set size; see docs/tuner.md), or when the batch
        size is larger than the training dataset. On the CPU, without ``max_memory_mb``, the limit
        is 80% of the memory available when the search starts.

        The batch size is read from, and written to, every one of: an attribute of the system,
        ``system.hparams``, an attribute of the datamodule, ``datamodule.hparams`` (the value is
        read from the last of these that has it, as in Lightning). The dataloaders are requested
        again for each trial, so they must be built from it: dataloaders passed in are refused.
        """
        from fulmen.datamodule import DataModule

        if mode not in ("power", "binsearch"):
            raise ValueError(f"scale_batch_size(mode={mode!r}): expected 'power' or 'binsearch'.")
        for name, value, low in (("steps_per_trial", steps_per_trial, 1), ("init_val", init_val, 1), ("max_trials", max_trials, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"scale_batch_size({name}={value!r}): expected an int >= {low}.")
        if max_memory_mb is not None and not (isinstance(max_memory_mb, (int, float)) and max_memory_mb > 0):
            raise ValueError(f"scale_batch_size(max_memory_mb={max_memory_mb!r}): expected a number of MB > 0, or None.")
        if isinstance(train_dataloaders, DataModule):
            if datamodule is not None:
                raise DataError("scale_batch_size() got two datamodules (one in the dataloaders position); pass one.")
            train_dataloaders, datamodule = None, train_dataloaders
        if train_dataloaders is not None or val_dataloaders is not None:
            raise DataError(
                "scale_batch_size() cannot change the batch size of dataloaders passed in: each trial asks for the "
                "dataloaders again. Build them in train_dataloader() of the system or of a datamodule, from "
                f"the {batch_arg_name!r} attribute or hyperparameter, and pass the datamodule (or nothing)."
            )
        self._check_single_process("scale_batch_size")
        holders = _attr_holders(system, datamodule, batch_arg_name)
        if not holders:
            where = f"{type(system).__name__}" + (f" or {type(datamodule).__name__}" if datamodule is not None else "")
            raise AttributeError(
                f"scale_batch_size: found no {batch_arg_name!r} to scale: neither {where} has an attribute "
                f"{batch_arg_name!r} nor {'do their' if datamodule is not None else 'does its'} hparams. Save it as a "
                f"hyperparameter (self.save_hyperparameters() with a {batch_arg_name} argument) or set "
                f"self.{batch_arg_name}, build the train dataloader from it, or pass batch_arg_name=..."
            )
        original = _get_from(holders[-1], batch_arg_name)
        limit = float(max_memory_mb) if max_memory_mb is not None else None
        meter = _PeakMemory(self.trainer.device)
        if limit is None and not meter.cuda:
            limit = _default_cpu_limit_mb()
        self.batch_size_trials = []
        found: int | None = None
        with _preserved(self.trainer, system, datamodule) as state, _gc_frozen():
            try:
                found = self._search_batch_size(
                    system, datamodule, holders, batch_arg_name, mode, steps_per_trial, init_val, max_trials, limit, meter, state
                )
            finally:
                state.restore()
                _set_on(holders, batch_arg_name, found if found is not None else original)
        assert found is not None
        return found

    def _search_batch_size(
        self,
        system: System,
        datamodule: Any,
        holders: list[Any],
        name: str,
        mode: str,
        steps: int,
        init_val: int,
        max_trials: int,
        limit: float | None,
        meter: _PeakMemory,
        state: _Preserved,
    ) -> int:
        dataset_size: list[int] = []  # learnt from a trial larger than the dataset

        def fits(size: int) -> bool:
            _set_on(holders, name, size)
            failure, peak, n = self._batch_trial(system, datamodule, size, steps, limit, meter, state)
            state.restore()  # every trial starts from the same weights
            self.batch_size_trials.append({"batch_size": size, "peak_mb": peak, "failure": failure})
            if n is not None:
                dataset_size.append(n)
            return failure is None

        trials = 0
        low, high = 0, None  # the largest size that fitted, the smallest that failed
        size = init_val
        while trials < max_trials:  # halve until one fits, then double until one fails
            trials += 1
            if fits(size):
                low = size
                if high is not None:
                    break
                size *= 2
            else:
                high = size
                if low:
                    break
                if size == 1:
                    last = self.batch_size_trials[-1]["failure"]
                    raise RuntimeError(
                        f"scale_batch_size: even a batch size of 1 does not fit ({last}). Free memory, raise "
                        f"max_memory_mb, or make the model smaller."
                    )
                size //= 2
        if mode == "binsearch" and high is not None:
            try_dataset_size = bool(dataset_size)
            if try_dataset_size:  # nothing above the dataset's size can fit: try that size first
                high = min(high, dataset_size[0] + 1)
            while trials < max_trials and high - low > 1:
                trials += 1
                mid = high - 1 if try_dataset_size else (low + high) // 2
                try_dataset_size = False
                if fits(mid):
                    low = mid
                else:
                    high = mid
        if not low:
            raise RuntimeError(
                f"scale_batch_size: no batch size fitted in {max_trials} trials (down to {size}); raise max_trials or "
                f"lower init_val."
            )
        return low

    def _batch_trial(
        self,
        system: System,
        datamodule: Any,
        size: int,
        steps: int,
        limit: float | None,
        meter: _PeakMemory,
        state: _Preserved,
    ) -> tuple[str | None, float | None, int | None]:
        """One trial: ``steps`` optimizer steps at ``size``; returns why it failed (None when it
        fitted), the peak memory growth in MB, and the dataset's size when the batch was larger."""
        probe = _BatchProbe(size, meter)
        probe.preserved = state
        failure: str | None = None
        dataset_size: int | None = None
        tmp = self._quiet_trainer([probe], max_steps=steps)
        try:
            tmp.fit(system, datamodule=datamodule)
        except _TooLarge as err:
            failure, dataset_size = str(err), err.dataset_size
        except Exception as err:
            if not _is_out_of_memory(err):
                raise
            failure = f"out of memory ({type(err).__name__})"
        finally:
            probe.restore_generators()
            del tmp
        peak = meter.peak_mb() if probe.measuring else None
        if failure is None and limit is not None and peak is not None and peak > limit:
            failure = f"peak memory growth {peak:.1f} MB is above the limit of {limit:.1f} MB"
        _release_memory(meter.cuda)
        return failure, peak, dataset_size

    # -- helpers -------------------------------------------------------------------------------------
    def _check_single_process(self, what: str) -> None:
        if self.trainer.world_size > 1:
            raise FlagError(
                f"Tuner.{what}() runs in one process: the trainer has world_size={self.trainer.world_size}. Tune with "
                f"a Trainer on one device (devices=1), then train with several."
            )

    def _quiet_trainer(self, callbacks: Sequence[Callback], max_steps: int) -> Trainer:
        """A Trainer that steps as ``self.trainer`` does and writes nothing."""
        from fulmen.trainer.trainer import Trainer

        flags = self.trainer._flags
        strategy = flags["strategy"] if isinstance(flags["strategy"], str) else "auto"
        quiet = Trainer(
            accelerator=flags["accelerator"],
            strategy=strategy,
            devices=flags["devices"],
            num_nodes=flags["num_nodes"],
            precision=flags["precision"],
            deterministic=flags["deterministic"],
            accumulate_grad_batches=flags["accumulate_grad_batches"],
            gradient_clip_val=flags["gradient_clip_val"],
            gradient_clip_algorithm=flags["gradient_clip_algorithm"],
            default_root_dir=self.trainer.default_root_dir,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            max_epochs=-1,
            max_steps=max_steps,
            callbacks=list(callbacks),
        )
        # The loop rules of the trainer being tuned (fulmen.lightning's: Lightning's, e.g. a batch whose
        # training_step returned None still steps).
        quiet.__dict__["rules"] = self.trainer.rules
        return quiet


# -- the callbacks that drive the searches ---------------------------------------------------------
class _Probe(Callback):
    """Keeps the train dataloader's own generators as they were, and stops a run that makes no
    progress (``training_step`` returning None for a whole epoch)."""

    def __init__(self) -> None:
        self._generators: list[tuple[torch.Generator, torch.Tensor]] = []
        self._epoch_start_step = 0
        self.preserved: _Preserved | None = None

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        from fulmen.trainer._resume import loader_generators

        self._generators = [(g, g.get_state()) for g in loader_generators(trainer.train_dataloader)]
        if self.preserved is not None:  # layers configure_model made in this first trial, before training
            self.preserved.capture_new()

    def restore_generators(self) -> None:
        for g, state in self._generators:
            g.set_state(state)

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        self._epoch_start_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Trainer, system: System) -> None:
        if trainer.global_step == self._epoch_start_step:
            trainer.should_stop = True


class _LRSearch(_Probe):
    """Sets the learning rate before each optimizer step and records the smoothed loss after it."""

    def __init__(self, schedule: list[float], threshold: float | None, single_optimizer: bool = False) -> None:
        super().__init__()
        self.schedule = schedule
        self.threshold = threshold
        self.single_optimizer = single_optimizer
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.diverged = False
        self._avg = 0.0
        self._best = math.inf
        self._group_start: int | None = None  # global_step when the current optimizer step's batches began
        self._sum = 0.0
        self._n = 0

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        super().on_fit_start(trainer, system)
        if self.single_optimizer and len(trainer.optimizers) > 1:
            raise ArgumentError(
                f"lr_find only works with single optimizer: {type(system).__name__}.configure_optimizers returned "
                f"{len(trainer.optimizers)}, and the search would give them all the same learning rate. Search with a "
                f"system that returns the one optimizer to tune (or use fulmen.Tuner, which sets the rate on all)."
            )
        # The system's schedulers would change the learning rate under the search.
        trainer.lr_scheduler_configs = []

    def on_train_batch_start(self, trainer: Trainer, system: System, batch: Any, batch_idx: int) -> None:
        if self._group_start is None:  # the first batch of an optimizer step
            lr = self.schedule[len(self.losses)]
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            self._group_start, self._sum, self._n = trainer.global_step, 0.0, 0

    def on_train_batch_end(self, trainer: Trainer, system: System, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._sum += float(loss.detach())  # host sync: once per step, the search needs each loss
            self._n += 1
        if self._group_start is None or trainer.global_step == self._group_start:
            return  # no optimizer step yet (accumulating)
        lr = self.schedule[len(self.losses)]
        self._group_start = None
        if not self._n and trainer.rules.lightning_none_output_steps and system.automatic_optimization:
            # training_step returned None, and the step was taken (Lightning): recorded as NaN, which
            # the suggestion leaves out
            self.lrs.append(lr)
            self.losses.append(math.nan)
            if len(self.losses) >= len(self.schedule):
                trainer.should_stop = True
            return
        if not self._n:
            raise RuntimeError(
                f"lr_find: {type(system).__name__}.training_step returned no loss (a tensor, or a dict with 'loss'), "
                f"so the search has nothing to record. With manual optimization, return the loss from training_step."
            )
        # Automatic optimization returns each loss divided by the batches accumulated: their sum is the mean.
        value = self._sum if system.automatic_optimization else self._sum / self._n
        if not math.isfinite(value):
            self.diverged = trainer.should_stop = True
            return
        k = len(self.losses)
        self._avg = _BETA * self._avg + (1 - _BETA) * value
        smoothed = self._avg / (1 - _BETA ** (k + 1))  # bias-corrected running average
        self.lrs.append(lr)
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if self.threshold is not None and k > 0 and smoothed > self.threshold * self._best:
            self.diverged = trainer.should_stop = True
        elif len(self.losses) >= len(self.schedule):
            trainer.should_stop = True


class _TooLarge(Exception):
    """A batch-size trial larger than the dataset."""

    def __init__(self, size: int, dataset_size: int) -> None:
        super().__init__(f"batch size {size} is larger than the dataset ({dataset_size} samples)")
        self.dataset_size = dataset_size


class _BatchProbe(_Probe):
    """Checks the dataloader took the batch size, and starts the memory meter as training begins."""

    def __init__(self, size: int, meter: _PeakMemory) -> None:
        super().__init__()
        self.size = size
        self.meter = meter
        self.measuring = False

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        super().on_fit_start(trainer, system)
        loader = trainer.train_dataloader
        given = getattr(loader, "batch_size", None)
        if given is not None and given != self.size:
            raise DataError(
                f"scale_batch_size: the train dataloader has batch_size={given} although {self.size} was set; build "
                f"it from the attribute or hyperparameter the search changes (batch_arg_name)."
            )
        try:
            n = len(loader.dataset)
        except (AttributeError, TypeError, NotImplementedError):
            return
        if self.size > n:
            raise _TooLarge(self.size, n)

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        self.meter.start()
        self.measuring = True


# -- putting the system back --------------------------------------------------------------------------
class _Preserved:
    """What a search may change, taken before it; ``restore`` puts it back (any number of times)."""

    def __init__(self, trainer: Trainer, system: System, datamodule: Any) -> None:
        self.system, self.datamodule = system, datamodule
        # Copies on the CPU (no accelerator memory taken from the search), with where each lived.
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, torch.device, torch.dtype]] = []
        self._seen: set[int] = set()
        self.grads = {id(p): (p, p.grad.detach().to("cpu", copy=True)) for p in system.parameters() if p.grad is not None}
        self.modes: list[tuple[torch.nn.Module, bool]] = []
        self.requires_grad: list[tuple[torch.nn.Parameter, bool]] = []
        self._modules: set[int] = set()
        self.capture_new()
        self.optimizers = [(opt, copy.deepcopy(opt.state_dict())) for opt in trainer.optimizers]
        self.rng = RNGState()
        self.system_trainer = system._trainer
        self.datamodule_trainer = getattr(datamodule, "trainer", None)
        self.own_callbacks = system.__dict__.get("configure_callbacks")

    def capture_new(self) -> None:
        """Take the tensors, modes and flags not taken yet: all of them at first, then what
        ``configure_model`` added during the first trial (before it trained), so that every trial
        and the run after the search start from the same layers."""
        system = self.system
        for t in list(system.parameters()) + list(system.buffers()):
            if id(t) not in self._seen:
                self._seen.add(id(t))
                self.tensors.append((t, t.detach().to("cpu", copy=True), t.device, t.dtype))
                if isinstance(t, torch.nn.Parameter):
                    self.requires_grad.append((t, t.requires_grad))
        for m in system.modules():
            if id(m) not in self._modules:
                self._modules.add(id(m))
                self.modes.append((m, m.training))

    def restore(self) -> None:
        system = self.system
        with torch.no_grad():
            for t, saved, device, dtype in self.tensors:
                if t.device == device and t.dtype == dtype and t.shape == saved.shape:
                    t.copy_(saved)
                else:  # moved or cast by the run (a device, a "-true" precision): put it back where it was
                    t.data = saved.to(device=device, dtype=dtype, copy=True)
        for p in system.parameters():
            kept = self.grads.get(id(p))
            p.grad = None if kept is None else kept[1].to(p.device, copy=True)
        for m, training in self.modes:
            m.training = training
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        for opt, state in self.optimizers:
            opt.load_state_dict(copy.deepcopy(state))
        self.rng.restore()
        system._trainer = self.system_trainer
        if self.datamodule is not None:
            self.datamodule.trainer = self.datamodule_trainer


@contextmanager
def _preserved(trainer: Trainer, system: System, datamodule: Any) -> Iterator[_Preserved]:
    """The system as it is now, put back on the way out; the system's own callbacks
    (``configure_callbacks``, e.g. a ModelCheckpoint) are left out of the searches."""
    state = _Preserved(trainer, system, datamodule)
    system.__dict__["configure_callbacks"] = list  # returns []: no checkpoints, no callback state changed
    try:
        yield state
    finally:
        if state.own_callbacks is None:
            system.__dict__.pop("configure_callbacks", None)
        else:
            system.__dict__["configure_callbacks"] = state.own_callbacks
        state.restore()


# -- where a hyperparameter lives -------------------------------------------------------------------
def _attr_holders(system: Any, datamodule: Any, name: str) -> list[Any]:
    """Everything that holds ``name``, in Lightning's order: the system's attribute, its hparams,
    the datamodule's attribute, its hparams."""
    holders: list[Any] = []
    for owner in (system, datamodule):
        if owner is None:
            continue
        if _has_attribute(owner, name):
            holders.append(owner)
        hparams = getattr(owner, "hparams", None)
        if hparams is not None and name in hparams:
            holders.append(hparams)
    return holders


def _has_attribute(owner: Any, name: str) -> bool:
    try:
        getattr(owner, name)
    except AttributeError:
        return False
    return True


def _get_from(holder: Any, name: str) -> Any:
    return holder[name] if isinstance(holder, dict) else getattr(holder, name)


def _set_on(holders: list[Any], name: str, value: Any) -> None:
    for holder in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)


def _lr_schedule(mode: str, min_lr: float, max_lr: float, n: int) -> list[float]:
    """``n`` learning rates from ``min_lr`` to ``max_lr`` (both included)."""
    if n == 1:
        return [min_lr]
    if mode == "exponential":
        return [min_lr * (max_lr / min_lr) ** (i / (n - 1)) for i in range(n)]
    return [min_lr + (max_lr - min_lr) * i / (n - 1) for i in range(n)]


# -- memory --------------------------------------------------------------------------------------------
def _is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text
        for s in (
            "CUDA out of memory",
            "CUDA error: out of memory",
            "CUBLAS_STATUS_ALLOC_FAILED",
            "CUDNN_STATUS_ALLOC_FAILED",
            "can't allocate memory",  # the CPU allocator (when the kernel refuses rather than kills)
        )
    )


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Collect garbage once, then leave everything that exists now out of the collections during
    the search (``gc.freeze``): the collection after each trial, which frees what the trial left
    in reference cycles, then scans only the trial's objects (milliseconds, not a whole heap)."""
    gc.collect()
    freeze = gc.get_freeze_count() == 0  # (someone else froze objects: leave their freeze alone)
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        if freeze:
            gc.unfreeze()


def _release_memory(cuda: bool) -> None:
    gc.collect()
    if cuda and torch.cuda.is_available():
        torch.cuda.empty_cache()


_LIBC: Any = None


def _trim_heap() -> None:
    """Give memory that malloc keeps after frees back to the OS (glibc's ``malloc_trim``), so that a
    trial's resident set grows by what it uses rather than reusing what an earlier trial left."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - absent from musl
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_kb() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class _PeakMemory:
    """The peak memory a trial adds, in MB, measured from ``start()``.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, minus what was
    allocated at the start. On the CPU (Linux): the peak resident set size (``VmHWM`` in
    ``/proc/self/status``, reset at the start by writing 5 to ``/proc/self/clear_refs``) minus
    the resident set at the start, after freed heap memory was returned with ``malloc_trim``.
    Elsewhere: the growth of ``getrusage``'s ``ru_maxrss``, which only counts what goes above the
    process's earlier peak (so it can under-count after a larger trial).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._how = ""
        self._base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._how, self._base = "cuda", torch.cuda.memory_allocated(self.device)
            return
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            rss = _proc_status_kb("VmRSS")
        except OSError:
            rss = None
        if rss is not None and _proc_status_kb("VmHWM") is not None:
            self._how, self._base = "hwm", rss
        else:
            self._how, self._base = "maxrss", _maxrss_kb()

    def peak_mb(self) -> float:
        if self._how == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        peak = _proc_status_kb("VmHWM") if self._how == "hwm" else _maxrss_kb()
        return max(0, (peak or 0) - self._base) / 1024


def _default_cpu_limit_mb() -> float | None:
    """80% of the memory available now (Linux ``MemAvailable``, else psutil when installed)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return 0.8 * int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return 0.8 * psutil.virtual_memory().available / 2**20
