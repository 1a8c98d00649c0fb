"""What a resume compares between the checkpoint and the new run, before anything trains.

They are part of the resume plan (``fulmen.trainer._resume.ResumePlan``): ``restore_training_state``
calls ``check_resume`` (limits, data) once the optimizer and scheduler states are loaded, before the
plan decides where the loop goes on; ``ResumePlan.check_hparams`` calls ``check_hparams`` after
``on_train_start``, where a new value may have been applied to the restored optimizer (the
documented way). Each setting that changed since the checkpoint was written gets one message, which
says what differs and what the resumed fit will do:

- **limits**: a checkpoint already at ``max_epochs`` / ``max_steps`` (or whose ``Timer`` budget is
  spent) trains nothing; a warning says so and what to raise. One already past them is refused by
  fulmen's core, as its result would not be a run of those limits; under Lightning's rules the fit
  returns, as Lightning's does, with a warning (an info line where the limit is exactly reached,
  as Lightning logs one).
- **data**: the batch size or the dataset's length changed in the middle of an epoch. fulmen's core
  goes on by samples when the samples trained are a whole number of new batches (the same samples,
  in the same order, as the uninterrupted epoch), and refuses otherwise, naming the old and new
  values and the options. Under Lightning's rules the position in batches is kept, with a warning.
  Changed between epochs: a note.
- **hyperparameters**: a changed hyperparameter whose value the restored optimizer or scheduler
  state replaces (``lr`` 0.5 now, but the optimizer state brings back 0.1) is a warning naming the
  value training uses and how to apply the new one; other changed hyperparameters get a note.

Warnings and notes come from the main process only; notes are printed (logged at INFO under
``fulmen.lightning`` with Lightning's rules). Nothing here runs per step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fulmen.errors import FlagError, warn_once
from fulmen.trainer._phase import Phase

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer._resume import ResumePlan
    from fulmen.trainer.trainer import Trainer

#: Where notes go with Lightning's rules (Lightning logs its notes at INFO).
log = logging.getLogger("fulmen.lightning")

_DOCS = "see 'Resuming with changed settings' in docs/checkpoints.md"
#: Scheduler state entries that count progress rather than hold a setting.
_SCHEDULER_COUNTERS = ("last_epoch", "base_lrs")


def loader_facts(loader: Any) -> dict[str, int | None]:
    """The train loader's batch size and dataset length as a checkpoint records them (None where
    unknown: a custom batch sampler, an iterable without a length)."""
    from torch.utils.data import DataLoader

    batch_size = loader.batch_size if isinstance(loader, DataLoader) else None
    try:
        length: int | None = len(loader.dataset) if isinstance(loader, DataLoader) else None  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without __len__
        length = None
    return {
        "train_batch_size": int(batch_size) if batch_size is not None else None,
        "train_dataset_len": int(length) if length is not None else None,
    }


def optimizer_settings(trainer: Trainer) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The optimizers' group settings and the schedulers' states as ``configure_optimizers`` built
    them, taken before the checkpoint's states replace them."""
    groups = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in trainer.optimizers]
    scheds = []
    for cfg in trainer.lr_scheduler_configs:
        try:
            scheds.append(dict(cfg.scheduler.state_dict()))
        except Exception:  # a scheduler whose state cannot be read is compared by nothing
            scheds.append({})
    return groups, scheds


def check_resume(
    trainer: Trainer,
    system: System,
    ckpt: dict[str, Any],
    path: str,
    point: ResumePlan,
    fresh: tuple[list[list[dict[str, Any]]], list[dict[str, Any]]],
) -> None:
    """Compare the checkpoint's loop and data with the new run: raise where training would be
    wrong, warn or note otherwise (one message per change); may move ``point.batches_done`` to the
    new batch size. Keeps on ``point`` what ``check_hparams`` compares later."""
    say = _Say(trainer, path)
    reported = _check_data(trainer, system, ckpt, point, say)
    _check_limits(trainer, system, ckpt, point, say)
    point.baseline = (fresh, reported)


