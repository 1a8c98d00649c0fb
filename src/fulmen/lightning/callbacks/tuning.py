"""``LearningRateFinder`` and ``BatchSizeFinder``: fulmen's ``Tuner`` run as callbacks when a fit starts
(Lightning's ``lightning.pytorch.callbacks.lr_finder`` and ``.batch_size_finder``).

    trainer = Trainer(callbacks=[LearningRateFinder()])
    trainer.fit(model, loader)        # a range test first, then training at the suggested lr

Both searches are ``fulmen.Tuner``'s: short fits of a temporary quiet Trainer (no logger, no
checkpoint, no progress bar) after which the weights, optimizer states, train/eval modes and random
number generators are put back exactly, so the fit then starts as it would have, with the value
found. The system's own hooks run during those short fits (as in Lightning), and so do its
``setup`` / ``teardown``. One process only (``Tuner`` refuses ``world_size > 1``).

Where each runs in the fit:

- ``LearningRateFinder`` in ``on_fit_start``, as in Lightning, on the fit's own train dataloader.
  fulmen has built the optimizers by then (``configure_optimizers`` runs before
  ``on_fit_start``), so after writing the suggestion to the module (``update_attr``) it calls
  ``configure_optimizers`` again: the optimizers and schedulers are built anew from the suggested
  learning rate, exactly as if it had been the module's from the start (a ``OneCycleLR(max_lr=
  self.lr)`` or warm-up included). A callback that changes the optimizers in ``on_fit_start`` should
  therefore come after it in ``callbacks``. ``lr_find(trainer, pl_module)`` called later (a subclass
  running it at milestone epochs, Lightning's documented pattern) keeps the optimizers and their
  states and sets the suggestion as every parameter group's learning rate, as Lightning does.
- ``BatchSizeFinder`` in ``setup`` (stage ``"fit"``), before the fit asks for its dataloaders:
  fulmen builds them before ``on_fit_start``, so a batch size found there would come too late. The
  dataloaders must be built by the module's or the datamodule's ``train_dataloader()`` from the
  ``batch_arg_name`` attribute or hyperparameter (dataloaders passed to ``fit`` cannot be rebuilt;
  Lightning refuses them too). Only ``fit`` is tuned.

A resumed fit (``fit(ckpt_path=...)``) does not search again: the value found by the run that wrote
the checkpoint is part of the callback's state and is used (the batch size is read from the
checkpoint file in ``setup``); without one, the learning-rate search is skipped (the checkpoint's
optimizer state decides the learning rate) and the batch-size search runs. ``fast_dev_run`` skips
both, as in Lightning.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.errors import DataError

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer
    from fulmen.tuner import LRFinder

__all__ = ["BatchSizeFinder", "LearningRateFinder"]


def _info(message: str) -> None:
    from fulmen.lightning.utilities.rank_zero import rank_zero_info

    rank_zero_info(message)


class LearningRateFinder(Callback):
    """``LearningRateFinder(min_lr=1e-8, max_lr=1, num_training_steps=100, mode="exponential",
    early_stop_threshold=4.0, update_attr=True, attr_name="")``: a learning-rate range test when
    the fit starts (see the module docstring). ``optimal_lr`` holds the result, a
    ``fulmen.tuner.LRFinder`` (``optimal_lr.suggestion()``, ``optimal_lr.results``, ``.plot()``).
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        from fulmen.tuner import LRFindArgs

        mode = mode.lower() if isinstance(mode, str) else mode
        #: The search's arguments (``fulmen.tuner.LRFindArgs``: Tuner.lr_find's, checked there).
        self._args = LRFindArgs.of({**locals(), "mode": mode, "num_training": num_training_steps})
        self._args.check_mode(type(self).__name__)
        self.optimal_lr: LRFinder | None = None
        self._restored = False  # optimal_lr came from a checkpoint (a resumed fit)
        self._fit_starting = False

    # -- hooks --------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: System) -> None:
        if self._restored:  # a resumed fit: the search ran in the run that wrote the checkpoint
            self._restored = False
            lr = self.optimal_lr.suggestion() if self.optimal_lr is not None else None
            if self._args.update_attr and lr is not None:
                _set_attr(pl_module, self._args.attr_names, lr)  # (the optimizers get the checkpoint's states next)
            return
        if trainer.ckpt_path is not None:
            _info("LearningRateFinder: resuming from a checkpoint, whose optimizer state sets the learning rate; no search.")
            return
        if trainer.fast_dev_run:
            _info("LearningRateFinder: skipped with fast_dev_run.")
            return
        self._fit_starting = True
        try:
            self.lr_find(trainer, pl_module)
        finally:
            self._fit_starting = False

    def lr_find(self, trainer: Trainer, pl_module: System) -> None:
        """Run the range test on the fit's train dataloader; ``optimal_lr`` holds the result. With
        ``update_attr``, the suggestion is written to the module and used: from ``on_fit_start`` the
        optimizers are built again (``configure_optimizers``), later each parameter group's
        learning rate is set to it."""
        from fulmen.tuner import Tuner

        self.optimal_lr = Tuner(trainer).lr_find(
            pl_module, train_dataloaders=trainer.train_dataloader, **self._args.as_kwargs()
        )
        lr = self.optimal_lr.suggestion()
        if not self._args.update_attr or lr is None:
            return
        if self._fit_starting:  # the optimizers configure_optimizers just built, not yet restored or stepped
            from fulmen.trainer._optim import setup_optimizers

            setup_optimizers(trainer, pl_module)  # built from the module's new learning rate
            for opt in trainer.optimizers:
                opt.zero_grad(set_to_none=True)
        else:
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
        _info(f"LearningRateFinder: learning rate set to {lr:.6g}")

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        found = self.optimal_lr
        if found is None:
            return {}
        return {
            "optimal_lr": {
                "mode": found.mode,
                "min_lr": found.min_lr,
                "max_lr": found.max_lr,
                "num_training": found.num_training,
                "results": {"lr": list(found.results["lr"]), "loss": list(found.results["loss"])},
                "diverged": found.diverged,
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from fulmen.tuner import LRFinder

        saved = state_dict.get("optimal_lr")
        if saved:
            self.optimal_lr = LRFinder(**saved)
            self._restored = True


class BatchSizeFinder(Callback):
    """``BatchSizeFinder(mode="power", steps_per_trial=3, init_val=2, max_trials=25,
    batch_arg_name="batch_size")``: the largest batch size that trains, found before the fit builds
    its dataloaders (see the module docstring). ``optimal_batch_size`` holds it."""

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
    ) -> None:
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"BatchSizeFinder(mode={mode!r}): expected one of {self.SUPPORTED_MODES}.")
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self.optimal_batch_size: int | None = init_val
        self._found = False  # optimal_batch_size was searched (or restored), not the initial value

    # -- hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: System, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.fast_dev_run:
            _info("BatchSizeFinder: skipped with fast_dev_run.")
            return
        saved = self._saved_batch_size(trainer) if trainer.ckpt_path is not None else None
        if saved is not None:  # a resumed fit: keep the batch size its checkpoint was trained with
            from fulmen.tuner.holders import attr_holders, set_on

            set_on(attr_holders(pl_module, trainer.datamodule, self._batch_arg_name), self._batch_arg_name, saved)
            self.optimal_batch_size, self._found = saved, True
            return
        self._check_data_source(trainer, pl_module)
        _configure_model_now(pl_module, stage)
        self.scale_batch_size(trainer, pl_module)

    def scale_batch_size(self, trainer: Trainer, pl_module: System) -> None:
        """Search, and set the batch size found on the module or datamodule (``optimal_batch_size``)."""
        from fulmen.tuner import Tuner

        self.optimal_batch_size = Tuner(trainer).scale_batch_size(
            pl_module,
            datamodule=trainer.datamodule,
            mode=self._mode,
            steps_per_trial=self._steps_per_trial,
            init_val=self._init_val,
            max_trials=self._max_trials,
            batch_arg_name=self._batch_arg_name,
        )
        self._found = True
        _info(f"BatchSizeFinder: {self._batch_arg_name} set to {self.optimal_batch_size}")

    def on_fit_start(self, trainer: Trainer, pl_module: System) -> None:
        if not self._found:
            return
        given = getattr(trainer.train_dataloader, "batch_size", None)
        if given is not None and given != self.optimal_batch_size:
            raise DataError(
                f"BatchSizeFinder found {self._batch_arg_name}={self.optimal_batch_size}, but the fit's train dataloader "
                f"has batch_size={given}: it was not built from {self._batch_arg_name!r} (dataloaders passed to fit() are "
                f"used as they are). Build it in train_dataloader() of the module or a datamodule from that attribute or "
                f"hyperparameter."
            )

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimal_batch_size": self.optimal_batch_size} if self._found else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("optimal_batch_size") is not None:
            self.optimal_batch_size, self._found = int(state_dict["optimal_batch_size"]), True

    # -- helpers ------------------------------------------------------------------------------------
    def _check_data_source(self, trainer: Trainer, pl_module: System) -> None:
        from fulmen.datamodule import DataModule
        from fulmen.system import System
        from fulmen.trainer._hooks import overrides

        dm = trainer.datamodule
        if (dm is not None and overrides(dm, "train_dataloader", DataModule)) or overrides(
            pl_module, "train_dataloader", System
        ):
            return
        raise DataError(
            f"BatchSizeFinder needs the train dataloader to be built from {self._batch_arg_name!r}: define "
            f"train_dataloader() on {type(pl_module).__name__} or on a datamodule (dataloaders passed to fit() cannot "
            f"be rebuilt with another batch size)."
        )

    def _saved_batch_size(self, trainer: Trainer) -> int | None:
        """This callback's ``optimal_batch_size`` in the checkpoint being resumed (its callback
        states are restored only after the dataloaders are built: read it from the file now)."""
        import torch

        path = os.fspath(trainer.ckpt_path) if trainer.ckpt_path is not None else ""
        if os.path.isdir(path):  # a sharded checkpoint: the callback states are in its meta file
            path = os.path.join(path, "meta.ckpt")
        try:  # memory-mapped: only the small entries read are loaded
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
        states = ckpt.get("callbacks") if isinstance(ckpt, dict) else None
        state = (states or {}).get(_state_key(self, trainer.callbacks))
        size = state.get("optimal_batch_size") if isinstance(state, dict) else None
        return int(size) if isinstance(size, int) else None


