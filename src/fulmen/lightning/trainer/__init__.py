"""``lightning.pytorch.trainer``: the compatibility ``Trainer`` (see ``fulmen.lightning._trainer``);
``.states`` holds ``TrainerFn``, ``TrainerStatus`` and ``RunningStage``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Trainer"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from fulmen.lightning._trainer import Trainer

        return Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from fulmen.lightning._trainer import Trainer
