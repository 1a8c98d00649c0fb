"""The learning-rate range test: ``LRFinder`` (its result, with the suggestion and the plot),
``LRFindArgs`` (its arguments, checked in one place) and ``find_lr`` (the search itself).

The search is one real ``Trainer.fit`` of a quiet Trainer inside a ``fulmen._sandbox.Sandbox``: a
callback sets the learning rate before each optimizer step and records the smoothed loss after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from fulmen._sandbox import Sandbox
from fulmen.errors import ArgumentError, NonFiniteLossError, warn_once
from fulmen.tuner.holders import attr_holders, set_on
from fulmen.tuner.trial import SearchProbe, run_trial

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer
    from fulmen.tuner import Tuner

__all__ = ["LRFindArgs", "LRFinder", "find_lr"]

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


@dataclass(frozen=True)
class LRFindArgs:
    """The arguments of a learning-rate range test, in one place: ``Tuner.lr_find``,
    ``fulmen.lightning``'s ``Tuner.lr_find`` and its ``LearningRateFinder`` callback each build one
    (the defaults are ``Tuner.lr_find``'s) and it is checked here."""

    min_lr: float = 1e-8
    max_lr: float = 1.0
    num_training: int = 100
    mode: str = "exponential"
    early_stop_threshold: float | None = 4.0
    update_attr: bool = False
    attr_name: str = ""

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> LRFindArgs:
        """The arguments by name among ``values`` (a caller's ``locals()``)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Tuner.lr_find``."""
        return asdict(self)

    @property
    def attr_names(self) -> list[str]:
        """Where the suggestion goes (``update_attr``): ``attr_name``, else ``lr`` or ``learning_rate``."""
        return [self.attr_name] if self.attr_name else ["lr", "learning_rate"]

    def check_mode(self, where: str) -> None:
        if self.mode not in ("exponential", "linear"):
            raise ValueError(f"{where}(mode={self.mode!r}): expected 'exponential' or 'linear'.")

    def check_steps(self) -> None:
        """Refuse a number of steps or a threshold the search cannot run with (the mode is checked
        by ``check_mode``; the learning-rate range is the Tuner's to check: its rule differs under
        ``fulmen.lightning``)."""
        n = self.num_training
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"lr_find(num_training={n!r}): expected an int >= 1 (optimizer steps).")
        threshold = self.early_stop_threshold
        if threshold is not None and not threshold > 0:
            raise ValueError(
                f"lr_find(early_stop_threshold={threshold!r}): expected a number > 0, or None to never stop early."
            )

    def update_target(self, system: Any) -> tuple[list[Any], str]:
        """Where ``update_attr`` writes the suggestion: the holders of the first of ``attr_names``
        that the system or its hparams have, and that name; refused when there is none."""
        for name in self.attr_names:
            holders = attr_holders(system, None, name)
            if holders:
                return holders, name
        names = self.attr_names
        raise AttributeError(
            f"lr_find(update_attr=True): {type(system).__name__} has no {' or '.join(repr(n) for n in names)} "
            f"attribute and its hparams have none (the model or its hparams should have one of these fields: "
            f"{names}), so the suggestion has nowhere to go. Save the learning rate "
            f"as a hyperparameter (self.save_hyperparameters() with an `lr` argument), set self.lr, or pass "
            f"attr_name=..."
        )


def find_lr(tuner: Tuner, system: System, train_dataloaders: Any, datamodule: Any, args: LRFindArgs) -> LRFinder:
    """Run the range test ``args`` describes on ``system`` (checked by ``Tuner.lr_find``), write the
    suggestion where ``update_attr`` says, and save the plot into the run folder of a trainer with
    loggers."""
    holders, attr = args.update_target(system) if args.update_attr else ([], "")
    min_lr, max_lr = float(args.min_lr), float(args.max_lr)
    schedule = _lr_schedule(args.mode, min_lr, max_lr, args.num_training)
    search = _LRSearch(schedule, args.early_stop_threshold, single_optimizer=tuner._lr_find_single_optimizer)
    with Sandbox(system, datamodule, tuner.trainer) as sandbox:
        try:
            run_trial(sandbox, search, system, train_dataloaders, datamodule, max_steps=-1)
        except NonFiniteLossError:  # the loss became NaN/inf: the range test ends there
            search.diverged = True
    results = {"lr": search.lrs, "loss": search.losses}
    finder = tuner._lr_finder(args.mode, min_lr, max_lr, args.num_training, results, search.diverged)
    if args.update_attr:
        lr = finder.suggestion()
        if lr is None:
            warn_once(
                f"lr_find(update_attr=True): too few steps ({len(finder.results['lr'])}) to suggest a learning "
                f"rate, so {attr!r} is left as it is. Raise num_training, or early_stop_threshold if the loss "
                f"diverged at once.",
                key="lr-find-no-suggestion",
            )
        else:
            set_on(holders, attr, lr)
    trainer = tuner.trainer
    if trainer.loggers and trainer.is_global_zero:
        try:
            finder.plot(suggest=True, path=os.path.join(trainer.log_dir, "lr_find.png"))
        except ImportError:
            warn_once(
                "lr_find: matplotlib is not installed, so lr_find.png was not written (pip install matplotlib).",
                key="lr-find-no-matplotlib",
            )
    return finder


# -- the callback that drives the search ------------------------------------------------------------
class _LRSearch(SearchProbe):
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


def _lr_schedule(mode: str, min_lr: float, max_lr: float, n: int) -> list[float]:
    """``n`` learning rates from ``min_lr`` to ``max_lr`` (both included)."""
    if n == 1:
        return [min_lr]
    if mode == "exponential":
        return [min_lr * (max_lr / min_lr) ** (i / (n - 1)) for i in range(n)]
    return [min_lr + (max_lr - min_lr) * i / (n - 1) for i in range(n)]
