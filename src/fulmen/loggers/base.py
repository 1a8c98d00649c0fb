"""The ``Logger`` base class: where metrics and hyperparameters go.

A logger of your own needs ``log_metrics`` and, if it writes files, ``name``/``version``/
``save_dir``; everything else has a default::

    class PrintLogger(fulmen.Logger):
        def log_metrics(self, metrics, step):
            print(step, metrics)

Loggers are called on global rank zero only. ``log_metrics`` receives plain Python floats; the
trainer converts tensors at the log interval (``log_every_n_steps``) and at epoch ends, never
every step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fulmen.run_dir import next_version, redirected, version_folder


class _NoVersions:
    """The class-level ``Logger._version``: this logger has no versions to pin."""

    def __repr__(self) -> str:
        return "<no versions>"


_NO_VERSIONS = _NoVersions()


class Logger:
    """Base class for experiment loggers."""

    #: What separates a group from a name in metric keys (``"train/loss"``), as in Lightning.
    group_separator = "/"

    # The version this run uses, once given, chosen or pinned (None: not yet). A logger with
    # versions sets it in its constructor (fulmen's file loggers, MLflow's and W&B's run ids, and
    # loggers written after Lightning's); the class-level marker means it has none. Written by the
    # logger itself and through ``pin_version``, read through ``pinned_version``.
    _version: int | str | _NoVersions | None = _NO_VERSIONS

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> int | str | None:
        return None

    @property
    def pinned_version(self) -> int | str | None:
        """The version this run uses if it is fixed already (given, chosen or pinned), else None.
        Reading it chooses nothing (reading ``version`` may choose one, or start a run). A logger
        without versions answers ``version``."""
        return self.version if isinstance(self._version, _NoVersions) else self._version

    def pin_version(self, version: int | str | None) -> bool:
        """Run as ``version`` (a file logger's version folder, an MLflow or W&B run id) unless a
        version is fixed already; True when it was taken. The Trainer pins each logger to the
        version rank 0 chose (several processes) and to the one a checkpoint recorded
        (``fit(ckpt_path=...)`` goes on in the same run). ``None`` unpins: the next use chooses a
        new version (``fulmen.run_dir`` pins past versions in turn to look for a checkpoint).
        A logger without versions takes none (False)."""
        if isinstance(self._version, _NoVersions):
            return False
        if version is None:
            self._version = None
            return True
        if self._version is not None:
            return False
        self._version = version
        return True

    @property
    def save_dir(self) -> str | None:
        """Root folder this logger writes under, or None when it writes no files."""
        return None

    @property
    def root_dir(self) -> str | None:
        """The folder of this experiment's versions (``save_dir/name``), or None."""
        return None

    @property
    def log_dir(self) -> str | None:
        """The run folder: ``save_dir/name/version_N`` for file-based loggers."""
        return None

    @property
    def run_dir(self) -> str | None:
        """Where the run's other files go (``ModelCheckpoint``'s default folder is
        ``run_dir/checkpoints``): ``log_dir``, unless that is a sub-folder of the run's folder."""
        return self.log_dir

    def attach(self, trainer: Any) -> None:
        """Called by the Trainer at the start of each run, on every process (a logger that needs
        the trainer, e.g. for its checkpoints, keeps it)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement log_metrics(metrics, step)")

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters (called once, at the start of fit)."""

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model's graph (called on global rank 0 when each run starts, after
        ``log_hyperparams``; most loggers do nothing)."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called on global rank 0 after a ``ModelCheckpoint`` wrote its files (its
        ``best_k_models``, ``best_model_path`` and ``last_model_path`` are up to date)."""

    def save(self) -> None:
        """Flush buffered data to disk (also called before each checkpoint is written)."""

    def log_position(self) -> Any:
        """Where this logger's record of the run ends now, as plain data (numbers, strings, lists,
        dicts), or None. The Trainer calls it on global rank 0 right after ``save()`` each time a
        checkpoint is written, keeps the answer in the checkpoint, and gives it back to
        ``resume_at`` when a fit resumes from that checkpoint."""
        return None

    def resume_at(self, step: int, position: Any) -> None:
        """``fit(ckpt_path=...)`` goes on with this logger's run (the logger's version is the one
        the checkpoint recorded): whatever the stopped run logged after the checkpoint was written
        is logged again by the resumed run, so a logger that can should forget it now.

        ``position`` is what ``log_position()`` returned when the checkpoint was written (None when
        it recorded nothing); ``step`` is the checkpoint's ``global_step - 1`` (at least 0): every
        row the resumed run logs is at this step or later, and rows the stopped run logged before
        the checkpoint are at this step or earlier. Called once per fit, on every process, before
        anything is logged. The default does nothing: the service keeps both (MLflow, W&B)."""

    def finalize(self, status: str) -> None:
        """Called once at the end of a run; ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()


class DummyExperiment:
    """Accepts any attribute access, call or indexing and does nothing: a logger's ``experiment``
    on processes other than global rank 0 (which log nothing)."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, _: str) -> Any:
        return self  # so that chains work too: experiment.config.update(...)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getitem__(self, idx: Any) -> DummyExperiment:
        return self

    def __setitem__(self, *args: Any) -> None:
        pass


class FolderLogger(Logger):
    """A logger writing into ``save_dir/name/version_N``; the version is chosen on first use.

    Several loggers given the same ``save_dir`` and ``name`` in one Trainer share one version
    folder: the trainer resolves every logger's version before any of them creates its folder.
    """

    def __init__(self, save_dir: str | os.PathLike[str], name: str = "fulmen_logs", version: int | str | None = None):
        self._save_dir = redirected(os.fspath(save_dir))  # (a re-run by fulmen reproduce: never the original's folders)
        self._name = name
        self._version = version

    @property
    def name(self) -> str:
        return self._name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name`` (``save_dir`` when the name is empty): the folder of the versions."""
        name = self.name  # the property: a subclass may override it
        return os.path.join(self._save_dir, name) if name else self._save_dir

    @property
    def version(self) -> int | str:
        if self._version is None:
            self.pin_version(next_version(self.root_dir))  # the first free number
        assert not isinstance(self._version, _NoVersions) and self._version is not None
        return self._version

    @property
    def log_dir(self) -> str:
        return version_folder(self.root_dir, self.version)
