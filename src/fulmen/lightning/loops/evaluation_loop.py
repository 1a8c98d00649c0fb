"""``lightning.pytorch.loops.evaluation_loop``: ``_EvaluationLoop``, of which fulmen.lightning
provides only ``_print_results`` (fulmen's results table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fulmen.lightning._internal import UnprovidedInternal
from fulmen.lightning.utilities.imports import _RICH_AVAILABLE

__all__ = ["_RICH_AVAILABLE", "_EvaluationLoop"]


class _Text(str):
    """A value the table cannot show as a number, shown as written."""

    def __format__(self, spec: str) -> str:
        return str(self)


def _cell(value: Any) -> Any:
    if hasattr(value, "numel") and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return _Text(value)


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``outer:inner`` keys; a ``/dataloader_idx_N`` suffix left out (the column
    says which dataloader)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}:"))
            continue
        head, sep, tail = name.rpartition("/dataloader_idx_")
        out[head if sep and tail.isdigit() else name] = _cell(value)
    return out


class _EvaluationLoop:
    """Only ``_print_results`` is provided; fulmen's evaluation loop is not an object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnprovidedInternal(
            "lightning.pytorch.loops._EvaluationLoop is a Lightning internal that fulmen.lightning does not provide: "
            "run evaluation with trainer.validate(...) / trainer.test(...), whose results it returns and prints."
        )

    @staticmethod
    def _print_results(results: Sequence[Mapping[str, Any]], stage: str) -> None:
        """Print ``results`` (one dict of metrics per dataloader) as the table ``trainer.validate``
        / ``trainer.test`` print; nothing for no metrics."""
        from fulmen.trainer.trainer import _results_table

        table = _results_table(str(stage), [_flatten(r) for r in results])
        if table:
            print(table)
