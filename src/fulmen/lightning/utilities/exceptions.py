"""``lightning.pytorch.utilities.exceptions``: Lightning's exception names.

``MisconfigurationException`` is ``fulmen.errors.MisconfigurationError``, the base of every error
fulmen raises for a setting it cannot use (``FlagError``, ``ArgumentError``, ``HookReturnError``,
``LoggingError``, ``DataError``, ``MissingMetricError``), so ``except MisconfigurationException``
in Lightning code catches them while fulmen keeps its more specific types and messages.
"""

from __future__ import annotations

from fulmen.errors import MisconfigurationError as MisconfigurationException

__all__ = ["MisconfigurationException"]
