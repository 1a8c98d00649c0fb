"""The store behind ``self.log``: buffered tensors, reduced only when someone needs the numbers.

``self.log`` runs every step, so it must not synchronise host and device: a logged tensor is
detached and kept as a tensor. Values become Python numbers only at the log interval, when the
progress bar refreshes, or at an epoch's end (each such place is marked ``# host sync``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from fulmen.errors import LoggingError, warn_once

ReduceFx = str | Callable[[Tensor], Tensor]

_REDUCE_NAMES = ("mean", "sum", "max", "min")
_ALIASES = {"avg": "mean", "add": "sum", "maximum": "max", "minimum": "min"}
_COMPACT_EVERY = 1024  # values kept per key before they are folded into a running aggregate


def _normalize_reduce_fx(fx: Any, name: str) -> ReduceFx:
    if isinstance(fx, str):
        fx = _ALIASES.get(fx.lower(), fx.lower())
        if fx in _REDUCE_NAMES:
            return fx
    elif fx in (torch.mean, torch.sum, torch.max, torch.min):
        return {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}[fx]
    elif callable(fx):
        return fx
    raise LoggingError(
        f"self.log({name!r}, ..., reduce_fx={fx!r}): reduce_fx must be one of "
        f"{', '.join(map(repr, _REDUCE_NAMES))} or a callable taking a 1-D tensor of the epoch's values."
    )


def _same_reduce_fx(a: Any, b: Any) -> bool:
    if a == b:
        return True
    code = getattr(a, "__code__", None)
    return code is not None and code is getattr(b, "__code__", None)


def _is_numpy_scalar(value: Any) -> bool:
    """A NumPy array with one element (a 0-d array, or ``np.array([x])``): loggable as a number."""
    return type(value).__module__ == "numpy" and getattr(value, "size", 0) == 1 and value.dtype.kind in "biuf"


def batch_size_of(batch: Any) -> int | None:
    """Size of the first dimension of the first tensor found in ``batch`` (None if there is none)."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        items: Any = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = (getattr(batch, f.name) for f in dataclasses.fields(batch))
    else:
        return None
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


