"""``fulmen.DataModule``: the data side of an experiment, in one reusable class."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

from fulmen._hparams import AttributeDict, collect_init_args, hparams_for_init


class DataModule:
    """Downloads or prepares data, splits it, and hands out dataloaders.

    ``prepare_data`` runs once per machine (write files there, assign no state); ``setup(stage)``
    runs in every process with ``stage`` one of ``"fit"``, ``"validate"``, ``"test"``,
    ``"predict"``; ``teardown(stage)`` cleans up. The four ``*_dataloader`` methods return a
    DataLoader (or a list of them for validation, test and predict).
    """

    #: The Trainer running this datamodule (set when a run starts), else None.
    trainer: Any = None

    def __init__(self) -> None:
        self._hparams: AttributeDict = AttributeDict()
        self.trainer = None

    @property
    def hparams(self) -> AttributeDict:
        """Hyperparameters captured by ``save_hyperparameters`` (attribute and item access)."""
        # A subclass whose __init__ forgets super().__init__() still has (empty) hparams.
        return self.__dict__.setdefault("_hparams", AttributeDict())

    def save_hyperparameters(self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None) -> None:
        """Record the constructor's arguments in ``self.hparams`` (see ``System.save_hyperparameters``)."""
        if frame is None:
            frame = inspect.currentframe()
            frame = frame.f_back if frame is not None else None
        self._hparams = collect_init_args(self, args, ignore, frame)

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def train_dataloader(self) -> Any: ...
    def val_dataloader(self) -> Any: ...
    def test_dataloader(self) -> Any: ...
    def predict_dataloader(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (nothing by default)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str | os.PathLike[str], *, weights_only: bool | None = None, **overrides: Any
    ) -> Any:
        """Build the datamodule from a checkpoint's ``datamodule_hyper_parameters`` (what its
        ``save_hyperparameters`` recorded) and restore its ``state_dict`` when the checkpoint has one.

        ``overrides`` replace saved hyperparameters or supply those that could not be saved. The file
        is read with ``weights_only=True`` and its digest checked, as for ``System.load_from_checkpoint``;
        ``weights_only`` (as in Lightning) may be None or True, any other value raises ``ValueError``.
        """
        from fulmen.checkpoint.io import check_weights_only, load_checkpoint

        check_weights_only(f"{cls.__name__}.load_from_checkpoint", weights_only)
        ckpt = load_checkpoint(checkpoint_path)
        saved = ckpt.get("datamodule_hyper_parameters")
        kwargs = hparams_for_init(dict(saved or {}), overrides, cls)
        try:
            datamodule = cls(**kwargs)
        except TypeError as err:
            why = (
                "the checkpoint holds no datamodule hyperparameters (the run had no datamodule, or it did not "
                "call self.save_hyperparameters() in __init__)"
                if not saved
                else f"from the saved hyperparameters {sorted(saved)}"
            )
            raise TypeError(
                f"{cls.__name__}.load_from_checkpoint({os.fspath(checkpoint_path)!r}): could not build "
                f"{cls.__name__}(**{sorted(kwargs)}): {err}; {why}. Pass the missing arguments as keyword "
                f"arguments here."
            ) from err
        state = ckpt.get("datamodule")
        if isinstance(state, dict) and state:
            datamodule.load_state_dict(state)
        return datamodule

