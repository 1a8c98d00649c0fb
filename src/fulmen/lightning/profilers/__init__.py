"""``lightning.pytorch.profilers``: fulmen's profilers (``fulmen.profilers``) under Lightning's
module paths. ``Trainer(profiler="simple")`` builds the same ``SimpleProfiler`` class this module
exports, so ``isinstance(trainer.profiler, SimpleProfiler)`` holds either way.

The constructors are fulmen's: ``SimpleProfiler(filename=None)``, ``AdvancedProfiler(filename=None,
line_count=20)``, ``PyTorchProfiler(...)``; reports go to ``<run folder>/<filename>-<stage>.txt``.
"""

from __future__ import annotations

from fulmen.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler

__all__ = ["AdvancedProfiler", "PassThroughProfiler", "Profiler", "PyTorchProfiler", "SimpleProfiler"]
