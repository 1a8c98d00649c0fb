"""``ModelCheckpoint``'s file-name templates: ``"{epoch}-{val_loss:.2f}"`` filled from the logged
metrics into ``epoch=3-val_loss=0.12.ckpt``.

A template is ``str.format`` text whose fields name metrics (``{epoch}``, ``{step}``, any logged
name, ``/`` included: ``{val/loss}``), each with an optional conversion (``!r``, ``!s``, ``!a``)
and format spec (``:.2f``). Positional fields (``{}``, ``{0}``) and nested specs (``{x:{w}}``)
are refused when the callback is built. ``Naming`` holds the parts a subclass or an instance may
change (``CHECKPOINT_JOIN_CHAR``, ``CHECKPOINT_EQUALS_CHAR``, ``FILE_EXTENSION``,
``auto_insert_metric_name``).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fulmen.callbacks._monitor import did_you_mean
from fulmen.errors import ArgumentError, warn_once

_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}
_Field = tuple[str, str | None, str | None, str | None]  # (literal text, field name, format spec, conversion)


@dataclass(frozen=True)
class Naming:
    """How a filled template becomes a file name: ``join`` before ``{step}`` in the default
    template and before ``v<N>``, ``equals`` between a metric's name and its value (with
    ``auto_insert``), ``extension`` at the end; ``missing_as_zero``: a metric that was not logged
    is written as 0 with a warning (Lightning's rule) instead of raising."""

    join: str = "-"
    equals: str = "="
    extension: str = ".ckpt"
    auto_insert: bool = True
    missing_as_zero: bool = False


@functools.lru_cache(maxsize=64)
def _parse(template: str) -> tuple[_Field, ...]:
    return tuple(string.Formatter().parse(template))


def checked_template(template: str, label: str) -> tuple[_Field, ...]:
    """The template's parts; ``ArgumentError`` (a ``ValueError``) naming ``label`` when it is not a usable template."""
    try:
        parts = _parse(template)
    except ValueError as err:
        raise ArgumentError(
            f"ModelCheckpoint({label}={template!r}): not a valid name template ({err}); expected text with "
            f"fields such as '{{epoch}}-{{val_loss:.2f}}' (write '{{{{' and '}}}}' for literal braces)."
        ) from err
    for _literal, field, spec, _conversion in parts:
        if field is None:
            continue
        if not field or field.isdigit():
            raise ArgumentError(
                f"ModelCheckpoint({label}={template!r}): every field must name a metric, such as '{{epoch}}' or "
                f"'{{val_loss:.2f}}'; got the positional field '{{{field}}}'."
            )
        if spec and "{" in spec:
            raise ArgumentError(
                f"ModelCheckpoint({label}={template!r}): nested fields in a format spec ('{spec}') are not "
                f"supported; write the spec out, e.g. '{{val_loss:.3f}}'."
            )
    return parts


def render(template: str | None, metrics: Mapping[str, Any], ver: int | None, label: str, naming: Naming) -> str:
    """The file name (no folder) for ``template`` (None or "": ``{epoch}<join>{step}``) filled from
    ``metrics``, ``<join>v<ver>`` appended when ``ver`` is given; ``label`` names the template in errors."""
    if not template:
        template = "{epoch}" + naming.join + "{step}"
    parts: list[str] = []
    for literal, field, spec, conversion in checked_template(template, label):
        parts.append(literal)
        if field is None:
            continue
        if field not in metrics and naming.missing_as_zero:
            warn_once(
                f"ModelCheckpoint({label}={template!r}) names the metric {field!r}, which was not logged: as in "
                f"Lightning it is written as 0, so the file name does not tell this checkpoint's {field}. Log "
                f"it with self.log({field!r}, value) before this save, or remove it from the template.",
                key=f"model-checkpoint-name-missing-{label}-{field}",
            )
            metrics = {**metrics, field: 0}
        if field not in metrics:
            names = sorted(metrics)
            raise RuntimeError(
                f"ModelCheckpoint({label}={template!r}) needs the metric {field!r} to name the checkpoint, but it "
                f"was not logged; available metrics: {names}.{did_you_mean(field, names)} Log it with "
                f"self.log({field!r}, value) before this save (a validation metric exists only after the first "
                f"validation; save_on_train_epoch_end=False saves after validation), or remove it from the template."
            )
        text = _formatted(metrics[field], field, spec, conversion, f"ModelCheckpoint({label}={template!r})")
        if naming.auto_insert:
            text = field.replace("/", "_") + naming.equals + text
        parts.append(text)
    name = "".join(parts)
    if ver is not None:
        name = f"{name}{naming.join}v{ver}"
    return name + naming.extension


def _formatted(value: Any, field: str, spec: str | None, conversion: str | None, where: str) -> str:
    """One field's text: the metric as a Python number (one host read for a tensor), converted and formatted."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise RuntimeError(
                f"{where}: the metric {field!r} has shape {tuple(value.shape)}; expected a single number. Log a scalar."
            )
        value = value.item()
    if conversion:
        value = _CONVERSIONS[conversion](value)
    try:
        return format(value, spec or "")
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: formatting {field!r} = {value!r} with the format spec {spec!r} failed ({err}). Use a spec "
            f"that fits a {type(value).__name__}, e.g. '.4f' for a float."
        ) from err


def name_pattern(template: str, label: str, naming: Naming) -> re.Pattern[str]:
    """The names ``template`` produces, versions (``<join>v<N>``) included."""
    pieces = []
    for literal, field, _spec, _conversion in checked_template(template, label):
        pieces.append(re.escape(literal))
        if field is not None:
            pieces.append(".+?")
    version = re.escape(naming.join) + r"v\d+"
    return re.compile("".join(pieces) + f"(?:{version})?" + re.escape(naming.extension))