def _configure_model_now(pl_module: System, stage: str) -> None:
    """A module that builds layers in ``configure_model``: build them now (after its ``setup``, as
    the fit does), so that they are among the weights the search puts back. The search would
    otherwise build them in its first trial, after ``Tuner`` took its snapshot, and the fit would
    start from what the trials trained. The fit then skips ``configure_model`` (it runs once per
    module), as it does after any earlier run."""
    from fulmen.system import System
    from fulmen.trainer._hooks import overrides

    if not overrides(pl_module, "configure_model", System) or pl_module.__dict__.get("_model_configured"):
        return
    if overrides(pl_module, "setup", System):
        pl_module.setup(stage)
    pl_module.configure_model()
    pl_module.__dict__["_model_configured"] = True  # (the flag Trainer._setup_system sets)


def _state_key(callback: Callback, callbacks: list[Any]) -> str:
    """``callback``'s key among the checkpoint's callback states (as ``callback_states`` numbers them)."""
    seen: set[str] = set()
    for cb in callbacks:
        key, n = cb.state_key, 0
        while key in seen:
            n += 1
            key = f"{cb.state_key}#{n}"
        seen.add(key)
        if cb is callback:
            return key
    return callback.state_key


def _set_attr(pl_module: System, names: list[str], value: float) -> None:
    """Write ``value`` where ``Tuner.lr_find(update_attr=True)`` writes its suggestion (the first of
    ``names`` found, ``LRFindArgs.attr_names``)."""
    from fulmen.tuner.holders import attr_holders, set_on

    for name in names:
        holders = attr_holders(pl_module, None, name)
        if holders:
            set_on(holders, name, value)
            return
