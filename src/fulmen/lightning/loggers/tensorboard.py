"""``TensorBoardLogger`` with Lightning's signature: ``fulmen.TensorBoardLogger`` writing
``save_dir/lightning_logs/version_N`` by default; ``experiment`` is the ``SummaryWriter``.

``log_graph=True`` traces the module's ``example_input_array`` (as in Lightning); ``sub_dir`` holds
the event files. ``default_hp_metric`` is accepted, but fulmen never writes the placeholder
``hp_metric`` scalar (as with ``default_hp_metric=False``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fulmen.lightning.loggers._prefix import prefixed
from fulmen.loggers.tensorboard import TensorBoardLogger as _TensorBoardLogger

__all__ = ["TensorBoardLogger"]


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

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        super().log_metrics(prefixed(self._prefix, metrics), step)