class _Entry:
    """One logged key: its settings, its latest value, and its epoch accumulation."""

    __slots__ = (
        "agg",
        "dataloader_idx",
        "forked",
        "group",
        "key",
        "logger",
        "metric",
        "metric_updated",
        "name",
        "on_epoch",
        "on_step",
        "opts",
        "origin",
        "prog_bar",
        "raw_opts",
        "reduce_fx",
        "suffix",
        "sync_dist",
        "synced",
        "updated",
        "value",
        "values",
        "weighted",
        "weights",
    )

    def __init__(self, name: str, opts: tuple[Any, ...], dataloader_idx: int | None) -> None:
        self.name = name
        self.raw_opts = opts  # the settings as last given to self.log (before normalising)
        self.suffix = "" if dataloader_idx is None else f"/dataloader_idx_{dataloader_idx}"
        self.key = name + self.suffix
        self.opts = opts
        self.prog_bar, self.logger, self.on_step, self.on_epoch, self.reduce_fx = opts[:5]
        self.forked = self.on_step and self.on_epoch
        self.dataloader_idx = dataloader_idx
        #: The dataloader whose steps logged the key (also with add_dataloader_idx=False, when
        #: the name has no suffix); None when logged outside a dataloader's batches.
        self.origin: int | None = dataloader_idx
        #: Where it was first logged (see ``MetricStore._group``).
        self.group: tuple[bool, bool] = (False, False)
        self.value: Tensor | float | None = None
        self.values: list[Tensor | float] = []
        self.weights: list[float] = []
        self.weighted = False
        self.agg: tuple[Tensor, float] | None = None  # running (sum or max/min, weight total)
        self.updated = False
        self.sync_dist = False
        self.synced: Tensor | None = None  # the epoch value reduced over all processes (see sync_epoch)
        self.metric: Any = None  # a torchmetrics.Metric logged under this name
        self.metric_updated = False

    def forked_name(self, fork: str) -> str:
        """``loss`` -> ``loss_step`` / ``loss_epoch`` when logged both ways (dataloader suffix last)."""
        return self.name + fork + self.suffix if self.forked else self.key

    def reset(self) -> None:
        self.value = None
        self.values = []
        self.weights = []
        self.weighted = False
        self.agg = None
        self.updated = False
        self.synced = None
        if self.metric is not None and self.metric_updated:
            self.metric.reset()  # a new epoch: the metric accumulates afresh
        self.metric_updated = False

    def add(self, value: Tensor | float, weight: float | None) -> None:
        self.synced = None
        self.values.append(value)
        if weight is not None:
            self.weighted = True
        self.weights.append(1.0 if weight is None else float(weight))
        if len(self.values) >= _COMPACT_EVERY and isinstance(self.reduce_fx, str):
            self.agg = self._fold()
            self.values, self.weights = [], []

    def _fold(self) -> tuple[Tensor, float]:
        """Combine the buffered values (and the running aggregate) into a new running aggregate.

        Runs every ``_COMPACT_EVERY`` values, inside the epoch: it must not wait on the device.
        """
        vals = _stack(self.values).double()
        weights = self.weights
        total_w = math.fsum(weights)
        fx = self.reduce_fx
        if fx == "mean":
            w0 = weights[0]
            if all(w == w0 for w in weights):  # one batch size throughout: no weight tensor needed
                part = vals.sum() * w0
            else:
                part = (vals * _on_device(weights, vals.device)).sum()
        elif fx == "sum":
            part = vals.sum()
        elif fx == "max":
            part = vals.max()
        else:
            part = vals.min()
        if self.agg is None:
            return part, total_w
        prev, prev_w = self.agg
        prev = prev.to(part.device)
        if fx in ("mean", "sum"):
            return prev + part, prev_w + total_w
        combine = torch.maximum if fx == "max" else torch.minimum
        return combine(prev, part), prev_w + total_w

    def epoch_value(self) -> Tensor | None:
        """The epoch's reduced value (a 0-d tensor), or None when nothing was logged this epoch."""
        if self.synced is not None:
            return self.synced
        if self.metric is not None:  # a torchmetrics.Metric: computed once per epoch (it may sync)
            if not self.metric_updated:
                return None
            out = self.metric.compute()
            self.synced = (out if isinstance(out, Tensor) else torch.tensor(out)).detach().float().reshape(())
            return self.synced
        if not self.values and self.agg is None:
            return None
        fx = self.reduce_fx
        if not isinstance(fx, str):
            out = fx(_stack(self.values))
            return out if isinstance(out, Tensor) else torch.tensor(out)
        total, weight = self._fold() if self.values else self.agg  # type: ignore[misc]
        out = total / weight if fx == "mean" else total
        return out.float()


def _stack(values: list[Tensor | float]) -> Tensor:
    """The logged values as one 1-D tensor, on the device of the logged tensors (Python numbers
    logged under the same key join them there without a copy from the host)."""
    device = next((v.device for v in values if isinstance(v, Tensor)), None)
    if device is None:
        return torch.tensor(values, dtype=torch.float64)
    return torch.stack(
        [v if isinstance(v, Tensor) else torch.full((), v, dtype=torch.float64, device=device) for v in values]
    )


def _on_device(weights: list[float], device: torch.device) -> Tensor:
    """``weights`` as a float64 tensor on ``device``; to CUDA through pinned memory, so the copy
    does not wait for the GPU to finish its queued work."""
    w = torch.tensor(weights, dtype=torch.float64)
    if device.type == "cuda":
        return w.pin_memory().to(device, non_blocking=True)
    return w.to(device)


