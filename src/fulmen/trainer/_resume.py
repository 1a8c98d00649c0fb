"""Exact resume: what a checkpoint records about the loop, and how ``fit(ckpt_path=...)`` puts it back.

A run is exactly reproducible from a checkpoint when, on resume, (1) the model, optimizer,
scheduler, precision and callback states are the saved ones, (2) the current epoch draws the same
data order, and (3) the random number generators are where they were when the checkpoint was
written. fulmen records the generators' states at the start of every epoch and at the save:

- the data order of the interrupted epoch comes from the epoch-start states: the resumed epoch's
  iterator is created with them, so a shuffling sampler draws the same permutation (and workers
  the same seeds), and its first ``batches_done`` batches are skipped at the sampler level,
  without reading any data;
- then the generators are set to their state at the save, so dropout and the like continue as
  in the uninterrupted run.

Where a checkpoint was written (``phase``, ``fulmen.trainer._phase``) decides what is left to do
on resume: after a train batch the rest of that batch's bookkeeping (validation due, stop checks)
runs first; after a validation the loop continues with the next batch; in ``on_train_epoch_end``
the rest of the epoch's end (epoch schedulers) runs before the next epoch.

The checkpoint's loop section (``"loops"``) is ``trainer.loop``'s state dict
(``fulmen.trainer.state.LoopState``), written and read there only.
``restore_training_state`` puts the states back and returns a ``ResumePlan``, decided before
anything trains, after the checks of what changed since the checkpoint
(``fulmen.trainer._resume_checks``); the loop enters through it (``ResumePlan.start_epochs``, then
``ResumePlan.enter_epoch`` for an epoch the checkpoint was written inside).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

from fulmen.errors import FlagError, warn_once
from fulmen.seed import RNGState
from fulmen.trainer._phase import Phase
from fulmen.trainer.state import LoopState, saved_epoch_start_rng

if TYPE_CHECKING:
    from fulmen.runtime.strategy import Strategy
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

#: Samplers whose order depends only on the random number generators fulmen restores (and, for
#: DistributedSampler, on its seed and the epoch fulmen sets).
_KNOWN_SAMPLERS = (RandomSampler, SequentialSampler, SubsetRandomSampler, WeightedRandomSampler, DistributedSampler)


@dataclasses.dataclass
class ResumePlan:
    """How a fit goes on from a checkpoint, decided before anything trains (``restore_training_state``,
    after the checks of what changed since the checkpoint, ``fulmen.trainer._resume_checks``).

    The loop has one way in: ``start_epochs`` once ``on_train_start`` ran (it finishes the saved
    epoch's end when the checkpoint was written in ``on_train_epoch_end``, or puts the random
    number generators back for a fresh epoch), and, when the checkpoint was written inside an
    epoch, ``enter_epoch`` for that epoch: its data order from the saved position, and what was
    left of the saved batch's bookkeeping (the validation due after it).
    """

    #: The checkpoint's loop section, as written.
    saved: LoopState
    #: The epoch the checkpoint was written in.
    epoch: int
    #: Its batches done (in batches of the new size when the batch size changed, see _resume_checks).
    batches_done: int
    #: Where the loop goes on: ``BATCH`` (after that batch, whose validation may be due) or
    #: ``VALIDATION`` (the batch's validation ran) inside the epoch; ``EPOCH_END`` (finish it, then
    #: the next epoch); else at the epoch's start.
    phase: Phase
    epoch_start_rng: dict[str, Any] | None
    rng: dict[str, Any] | None
    metrics: dict[str, float]
    #: The training stage's logged values inside the epoch (fulmen.loggers._positions), or None.
    train_metrics: dict[str, Any] | None = None
    #: What ``configure_optimizers`` built and which changes were reported, for the check of
    #: changed hyperparameters once ``on_train_start`` ran (``fulmen.trainer._resume_checks``).
    baseline: Any = None
    ckpt: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    path: str | None = None

    @property
    def inside_epoch(self) -> bool:
        """The loop goes on inside the saved epoch (``enter_epoch``)."""
        return self.phase is Phase.BATCH or self.phase is Phase.VALIDATION

    def decide(self, n_train: int | float) -> None:
        """Once the checks may have moved ``batches_done``: a checkpoint written at the end of an
        epoch that max_steps or max_time cut short goes on inside that epoch, as the uninterrupted
        run would have with longer limits (its last batch's validation ran)."""
        if self.phase is Phase.EPOCH_END and self.batches_done < n_train:
            self.phase = Phase.VALIDATION

    def check_hparams(self, trainer: Trainer, system: System) -> None:
        """After ``on_train_start``: hyperparameters that changed since the checkpoint, with the
        values the optimizers now hold (``fulmen.trainer._resume_checks.check_hparams``)."""
        from fulmen.trainer._resume_checks import check_hparams

        check_hparams(trainer, system, self.ckpt, self.path, self)

    def start_epochs(
        self, trainer: Trainer, system: System, generators: list[torch.Generator], lightning_timing: bool
    ) -> ResumePlan | None:
        """Before the first epoch: returns the plan when the loop goes on inside the saved epoch,
        else None (the next epoch starts afresh, with the generators as saved; after the rest of
        the saved epoch's end when the checkpoint was written in ``on_train_epoch_end``)."""
        if self.inside_epoch:
            return self
        restore_rng(self, generators)
        if self.phase is Phase.EPOCH_END:  # its epoch-interval schedulers step now
            if system.automatic_optimization:
                from fulmen.trainer._optim import step_schedulers

                configs = trainer.lr_scheduler_configs
                if lightning_timing:  # (the others stepped at the epoch's last batch, before the checkpoint)
                    configs = [c for c in configs if c.reduce_on_plateau]
                step_schedulers(system, configs, "epoch", self.epoch + 1, lambda: trainer.callback_metrics)
            trainer.loop.epoch = self.epoch + 1
        return None

    def enter_epoch(self, trainer: Trainer, system: System, data: Any, vals: list[Any] | None) -> tuple[int, Any, bool]:
        """Continue the epoch the checkpoint was written in: the same data order from the saved
        position, the generators as at the save, and what was left of the saved batch's
        bookkeeping. Returns the position, the remaining batches, and whether the validation after
        the last batch done ran (here or before the checkpoint)."""
        from fulmen.loggers._positions import restore_train_metrics
        from fulmen.trainer._data import loader_length
        from fulmen.trainer._eval import run_evaluation

        n_train = data.n_train
        start = min(self.batches_done, int(n_train)) if not math.isinf(n_train) else self.batches_done
        if self.epoch_start_rng is not None:
            trainer.loop.epoch_start_rng = RNGState.from_state_dict(self.epoch_start_rng, data.generators)
        restore_train_metrics(trainer, self.train_metrics)  # the epoch's logged values so far (its row covers all of it)
        due = False
        if self.phase is Phase.BATCH and start > 0 and vals is not None:
            cfg, g = trainer.config, trainer.global_step
            due = (g % data.val_every == 0 and g > 0) if cfg.check_val_every_n_epoch is None else start % data.val_every == 0
        validated = self.phase is Phase.VALIDATION and start >= n_train
        if start >= n_train:  # the batch loop was done: its last validation, then the epoch's end
            restore_rng(self, data.generators)
            if due:
                run_evaluation(trainer, system, "val", vals or [], trainer.num_val_batches)
            return start, (), due or validated
        rest: Any = resumed_epoch_batches(data.train, start, self, data.generators)
        if n_train < loader_length(data.train):  # (a whole epoch runs the sampler to its end, as a fresh one does)
            rest = itertools.islice(rest, int(n_train) - start)
        first = list(itertools.islice(rest, 1))  # draws the epoch's seeds, then restores the saved generators
        if due:  # the saved batch's bookkeeping after on_train_batch_end: the validation it was due
            run_evaluation(trainer, system, "val", vals or [], trainer.num_val_batches)
        return start, itertools.chain(first, rest), validated


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that decide a DataLoader's order, beyond the global one."""
    found: list[torch.Generator] = []
    for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)):
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def loop_state(trainer: Trainer) -> dict[str, Any]:
    """The checkpoint's ``"loops"`` entry (plain data: ``trainer.loop.state_dict()``). A ``fulmen.lightning``
    Trainer also records the position as Lightning's loops do (``fit_loop``, ... beside fulmen's
    entries), so Lightning's ``Trainer.fit(ckpt_path=...)`` continues from it too."""
    state = trainer.loop.state_dict()
    if trainer.rules.lightning:
        from fulmen.checkpoint.lightning_format import lightning_loops

        state.update(lightning_loops(trainer))
    return state


