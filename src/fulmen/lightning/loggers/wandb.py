"""``WandbLogger`` with Lightning's defaults: ``fulmen.WandbLogger`` with ``project="lightning_logs"``,
W&B's files under ``./wandb`` (``save_dir="."``; ``dir`` is used when ``save_dir`` keeps that
default), and Lightning's run folder for checkpoints and the run record:
``<save_dir>/<project>/<run id>/`` (``fulmen.WandbLogger`` has none)."""

from __future__ import annotations

import os

from fulmen.loggers.wandb import WandbLogger as _WandbLogger

__all__ = ["WandbLogger"]


class WandbLogger(_WandbLogger):
    default_project = "lightning_logs"
    default_save_dir = "."

    @property
    def log_dir(self) -> str | None:
        """``<save_dir>/<project>/<run id>``: where Lightning puts the checkpoints of a W&B run."""
        version = self.version
        return os.path.join(self.save_dir, self.name, version) if version is not None else None
