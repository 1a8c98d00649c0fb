"""Where fulmen's core and PyTorch Lightning deliberately differ, as one set of choices.

``fulmen.Trainer`` runs with ``FULMEN_RULES``: stricter where Lightning silently loses or
mis-records a result (it raises, naming the flag or hook). ``fulmen.lightning.Trainer`` runs with
the rules in ``fulmen.lightning._rules`` (Lightning's behaviour, with a warning once where a
result could be lost). The rules are read when a run is set up (or once per epoch), never per
step: each loop variant is chosen before the loop starts.

Each field says what it decides; its default is fulmen's behaviour. docs/migrating-from-lightning.md
lists the differences for users.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopRules:
    """Behaviour choices fixed per Trainer class (see the module docstring)."""

    #: Lightning's semantics in general (names, defaults, warnings instead of errors where
    #: Lightning accepts an input). Specific choices below refine it.
    lightning: bool = False


FULMEN_RULES = LoopRules()
