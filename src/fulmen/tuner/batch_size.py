"""The batch-size search of ``Tuner.scale_batch_size``: trials of a few optimizer steps each, doubling
the batch size while it fits (then, with ``mode="binsearch"``, a binary search), every trial a real
``Trainer.fit`` of a quiet Trainer inside one ``fulmen._sandbox.Sandbox`` (reset after each)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen._sandbox import Sandbox
from fulmen.errors import DataError
from fulmen.tuner.holders import attr_holders, get_from, set_on
from fulmen.tuner.memory import PeakMemory, default_cpu_limit_mb, gc_frozen, is_out_of_memory, release_memory
from fulmen.tuner.trial import SearchProbe, run_trial

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer
    from fulmen.tuner import Tuner

__all__ = ["check_batch_args", "scale_batch_size"]


def check_batch_args(
    mode: str, steps_per_trial: Any, init_val: Any, max_trials: Any, max_memory_mb: Any
) -> None:
    if mode not in ("power", "binsearch"):
        raise ValueError(f"scale_batch_size(mode={mode!r}): expected 'power' or 'binsearch'.")
    for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"scale_batch_size({name}={value!r}): expected an int >= 1.")
    if max_memory_mb is not None and not (isinstance(max_memory_mb, (int, float)) and max_memory_mb > 0):
        raise ValueError(f"scale_batch_size(max_memory_mb={max_memory_mb!r}): expected a number of MB > 0, or None.")


def scale_batch_size(
    tuner: Tuner,
    system: System,
    datamodule: Any,
    mode: str,
    steps: int,
    init_val: int,
    max_trials: int,
    name: str,
    max_memory_mb: float | None,
) -> int:
    """The search of ``Tuner.scale_batch_size`` (arguments checked there): the batch size found is
    set where ``name`` lives and returned; the trials are in ``tuner.batch_size_trials``."""
    holders = attr_holders(system, datamodule, name)
    if not holders:
        where = f"{type(system).__name__}" + (f" or {type(datamodule).__name__}" if datamodule is not None else "")
        raise AttributeError(
            f"scale_batch_size: found no {name!r} to scale: neither {where} has an attribute "
            f"{name!r} nor {'do their' if datamodule is not None else 'does its'} hparams. Save it as a "
            f"hyperparameter (self.save_hyperparameters() with a {name} argument) or set "
            f"self.{name}, build the train dataloader from it, or pass batch_arg_name=..."
        )
    original = get_from(holders[-1], name)
    limit = float(max_memory_mb) if max_memory_mb is not None else None
    meter = PeakMemory(tuner.trainer.device)
    if limit is None and not meter.cuda:
        limit = default_cpu_limit_mb()
    tuner.batch_size_trials = []
    found: int | None = None
    with Sandbox(system, datamodule, tuner.trainer) as sandbox, gc_frozen():
        try:
            search = _Search(sandbox, system, datamodule, holders, name, steps, limit, meter, tuner.batch_size_trials)
            found = search.run(mode, init_val, max_trials)
        finally:
            set_on(holders, name, found if found is not None else original)
    return found


class _Search:
    """One ``scale_batch_size``: each trial sets the size where ``name`` lives, runs, and records
    ``{"batch_size", "peak_mb", "failure"}`` in ``trials``."""

    def __init__(
        self,
        sandbox: Sandbox,
        system: System,
        datamodule: Any,
        holders: list[Any],
        name: str,
        steps: int,
        limit: float | None,
        meter: PeakMemory,
        trials: list[dict[str, Any]],
    ) -> None:
        self.sandbox, self.system, self.datamodule = sandbox, system, datamodule
        self.holders, self.name, self.steps, self.limit, self.meter = holders, name, steps, limit, meter
        self.trials = trials
        self.dataset_size: int | None = None  # learnt from a trial larger than the dataset

    def run(self, mode: str, init_val: int, max_trials: int) -> int:
        low, high, size = self._doubling(init_val, max_trials)
        if mode == "binsearch" and high is not None:
            low = self._bisect(low, high, max_trials)
        if not low:
            raise RuntimeError(
                f"scale_batch_size: no batch size fitted in {max_trials} trials (down to {size}); raise max_trials or "
                f"lower init_val."
            )
        return low

    def _doubling(self, size: int, max_trials: int) -> tuple[int, int | None, int]:
        """Halve until one fits, then double until one fails: the largest size that fitted (0:
        none), the smallest that failed (None: none), and the last size tried."""
        low, high = 0, None
        while len(self.trials) < max_trials:
            if self.fits(size):
                low = size
                if high is not None:
                    break
                size *= 2
            else:
                high = size
                if low:
                    break
                if size == 1:
                    raise RuntimeError(
                        f"scale_batch_size: even a batch size of 1 does not fit ({self.trials[-1]['failure']}). Free "
                        f"memory, raise max_memory_mb, or make the model smaller."
                    )
                size //= 2
        return low, high, size

    def _bisect(self, low: int, high: int, max_trials: int) -> int:
        """Between the largest size that fitted and the smallest that failed."""
        try_dataset_size = self.dataset_size is not None
        if self.dataset_size is not None:  # nothing above the dataset's size can fit: try that size first
            high = min(high, self.dataset_size + 1)
        while len(self.trials) < max_trials and high - low > 1:
            mid = high - 1 if try_dataset_size else (low + high) // 2
            try_dataset_size = False
            if self.fits(mid):
                low = mid
            else:
                high = mid
        return low

    def fits(self, size: int) -> bool:
        set_on(self.holders, self.name, size)
        failure, peak, n = self._trial(size)
        self.sandbox.reset()  # every trial starts from the same weights
        self.trials.append({"batch_size": size, "peak_mb": peak, "failure": failure})
        if n is not None and self.dataset_size is None:
            self.dataset_size = n
        return failure is None

    def _trial(self, size: int) -> tuple[str | None, float | None, int | None]:
        """``steps`` optimizer steps at ``size``: why it failed (None when it fitted), the peak
        memory growth in MB, and the dataset's size when the batch was larger."""
        probe = _BatchProbe(size, self.meter)
        failure: str | None = None
        dataset_size: int | None = None
        try:
            run_trial(self.sandbox, probe, self.system, None, self.datamodule, max_steps=self.steps)
        except _TooLarge as err:
            failure, dataset_size = str(err), err.dataset_size
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            failure = f"out of memory ({type(err).__name__})"
        peak = self.meter.peak_mb() if probe.measuring else None
        if failure is None and self.limit is not None and peak is not None and peak > self.limit:
            failure = f"peak memory growth {peak:.1f} MB is above the limit of {self.limit:.1f} MB"
        release_memory(self.meter.cuda)
        return failure, peak, dataset_size


class _TooLarge(Exception):
    """A batch-size trial larger than the dataset."""

    def __init__(self, size: int, dataset_size: int) -> None:
        super().__init__(f"batch size {size} is larger than the dataset ({dataset_size} samples)")
        self.dataset_size = dataset_size


class _BatchProbe(SearchProbe):
    """Checks the dataloader took the batch size, and starts the memory meter as training begins."""

    def __init__(self, size: int, meter: PeakMemory) -> None:
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
