"""``RichModelSummary``: fulmen's ``ModelSummary`` under Lightning's name
(``lightning.pytorch.callbacks.rich_model_summary``).

fulmen prints its own plain-text table (rich is not needed). Lightning's ``**summarize_kwargs``
only style the rich table (``header_style``, ``title_justify``, ...): they are accepted and a
one-time note says they are not used.
"""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.summary import ModelSummary

__all__ = ["RichModelSummary"]

_noted = False


class RichModelSummary(ModelSummary):
    """``RichModelSummary(max_depth=1, **summarize_kwargs)``: fulmen's ``ModelSummary(max_depth)``,
    printed when fitting starts (see the module docstring)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        global _noted
        super().__init__(max_depth=max_depth)
        self.summarize_kwargs = summarize_kwargs
        if summarize_kwargs and not _noted:
            from fulmen.lightning.utilities.rank_zero import rank_zero_info

            _noted = True
            rank_zero_info(
                f"RichModelSummary: fulmen prints a plain-text summary; {', '.join(sorted(summarize_kwargs))} "
                "(rich styling) not used."
            )
