"""The compatibility ``Trainer``: ``fulmen.Trainer`` with PyTorch Lightning's defaults.

Differences from ``fulmen.Trainer``:

- ``logger=True`` is a TensorBoardLogger (a CSVLogger when tensorboard is not installed) writing
  ``<default_root_dir>/lightning_logs/version_N``, as in Lightning; checkpoints go to
  ``lightning_logs/version_N/checkpoints``.
- Lightning's extra arguments are accepted only where their meaning is kept: ``benchmark`` sets
  ``torch.backends.cudnn.benchmark`` (None leaves it as it is), and ``plugins=None``,
  ``barebones=False``, ``enable_autolog_hparams=True``, ``model_registry=None`` (their defaults).
  Any other value, and any argument neither Lightning 2.x nor fulmen knows, raises ``FlagError``
  naming it.

``weights_only`` on ``fit``/``validate``/``test``/``predict`` and ``trainer.lightning_module`` come
from ``fulmen.Trainer`` itself.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from typing import Any

import torch

from fulmen.errors import FlagError
from fulmen.trainer.trainer import Trainer as _FulmenTrainer

# Lightning argument -> (the one value fulmen honours, what to do instead).
_DEFAULT_ONLY: dict[str, tuple[Any, str]] = {
    "plugins": (
        None,
        "fulmen has no plugins; pick precision with precision=..., the cluster with strategy=...",
    ),
    "barebones": (
        False,
        "fulmen has no barebones mode; turn off what costs time with enable_checkpointing=False, "
        "enable_progress_bar=False, enable_model_summary=False, logger=False",
    ),
    "enable_autolog_hparams": (
        True,
        "fulmen always sends the hyperparameters to the loggers; keep them out with "
        "self.save_hyperparameters(logger=False)",
    ),
    "model_registry": (None, "fulmen has no model registry; upload checkpoints yourself"),
}
_FULMEN_FLAGS = frozenset(inspect.signature(_FulmenTrainer.__init__).parameters) - {"self"}


class Trainer(_FulmenTrainer):
    """``fulmen.Trainer`` taking Lightning 2.x arguments and defaults (see the module docstring)."""

    def __init__(
        self,
        *,
        logger: Any = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        benchmark: bool | None = None,
        **flags: Any,
    ) -> None:
        for name, value in flags.items():
            if name in _DEFAULT_ONLY:
                default, advice = _DEFAULT_ONLY[name]
                if value is not default and value != default:
                    raise FlagError(
                        f"Trainer({name}={value!r}) is a Lightning argument fulmen.lightning does not support "
                        f"(only {name}={default!r}, its default): {advice}."
                    )
            elif name not in _FULMEN_FLAGS:
                raise FlagError(
                    f"Trainer({name}=...) is not an argument of Lightning 2.x's Trainer that fulmen.lightning "
                    "supports; see docs/migrating-from-lightning.md."
                )
        flags = {k: v for k, v in flags.items() if k not in _DEFAULT_ONLY}
        if benchmark is not None:
            if not isinstance(benchmark, bool):
                raise FlagError(f"Trainer(benchmark={benchmark!r}): expected True, False or None.")
            if benchmark and flags.get("deterministic"):
                raise FlagError(
                    "Trainer(benchmark=True, deterministic=True): cuDNN benchmarking is not deterministic; "
                    "drop one of the two."
                )
        root = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        if logger is True:
            logger = _default_logger(root)
        super().__init__(logger=logger, default_root_dir=root, **flags)
        if benchmark is not None:  # as Lightning: the global cuDNN setting, when the Trainer is built
            torch.backends.cudnn.benchmark = benchmark


def _default_logger(root: str) -> Any:
    if _tensorboard_available():
        from fulmen.lightning.loggers.tensorboard import TensorBoardLogger

        return TensorBoardLogger(root)
    from fulmen.lightning.loggers.csv_logs import CSVLogger

    return CSVLogger(root)


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None
