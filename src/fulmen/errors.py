"""Exception and warning types.

fulmen raises built-in exception types (or small subclasses of them) so that ``except ValueError``
keeps working, and every message names the hook or flag, what was expected, what was got, and
what to do about it.
"""

from __future__ import annotations

import warnings


class MisconfigurationError(Exception):
    """Base of every error fulmen raises for a setting it cannot use: a Trainer flag, a callback's
    or logger's argument, what a hook returned, how ``self.log`` was called, a missing metric.

    Each concrete type also derives from the built-in type that describes it (``ValueError``,
    ``TypeError``, ``KeyError``), so both ``except ValueError`` and ``except
    MisconfigurationError`` catch it. ``fulmen.lightning.utilities.exceptions.MisconfigurationException``
    is this class, so Lightning code that catches Lightning's configuration errors catches fulmen's.
    """


class ArgumentError(MisconfigurationError, ValueError):
    """An argument of a fulmen class (a callback, a logger, the tuner) has a value it cannot use."""


class FlagError(MisconfigurationError, ValueError):
    """A Trainer flag (or a combination of flags) has a value fulmen cannot use."""


class HookReturnError(MisconfigurationError, TypeError):
    """A hook of the system returned something fulmen cannot use."""


class LoggingError(MisconfigurationError, ValueError):
    """``self.log`` was called with a value or settings fulmen cannot use."""


class DataError(MisconfigurationError, ValueError):
    """A dataloader is missing, empty, or cannot be used as asked."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteGradientError(NonFiniteLossError):
    """A gradient became NaN or infinite (raised by ``fulmen.callbacks.NonFiniteGuard``).

    A subclass of ``NonFiniteLossError``, so ``except NonFiniteLossError`` catches every way a
    run can stop on NaN/inf, whether the loss or only a gradient went non-finite.
    """


class CheckpointIntegrityError(ValueError):
    """A checkpoint's content does not match the digest stored in it (the file changed after it was written)."""


class FulmenWarning(UserWarning):
    """A warning that fulmen prints once, with what to do about it."""


class PossibleUserWarning(FulmenWarning):
    """A setting that is allowed but probably not what was meant (PyTorch Lightning's name for
    such warnings; ``fulmen.lightning.utilities.warnings.PossibleUserWarning`` is this class)."""


_warned: set[str] = set()


def warn_once(message: str, category: type[Warning] = FulmenWarning, key: str | None = None) -> None:
    """Warn with ``message`` the first time it (or ``key``) is seen in this process."""
    k = key if key is not None else message
    if k in _warned:
        return
    _warned.add(k)
    warnings.warn(message, category, stacklevel=3)


def _reset_warn_once() -> None:
    """Forget which warnings were printed (for tests)."""
    _warned.clear()
