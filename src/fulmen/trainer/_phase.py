"""Where the training loop is: ``Phase``, recorded in every checkpoint (as its plain string
value, so a checkpoint stays plain data and older ones load) and read back by the resume plan
(``fulmen.trainer._resume.ResumePlan``), which decides from it what is left to do.

The fit loop sets the phase as it goes (``fulmen.trainer._fit``)::

    on_train_epoch_start()      EPOCH_START
    for batch:                  BATCH         (a checkpoint here: after the batch's optimizer step;
                                               its bookkeeping, the validation due, is left to do)
        <validation>            VALIDATION    (a checkpoint here: the next batch is next)
    <epoch-end validation>      VALIDATION
    on_train_epoch_end()        EPOCH_END     (left to do: the epoch-interval schedulers)
    between epochs              AFTER_EPOCH

``SANITY`` and ``TEST`` are the evaluation loops' (``fulmen.trainer._eval``); before the first
epoch the phase is None.
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    """A phase of the loop; a ``str`` (``Phase.BATCH == "batch"``), so code and checkpoints that
    compare with the plain value keep working."""

    EPOCH_START = "epoch_start"
    BATCH = "batch"
    VALIDATION = "validation"
    EPOCH_END = "epoch_end"
    AFTER_EPOCH = "after_epoch"
    SANITY = "sanity"
    TEST = "test"

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__  # (a key or set member alike with its plain value)

    @classmethod
    def saved(cls, value: object) -> Phase:
        """The phase a checkpoint recorded, a plain string; one it does not name (none, or written
        before training began) counts as between epochs."""
        try:
            return cls(value)
        except ValueError:
            return cls.AFTER_EPOCH

    @property
    def epoch_begun(self) -> bool:
        """The epoch's batches had begun (written inside the batch loop, in a validation of the
        epoch, or in ``on_train_epoch_end``): a resume continues inside that epoch or finishes it."""
        return self in (Phase.BATCH, Phase.VALIDATION, Phase.EPOCH_END)
