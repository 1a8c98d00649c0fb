"""``lightning.pytorch.utilities.warnings``: ``PossibleUserWarning``, the category of the warnings
fulmen.lightning gives where Lightning gives one of its own (e.g. ``max_epochs`` not set), so
``warnings.filterwarnings("ignore", category=PossibleUserWarning)`` works as with Lightning."""

from __future__ import annotations

from fulmen.errors import PossibleUserWarning

__all__ = ["PossibleUserWarning"]