def check_hparams(trainer: Trainer, system: System, ckpt: dict[str, Any] | None, path: str | None, point: Any) -> None:
    """After ``on_train_start`` of a resumed fit: each hyperparameter that differs from the
    checkpoint's, and whether the optimizers and schedulers (as restored, and as
    ``on_train_start`` left them) use its new value."""
    if ckpt is None or path is None or point is None or point.baseline is None:
        return
    fresh, reported = point.baseline
    point.baseline = None
    _check_hparams(trainer, system, ckpt, fresh, _Say(trainer, path), reported)


class _Say:
    """Warnings and notes from the main process, naming the checkpoint."""

    def __init__(self, trainer: Trainer, path: str) -> None:
        self.trainer, self.path = trainer, path
        self.lightning = trainer.rules.lightning
        self.main = trainer.is_global_zero

    def warn(self, message: str) -> None:
        if self.main:
            warn_once(message)

    def note(self, message: str) -> None:
        if not self.main:
            return
        if self.lightning:
            log.info(message)
        else:
            print(message)


# -- data ----------------------------------------------------------------------------------------
def _check_data(trainer: Trainer, system: System, ckpt: dict[str, Any], point: ResumePlan, say: _Say) -> set[tuple[Any, Any]]:
    """Batch size and dataset length against the checkpoint's; returns the (old, new) batch sizes
    reported, so a hyperparameter carrying the same change is not reported twice."""
    saved = point.saved
    old_n = saved.train_batches
    if not saved.has_data_facts or int(ckpt.get("world_size") or 1) != trainer.world_size:
        return set()  # an older checkpoint, or another number of processes (warned about already)
    old_bs, old_len = saved.train_batch_size, saved.train_dataset_len
    new = loader_facts(trainer.train_dataloader)
    new_bs, new_len = new["train_batch_size"], new["train_dataset_len"]
    new_n = trainer.num_training_batches
    bs_changed = None not in (old_bs, new_bs) and old_bs != new_bs
    len_changed = None not in (old_len, new_len) and old_len != new_len
    if not (bs_changed or len_changed):
        return set()
    done, epoch, path = point.batches_done, point.epoch, say.path
    epoch_complete = old_n is not None and done >= old_n
    mid = point.phase.epoch_begun and done > 0 and not epoch_complete
    n_text = "an unknown number of" if math.isinf(new_n) else str(int(new_n))
    if not mid:
        if epoch_complete and point.phase.epoch_begun and not math.isinf(new_n):
            # The saved epoch ran all its batches: with more batches now, it must not go on inside it.
            point.batches_done = max(done, int(new_n))
        if bs_changed:
            say.note(
                f"Resuming from {path!r} between epochs with batch size {new_bs} (the checkpoint's run used {old_bs}): "
                f"the next epochs have {n_text} batches of {new_bs}."
            )
        if len_changed:
            say.note(
                f"Resuming from {path!r} between epochs with {new_len} training samples (the checkpoint's run had "
                f"{old_len}): the next epochs have {n_text} batches."
            )
        return {(old_bs, new_bs)} if bs_changed else set()
    finish = (
        f"Either finish epoch {epoch} with the settings the checkpoint was written with (resume with them and "
        f"max_epochs={epoch + 1}, then resume from that run's last checkpoint with the new ones), or resume from a "
        f"checkpoint written at an epoch's end"
    )
    where = f"in the middle of epoch {epoch} (after {done} of its {old_n} batches)"
    if len_changed:
        bs_part = f" and batches of {new_bs} ({old_bs} then)" if bs_changed else ""
        if say.lightning:
            say.warn(
                f"Resuming from {path!r} {where} with {new_len} training samples{bs_part}, where the checkpoint's run "
                f"had {old_len}: as in Lightning the epoch goes on at batch {done} of {n_text}, in an order drawn for "
                f"the new data, so some samples of this epoch are trained twice or not at all. {finish}."
            )
            return set()
        raise FlagError(
            f"Cannot resume from {path!r} {where}: the training data has {new_len} samples now{bs_part}, {old_len} "
            f"when the checkpoint was written. An epoch's order is drawn for the whole dataset, so the rest of that "
            f"epoch cannot be found in the new data. {finish} (ModelCheckpoint(save_on_train_epoch_end=True) writes "
            f"one there)."
        )
    assert old_bs is not None and new_bs is not None
    return _batch_size_mid_epoch(trainer, system, point, say, (old_bs, new_bs), new_len, n_text, where, finish)


