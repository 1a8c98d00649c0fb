"""``lightning.pytorch.tuner``: ``Tuner`` with Lightning's signatures and defaults, on ``fulmen.Tuner``.

Differences from ``fulmen.Tuner``: ``lr_find(update_attr=True)`` by default (the suggestion is
written to the system's ``lr`` / ``learning_rate`` attribute or hyperparameter, as in Lightning);
``method`` must be ``"fit"`` (the only one both support) and ``dataloaders`` (for the other
methods) is refused.
"""

from __future__ import annotations

from typing import Any

from fulmen.tuner import Tuner as _Tuner

__all__ = ["Tuner"]


def _only_fit(call: str, method: str, dataloaders: Any) -> None:
    if method != "fit":
        raise ValueError(
            f"Tuner.{call}(method={method!r}): fulmen tunes with the training loop only; use method='fit'."
        )
    if dataloaders is not None:
        raise ValueError(
            f"Tuner.{call}(dataloaders=...): that argument is for method='validate'/'test'/'predict', which "
            "fulmen does not support; pass train_dataloaders (and val_dataloaders) or a datamodule."
        )


class Tuner(_Tuner):
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
        _only_fit("lr_find", method, dataloaders)
        return super().lr_find(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            min_lr=min_lr,
            max_lr=max_lr,
            num_training=num_training,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=update_attr,
            attr_name=attr_name,
        )

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
        _only_fit("scale_batch_size", method, dataloaders)
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
