"""``WandbLogger``: metrics, hyperparameters and checkpoints in a Weights & Biases run.

The run is created on first use with ``wandb.init`` (online, or ``offline=True``: everything is
written to ``<save_dir>/wandb/offline-run-*`` for ``wandb sync`` later, and ``wandb leet`` reads it
on the spot). Its id is the logger's ``version``, which checkpoints record, so
``fit(ckpt_path=...)`` continues the same W&B run (``resume="allow"``). ``wandb`` is imported only
when the logger first talks to it.

Steps: every metric is plotted against ``trainer/global_step`` (logged with each row and declared
with ``define_metric``), not against W&B's own ``_step`` counter, so validation rows and a resumed
run land at the right step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fulmen.loggers._yaml import to_plain
from fulmen.loggers.base import DummyExperiment, Logger

if TYPE_CHECKING:
    from fulmen.callbacks.checkpoint import ModelCheckpoint
    from fulmen.trainer.trainer import Trainer

STEP_METRIC = "trainer/global_step"
# Ids of the runs that WandbLogger instances started in this process: a new logger finishes such
# a run instead of writing into it (a run the user started with wandb.init is reused, as in sweeps).
_STARTED_BY_FULMEN: set[str] = set()


class WandbLogger(Logger):
    """Log to a Weights & Biases run.

    Args:
        name: Display name of a new run (W&B picks one when None).
        save_dir: Folder that holds W&B's ``wandb/`` run folders; None: ``default_save_dir``
            (``None``, the trainer's ``default_root_dir``). ``dir`` is accepted as another name
            for it, and is used when ``save_dir`` is None or ``default_save_dir``.
        version: Id of the run (``id`` is another name): continue that run, or start it with that id.
        offline: Write the run to local files only (``wandb sync`` uploads them later).
        anonymous: W&B's anonymous mode (``anonymous="allow"``).
        project: The W&B project; None: ``default_project`` (``"fulmen_logs"``).
        log_model: Checkpoints of the ``ModelCheckpoint`` callbacks as W&B artifacts of type
            ``model``, one version per file (aliases ``latest``, and ``best`` for the best one):
            True: the checkpoints the callbacks keep (top k and last) at the end of ``fit``;
            ``"all"``: every checkpoint when it is written (also those ``save_top_k`` deletes
            later); False: none.
        experiment: A W&B run to log into instead of starting one.
        prefix: Put ``"{prefix}-"`` in front of every metric name.
        checkpoint_name: Name of the model artifact; default ``model-<run id>``.
        add_file_policy: ``"mutable"`` (W&B copies each checkpoint into its staging folder, so a
            file rewritten later, such as ``last.ckpt``, is logged as it was) or ``"immutable"`` (no
            copy: the file must not change until W&B has uploaded it).
        **kwargs: Passed on to ``wandb.init`` (``entity``, ``tags``, ``group``, ``notes``,
            ``config``, ``settings``, ...).

    ``default_project`` and ``default_save_dir`` are class attributes, so a subclass can change
    the defaults without repeating the signature (``fulmen.lightning``'s: Lightning's).
    """

    default_project = "fulmen_logs"
    default_save_dir: str | None = None

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | Literal["all"] = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if log_model not in (True, False, "all"):
            raise ValueError(f"WandbLogger(log_model={log_model!r}): expected True, False or 'all'.")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(
                f"WandbLogger(add_file_policy={add_file_policy!r}): expected 'mutable' or 'immutable'."
            )
        if version is not None and id is not None and version != id:
            raise ValueError(
                f"WandbLogger(version={version!r}, id={id!r}): both name the run's id; pass one of the two."
            )
        if save_dir is None or (dir is not None and os.fspath(save_dir) == self.default_save_dir):
            save_dir = dir if dir is not None else self.default_save_dir
        elif dir is not None and os.fspath(save_dir) != os.fspath(dir):
            raise ValueError(
                f"WandbLogger(save_dir={os.fspath(save_dir)!r}, dir={os.fspath(dir)!r}): both name the folder "
                "for W&B's files; pass one of the two."
            )
        for reserved in ("id", "dir", "project", "name", "resume", "mode", "reinit"):
            if reserved in kwargs:
                raise ValueError(
                    f"WandbLogger({reserved}=...) in **kwargs: the logger sets {reserved!r} of wandb.init itself; "
                    "use the logger's own arguments (name, save_dir, version, project, offline)."
                )
        self._save_dir_arg = os.fspath(save_dir) if save_dir is not None else None
        self._name = name
        self._version: str | None = version if version is not None else id
        self._offline = bool(offline)
        self._anonymous = anonymous
        self._project = project if project is not None else self.default_project
        self._log_model: bool | Literal["all"] = log_model
        self._experiment = experiment
        self._prefix = prefix
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy
        self._init_kwargs = kwargs
        self._trainer: Trainer | None = None
        self._logged: dict[str, tuple[int, int]] = {}  # checkpoint path -> (mtime_ns, size) when logged
        if experiment is not None:
            self._version = experiment.id

    # -- trainer ---------------------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> None:
        self._trainer = trainer

    # -- the Logger interface --------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The W&B project."""
        return self._project

    @property
    def version(self) -> str | None:
        """The W&B run id; reading it on the main process starts (or continues) the run."""
        if not _is_rank_zero():
            return self._version
        return str(self.experiment.id)

    @property
    def save_dir(self) -> str:
        """The folder holding W&B's ``wandb/`` run folders."""
        if self._save_dir_arg is not None:
            return self._save_dir_arg
        return self._trainer.default_root_dir if self._trainer is not None else os.getcwd()

    @property
    def experiment(self) -> Any:
        """The ``wandb`` run (``wandb.Run``): for images, tables, ``watch``, artifacts of your own.
        On processes other than global rank 0, an object that accepts any call and does nothing."""
        if not _is_rank_zero():
            return DummyExperiment()
        if self._experiment is None:
            self._experiment = self._start_run()
        return self._experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        row: dict[str, Any] = {f"{self._prefix}-{k}" if self._prefix else k: v for k, v in metrics.items()}
        row[STEP_METRIC] = int(step)
        self.experiment.log(row)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        self.experiment.config.update(to_plain(dict(params)), allow_val_change=True)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "all":
            self._log_checkpoints([checkpoint_callback])

    def finalize(self, status: str) -> None:
        if self._experiment is None or not _is_rank_zero():
            return  # nothing was logged: no empty run
        trainer = self._trainer
        if self._log_model is True and trainer is not None and trainer.state.stage == "fit":
            try:
                self._log_checkpoints(trainer.checkpoint_callbacks)
            except Exception as err:  # a failed upload must not hide how the run ended
                from fulmen.errors import warn_once

                warn_once(f"WandbLogger: logging the checkpoints of run {self._version} failed: {err!r}")
        if status != "success":
            # A failed or interrupted run is finished now, with its exit code; a later fit
            # (resuming from a checkpoint) continues it. A successful one stays open for
            # validate/test in the same process; W&B finishes it when the process exits.
            self._experiment.finish(exit_code=1)
            self._experiment = None

    # -- media (Lightning's names) ---------------------------------------------------------------
    def log_image(self, key: str, images: Sequence[Any], step: int | None = None, **kwargs: Sequence[Any]) -> None:
        """Log images (tensors, arrays, PIL images, paths) under ``key``; ``kwargs`` are per-image
        lists of ``wandb.Image`` arguments, e.g. ``caption=["a", "b"]``."""
        wandb = _import_wandb()
        for k, values in kwargs.items():
            if len(values) != len(images):
                raise ValueError(f"WandbLogger.log_image: {k} has {len(values)} entries for {len(images)} images.")
        media = [wandb.Image(img, **{k: v[i] for k, v in kwargs.items()}) for i, img in enumerate(images)]
        self._log_media({key: media}, step)

    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a ``wandb.Table`` from ``columns`` and ``data`` rows, or from a pandas ``dataframe``."""
        wandb = _import_wandb()
        self._log_media({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text as a table (as Lightning does)."""
        self.log_table(key, columns, data, dataframe, step)

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """``wandb.watch``: histograms of gradients and/or parameters every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    # -- pickling (DDP spawn sends the loggers to new processes) ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_experiment"] = None
        state["_trainer"] = None
        return state

    # -- internals -------------------------------------------------------------------------------
    def _log_media(self, row: dict[str, Any], step: int | None) -> None:
        if step is not None:
            row[STEP_METRIC] = int(step)
        self.experiment.log(row)

    def _start_run(self) -> Any:
        wandb = _import_wandb()
        current = wandb.run
        if current is not None:
            if current.id in _STARTED_BY_FULMEN and current.id != self._version:
                current.finish()  # another WandbLogger's run: this logger starts its own
            elif self._version is None or current.id == self._version:
                self._version = current.id  # the user's own wandb.init (a sweep agent, a notebook)
                return current
            else:
                raise RuntimeError(
                    f"WandbLogger(version={self._version!r}): another W&B run ({current.id}) is active in this "
                    "process; call wandb.finish() before, or let the logger use that run (version=None)."
                )
        # Absolute: W&B's service process, shared by the runs of this process, has its own
        # working folder (the one of the first run), so a relative folder would split the run.
        folder = os.path.abspath(self.save_dir)
        os.makedirs(folder, exist_ok=True)
        kwargs: dict[str, Any] = {
            "project": self._project,
            "name": self._name,
            "dir": folder,
            "id": self._version,
            "resume": "allow" if self._version is not None else None,
            **self._init_kwargs,
        }
        if self._offline:
            kwargs["mode"] = "offline"
        if self._anonymous:
            kwargs["anonymous"] = "allow"
        run = wandb.init(**kwargs)
        if self._version is not None and run.id != self._version:  # not expected from W&B; never log elsewhere
            raise RuntimeError(f"WandbLogger: asked W&B for run {self._version!r}, got {run.id!r}.")
        self._version = run.id
        _STARTED_BY_FULMEN.add(run.id)
        if getattr(run, "define_metric", None) is not None:
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        return run

    def _log_checkpoints(self, callbacks: Sequence[ModelCheckpoint]) -> None:
        wandb = _import_wandb()
        run = self.experiment
        for cb in callbacks:
            scores = {os.path.abspath(p): _float(s) for p, s in cb.best_k_models.items()}
            best = os.path.abspath(cb.best_model_path) if cb.best_model_path else ""
            chosen = [p for p in (*cb.best_k_models, cb.last_model_path) if p and os.path.isfile(p)]
            for path in dict.fromkeys(os.path.abspath(p) for p in chosen):
                stat = os.stat(path)
                stamp = (stat.st_mtime_ns, stat.st_size)
                if self._logged.get(path) == stamp:
                    continue
                metadata = {
                    "score": scores.get(path, _float(cb.best_model_score) if path == best else None),
                    "original_filename": os.path.basename(path),
                    "ModelCheckpoint": {
                        "monitor": cb.monitor,
                        "mode": cb.mode,
                        "save_last": cb.save_last,
                        "save_top_k": cb.save_top_k,
                        "save_weights_only": cb.save_weights_only,
                    },
                }
                artifact = wandb.Artifact(
                    name=self._checkpoint_name or f"model-{run.id}", type="model", metadata=to_plain(metadata)
                )
                artifact.add_file(path, name="model.ckpt", policy=self._add_file_policy)
                run.log_artifact(artifact, aliases=["latest", "best"] if path == best else ["latest"])
                self._logged[path] = stamp


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ModuleNotFoundError(
            "WandbLogger needs the wandb package: pip install 'fulmen[wandb]' (or pip install wandb). "
            f"Import failed with: {err}"
        ) from err
    return wandb


def _is_rank_zero() -> bool:
    from fulmen.runtime.distributed import rank_zero_only

    return rank_zero_only.rank == 0