def _batch_size_mid_epoch(
    trainer: Trainer,
    system: System,
    point: ResumePlan,
    say: _Say,
    sizes: tuple[int, int],
    new_len: int | None,
    n_text: str,
    where: str,
    finish: str,
) -> set[tuple[Any, Any]]:
    """A new batch size (``sizes``: old, new) in the middle of an epoch: fulmen's core goes on by
    samples (``point.batches_done`` in new batches) when the samples trained are a whole number of
    new batches and no accumulation group is cut; Lightning's rules keep the position in batches."""
    (old_bs, new_bs), done, path = sizes, point.batches_done, say.path
    samples = done * old_bs
    new_done, rest = divmod(samples, new_bs)
    acc_old = int(point.saved.accumulate_grad_batches or 1)
    acc_new = trainer.accumulate_grad_batches
    pending_old = (done % acc_old) * old_bs if system.automatic_optimization else 0
    pending_new = (new_done % max(acc_new, 1)) * new_bs if system.automatic_optimization else 0
    if say.lightning:
        skipped = min(done * new_bs, new_len) if new_len is not None else done * new_bs
        say.warn(
            f"Resuming from {path!r} {where} with batch size {new_bs}, where the checkpoint's run used {old_bs}: as in "
            f"Lightning the epoch goes on at batch {done} of {n_text}, which skips {skipped} samples of the "
            f"epoch's order where {samples} were trained. fulmen.Trainer goes on by samples instead; here, to train "
            f"each sample once: {finish[0].lower()}{finish[1:]}."
        )
        return {(old_bs, new_bs)}
    if rest:
        near = _divisors_near(samples, new_bs, leave_out=(old_bs,))
        raise FlagError(
            f"Cannot resume from {path!r} {where} with batch size {new_bs}: the checkpoint was written after {done} "
            f"batches of {old_bs} ({samples} samples) of this epoch, and {samples} samples are not a whole number of "
            f"batches of {new_bs}, so the rest of the epoch cannot start at the next sample. {finish}, or use a "
            f"batch size that divides {samples} (such as {', '.join(map(str, near))})."
        )
    if pending_old != pending_new:
        raise FlagError(
            f"Cannot resume from {path!r} {where} with batch size {new_bs}: the checkpoint was written inside a "
            f"gradient accumulation group ({done % acc_old} of accumulate_grad_batches={acc_old} batches of {old_bs}, "
            f"{pending_old} samples, accumulated but not stepped), and with batches of {new_bs} "
            f"(accumulate_grad_batches={acc_new}) that group would not end at the same sample. {finish}."
        )
    point.batches_done = new_done
    say.note(
        f"Resuming from {path!r} {where} with batch size {new_bs} (the checkpoint's run used {old_bs}): the "
        f"{samples} samples trained in this epoch are {new_done} batches of {new_bs}, so the epoch goes on at batch "
        f"{new_done} of {n_text}, with the samples the uninterrupted epoch would have trained next, in the same order."
    )
    return {(old_bs, new_bs)}


