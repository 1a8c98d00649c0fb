"""``lightning.pytorch.tuner.lr_finder``: ``_LRFinder``, what ``Tuner.lr_find`` returns.

It is ``fulmen.tuner.LRFinder`` (``results``, ``plot()``, ...) with Lightning's constructor
``_LRFinder(mode, lr_min, lr_max, num_training)`` and Lightning's suggestion rule, so that
``lr_find(update_attr=True)`` picks the learning rate a Lightning run picks:

- fulmen's ``LRFinder.suggestion`` takes the steepest descent of the smoothed loss against
  log10(lr) (exponential mode), over a window of points, and gives no suggestion when a loss in
  range is NaN/inf;
- ``_LRFinder.suggestion`` leaves non-finite losses out and takes the steepest descent of the
  loss against the learning rate itself (``torch.gradient`` with the learning rates as spacing),
  point by point, in either mode.
"""

from __future__ import annotations

import torch

from fulmen.lightning.utilities.rank_zero import log
from fulmen.tuner import LRFinder

__all__ = ["_LRFinder"]


class _LRFinder(LRFinder):
    """The learning-rate range test's result with Lightning's names (``lr_min``, ``lr_max``) and
    suggestion rule (see the module docstring). ``results`` is ``{"lr": [...], "loss": [...]}``."""

    def __init__(
        self,
        mode: str,
        lr_min: float,
        lr_max: float,
        num_training: int,
        results: dict[str, list[float]] | None = None,
        diverged: bool = False,
    ) -> None:
        super().__init__(mode, lr_min, lr_max, num_training, results or {"lr": [], "loss": []}, diverged)
        #: Index into ``results`` of the last suggestion (None when there was none).
        self._optimal_idx: int | None = None

    @property
    def lr_min(self) -> float:
        return self.min_lr

    @property
    def lr_max(self) -> float:
        return self.max_lr

    def _suggestion_index(self, skip_begin: int, skip_end: int) -> int | None:
        losses = [float(v) for v in self.results["loss"]]
        lrs = [float(v) for v in self.results["lr"]]
        kept = [i for i in range(skip_begin, len(losses) - skip_end) if torch.isfinite(torch.tensor(losses[i]))]
        if len(kept) < 2:  # a gradient needs two points
            return None
        loss = torch.tensor([losses[i] for i in kept], dtype=torch.float64)
        lr = torch.tensor([lrs[i] for i in kept], dtype=torch.float64)
        gradient = torch.gradient(loss, spacing=(lr,))[0]
        return kept[int(torch.argmin(gradient))]

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the loss falls fastest against the learning rate, leaving out
        the first ``skip_begin`` and the last ``skip_end`` points and any NaN/inf loss. None (and
        an error logged) when fewer than two points remain."""
        self._optimal_idx = self._suggestion_index(skip_begin, skip_end)
        if self._optimal_idx is None:
            log.error(
                "Failed to compute suggestion for learning rate because there are not enough points: of the %d "
                "recorded, fewer than two finite losses remain after skipping %d at the start and %d at the end. "
                "Raise num_training (or the number of training batches), or lower skip_begin.",
                len(self.results["loss"]),
                skip_begin,
                skip_end,
            )
            return None
        return self.results["lr"][self._optimal_idx]

    def __repr__(self) -> str:
        i = self._suggestion_index(10, 1)
        return (
            f"_LRFinder(mode={self.mode!r}, steps={len(self.results['lr'])}/{self.num_training}, "
            f"diverged={self.diverged}, suggestion={None if i is None else self.results['lr'][i]!r})"
        )
