"""What the trainer is doing right now."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainerState:
    """``stage``: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or None between runs;
    ``status``: ``"initializing"``, ``"running"``, ``"finished"``, ``"interrupted"`` or ``"failed"``."""

    stage: str | None = None
    status: str = "initializing"

    @property
    def finished(self) -> bool:
        return self.status == "finished"