def _divisors_near(n: int, target: int, count: int = 3, leave_out: tuple[int, ...] = ()) -> list[int]:
    """Up to ``count`` divisors of ``n`` closest to ``target`` (above 1 and not in ``leave_out``
    where there are others)."""
    found: set[int] = set()
    i = 1
    while i * i <= n:
        if n % i == 0:
            found.update((i, n // i))
        i += 1
    useful = sorted(found - {1, *leave_out}) or sorted(found)
    return sorted(sorted(useful, key=lambda d: (abs(d - target), d))[:count])


# -- limits --------------------------------------------------------------------------------------
def _check_limits(trainer: Trainer, system: System, ckpt: dict[str, Any], point: ResumePlan, say: _Say) -> None:
    cfg = trainer.config
    path, step = say.path, trainer.global_step
    n_saved = point.saved.train_batches
    n_epoch = n_saved if n_saved is not None else trainer.num_training_batches
    if point.phase.epoch_begun:
        complete = point.phase is Phase.EPOCH_END and point.batches_done >= n_epoch
        done, inside = (point.epoch + 1, False) if complete else (point.epoch, point.batches_done > 0)
    else:  # epoch_start, after_epoch: at an epoch's start
        done, inside = point.epoch, False
    fdr = f" (fast_dev_run={cfg.fast_dev_run} sets max_epochs=1, max_steps={cfg.max_steps})" if cfg.fast_dev_run else ""
    weights = f"or load only its weights ({type(system).__name__}.load_from_checkpoint) to start a new fit"
    trained = f"{done} complete epoch(s)" + (f" and {point.batches_done} batch(es) of epoch {done}" if inside else "")
    past: list[str] = []
    reached: list[str] = []
    if cfg.max_epochs != -1 and (done > cfg.max_epochs or (done == cfg.max_epochs and inside)):
        past.append(
            f"the checkpoint has already trained {trained} (global step {step}), more than the "
            f"Trainer(max_epochs={cfg.max_epochs}){fdr} this fit may run, so nothing would train and the result would "
            f"not be a {cfg.max_epochs}-epoch run. Raise max_epochs to {done + 1} or more to train on from it, {weights}."
        )
    elif cfg.max_epochs != -1 and done == cfg.max_epochs:
        reached.append(
            f"the checkpoint has already completed {done} epoch(s) (global step {step}), which is "
            f"Trainer(max_epochs={cfg.max_epochs}){fdr}, so fit returns at once with the checkpoint's weights. Raise "
            f"max_epochs (to {done + 1} for one more epoch) to train on from it."
        )
    if cfg.max_steps != -1 and step > cfg.max_steps:
        past.append(
            f"the checkpoint was written at global step {step}, past Trainer(max_steps={cfg.max_steps}){fdr}, so "
            f"nothing would train and the result would not be a {cfg.max_steps}-step run. Raise max_steps above {step} "
            f"to train on from it (max_steps=-1: no step limit), {weights}."
        )
    elif cfg.max_steps != -1 and step == cfg.max_steps:
        reached.append(
            f"the checkpoint was written at global step {step}, which is Trainer(max_steps={cfg.max_steps}){fdr}, so "
            f"fit returns at once with the checkpoint's weights. Raise max_steps above {step} to train on from it."
        )
    spent = _spent_timer(trainer)
    if spent:
        reached.append(spent)
    if past and not say.lightning:
        raise FlagError(f"Cannot resume from {path!r}: {past[0]}")
    for text in past:  # Lightning returns at once here
        say.warn(f"Resuming from {path!r} trains nothing: {text}")
    for text in reached:
        if say.lightning:
            say.note(f"Resuming from {path!r} trains nothing: {text}")
        else:
            say.warn(f"Resuming from {path!r} trains nothing: {text}")


def _spent_timer(trainer: Trainer) -> str | None:
    """A restored ``Timer`` (``fulmen.lightning``'s ``max_time``) whose budget is already spent."""
    from fulmen.callbacks.timer import Timer

    for cb in trainer.callbacks:
        if isinstance(cb, Timer) and cb.duration is not None:
            elapsed = cb.time_elapsed("train")
            if elapsed >= cb.duration:
                flag = "Trainer(max_time=...)" if trainer.rules.lightning and trainer.flags.get("max_time") is not None else "Timer(duration=...)"
                return (
                    f"its training time ({_duration(elapsed)}, kept by the Timer callback) has already spent the "
                    f"budget of {_duration(cb.duration)}, so training stops at once. Raise {flag} above "
                    f"{_duration(elapsed)} to train on from it."
                )
    return None


def _duration(seconds: float) -> str:
    """``12.3 s`` under a minute, else ``H:MM:SS``."""
    import datetime

    return f"{seconds:.1f} s" if seconds < 60 else str(datetime.timedelta(seconds=round(seconds)))


# -- hyperparameters ------------------------------------------------------------------------------
def _check_hparams(
    trainer: Trainer,
    system: System,
    ckpt: dict[str, Any],
    fresh: tuple[list[list[dict[str, Any]]], list[dict[str, Any]]],
    say: _Say,
    skip: set[tuple[Any, Any]],
) -> None:
    from fulmen._hparams import plain_hparams

    saved = ckpt.get("hyper_parameters")
    if not isinstance(saved, Mapping):
        return
    owners: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [
        ("hyperparameter", saved, plain_hparams(system.hparams, "system", warn=False))
    ]
    dm = trainer.datamodule
    if isinstance(ckpt.get("datamodule_hyper_parameters"), Mapping) and dm is not None:
        owners.append(
            ("datamodule hyperparameter", ckpt["datamodule_hyper_parameters"], plain_hparams(dm.hparams, "datamodule", warn=False))
        )
    for label, old_map, new_map in owners:
        old, new = dict(_flat(old_map)), dict(_flat(new_map))
        for name in sorted(set(old) | set(new), key=str):
            if name in old and name in new and _same(old[name], new[name]):
                continue
            if name not in old:
                say.note(f"Resuming from {say.path!r}: {label} {name}={new[name]!r} is new (not in the checkpoint).")
                continue
            if name not in new:
                say.note(f"Resuming from {say.path!r}: {label} {name} ({old[name]!r} in the checkpoint) is gone.")
                continue
            if label == "hyperparameter":
                message = _overridden(trainer, system, name, old[name], new[name], fresh, say.path)
                if message:
                    say.warn(message)
                    continue
            if (old[name], new[name]) in skip:
                continue  # the batch size, reported above
            say.note(
                f"Resuming from {say.path!r}: {label} {name} is {new[name]!r} now, {old[name]!r} in the checkpoint; "
                f"the run goes on with {new[name]!r}."
            )


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and "__fulmen_unsaved__" not in value:
            yield from _flat(value, f"{name}.")
        else:
            yield name, value


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if _number(a) and _number(b):
        return a == b  # 1 and 1.0 alike
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a comparison that does not give one bool
        return repr(a) == repr(b)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _elements(value: Any) -> Iterator[tuple[int | None, Any]]:
    """A setting's numbers: itself, or each element of a tuple/list (``betas``, ``base_lrs``)."""
    if _number(value):
        yield None, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            if _number(v):
                yield i, v


def _lr_like(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf in ("lr", "learning_rate") or leaf.endswith(("_lr", "_learning_rate")) or leaf.startswith("lr_")


def _related(name: str, key: str) -> bool:
    """Whether the hyperparameter ``name`` plausibly sets the optimizer/scheduler setting ``key``."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return leaf == key.lower() or (key in ("lr", "initial_lr") and _lr_like(name))


def _overridden(
    trainer: Trainer,
    system: System,
    name: str,
    old: Any,
    new: Any,
    fresh: tuple[list[list[dict[str, Any]]], list[dict[str, Any]]],
    path: str,
) -> str | None:
    """The warning for a hyperparameter whose new value the restored optimizer or scheduler state
    replaced, or None: a setting that ``configure_optimizers`` built with the new value and that the
    checkpoint's state changed (to the old value, or any value for a setting of the same name)."""
    if not (_number(old) and _number(new)):
        return None
    places = _replaced_settings(trainer, name, old, new, fresh)
    if not places:
        return None
    access = _hparam_access(name)
    lines, uses = [], []
    for kind, i, j, key, idx in places[:3]:
        shown = key if idx is None else f"{key}[{idx}]"
        if kind == "optimizer":
            opt = trainer.optimizers[i]
            where = f"optimizer {i} ({type(opt).__name__})" + (f", param group {j}" if len(opt.param_groups) > 1 else "")
            group = opt.param_groups[j]
            if key == "initial_lr":
                s, sched_name = _scheduler_of(trainer, opt)
                uses.append(
                    f"the restored state of {where} and {sched_name} starts its schedule from {group['initial_lr']!r}, so "
                    f"training goes on with lr={group['lr']!r}, scheduled from {group['initial_lr']!r}, not from {new!r}"
                )
                lines.append(
                    f"sched = self.trainer.lr_scheduler_configs[{s}].scheduler  # the one of optimizer {i}\n"
                    f"        for group in self.trainer.optimizers[{i}].param_groups:\n"
                    f"            group['lr'] *= {access} / group['initial_lr']  # the same point of the schedule\n"
                    f"            group['initial_lr'] = {access}\n"
                    f"        sched.base_lrs = [g['initial_lr'] for g in self.trainer.optimizers[{i}].param_groups]"
                )
            else:
                used = group[key] if idx is None else group[key][idx]
                uses.append(f"the restored state of {where} sets {shown} back to {used!r}, so training goes on with {shown}={used!r}, not {new!r}")
                value = access if idx is None else f"tuple({access} if n == {idx} else v for n, v in enumerate(group[{key!r}]))"
                lines.append(
                    f"for group in self.trainer.optimizers[{i}].param_groups:\n"
                    f"            group[{key!r}] = {value}"
                )
        else:
            sched = trainer.lr_scheduler_configs[i].scheduler
            state = sched.state_dict()
            used = state[key] if idx is None else state[key][idx]
            uses.append(
                f"the restored state of lr scheduler {i} ({type(sched).__name__}) sets its {shown} back to {used!r}, so "
                f"training goes on with {shown}={used!r}, not {new!r}"
            )
            target = f"self.trainer.lr_scheduler_configs[{i}].scheduler.{key}"
            lines.append(f"{target} = {access}" if idx is None else f"{target}[{idx}] = {access}")
    recipe = "\n        ".join(lines)
    return (
        f"Resuming from {path!r}: hyperparameter {name} is {new!r} now but {old!r} in the checkpoint, and "
        f"{'; '.join(uses)} (the run record and loggers show {name}={new!r}). To train with {new!r}, set it once "
        f"the checkpoint's state is restored, in {type(system).__name__} ({_DOCS}):\n"
        f"    def on_train_start(self):\n"
        f"        {recipe}"
    )


def _replaced_settings(
    trainer: Trainer, name: str, old: Any, new: Any, fresh: tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]
) -> list[tuple[str, int, int, str, int | None]]:
    """Where the restored optimizer or scheduler state replaced the new value of hyperparameter
    ``name``: ``(kind, index, param group, setting, element)`` for each such setting."""
    fresh_groups, fresh_scheds = fresh

    def hit(before: Any, after: Any, key: str) -> Iterator[int | None]:
        after_by = dict(_elements(after))
        for idx, value in _elements(before):
            restored = after_by.get(idx)
            if value == new and restored is not None and restored != new and (restored == old or _related(name, key)):
                yield idx

    places: list[tuple[str, int, int, str, int | None]] = []
    for i, opt in enumerate(trainer.optimizers):
        for j, group in enumerate(opt.param_groups):
            before = fresh_groups[i][j] if i < len(fresh_groups) and j < len(fresh_groups[i]) else {}
            # With a scheduler, lr is where the schedule is and initial_lr the value set from a
            # hyperparameter: the base is compared, not the scheduled value.
            scheduled = "initial_lr" in group and "initial_lr" in before
            keys = [k for k in group if k not in ("params", "param_names") and not (scheduled and k == "lr")]
            found = [(k, idx) for k in keys for idx in hit(before.get(k), group[k], k)]
            places.extend(("optimizer", i, j, k, idx) for k, idx in found)
    for s, cfg in enumerate(trainer.lr_scheduler_configs):
        before = fresh_scheds[s] if s < len(fresh_scheds) else {}
        state = cfg.scheduler.state_dict()
        for k in state:
            if k.startswith("_") or k in _SCHEDULER_COUNTERS:
                continue
            places.extend(("scheduler", s, 0, k, idx) for idx in hit(before.get(k), state[k], k))
    return places


def _scheduler_of(trainer: Trainer, opt: Any) -> tuple[int, str]:
    for s, cfg in enumerate(trainer.lr_scheduler_configs):
        if getattr(cfg.scheduler, "optimizer", None) is opt:
            return s, f"lr scheduler {s} ({type(cfg.scheduler).__name__})"
    return 0, "its lr scheduler"


def _hparam_access(name: str) -> str:
    """``self.hparams.lr``, or ``self.hparams.optim['lr']`` for a nested one."""
    first, *rest = name.split(".")
    return f"self.hparams.{first}" + "".join(f"[{part!r}]" for part in rest)
