"""Built-in callbacks and the ``Callback`` base class."""

from fulmen.callbacks.base import Callback
from fulmen.callbacks.checkpoint import ModelCheckpoint
from fulmen.callbacks.progress import ProgressBar
from fulmen.callbacks.summary import ModelSummary, summarize

__all__ = ["Callback", "ModelCheckpoint", "ModelSummary", "ProgressBar", "summarize"]
