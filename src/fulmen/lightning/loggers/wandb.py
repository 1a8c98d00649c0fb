"""``WandbLogger`` with Lightning's defaults: ``fulmen.WandbLogger`` with ``project="lightning_logs"``,
W&B's files under ``./wandb`` (``save_dir="."``), and Lightning's run folder for checkpoints and
the run record: ``<save_dir>/<project>/<run id>/`` (``fulmen.WandbLogger`` has none)."""

from __future__ import annotations

import os
from typing import Any, Literal

from fulmen.loggers.wandb import WandbLogger as _WandbLogger

__all__ = ["WandbLogger"]


class WandbLogger(_WandbLogger):
    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | Literal["all"] = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if dir is not None and os.fspath(save_dir) == ".":
            save_dir = dir  # Lightning: ``dir`` is used when ``save_dir`` keeps its default
        super().__init__(
            name=name,
            save_dir=save_dir,
            version=version,
            offline=offline,
            id=id,
            anonymous=anonymous,
            project=project if project is not None else "lightning_logs",
            log_model=log_model,
            experiment=experiment,
            prefix=prefix,
            checkpoint_name=checkpoint_name,
            add_file_policy=add_file_policy,
            **kwargs,
        )

    @property
    def log_dir(self) -> str | None:
        """``<save_dir>/<project>/<run id>``: where Lightning puts the checkpoints of a W&B run."""
        version = self.version
        return os.path.join(self.save_dir, self.name, version) if version is not None else None
