"""``trainer.metrics``: what the current run logged, and where it goes.

``self.log`` writes into a ``MetricStore`` (``fulmen.logging._store``), one per stage (``train``,
``val``, ``test``). ``Metrics`` owns those stores and everything made from them:

- which stores are live (the stages running now: training, and a validation inside it);
- the values kept from finished epochs and evaluations, for ``trainer.callback_metrics`` and
  ``trainer.progress_bar_metrics``;
- the values last sent to the loggers (``trainer.logged_metrics``), and the sending itself
  (``send``: one host sync, at the log interval and at epoch ends, never per step).

The loops in ``fulmen.trainer`` write it; the loggers' checkpoint positions
(``fulmen.loggers._positions``) read it and ask for a flush through ``flush_after_next_send``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fulmen.logging._store import MetricStore, to_floats

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

STAGES = ("train", "val", "test")


class Metrics:
    """The current run's logged values (see the module's docstring)."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        #: One store per stage; ``self.log`` writes into the live one.
        self.stores: dict[str, MetricStore] = {stage: MetricStore(stage) for stage in STAGES}
        #: The stores of what runs now (training, then a validation inside it).
        self.live: list[MetricStore] = []
        #: Values of finished epochs and evaluations, and values callbacks set in ``callback_metrics``.
        self.kept_callback: dict[str, Any] = {}
        #: Progress bar values of finished epochs and evaluations (floats).
        self.kept_pbar: dict[str, float] = {}
        #: The values last sent to the loggers, by name.
        self.logged: dict[str, Any] = {}
        #: The global step at which the training loop next sends a step row (kept for checkpoints).
        self.next_log: float = math.inf
        #: A flush of every logger asked for right after the next row is sent.
        self.flush_after_send = False

    def start_run(self, system: System) -> None:
        """A new run (``fit``, ``validate``, ...): empty stores and kept values. As in Lightning,
        metrics describe the current run: a test after a fit starts empty, and a key's ``self.log``
        settings are fixed within a run only."""
        trainer = self._trainer
        self.kept_callback, self.kept_pbar, self.logged = {}, {}, {}
        self.stores = {stage: MetricStore(stage, trainer.rules) for stage in STAGES}
        self.live = []
        for store in self.stores.values():
            if trainer.rules.lightning:  # a logged torchmetrics Metric must be one of the module's (Lightning)
                store.metric_owner = system
            if trainer.world_size > 1:
                store.strategy = trainer.strategy

    @property
    def training(self) -> bool:
        """The training stage's store is live (the training loop runs, or a validation inside it)."""
        return self.stores["train"] in self.live

    @property
    def validating(self) -> bool:
        """The validation stage's store is live."""
        return self.stores["val"] in self.live

    # -- the views callbacks and the progress bar read -------------------------------------------
    def callback_metrics(self) -> dict[str, Any]:
        """``trainer.callback_metrics``: the kept values, then the live stores' (tensors)."""
        out = _CallbackMetrics(self)
        dict.update(out, self.kept_callback)
        for store in self.live:
            dict.update(out, store.callback_view())
        return out

    def progress_bar_metrics(self) -> dict[str, float]:
        """``trainer.progress_bar_metrics`` (floats).  # host sync: read at refresh time only"""
        out = dict(self.kept_pbar)
        for store in self.live:
            view: dict[str, Any] = store.step_view(only="prog_bar")
            if store.epoch_end_reached or store.stage != "train":
                view.update(store.epoch_view(only="prog_bar"))
            out.update(to_floats(view))
        return out

    def logged_metrics(self) -> dict[str, Any]:
        """``trainer.logged_metrics``: the values last sent to the loggers, as tensors."""
        return {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in self.logged.items()}

    def keep(self, store: MetricStore, pbar: dict[str, Any]) -> None:
        """A finished epoch or evaluation: its values stay in ``callback_metrics``, and ``pbar``
        (its progress bar values) in ``progress_bar_metrics``."""
        self.kept_callback.update(store.callback_view())
        self.kept_pbar.update(to_floats(pbar))

    def load_results(self, callback_metrics: dict[str, float], logged_metrics: dict[str, float]) -> None:
        """The values of a run that ran in other processes (``ddp_spawn``): rank 0's, as numbers."""
        self.kept_callback = {k: torch.tensor(v) for k, v in callback_metrics.items()}
        self.logged = {k: torch.tensor(v) for k, v in logged_metrics.items()}

    # -- to the loggers ----------------------------------------------------------------------------
    def send(self, metrics: dict[str, Any], step: int, epoch: bool = True) -> None:
        """Convert to floats (one host sync) and hand to every logger (with ``"epoch"`` unless
        ``epoch=False``: Lightning's evaluation step values go without it)."""
        if not metrics:
            return
        self.logged.update(metrics)
        trainer = self._trainer
        if not trainer.loggers or not trainer.is_global_zero:
            return
        values = to_floats(metrics)
        if epoch:
            values["epoch"] = float(trainer.current_epoch)
        if trainer.rules.lightning:  # as Lightning calls them (code that mocks log_metrics reads the keywords)
            for lg in trainer.loggers:
                lg.log_metrics(metrics=values, step=step)
        else:
            for lg in trainer.loggers:
                lg.log_metrics(values, step)
        if self.flush_after_send:  # the row a checkpoint just carried (see save_checkpoint): on disk now
            self.flush_after_send = False
            for lg in trainer.loggers:
                lg.save()

    def flush_after_next_send(self) -> None:
        """Ask for every logger to be flushed right after the next row is sent (a checkpoint
        carried that row: it must reach the disk as soon as it is written)."""
        self.flush_after_send = True


class _CallbackMetrics(dict[str, Any]):
    """``trainer.callback_metrics``: a snapshot whose assignments are also kept by the trainer."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._metrics.kept_callback[key] = value

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self) -> Any:  # copies and pickles are plain dicts
        return (dict, (dict(self),))