class MetricStore:
    """Everything logged during one stage (train, validate or test) of a run.

    ``rules`` (the Trainer's ``LoopRules``) decides what Lightning and fulmen do differently:
    a key logged again with other settings, and where evaluation step values go."""

    def __init__(self, stage: str, rules: Any = None) -> None:
        self.stage = stage
        #: A key logged again with other on_step/on_epoch/... settings (in another hook) becomes
        #: a second record under the same name, instead of an error.
        self.other_settings_allowed = bool(getattr(rules, "same_key_other_settings", False))
        #: Evaluation step values go to the loggers after each batch, and callback_metrics shows
        #: an evaluation stage's epoch values only.
        self.eval_step_logging = bool(getattr(rules, "eval_step_logging", False)) and stage != "train"
        #: The system whose submodules a logged torchmetrics Metric must be one of (Lightning's
        #: rule; set by the Trainer), or None to accept any Metric object.
        self.metric_owner: Any = None
        #: Batches each dataloader ran with eval_step_logging (the loggers' step for its values).
        self.logged_batches: dict[int, int] = {}
        #: Per-dataloader results (validate/test): a key logged with add_dataloader_idx=False
        #: belongs to the dataloader that logged it (Lightning); else it is shared by all of them.
        self.results_by_origin = bool(getattr(rules, "lightning", False))
        self.entries: dict[str, _Entry] = {}
        # Set by the loops: defaults for on_step/on_epoch, the current batch (for batch sizes),
        # and the dataloader index (None when the stage has one dataloader).
        self.default_on_step = stage == "train"
        self.default_on_epoch = stage != "train"
        self.batch: Any = None
        #: The size of ``batch`` (its first tensor's first dimension), found at the first value
        #: logged in that batch that needs it; None until then. A loop setting ``batch`` sets this
        #: to None with it (``new_batch`` does both).
        self.current_batch_size: int | None = None
        self.dataloader_idx: int | None = None
        self.epoch_end_reached = False
        self._suffixed: dict[tuple[str, int], str] = {}  # (name, dataloader_idx) -> key, formatted once
        #: The strategy when several processes run (set by the Trainer): ``sync_dist`` values are
        #: reduced over them; None for one process.
        self.strategy: Any = None
        #: The other stages' stores of the same run (set by ``fit``: train and validation), whose
        #: keys end up beside this store's in ``callback_metrics`` and the loggers. A new key is
        #: checked against them once (see ``_check_other_stages``).
        self.peers: tuple[MetricStore, ...] = ()

    # -- the hot path ------------------------------------------------------------------------
    def new_batch(self, batch: Any) -> None:
        self.batch = batch
        self.current_batch_size = None

    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool,
        on_step: bool | None,
        on_epoch: bool | None,
        reduce_fx: Any,
        enable_graph: bool,
        batch_size: int | None,
        add_dataloader_idx: bool,
        sync_dist: bool = False,
    ) -> None:
        if on_step is None:
            on_step = self.default_on_step
        if on_epoch is None:
            on_epoch = self.default_on_epoch
        dl_idx = self.dataloader_idx if add_dataloader_idx else None
        if dl_idx is None:
            key = name
        else:
            key = self._suffixed.get((name, dl_idx))  # type: ignore[assignment]
            if key is None:
                key = self._suffixed[(name, dl_idx)] = f"{name}/dataloader_idx_{dl_idx}"
        opts = (prog_bar, logger, on_step, on_epoch, reduce_fx)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._new_entry(name, key, opts, dl_idx, add_dataloader_idx)
        elif entry.raw_opts != opts:  # compared as given: torch.mean and "mean" differ here, once
            entry = self._settings_changed(name, key, entry, opts, dl_idx)

        if isinstance(value, Tensor):
            if value.ndim and value.numel() != 1:  # (a 0-d tensor holds one element: no call for it)
                raise LoggingError(
                    f"self.log({name!r}, value): the value must be a scalar (one element), got a tensor "
                    f"of shape {tuple(value.shape)} (`self.log({name}, ...)` was called, but the tensor must have a "
                    f"single element). Reduce it first, e.g. value.mean(), or log each element under its own name."
                )
            if not enable_graph:
                value = value.detach()
            if value.ndim:
                value = value.reshape(())
        elif isinstance(value, numbers.Number) and not isinstance(value, complex):
            value = float(value)  # type: ignore[arg-type]
        elif _is_numpy_scalar(value):
            value = float(value.item())
        elif _is_torchmetric(value):
            self._log_metric_object(entry, value, on_step, on_epoch)
            return
        else:
            raise LoggingError(
                f"`self.log({name}, {value})` was called, but `{type(value).__name__}` values cannot be logged: "
                f"self.log({name!r}, value) takes a number or a one-element tensor, got {type(value).__name__}. To "
                f"log several values at once use self.log_dict({{name: value}})."
            )
        if sync_dist and self.strategy is not None:
            entry.sync_dist = True
            if on_step and self.stage == "train":  # (evaluation shares may differ in length: epoch values only)
                entry.value = _reduce_step(self.strategy, value, entry.reduce_fx)
            else:
                entry.value = value
        else:
            entry.value = value
        entry.updated = True
        if on_epoch:
            if batch_size is None and entry.reduce_fx == "mean":
                if self.current_batch_size is None and self.batch is not None:
                    self.current_batch_size = batch_size_of(self.batch)
                batch_size = self.current_batch_size
            entry.add(value, batch_size)

    def _log_metric_object(self, entry: _Entry, metric: Any, on_step: bool, on_epoch: bool) -> None:
        """``self.log(name, metric)`` with a ``torchmetrics.Metric``: the step value is the one its
        last ``forward`` (``metric(preds, target)``) returned; the epoch value is ``metric.compute()``
        over everything it accumulated (synchronised across processes by torchmetrics), and the
        metric is reset when the next epoch starts."""
        if entry.metric is None and self.metric_owner is not None:
            _check_metric_attribute(self.metric_owner, entry.name, metric)
        if entry.metric is not None and entry.metric is not metric:
            raise LoggingError(
                f"self.log({entry.name!r}, metric): a different Metric object was logged under this name before. "
                f"Log one Metric object per name (create it once, in __init__)."
            )
        entry.metric = metric
        entry.synced = None  # the metric changed: compute again when the epoch value is read
        entry.metric_updated = True
        if on_step:
            step_value = getattr(metric, "_forward_cache", None)
            if isinstance(step_value, Tensor) and step_value.numel() == 1:
                entry.value = step_value.detach().reshape(())
                entry.updated = True

    # -- setup and checks (once per key) -------------------------------------------------------
    def _new_entry(
        self,
        name: str,
        key: str,
        opts: tuple[Any, ...],
        dl_idx: int | None,
        add_dataloader_idx: bool = True,
        store_key: str | None = None,
    ) -> _Entry:
        if not isinstance(name, str) or not name:
            raise LoggingError(f"self.log(name, ...): name must be a non-empty string, got {name!r}.")
        prog_bar, logger, on_step, on_epoch, reduce_fx = opts
        if not on_step and not on_epoch:
            raise LoggingError(
                f"self.log({name!r}, ..., on_step=False, on_epoch=False) would record nothing: set on_step "
                f"or on_epoch (or both) to True (`self.log(on_step=False, on_epoch=False)` is not useful)."
            )
        if add_dataloader_idx and "/dataloader_idx_" in name:
            raise LoggingError(
                f"You called `self.log` with the key `{name}`, but a key must not name a dataloader when "
                f"add_dataloader_idx=True: the '/dataloader_idx_<i>' suffix is added for you when there are several "
                f"dataloaders. Log it as {name.split('/dataloader_idx_')[0]!r}, or pass add_dataloader_idx=False."
            )
        if self.stage != "train" and on_step and logger and not on_epoch and not self.eval_step_logging:
            warn_once(
                f"self.log({name!r}, ..., on_step=True, on_epoch=False) in {self.stage}: fulmen sends per-step "
                f"values to the loggers during training only, so this value reaches callback_metrics and the "
                f"progress bar but no logger. Log it with on_epoch=True to record its epoch value.",
                key=f"eval-step-only-{self.stage}-{name}",
            )
        raw = opts
        opts = (prog_bar, logger, on_step, on_epoch, _normalize_reduce_fx(reduce_fx, name))
        if self.peers and store_key is None:
            self._check_other_stages(name, key, opts)
        entry = _Entry(name, opts, dl_idx)
        entry.raw_opts = raw
        entry.origin = self.dataloader_idx
        entry.group = self._group()
        self.entries[key if store_key is None else store_key] = entry
        return entry

    def _group(self) -> tuple[bool, bool]:
        """Which group of hooks is logging now: the batch loop (steps and batch hooks), the hooks
        before it (epoch start), or those after it (epoch end), told apart by the loop's state."""
        return self.default_on_step, self.epoch_end_reached

    def _where(self) -> str:
        """The usual hook of the group logging now, for messages."""
        on_step, ended = self._group()
        name = {"train": "train", "val": "validation", "test": "test"}.get(self.stage, self.stage)
        if ended:
            return f"on_{name}_epoch_end"
        if self.stage == "train":
            return "training_step" if on_step else "on_train_epoch_start"
        return f"{name}_step"

    def _settings_changed(
        self, name: str, key: str, entry: _Entry, opts: tuple[Any, ...], dl_idx: int | None
    ) -> _Entry:
        """``key`` logged with settings other than those given before (as given: they may still
        mean the same, e.g. ``reduce_fx=torch.mean`` for ``"mean"``). Where Lightning keeps one
        record per hook (``other_settings_allowed``), the other settings get a record of their own
        under the same name; else a ``LoggingError``."""
        fx = _normalize_reduce_fx(opts[4], name)
        if entry.opts[:4] == opts[:4] and _same_reduce_fx(entry.opts[4], fx):
            entry.raw_opts = opts
            return entry
        group = self._group()
        if not self.other_settings_allowed or group == entry.group:
            self._conflict(name, entry.opts, (*opts[:4], fx), self._where())
        # (a name of its own in the store for this group of hooks; the views show ``key``)
        other_key = f"{key}\x00{int(group[0])}{int(group[1])}"
        other = self.entries.get(other_key)
        if other is None:
            return self._new_entry(name, key, opts, dl_idx, store_key=other_key)
        if other.raw_opts != opts:
            fx = _normalize_reduce_fx(opts[4], name)
            if not (other.opts[:4] == opts[:4] and _same_reduce_fx(other.opts[4], fx)):
                self._conflict(name, other.opts, (*opts[:4], fx), self._where())
            other.raw_opts = opts
        return other

    def _check_other_stages(self, name: str, key: str, opts: tuple[Any, ...]) -> None:
        """``key`` logged by another stage of the same fit (``"loss"`` in training_step and in
        validation_step): callback_metrics, the progress bar and the loggers hold one value under
        that name, so one stage's values overwrite the other's. With different settings the two
        cannot even mean the same thing. Warned (once), with the differences listed."""
        labels = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx")
        for peer in self.peers:
            other = peer.entries.get(key)
            if peer is self or other is None:
                continue
            where = {"train": "training", "val": "validation", "test": "test"}
            mine, theirs = where.get(self.stage, self.stage), where.get(peer.stage, peer.stage)
            fix = (
                f"Log them under different names, e.g. self.log('{peer.stage}_{name}', ...) in {theirs} and "
                f"self.log('{self.stage}_{name}', ...) in {mine}."
            )
            diffs = [
                f"{k}={a!r} in {theirs}, {k}={b!r} in {mine}"
                for k, a, b in zip(labels, other.opts, opts)
                if not (a == b or (k == "reduce_fx" and _same_reduce_fx(a, b)))
            ]
            # A warning, not an error: logging "loss" in both steps is common and works; what it
            # costs (one value under one name) should be known.
            settings = f" with different settings ({'; '.join(diffs)})" if diffs else ""
            warn_once(
                f"self.log({name!r}, ...) is logged by both {theirs} and {mine}{settings}: callback_metrics, the "
                f"progress bar and the loggers keep one {name!r}, so the {mine} values overwrite the {theirs} ones. "
                f"{fix}",
                key=f"same-name-{peer.stage}-{self.stage}-{key}",
            )

    @staticmethod
    def _conflict(name: str, old: tuple[Any, ...], new: tuple[Any, ...], where: str) -> None:
        labels = ("prog_bar", "logger", "on_step", "on_epoch", "reduce_fx")
        diffs = [f"{k}={a!r} before, {k}={b!r} now" for k, a, b in zip(labels, old, new) if a != b]
        raise LoggingError(
            f"self.log({name!r}, ...) was called with settings that differ from an earlier call for the same "
            f"key: {'; '.join(diffs)}. Use the same settings each time, or log under a different name. (In "
            f"Lightning's words: You called `self.log({name}, ...)` twice in `{where}` with different arguments.)"
        )

    # -- phase boundaries ----------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new epoch: drop values, keep each key's settings (so conflicts are still caught)."""
        for entry in self.entries.values():
            entry.reset()
        self.epoch_end_reached = False
        self.batch = None
        self.current_batch_size = None

    # -- several processes ----------------------------------------------------------------------
    def sync_epoch(self) -> None:
        """Reduce the epoch values of ``sync_dist`` keys over all processes; every process calls
        this at the same points (after a stage's batches, and after its epoch-end hooks).

        The keys are agreed first, so a process that logged nothing (an evaluation share with no
        batch) still takes part. A mean is weighted by every process's batch sizes, so it equals
        the mean over the whole dataset even when the shares differ in size.
        """
        strategy = self.strategy
        if strategy is None:
            return
        # torchmetrics objects synchronise inside compute(): every process computes them here, at
        # the same point, in the same (sorted) order.
        for key in sorted(k for k, e in self.entries.items() if e.metric is not None and e.synced is None):
            self.entries[key].epoch_value()
        mine = sorted(
            (k, e.reduce_fx if isinstance(e.reduce_fx, str) else "callable")
            for k, e in self.entries.items()
            if e.sync_dist and e.metric is None and e.on_epoch and e.synced is None and (e.values or e.agg is not None)
        )
        wanted = sorted({item for part in strategy.all_gather_object(mine) for item in part})
        for key, fx in wanted:
            entry = self.entries.get(key)
            if fx == "callable":
                values = _stack(entry.values).detach().cpu() if entry is not None and entry.values else torch.zeros(0)
                gathered = strategy.all_gather_object(values)
                if entry is not None:
                    out = entry.reduce_fx(torch.cat([g.double() for g in gathered]))
                    entry.synced = (out if isinstance(out, Tensor) else torch.tensor(out)).float()
                continue
            has = entry is not None and (entry.values or entry.agg is not None)
            if has:
                assert entry is not None
                total, weight = entry._fold() if entry.values else entry.agg  # type: ignore[misc]
                entry.agg, entry.values, entry.weights = (total, weight), [], []
            if fx in ("mean", "sum"):
                pair = torch.stack([total.double(), torch.tensor(float(weight), dtype=torch.float64, device=total.device)]) if has else torch.zeros(2, dtype=torch.float64)
                pair = strategy.reduce(pair, "sum")
                value = pair[0] / pair[1] if fx == "mean" else pair[0]
            else:
                fill = float("-inf") if fx == "max" else float("inf")
                value = strategy.reduce(total.double() if has else torch.tensor(fill, dtype=torch.float64), fx)
            if entry is not None:
                entry.synced = value.float()

    # -- views (no host sync: values stay tensors) ---------------------------------------------
    def step_view(self, only: str | None = None, only_updated: bool = False) -> dict[str, Tensor | float]:
        """Latest on_step values, under ``name_step`` when the key is also logged on_epoch.

        ``only``: ``"logger"`` or ``"prog_bar"`` keeps the keys logged with that option set.
        """
        out: dict[str, Tensor | float] = {}
        for e in self.entries.values():
            if e.on_step and e.value is not None and (e.updated or not only_updated):
                if only is None or getattr(e, only):
                    out[e.forked_name("_step")] = e.value
        return out

    def epoch_view(self, only: str | None = None) -> dict[str, Tensor]:
        """Reduced on_epoch values, under ``name_epoch`` when the key is also logged on_step."""
        out: dict[str, Tensor] = {}
        for e in self.entries.values():
            if e.on_epoch and (only is None or getattr(e, only)):
                value = e.epoch_value()
                if value is not None:
                    out[e.forked_name("_epoch")] = value
        return out

    def callback_view(self) -> dict[str, Tensor | float]:
        """What callbacks see now: latest step values, and epoch values once the epoch has ended
        (evaluation stages always show their running epoch values). A key logged both ways shows
        ``name_step`` throughout and ``name_epoch`` once the epoch has ended; ``name`` is the
        epoch value then, the step value before."""
        out: dict[str, Tensor | float] = {}
        show_epoch = self.epoch_end_reached or self.stage != "train"
        steps = not self.eval_step_logging  # (Lightning: an evaluation shows its epoch values only)
        for e in self.entries.values():
            if steps and e.on_step and e.value is not None:
                step = e.value if isinstance(e.value, Tensor) else torch.tensor(e.value)  # (callbacks get tensors)
                out[e.key] = step
                out[e.forked_name("_step")] = step
            if e.on_epoch and show_epoch:
                value = e.epoch_value()
                if value is not None:
                    out[e.key] = value  # the epoch value wins over the step value
                    out[e.forked_name("_epoch")] = value
        return out

    def epoch_metrics_by_dataloader(self, n: int) -> list[dict[str, Tensor]]:
        """Epoch values split by dataloader: loader ``i`` gets its own keys and the unsuffixed ones
        (with ``results_by_origin``, an unsuffixed key logged in a dataloader's steps goes to that
        dataloader only; one logged in an epoch hook to all)."""
        out: list[dict[str, Tensor]] = [{} for _ in range(n)]
        for e in self.entries.values():
            if not e.on_epoch:
                continue
            value = e.epoch_value()
            if value is None:
                continue
            owner = e.origin if self.results_by_origin else e.dataloader_idx
            for i in range(n) if owner is None else (owner,):
                if i < n:
                    out[i][e.forked_name("_epoch")] = value
        return out

    def clear_updated(self) -> None:
        for entry in self.entries.values():
            entry.updated = False

    # -- checkpoints (fulmen.loggers._positions) -------------------------------------------------
    def state_dict(self, sent: bool = False) -> dict[str, Any]:
        """The values logged so far in this epoch, as plain data for a checkpoint (host syncs: a
        checkpoint is written rarely): each key's settings, latest step value (and whether it
        waits for the next log interval; ``sent``: it is being sent now) and epoch accumulation,
        exactly (float32 and float64 values are exact as Python floats). Keys whose values
        cannot be kept this way are left out: a torchmetrics ``Metric`` (its state lives in the
        metric) and a ``reduce_fx`` other than mean/sum/max/min."""
        entries = []
        for store_key, e in self.entries.items():
            if e.metric is not None or not isinstance(e.reduce_fx, str):
                continue
            entries.append({
                "key": store_key,
                "name": e.name,
                "dataloader_idx": e.dataloader_idx,
                "origin": e.origin,
                "opts": [e.prog_bar, e.logger, e.on_step, e.on_epoch, e.reduce_fx],
                "group": list(e.group),
                "sync_dist": e.sync_dist,
                "value": None if e.value is None else float(e.value),
                "updated": e.updated and not sent,
                "values": _stack(e.values).double().cpu().tolist() if e.values else [],  # (one copy per key)
                "weights": list(e.weights),
                "weighted": e.weighted,
                "agg": None if e.agg is None else [float(e.agg[0]), float(e.agg[1])],
            })
        return {"entries": entries}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put back what ``state_dict`` recorded (a resume inside an epoch): the saved keys replace
        those of the same name; the epoch's reduction then goes on as if never interrupted."""
        for item in state.get("entries") or []:
            entry = _Entry(str(item["name"]), tuple(item["opts"]), item["dataloader_idx"])
            entry.origin = item["origin"]
            entry.group = (bool(item["group"][0]), bool(item["group"][1]))
            entry.sync_dist = bool(item["sync_dist"])
            entry.value = item["value"]
            entry.updated = bool(item["updated"])
            entry.values = list(item["values"])
            entry.weights = [float(w) for w in item["weights"]]
            entry.weighted = bool(item["weighted"])
            agg = item["agg"]
            entry.agg = None if agg is None else (torch.tensor(agg[0], dtype=torch.float64), float(agg[1]))
            self.entries[str(item["key"])] = entry


