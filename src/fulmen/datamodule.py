"""``fulmen.DataModule``: the data side of an experiment, in one reusable class."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from fulmen._hparams import AttributeDict, collect_init_args, hparams_for_init

_LOADER_HOOKS = (
    ("Train dataloader", "train_dataloader"),
    ("Validation dataloader", "val_dataloader"),
    ("Test dataloader", "test_dataloader"),
    ("Predict dataloader", "predict_dataloader"),
)


class DataModule:
    """Downloads or prepares data, splits it, and hands out dataloaders.

    ``prepare_data`` runs once per machine (write files there, assign no state); ``setup(stage)``
    runs in every process with ``stage`` one of ``"fit"``, ``"validate"``, ``"test"``,
    ``"predict"``; ``teardown(stage)`` cleans up. The four ``*_dataloader`` methods return a
    DataLoader (or a list of them for validation, test and predict).
    """

    #: The Trainer running this datamodule (set when a run starts), else None.
    trainer: Any = None
    #: True: ``prepare_data`` runs on local rank 0 of every machine (for data on local disks);
    #: False: on global rank 0 only (a filesystem all machines share).
    prepare_data_per_node: bool = True
    #: Whether the loggers receive ``hparams`` (``save_hyperparameters(logger=False)`` turns it off).
    _log_hyperparams: bool = True

    def __init__(self) -> None:
        self._hparams: AttributeDict = AttributeDict()
        self.trainer = None

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]] | None = None,
        val_dataset: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]] | None = None,
        test_dataset: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]] | None = None,
        predict_dataset: Dataset[Any] | Sequence[Dataset[Any]] | Mapping[str, Dataset[Any]] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> Any:
        """A datamodule whose dataloaders are built from these datasets (each may also be a list
        or dict of datasets, giving a list or dict of loaders).

        Each ``*_dataloader()`` call makes new ``DataLoader(dataset, batch_size=batch_size,
        num_workers=num_workers)`` objects, shuffled for training (except an ``IterableDataset``),
        in order otherwise, with pinned memory when CUDA is available. ``batch_size`` and
        ``num_workers`` are also passed to ``cls.__init__`` when it takes them (or ``**kwargs``),
        with ``datamodule_kwargs``. Hooks whose dataset is None are left as the class defines them.
        """
        for what, given in (
            ("train_dataset", train_dataset),
            ("val_dataset", val_dataset),
            ("test_dataset", test_dataset),
            ("predict_dataset", predict_dataset),
        ):
            if given is not None:
                _check_datasets(f"{cls.__name__}.from_datasets({what}=...)", given)
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        special = {
            k: v
            for k, v in (("batch_size", batch_size), ("num_workers", num_workers))
            if takes_any or k in params
        }
        datamodule = cls(**datamodule_kwargs, **special)
        for hook, given, shuffle in (
            ("train_dataloader", train_dataset, True),
            ("val_dataloader", val_dataset, False),
            ("test_dataloader", test_dataset, False),
            ("predict_dataloader", predict_dataset, False),
        ):
            if given is not None:
                # A partial of a module-level function: the datamodule stays picklable (spawned
                # processes receive it) when its datasets are.
                loaders = functools.partial(
                    _loaders_for, given, shuffle=shuffle, batch_size=batch_size, num_workers=num_workers
                )
                setattr(datamodule, hook, loaders)
        return datamodule

    def __str__(self) -> str:
        """The dataloaders this datamodule gives now and their datasets' sizes, one line per stage:
        ``{Train dataloader: size=64}``, ``{Validation dataloader: 1. size=16 ; 2. size=NA}`` (NA:
        a dataset without a length), ``{Test dataloader: None}`` (none, or its hook fails: e.g.
        ``setup`` has not run yet)."""
        lines = []
        for label, hook in _LOADER_HOOKS:
            method: Callable[[], Any] | None = getattr(self, hook, None)
            try:
                loaders = method() if callable(method) else None
            except Exception:
                loaders = None
            lines.append(f"{{{label}: {_describe_loaders(loaders)}}}")
        return os.linesep.join(lines)

    @property
    def hparams(self) -> AttributeDict:
        """Hyperparameters captured by ``save_hyperparameters`` (attribute and item access)."""
        # A subclass whose __init__ forgets super().__init__() still has (empty) hparams.
        return self.__dict__.setdefault("_hparams", AttributeDict())

    @property
    def hparams_initial(self) -> AttributeDict:
        """A copy of ``hparams`` as they were right after ``save_hyperparameters``."""
        return AttributeDict(self.__dict__.get("_hparams_initial", {}))

    def save_hyperparameters(
        self, *args: Any, ignore: Sequence[str] | str | None = None, frame: Any = None, logger: bool = True
    ) -> None:
        """Record the constructor's arguments in ``self.hparams`` (see ``System.save_hyperparameters``);
        they go into checkpoints and, unless ``logger=False``, to the loggers with the system's."""
        if frame is None:
            frame = inspect.currentframe()
            frame = frame.f_back if frame is not None else None
        self._hparams = collect_init_args(self, args, ignore, frame)
        self._hparams_initial = AttributeDict(self._hparams)
        self._log_hyperparams = logger

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def train_dataloader(self) -> Any: ...
    def val_dataloader(self) -> Any: ...
    def test_dataloader(self) -> Any: ...
    def predict_dataloader(self) -> Any: ...

    def fingerprint(self) -> str | dict[str, str] | None:
        """What the data is, recorded in ``run.json`` under ``"data"`` and compared by ``fulmen
        reproduce`` before it trains: a fingerprint ``"sha256:<hex>"``, a dict of them (one per part
        of the data), or None (not declared: the default).

        Override it when the data is read from files, e.g. ``return fingerprint_files(self.data_dir)``
        with ``from fulmen.fingerprint import fingerprint_files`` (names, sizes and content of every
        file; files whose size and mtime are unchanged are not read again). Data held in memory as a ``TensorDataset``
        needs no declaration: fulmen fingerprints the train and validation datasets itself. Called
        once per fit, on the process that writes the record, after ``setup("fit")``."""
        return None

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
        kwargs = hparams_for_init(dict(saved or {}), overrides, cls, ckpt.get("datamodule_hparams_name"))
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
        state = ckpt.get("datamodule", ckpt.get(cls.__qualname__))  # (Lightning's files: under the class name)
        if isinstance(state, dict) and state:
            datamodule.load_state_dict(state)
        return datamodule



