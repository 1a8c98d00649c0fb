"""``lightning.pytorch.plugins``: the one plugin fulmen takes, ``AsyncCheckpointIO``.

``Trainer(plugins=[AsyncCheckpointIO()])`` writes checkpoints in the background, as in Lightning,
but with fulmen's guarantees kept (atomic, fsynced, digested and audited files; ``last.ckpt`` and
top-k deletions only after the new file is on disk; ``fit`` ends after the pending writes; see
``fulmen.checkpoint.background``). Precision and cluster plugins are Trainer flags in fulmen
(``precision=...``, ``strategy=...``): passing one raises ``FlagError`` saying so.
"""

from __future__ import annotations

from typing import Any

from fulmen.checkpoint.background import AsyncCheckpointIO as _AsyncCheckpointIO
from fulmen.checkpoint.background import CheckpointIO

__all__ = ["AsyncCheckpointIO", "CheckpointIO"]


class AsyncCheckpointIO(_AsyncCheckpointIO):
    """Lightning's ``AsyncCheckpointIO(checkpoint_io=None)``: checkpoints written in a background
    thread. Wrapping another checkpoint IO is not supported: fulmen writes every file itself
    (digest, atomic rename, audit log)."""

    def __init__(self, checkpoint_io: Any = None) -> None:
        if checkpoint_io is not None:
            raise ValueError(
                f"AsyncCheckpointIO(checkpoint_io={type(checkpoint_io).__name__}(...)): fulmen.lightning writes every "
                f"checkpoint file itself (content digest, atomic rename, audit log), so it cannot wrap another "
                f"CheckpointIO. Use AsyncCheckpointIO() alone."
            )
        super().__init__()
