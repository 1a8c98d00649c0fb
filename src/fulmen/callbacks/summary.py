"""A table of a model's submodules and parameter counts, and a callback that prints it.

``summarize`` only looks at the module (no Trainer), so it can be called on any model. Table
columns are listed in ``_COLUMNS``; more columns (shapes, FLOPs) can be added there later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from fulmen.callbacks.base import Callback

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


def human_count(n: int) -> str:
    """``999``, ``1.0 K``, ``8.3 K``, ``1.2 M``, ``3.4 B``, ``5.6 T``."""
    if abs(n) < 1000:
        return str(n)
    for scale, unit in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        # Pick the unit after rounding, so 999_960 reads "1.0 M" rather than "1000.0 K".
        if abs(round(n / scale, 1)) < 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e12:.1f} T"


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, (UninitializedParameter, UninitializedBuffer))


@dataclass(frozen=True)
class SummaryRow:
    """One submodule. ``params`` is ``None`` while the module has lazy (uninitialized) parameters."""

    name: str
    type: str
    params: int | None
    trainable: str  # "yes", "no", "partly", or "-" for a module without parameters


@dataclass(frozen=True)
class Summary:
    """Rows (one per submodule shown) and totals; ``str()`` renders the table.

    Sizes are in MB of 10**6 bytes: parameters and buffers at their own dtypes, each tensor
    counted once even when shared.
    """

    rows: list[SummaryRow] = field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0
    size_bytes: int = 0
    has_lazy: bool = False

    @property
    def total_params(self) -> int:
        return self.trainable_params + self.frozen_params

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def __str__(self) -> str:
        lines: list[str] = []
        if self.rows:
            table = [["", *(header for header, _ in _COLUMNS)]]
            table += [[str(i), *(cell(row) for _, cell in _COLUMNS)] for i, row in enumerate(self.rows)]
            widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
            text = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
            rule = "-" * max(len(t) for t in text)
            lines += [text[0], rule, *text[1:], rule]
        lines += [
            f"{human_count(self.trainable_params):<10}Trainable params",
            f"{human_count(self.frozen_params):<10}Frozen params",
            f"{human_count(self.total_params):<10}Total params",
            f"{self.size_mb:<10.3f}Total size (MB)",
        ]
        if self.has_lazy:
            lines.append("Some parameters are not initialized yet (lazy modules): shown as ?, not counted.")
        return "\n".join(lines)


# (header, cell) for each column after the row index.
_COLUMNS: tuple[tuple[str, Callable[[SummaryRow], str]], ...] = (
    ("Name", lambda r: r.name),
    ("Type", lambda r: r.type),
    ("Params", lambda r: "?" if r.params is None else human_count(r.params)),
    ("Trainable", lambda r: r.trainable),
)


def _row(name: str, module: torch.nn.Module) -> SummaryRow:
    params = list(module.parameters())  # each shared tensor once within this module
    if not params:
        mode = "-"
    else:
        n_trainable = sum(p.requires_grad for p in params)
        mode = "yes" if n_trainable == len(params) else "no" if n_trainable == 0 else "partly"
    count = None if any(_is_lazy(p) for p in params) else sum(p.numel() for p in params)
    return SummaryRow(name, type(module).__name__, count, mode)


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if not _is_lazy(t))


def summarize(module: torch.nn.Module, max_depth: int = 1) -> Summary:
    """Summarize ``module``: one row per submodule down to ``max_depth`` levels, and totals.

    ``max_depth=1`` lists the direct children, deeper levels get dotted names (``encoder.0``),
    ``0`` gives the totals only and ``-1`` lists every submodule. A submodule reached by two
    paths is listed once; parameters shared between modules are counted once in the totals.
    """
    if max_depth < -1:
        raise ValueError(f"summarize(max_depth={max_depth!r}): expected -1 (all levels), 0 or more.")
    rows = [
        _row(name, sub)
        for name, sub in module.named_modules()
        if name and (max_depth == -1 or name.count(".") < max_depth)
    ]
    params = list(module.parameters())
    ready = [p for p in params if not _is_lazy(p)]
    return Summary(
        rows=rows,
        trainable_params=sum(p.numel() for p in ready if p.requires_grad),
        frozen_params=sum(p.numel() for p in ready if not p.requires_grad),
        size_bytes=_nbytes(ready) + _nbytes(module.buffers()),
        has_lazy=len(ready) < len(params),
    )


class ModelSummary(Callback):
    """Print ``summarize(system, max_depth)`` to stdout when fitting starts (rank zero only)."""

    def __init__(self, max_depth: int = 1) -> None:
        if max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected -1 (all levels), 0 or more.")
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, system: System) -> None:
        if trainer.is_global_zero:
            print(summarize(system, self.max_depth))
