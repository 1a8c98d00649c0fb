"""``fulmen.tuner.Tuner``: a learning-rate range test and a batch-size search.

Both run the system through short fits of a temporary, quiet Trainer that copies the flags of
the Trainer given that change what a step does (accelerator, devices, precision, gradient
accumulation and clipping) and writes nothing: no logger, no checkpoint, no progress bar. The
system's weights, its buffers, the modes of its submodules, the optimizers of the given Trainer
and every random number generator are put back exactly afterwards, and the given Trainer itself
is never run, so its ``global_step``, ``current_epoch`` and callbacks' states are as before.

The package: ``lr_finder`` (the range test and its result, ``LRFinder``), ``batch_size`` (the
batch-size search), ``memory`` (the peak memory a trial adds), ``trial`` (one short run and the
callback that drives it), ``holders`` (where a tuned hyperparameter lives); the short runs are
sandboxed by ``fulmen._sandbox`` (shared with ``fulmen.doctor``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.errors import DataError, FlagError
from fulmen.tuner.lr_finder import LRFindArgs, LRFinder, find_lr

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer

__all__ = ["LRFindArgs", "LRFinder", "Tuner"]


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
        return self._lr_find(system, train_dataloaders, datamodule, LRFindArgs.of(locals()))

    def _lr_find(self, system: System, train_dataloaders: Any, datamodule: Any, args: LRFindArgs) -> LRFinder:
        """``lr_find`` with its search arguments in one object (also what ``fulmen.lightning``'s
        Tuner calls)."""
        args.check_mode("lr_find")
        self._check_lr_range(args.min_lr, args.max_lr)
        args.check_steps()
        self._check_single_process("lr_find")
        return find_lr(self, system, train_dataloaders, datamodule, args)

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
        from fulmen.tuner.batch_size import check_batch_args, scale_batch_size

        check_batch_args(mode, steps_per_trial, init_val, max_trials, max_memory_mb)
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
        return scale_batch_size(
            self, system, datamodule, mode, steps_per_trial, init_val, max_trials, batch_arg_name, max_memory_mb
        )

    # -- helpers -------------------------------------------------------------------------------------
    def _check_single_process(self, what: str) -> None:
        if self.trainer.world_size > 1:
            raise FlagError(
                f"Tuner.{what}() runs in one process: the trainer has world_size={self.trainer.world_size}. Tune with "
                f"a Trainer on one device (devices=1), then train with several."
            )
