"""``TensorBoardLogger`` with Lightning's signature: ``fulmen.TensorBoardLogger`` writing
``save_dir/lightning_logs/version_N`` by default; ``experiment`` is the ``SummaryWriter``.

Lightning's layout: ``log_dir`` is ``save_dir/name/version[/sub_dir]`` (``~`` and ``$VARS``
expanded), built from the ``name`` and ``version`` properties (a subclass may override them); the
event files and ``hparams.yaml`` go there. ``log_graph=True`` traces the module's
``example_input_array``. With ``default_hp_metric=True`` (Lightning's default),
``log_hyperparams`` without metrics logs Lightning's placeholder scalar ``hp_metric = -1`` (a
number given as ``metrics`` is logged as ``hp_metric``), so the event files hold the same tags as
Lightning's. (``fulmen.TensorBoardLogger`` never writes the placeholder.) As in Lightning,
``save()`` (and a successful ``finalize``) writes ``hparams.yaml`` into an existing ``log_dir``
that has none yet, also when no hyperparameters were logged (``{}``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from fulmen.lightning.loggers._prefix import prefixed
from fulmen.loggers._yaml import write_yaml_atomic
from fulmen.loggers.tensorboard import TensorBoardLogger as _TensorBoardLogger

__all__ = ["TensorBoardLogger"]

#: Whether the ``tensorboard`` package (behind ``torch.utils.tensorboard``) is installed.
_TENSORBOARD_AVAILABLE: bool = importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger(_TensorBoardLogger):
    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **writer_kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir, name=name or "", version=version, log_graph=log_graph, sub_dir=sub_dir, **writer_kwargs
        )
        self._prefix = prefix
        self._default_hp_metric = default_hp_metric

    @property
    def log_dir(self) -> str:
        """``save_dir/name/version`` (``version_N`` for an int), then ``sub_dir`` when given,
        with ``~`` and environment variables expanded."""
        folder = self.run_dir
        return os.path.join(folder, self._sub_dir) if self._sub_dir else folder

    @property
    def run_dir(self) -> str:
        """``log_dir`` without ``sub_dir``: checkpoints go to ``run_dir/checkpoints``, as in Lightning."""
        version = self.version
        folder = os.path.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")
        return os.path.expanduser(os.path.expandvars(folder))

    @property
    def _events_dir(self) -> str:
        return self.log_dir  # sub_dir is part of log_dir here

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(prefixed(self._prefix, metrics), step)

    def log_hyperparams(  # Lightning's: metrics may also be one number
        self, params: Any = None, metrics: Mapping[str, Any] | float | None = None, step: int | None = None
    ) -> None:
        if metrics is None:
            placeholder = {"hp_metric": -1} if self._default_hp_metric else None
            super().log_hyperparams(params)
            if placeholder is not None:
                self.log_metrics(placeholder, step)
            return
        if not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        super().log_hyperparams(params, metrics, step)

    def save(self) -> None:
        super().save()
        path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(self.log_dir) and not os.path.isfile(path):
            write_yaml_atomic(path, self.hparams)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success":
            self.save()