def pending_gradients(trainer: Trainer, system: System) -> dict[str, torch.Tensor] | None:
    """The checkpoint's ``"pending_gradients"``: gradients accumulated but not yet stepped, saved
    only inside an accumulation group (after a step, gradients a Lightning-style
    ``optimizer_zero_grad`` keeps until the next group are not pending); with manual optimization
    the user's own accumulation, always kept."""
    done = trainer.loop.batches_done
    inside_group = not system.automatic_optimization or (
        done % max(trainer.accumulate_grad_batches, 1) != 0 and done < trainer.num_training_batches
    )
    if not inside_group:
        return None
    grads = {name: p.grad for name, p in system.named_parameters() if p.grad is not None}
    return grads or None


def rank_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What differs between processes in a checkpoint: random number generators (now and at the
    epoch's start) and gradients accumulated but not yet all-reduced; on the CPU."""
    grads = ckpt.get("pending_gradients")
    return {
        "rng": ckpt.get("rng"),
        "epoch_start_rng": saved_epoch_start_rng(ckpt),
        "pending_gradients": {k: v.detach().cpu() for k, v in grads.items()} if grads else None,
        "train_metrics": (ckpt.get("logs") or {}).get("train_metrics"),
    }


def _own_rank_state(trainer: Trainer, ckpt: dict[str, Any], path: str) -> dict[str, Any]:
    """This process's part of ``rank_state`` from the checkpoint (rank 0's, the top-level
    entries, when the number of processes changed, with a warning)."""
    ranks = ckpt.get("ranks")
    saved_world = int(ckpt.get("world_size") or (len(ranks) if ranks else 1))
    if ranks and len(ranks) == trainer.world_size:
        return dict(ranks[trainer.global_rank])
    if not ranks and ckpt.get("rng") is None:  # nothing per process was saved (a file Lightning wrote)
        return {"rng": None, "epoch_start_rng": None, "pending_gradients": None}
    if saved_world != trainer.world_size:
        warn_once(
            f"Resuming from {path!r}, written by {saved_world} process(es), with {trainer.world_size}: the data is "
            f"split differently and each process's random numbers cannot be restored, so the run continues "
            f"correctly but not bitwise as the uninterrupted run would have.",
            key=f"resume-world-size-{path}",
        )
    return rank_state(ckpt) if trainer.world_size == 1 or trainer.global_rank == 0 else {
        "rng": None,
        "epoch_start_rng": None,
        "pending_gradients": None,
    }


def restore_model(system: System, ckpt: dict[str, Any], path: str, strategy: Strategy | None = None) -> None:
    """Load the weights, listing every mismatch by parameter name (through ``strategy``, by
    default the system's trainer's: FSDP loads into its shards). With ``system.strict_loading``
    False, keys missing from the checkpoint or from the system are skipped (shapes must match)."""
    saved = ckpt["state_dict"]
    own = system.state_dict()
    plain_own = {k.replace("._orig_mod", ""): v for k, v in own.items()}
    strict = system.strict_loading
    missing = sorted(set(plain_own) - set(saved)) if strict else []
    unexpected = sorted(set(saved) - set(plain_own)) if strict else []
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in plain_own.items()
        if k in saved and isinstance(v, torch.Tensor) and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("different shapes:\n  " + "\n  ".join(shapes))
        if missing:
            parts.append("in the model but not in the checkpoint: " + ", ".join(missing[:20]))
        if unexpected:
            parts.append("in the checkpoint but not in the model: " + ", ".join(unexpected[:20]))
        raise RuntimeError(
            f"Cannot resume from {path!r}: the checkpoint does not fit {type(system).__name__}.\n"
            + "\n".join(parts)
            + "\nResume with the same model definition and hyperparameters the checkpoint was written with."
        )
    by_plain = {k.replace("._orig_mod", ""): k for k in own}
    plain = {by_plain[k]: v for k, v in saved.items() if k in by_plain}
    if strategy is None:
        trainer = system._trainer
        strategy = trainer.strategy if trainer is not None else None
    if strategy is None:
        system.load_state_dict(plain, strict=strict)
    else:
        strategy.load_model_state_dict(system, plain, strict=strict)


def restore_training_state(
    trainer: Trainer, system: System, ckpt: dict[str, Any], path: str, n_train: int | float
) -> ResumePlan:
    """Optimizers, schedulers, precision, progress; returns the plan of how the loop goes on
    (``n_train``: the new run's training batches per epoch)."""
    saved_epoch = int(ckpt.get("epoch", 0))  # the epoch it was written in (Lightning's current_epoch then)
    max_epochs = trainer.config.max_epochs
    if max_epochs != -1 and saved_epoch > max_epochs:
        raise FlagError(
            f"You restored a checkpoint with current_epoch={saved_epoch}, but you have set "
            f"Trainer(max_epochs={max_epochs}): {path!r} was written in epoch {saved_epoch}, past the epochs this "
            f"fit may run, so it would train nothing. Raise max_epochs to continue training from it, or load only "
            f"its weights ({type(system).__name__}.load_from_checkpoint) and start a new fit."
        )
    from fulmen.trainer._resume_checks import check_resume, optimizer_settings

    fresh = optimizer_settings(trainer)  # as configure_optimizers built them: what the checkpoint replaces
    _restore_optimizers(trainer, system, ckpt, path)
    trainer.strategy.precision.load_state_dict(ckpt.get("precision") or {})
    own = _own_rank_state(trainer, ckpt, path)
    grads = own["pending_gradients"]
    if grads:
        params = dict(system.named_parameters())
        for name, g in grads.items():
            if name in params:
                params[name].grad = g.to(params[name].device)
    saved = LoopState.from_checkpoint(ckpt)
    trainer.loop.global_step, trainer.loop.epoch = saved.global_step, saved.epoch
    metrics = {k: float(v) for k, v in (ckpt.get("callback_metrics") or {}).items()}
    trainer.metrics.kept_callback.update({k: torch.tensor(v) for k, v in metrics.items()})
    assert saved.phase is not None  # (read: never None)
    plan = ResumePlan(
        saved=saved,
        epoch=saved.epoch,
        batches_done=saved.batches_done,
        phase=saved.phase,
        epoch_start_rng=own["epoch_start_rng"],
        rng=own["rng"],
        metrics=metrics,
        train_metrics=own.get("train_metrics"),
        ckpt=ckpt,
        path=path,
    )
    # What changed since the checkpoint (limits, data): refused, warned or noted before anything
    # trains; a new batch size moves the position to the same sample. Hyperparameters are
    # compared once on_train_start ran (ResumePlan.check_hparams), where a new value may be applied.
    check_resume(trainer, system, ckpt, path, plan, fresh)
    plan.decide(n_train)
    from fulmen.loggers._positions import replay_pending

    replay_pending(trainer, ckpt)  # rows that were due at the save, before anything else is logged
    return plan


def _restore_optimizers(trainer: Trainer, system: System, ckpt: dict[str, Any], path: str) -> None:
    """The optimizer and scheduler states, each checked against what ``configure_optimizers`` built."""
    states = ckpt.get("optimizer_states")
    if states is None:
        raise ValueError(
            f"Cannot resume from {path!r}: it was saved with weights only (save_weights_only=True), without the "
            f"optimizer and loop states. Load the weights with {type(system).__name__}.load_from_checkpoint and "
            f"start a new fit instead."
        )
    if len(states) != len(trainer.optimizers):
        raise ValueError(
            f"Cannot resume from {path!r}: it holds {len(states)} optimizer state(s), but configure_optimizers "
            f"returned {len(trainer.optimizers)} optimizer(s). Resume with the configure_optimizers the run used."
        )
    types = ckpt.get("optimizer_types") or [None] * len(states)
    for i, (opt, state, saved_type) in enumerate(zip(trainer.optimizers, states, types)):
        saved_keys = {k for g in state.get("param_groups", []) for k in g if k != "params"}
        own_keys = {k for g in opt.param_groups for k in g if k != "params"}
        if (saved_type is not None and saved_type != type(opt).__qualname__) or (saved_keys and saved_keys != own_keys):
            raise ValueError(
                f"Cannot resume from {path!r}: optimizer {i} is {type(opt).__name__} but the checkpoint holds the "
                f"state of {saved_type or 'another optimizer'} (settings {sorted(saved_keys)}). Resume with the "
                f"optimizer the run used."
            )
        try:
            trainer.strategy.load_optimizer_state_dict(opt, state)
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"Cannot resume from {path!r}: optimizer {i} ({type(opt).__name__}) does not match the saved one "
                f"({err}). Resume with the same optimizer type and parameter groups the run used."
            ) from err
    scheds = ckpt.get("lr_schedulers") or []
    if len(scheds) != len(trainer.lr_scheduler_configs):
        raise ValueError(
            f"Cannot resume from {path!r}: it holds {len(scheds)} lr scheduler state(s), but configure_optimizers "
            f"returned {len(trainer.lr_scheduler_configs)} scheduler(s)."
        )
    for cfg, state in zip(trainer.lr_scheduler_configs, scheds):
        cfg.scheduler.load_state_dict(state)


