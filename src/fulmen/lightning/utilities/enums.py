"""``lightning.pytorch.utilities.enums``: ``LightningEnum`` (a string enum: members compare equal to
their values) and ``GradClipAlgorithmType``, the values of ``gradient_clip_algorithm``."""

from __future__ import annotations

from fulmen.trainer.state import _StrEnum as LightningEnum

__all__ = ["GradClipAlgorithmType", "LightningEnum"]


class GradClipAlgorithmType(LightningEnum):
    """``"norm"``: scale all gradients together so that their total 2-norm is at most the value;
    ``"value"``: clamp each gradient element to ``[-value, value]``."""

    VALUE = "value"
    NORM = "norm"

    @staticmethod
    def supported_type(val: str) -> bool:
        return val in GradClipAlgorithmType.supported_types()

    @staticmethod
    def supported_types() -> list[str]:
        return [member.value for member in GradClipAlgorithmType]
