"""``GradientAccumulationScheduler``: change ``accumulate_grad_batches`` as training goes on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.base import Callback
from fulmen.errors import FlagError

if TYPE_CHECKING:
    from fulmen.system import System
    from fulmen.trainer.trainer import Trainer


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[epoch]`` batches from that epoch on.

    ``GradientAccumulationScheduler({0: 1, 4: 2, 8: 4})`` steps after every batch in epochs 0-3,
    every 2 batches in epochs 4-7 and every 4 from epoch 8. Epochs before the smallest key use 1.
    It replaces ``Trainer(accumulate_grad_batches=...)``, which must then stay 1.
    """

    def __init__(self, scheduling: Mapping[int, int]) -> None:
        if not isinstance(scheduling, Mapping) or not scheduling:
            raise ValueError(
                f"GradientAccumulationScheduler(scheduling={scheduling!r}): expected a non-empty dict "
                f"{{epoch: batches to accumulate}}, e.g. {{0: 1, 4: 2}}."
            )
        for epoch, k in scheduling.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise ValueError(
                    f"GradientAccumulationScheduler: the keys are epochs (ints >= 0), got {epoch!r}."
                )
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(
                    f"GradientAccumulationScheduler: epoch {epoch} accumulates {k!r} batches; expected an int >= 1."
                )
        self.scheduling = dict(sorted(scheduling.items()))

    def factor(self, epoch: int) -> int:
        """Batches accumulated per optimizer step in ``epoch``."""
        k = 1
        for start, value in self.scheduling.items():
            if start <= epoch:
                k = value
        return k

    def on_train_start(self, trainer: Trainer, system: System) -> None:
        if trainer.config.accumulate_grad_batches != 1:
            raise FlagError(
                f"Trainer(accumulate_grad_batches={trainer.config.accumulate_grad_batches}) and a "
                f"GradientAccumulationScheduler both set the accumulation; keep one (the scheduler's "
                f"{{0: {trainer.config.accumulate_grad_batches}, ...}} does what the flag did)."
            )
        if not system.automatic_optimization:
            raise FlagError(
                f"GradientAccumulationScheduler does nothing under manual optimization ({type(system).__name__}."
                f"automatic_optimization is False): accumulate in training_step instead."
            )

    def on_train_epoch_start(self, trainer: Trainer, system: System) -> None:
        trainer.accumulate_grad_batches = self.factor(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"scheduling": dict(self.scheduling)}