def to_float(value: Tensor | float) -> float:
    """A logged value as a Python float.  # host sync (for tensors on an accelerator)"""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def to_floats(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    return {k: to_float(v) for k, v in values.items()}


def first_nonfinite(losses: list[Tensor]) -> int | None:
    """Index of the first NaN/inf value in ``losses`` (one host sync for the whole window)."""
    if not losses:
        return None
    finite = torch.isfinite(torch.stack(losses))
    if bool(finite.all()):  # host sync, once per log interval
        return None
    return int((~finite).nonzero()[0, 0])



def _reduce_step(strategy: Any, value: Tensor | float, fx: Any) -> Tensor:
    """A ``sync_dist`` step value reduced over the processes at once (a collective per log call)."""
    op = fx if isinstance(fx, str) and fx in ("mean", "sum", "max", "min") else "mean"
    t = value if isinstance(value, Tensor) else torch.tensor(float(value))
    return strategy.reduce(t.detach().double(), op).float()


def _check_metric_attribute(owner: Any, name: str, metric: Any) -> None:
    """A logged ``Metric`` must be an attribute (a submodule) of the system, as Lightning requires:
    only then is it moved to the device with the system and kept in its checkpoints."""
    module = sys.modules["torchmetrics"]
    found = [n for n, m in owner.named_modules() if isinstance(m, module.Metric)]
    if any(m is metric for m in owner.modules()):
        return
    if not found:
        raise LoggingError(
            f"self.log({name!r}, metric): Could not find the `LightningModule` attribute for the `torchmetrics.Metric` "
            f"logged. You can fix this by setting an attribute for the metric in your `LightningModule` (e.g. "
            f"self.{name.replace('/', '_')} = Accuracy(...) in __init__, then log that object), so it moves to the "
            f"device and into checkpoints with the module."
        )
    raise LoggingError(
        f"self.log({name!r}, metric): Could not find the `LightningModule` attribute for the `torchmetrics.Metric` "
        f"logged (a Metric object that is not one of the module's). You can fix this by calling "
        f"`self.log({name}, ..., metric_attribute=name)` where `name` is one of {found}, or by logging that "
        f"attribute's Metric object itself."
    )


def _is_torchmetric(value: Any) -> bool:
    """A ``torchmetrics.Metric`` (without importing torchmetrics when nobody uses it)."""
    module = sys.modules.get("torchmetrics")
    return module is not None and isinstance(value, module.Metric)