def _check_datasets(where: str, given: Any) -> None:
    """A Dataset, or a list/tuple/dict of them."""
    if isinstance(given, Dataset):
        return
    if isinstance(given, Mapping):
        items: list[Any] | None = list(given.values())
    else:
        items = list(given) if isinstance(given, (list, tuple)) else None
    if items is None or not all(isinstance(d, Dataset) for d in items):
        got = type(given).__name__ if items is None else ", ".join(type(d).__name__ for d in items)
        raise TypeError(
            f"{where}: expected a torch.utils.data.Dataset, or a list or dict of them, got {got}. A DataLoader "
            "already batches: return it from a *_dataloader() method of your datamodule instead."
        )


def _loaders_for(datasets: Any, *, shuffle: bool, batch_size: int, num_workers: int) -> Any:
    """``from_datasets``' dataloader hooks: a DataLoader per dataset, in the container given."""
    import torch

    if isinstance(datasets, Mapping):
        return {
            k: _loaders_for(v, shuffle=shuffle, batch_size=batch_size, num_workers=num_workers)
            for k, v in datasets.items()
        }
    if isinstance(datasets, (list, tuple)):
        return [_loaders_for(d, shuffle=shuffle, batch_size=batch_size, num_workers=num_workers) for d in datasets]
    return DataLoader(
        datasets,
        batch_size=batch_size,
        shuffle=shuffle and not isinstance(datasets, IterableDataset),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def _describe_loaders(loaders: Any) -> str:
    """``size=N`` for one dataloader, ``1. size=N ; 2. size=NA`` for several, ``None`` for none."""

    def one(loader: Any) -> str:
        dataset = getattr(loader, "dataset", None)
        return f"size={len(dataset)}" if isinstance(dataset, Sized) else "size=NA"

    if loaders is None:
        return "None"
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return " ; ".join(f"{i}. {one(x)}" for i, x in enumerate(loaders, start=1)) if loaders else "None"
    return one(loaders)