def restore_callbacks(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Give each callback its saved state (keys as written by ``callback_states``)."""
    from fulmen.checkpoint.state import callback_states

    saved = ckpt.get("callbacks") or {}
    keys = list(callback_states(trainer.callbacks))  # the same key order and #n suffixes as at save
    for key, cb in zip(keys, trainer.callbacks):
        if key in saved:
            cb.load_state_dict(saved[key])


class _SkipSampler(Sampler[Any]):
    """The indices of ``sampler`` after its first ``skip`` (dropped in C, no data read)."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class _SkipBatches(Sampler[Any]):
    """The batches of a custom batch sampler after its first ``skip`` (index lists only)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def skip_batches(loader: Any, skip: int) -> Any:
    """``loader`` positioned after its first ``skip`` batches, without reading their data."""
    from fulmen.trainer._data import rebuild_loader, with_sampler

    if skip <= 0:
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None or isinstance(loader.dataset, IterableDataset):
        warn_once(
            f"Resuming in the middle of an epoch of a {type(loader).__name__} that is not a map-style DataLoader: "
            f"fulmen reads and discards its first {skip} batches to reach the saved position. The order is exact "
            f"only if the iterable yields the same sequence each time (give it state_dict/load_state_dict to "
            f"skip without reading).",
            key="resume-iterable",
        )
        return itertools.islice(loader, skip, None)
    sampler = loader.sampler
    if not isinstance(sampler, _KNOWN_SAMPLERS) and not hasattr(sampler, "state_dict"):
        warn_once(
            f"Resuming mid-epoch with the sampler {type(sampler).__name__}, which has no state_dict: fulmen restores "
            f"the random number generators it could use and skips its first batches, which is exact only if its "
            f"order depends on nothing else. Give the sampler state_dict/load_state_dict to make resume exact.",
            key=f"resume-sampler-{type(sampler).__name__}",
        )
    if type(loader.batch_sampler) is BatchSampler:
        bs = loader.batch_sampler.batch_size
        return with_sampler(loader, _SkipSampler(sampler, skip * bs))
    return rebuild_loader(loader, batch_sampler=_SkipBatches(loader.batch_sampler, skip))


def resumed_epoch_batches(loader: Any, skip: int, point: ResumePlan, generators: list[torch.Generator]) -> Iterator[Any]:
    """The rest of the interrupted epoch: its order from the epoch-start generator states, then
    the generators as they were at the save, from the first remaining batch on."""
    if point.epoch_start_rng is not None:
        RNGState.from_state_dict(point.epoch_start_rng, generators).restore()
    it = iter(skip_batches(loader, skip))
    try:
        first = next(it)  # creating and starting the iterator draws the epoch's seeds, as originally
    except StopIteration:
        restore_rng(point, generators)
        return
    restore_rng(point, generators)
    yield first
    yield from it


def restore_rng(point: ResumePlan, generators: list[torch.Generator]) -> None:
    if point.rng is not None:
        RNGState.from_state_dict(point.rng, generators).restore()
