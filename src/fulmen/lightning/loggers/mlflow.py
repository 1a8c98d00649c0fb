"""``MLFlowLogger`` with Lightning's signature, on ``fulmen.MLFlowLogger``.

``log_model``: False logs no checkpoints, True the checkpoints the ``ModelCheckpoint`` callbacks
keep (top k and last) when training ends, ``"all"`` also every checkpoint as it is written.
``synchronous`` is refused. Without ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) runs go to ``save_dir``
(``./mlruns``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from fulmen.lightning.loggers._prefix import prefixed
from fulmen.loggers.mlflow import MLFlowLogger as _MLFlowLogger

__all__ = ["MLFlowLogger"]


class MLFlowLogger(_MLFlowLogger):
    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if log_model not in (True, False, "all"):
            raise ValueError(f"MLFlowLogger(log_model={log_model!r}): expected True, False or 'all'.")
        if synchronous is not None:
            raise ValueError("MLFlowLogger(synchronous=...): not supported by fulmen; leave it None.")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            save_dir=None if tracking_uri else save_dir,
            tags=tags,
            run_id=run_id,
            log_checkpoints="all" if log_model else False,
            artifact_location=artifact_location,
        )
        # Lightning's True: the checkpoints kept (top k and last) when training ends; "all": also
        # each one as it is written.
        self._upload_each_save = log_model == "all"
        self._prefix = prefix

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        super().log_metrics(prefixed(self._prefix, metrics), step)
