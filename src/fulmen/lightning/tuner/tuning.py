"""``lightning.pytorch.tuner.tuning``: ``Tuner`` with Lightning's signatures and defaults, on ``fulmen.Tuner``.

Differences from ``fulmen.Tuner``, all as in Lightning:

- ``lr_find(update_attr=True)`` by default (the suggestion is written to the system's ``lr`` /
  ``learning_rate`` attribute or hyperparameter); it returns a ``_LRFinder``
  (``fulmen.lightning.tuner.lr_finder``), whose suggestion follows Lightning's rule.
- ``lr_find`` refuses a system with several optimizers, and takes ``min_lr > max_lr`` (the
  learning rate then falls during the search; a warning says so).
- With ``Trainer(fast_dev_run=...)`` both searches are skipped with a warning and return None.
- ``method`` must be ``"fit"`` (the only one both support) and ``dataloaders`` (for the other
  methods) is refused.
"""

from __future__ import annotations

from typing import Any

from fulmen.errors import warn_once
from fulmen.lightning.tuner.lr_finder import _LRFinder
from fulmen.lightning.utilities.rank_zero import rank_zero_warn
from fulmen.tuner import LRFindArgs
from fulmen.tuner import Tuner as _Tuner

__all__ = ["Tuner"]


def _skipped(trainer: Any, call: str, method: str, dataloaders: Any, what: str) -> bool:
    """Check the arguments Lightning has and fulmen does not support; True when ``fast_dev_run``
    skips the search (with Lightning's warning)."""
    if method != "fit":
        raise ValueError(
            f"Tuner.{call}(method={method!r}): fulmen tunes with the training loop only; use method='fit'."
        )
    if dataloaders is not None:
        raise ValueError(
            f"Tuner.{call}(dataloaders=...): that argument is for method='validate'/'test'/'predict', which "
            "fulmen does not support; pass train_dataloaders (and val_dataloaders) or a datamodule."
        )
    if trainer.fast_dev_run:
        rank_zero_warn(f"Skipping {what} since `fast_dev_run` is enabled.")
        return True
    return False


class Tuner(_Tuner):
    _lr_find_single_optimizer = True

    def lr_find(  # type: ignore[override]
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> Any:
        if _skipped(self.trainer, "lr_find", method, dataloaders, "learning rate finder"):
            return None
        return self._lr_find(model, train_dataloaders, datamodule, LRFindArgs.of(locals()))

    def scale_batch_size(  # type: ignore[override]
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
    ) -> int | None:
        if _skipped(self.trainer, "scale_batch_size", method, dataloaders, "batch size scaler"):
            return None
        return super().scale_batch_size(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            batch_arg_name=batch_arg_name,
        )

    def _check_lr_range(self, min_lr: Any, max_lr: Any) -> None:
        if not (isinstance(min_lr, (int, float)) and isinstance(max_lr, (int, float)) and min_lr > 0 and max_lr > 0):
            raise ValueError(f"lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}): expected two learning rates > 0.")
        if min_lr >= max_lr:
            warn_once(
                f"lr_find(min_lr={min_lr!r}, max_lr={max_lr!r}): min_lr is not below max_lr, so the learning rate "
                f"{'falls' if min_lr > max_lr else 'stays the same'} during the search (Lightning runs it this way "
                f"too), so the suggestion does not come from a rising learning rate. Swap the two to search upwards.",
                key=f"lr-find-range-{min_lr}-{max_lr}",
            )

    def _lr_finder(
        self, mode: str, min_lr: float, max_lr: float, num_training: int, results: dict[str, list[float]], diverged: bool
    ) -> _LRFinder:
        return _LRFinder(mode, min_lr, max_lr, num_training, results, diverged)
