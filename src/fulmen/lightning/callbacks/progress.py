"""``TQDMProgressBar`` and ``RichProgressBar``: fulmen's ``ProgressBar`` taking Lightning's arguments.

Lightning's ``refresh_rate`` counts batches; fulmen redraws a terminal bar by time (every 0.2 s)
and writes log-file lines every ``print_every_n_steps`` batches, so ``refresh_rate=N`` becomes
``print_every_n_steps=N``. ``refresh_rate=0`` (no bar) is ``Trainer(enable_progress_bar=False)``.
Rich's ``theme`` and ``console_kwargs`` style a rich display fulmen does not draw: they are
accepted and a one-time note says so.
"""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.progress import ProgressBar

_noted = False


def _print_every(cls: str, refresh_rate: int, process_position: int, leave: bool) -> int:
    if not isinstance(refresh_rate, int) or refresh_rate < 0:
        raise ValueError(f"{cls}(refresh_rate={refresh_rate!r}): expected an int >= 1 (batches).")
    if refresh_rate == 0:
        raise ValueError(f"{cls}(refresh_rate=0) turns the bar off: use Trainer(enable_progress_bar=False).")
    if process_position != 0:
        raise ValueError(
            f"{cls}(process_position={process_position!r}): fulmen draws one bar per run (only 0)."
        )
    if leave:
        raise ValueError(
            f"{cls}(leave=True): fulmen's training bar is replaced each epoch (only leave=False)."
        )
    return refresh_rate


def _with_version(trainer: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """Lightning's bars also show the first logger's version as ``v_num`` (a string's last 4
    characters), first."""
    version = trainer.loggers[0].version if trainer.loggers else None
    if version is None or version == "":
        return metrics
    return {"v_num": version[-4:] if isinstance(version, str) else version, **metrics}


class TQDMProgressBar(ProgressBar):
    """``TQDMProgressBar(refresh_rate=1, process_position=0, leave=False)`` (see the module docstring)."""

    def get_metrics(self, trainer: Any, system: Any) -> dict[str, Any]:
        """``trainer.progress_bar_metrics`` and, with a logger, its version as ``v_num``."""
        return _with_version(trainer, super().get_metrics(trainer, system))

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(
            print_every_n_steps=_print_every(type(self).__name__, refresh_rate, process_position, leave)
        )


class RichProgressBar(ProgressBar):
    """``RichProgressBar(refresh_rate=1, leave=False, theme=None, console_kwargs=None)`` drawn as fulmen's
    ``ProgressBar`` (see the module docstring)."""

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = False,
        theme: Any = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        global _noted
        super().__init__(print_every_n_steps=_print_every(type(self).__name__, refresh_rate, 0, leave))
        if (theme is not None or console_kwargs) and not _noted:
            from fulmen.lightning.utilities.rank_zero import rank_zero_info

            _noted = True
            rank_zero_info("RichProgressBar: fulmen draws a tqdm bar; theme and console_kwargs are not used.")

    def get_metrics(self, trainer: Any, system: Any) -> dict[str, Any]:
        """``trainer.progress_bar_metrics`` and, with a logger, its version as ``v_num``."""
        return _with_version(trainer, super().get_metrics(trainer, system))
