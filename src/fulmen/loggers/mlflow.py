"""``MLFlowLogger``: metrics, hyperparameters, the run record and checkpoints in an MLflow run.

The store is a local folder (MLflow's file store, ``<default_root_dir>/mlruns`` unless ``save_dir``
says otherwise), any tracking URI (``sqlite:///path/mlflow.db``, ``http://server:5000``, ...), or
``$MLFLOW_TRACKING_URI`` when neither is given. The MLflow run is created on first use; its id is
the logger's ``version``, which checkpoints record, so ``fit(ckpt_path=...)`` continues the same
run. ``mlflow`` is imported only when the logger first talks to the store.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fulmen.loggers._yaml import to_plain
from fulmen.loggers.base import Logger
from fulmen.run_dir import redirected

if TYPE_CHECKING:

    from mlflow.tracking import MlflowClient

    from fulmen.trainer.trainer import Trainer

# Logger.finalize status -> MLflow RunStatus name.
_END_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow's limits (mlflow.utils.validation); the values of the mlflow versions fulmen supports.
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")
_RECORD_RE = re.compile(r"^run(?:-(\d+))?\.json$")


class MLFlowLogger(Logger):
    """Log to an MLflow run: metrics with their step, hyperparameters as params, and at the end of
    each entry point the run record (``run.json``) and checkpoints as artifacts and the run status.

    Args:
        experiment_name: The MLflow experiment, created when missing.
        run_name: Name of a new run (MLflow picks one when None).
        tracking_uri: Where to track: ``"sqlite:///path/mlflow.db"``, ``"http://host:5000"``, a
            ``file:`` URI... None: the ``save_dir`` file store, else ``$MLFLOW_TRACKING_URI``, else
            ``<trainer.default_root_dir>/mlruns``.
        save_dir: A local folder used as MLflow file store (like ``mlflow ui --backend-store-uri``
            ``./mlruns``). Not together with ``tracking_uri``.
        tags: Tags set on the run (also when it is continued).
        run_id: Continue this existing run instead of creating one.
        log_checkpoints: ``"best"`` (or True): the best checkpoint of the first ``ModelCheckpoint``
            that has one, else its newest (``last_model_path``), at the end of each entry point;
            ``"all"``: every checkpoint as it is written (also those ``save_top_k`` deletes later)
            and again at the end if it changed; False: none. Uploaded under ``checkpoints/``.
        artifact_location: Where a new experiment stores artifacts. None: MLflow's choice, except
            for a local SQLite store: ``mlartifacts`` next to the database file.
    """

    def __init__(
        self,
        experiment_name: str = "fulmen_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        log_checkpoints: bool | Literal["best", "all"] = "best",
        artifact_location: str | None = None,
    ) -> None:
        if tracking_uri is not None and save_dir is not None:
            raise ValueError(
                "MLFlowLogger(tracking_uri=..., save_dir=...): pass one of the two (save_dir is a local "
                "file store, the same as tracking_uri='file:<save_dir>')."
            )
        if log_checkpoints not in (True, False, "best", "all"):
            raise ValueError(
                f"MLFlowLogger(log_checkpoints={log_checkpoints!r}): expected True, False, 'best' or 'all'."
            )
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri_arg = tracking_uri
        self._save_dir_arg = redirected(os.fspath(save_dir)) if save_dir is not None else None  # (fulmen reproduce)
        self._tags = {str(k): str(to_plain(v)) for k, v in (tags or {}).items()}
        self._version: str | None = run_id
        self._log_checkpoints: Literal["best", "all"] | None = (
            "best" if log_checkpoints is True else None if log_checkpoints is False else log_checkpoints
        )
        self._artifact_location = artifact_location
        self._upload_each_save = True  # "all": also as each checkpoint is written (not only at the end)
        self._trainer: Trainer | None = None
        self._client: MlflowClient | None = None
        self._tracking_uri: str | None = None
        self._experiment_id: str | None = None
        self._run_open = False  # the run was created or continued (and marked RUNNING) by this logger
        self._ended = False  # finalize set its end status (logging again marks it RUNNING again)
        self._params: dict[str, str] = {}  # params the run already has
        self._uploaded: dict[str, tuple[int, int]] = {}  # local path -> (mtime_ns, size) when uploaded

    # -- trainer ---------------------------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> None:
        """Called by the Trainer at the start of each entry point, on every process."""
        self._trainer = trainer

    def _current_trainer(self) -> Trainer | None:
        return self._trainer

    # -- the Logger interface ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str | None:
        """The MLflow run id; reading it on the main process creates (or continues) the run."""
        if not _is_rank_zero():
            return self._version
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The local file store folder, or None for other stores."""
        uri = self._resolved_uri()
        return _file_uri_path(uri)

    @property
    def tracking_uri(self) -> str:
        return self._resolved_uri()

    @property
    def experiment(self) -> MlflowClient:
        """The ``mlflow.tracking.MlflowClient`` (for artifacts, tags, ... of your own)."""
        if self._client is None:
            client_cls = _mlflow_client_class()
            uri = self._resolved_uri()
            if _file_uri_path(uri) is not None:
                # MLflow 3 refuses its file store unless asked for: a folder store is what was asked.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self._client = client_cls(tracking_uri=uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            if self._version is not None:
                self._experiment_id = self.experiment.get_run(self._version).info.experiment_id
            else:
                self._experiment_id = self._find_or_create_experiment()
        return self._experiment_id

    @property
    def run_id(self) -> str:
        """The MLflow run id (creating or continuing the run on first use)."""
        if not self._run_open:
            self._open_run()
        assert self._version is not None
        return self._version

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id = self._active_run()
        now = int(time.time() * 1000)
        entries = [Metric(_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for batch in _chunks(entries, _METRICS_PER_BATCH):
            self.experiment.log_batch(run_id, metrics=batch)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        from fulmen.errors import warn_once

        run_id = self._active_run()
        new: dict[str, str] = {}
        for key, value in _flatten(to_plain(dict(params))).items():
            key, value = _key(key), _param_value(value)
            old = self._params.get(key, new.get(key))
            if old is None:
                new[key] = value
            elif old != value:  # MLflow params cannot change; the first value stays
                warn_once(
                    f"MLFlowLogger: the run {run_id} already has the param {key!r} = {old!r}; the new value "
                    f"{value!r} is not logged (MLflow params cannot change).",
                    key=f"mlflow-param-{run_id}-{key}",
                )
        entries = [Param(k, v) for k, v in new.items()]
        for batch in _chunks(entries, _PARAMS_PER_BATCH):
            self.experiment.log_batch(run_id, params=batch)
        self._params.update(new)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """With ``log_checkpoints="all"``, each checkpoint is uploaded when it is written (so the
        ones ``save_top_k`` later deletes are kept in MLflow too)."""
        if self._log_checkpoints != "all" or not self._upload_each_save:
            return
        paths = (*checkpoint_callback.best_k_models, checkpoint_callback.last_model_path)
        try:
            self._upload(self.run_id, [(os.path.abspath(p), "checkpoints") for p in paths if p and os.path.exists(p)])
        except Exception as err:  # the checkpoint is on disk; training goes on
            from fulmen.errors import warn_once

            warn_once(f"MLFlowLogger: uploading a checkpoint to run {self._version} failed: {err!r}")

    def finalize(self, status: str) -> None:
        if not self._run_open:
            return  # nothing was logged: no empty run
        run_id = self.run_id
        trainer = self._current_trainer()
        if trainer is not None:
            try:
                self._upload_artifacts(trainer, run_id)
            except Exception as err:  # an upload that fails must not hide how the run ended
                from fulmen.errors import warn_once

                warn_once(f"MLFlowLogger: uploading the artifacts of run {run_id} failed: {err!r}")
        self.experiment.set_terminated(run_id, _END_STATUS.get(status, "FAILED"))
        self._ended = True

    # -- pickling (DDP spawn sends the loggers to new processes) -----------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_trainer"] = None
        return state

    # -- internals ---------------------------------------------------------------------------------------
    def _resolved_uri(self) -> str:
        if self._tracking_uri is None:
            if self._tracking_uri_arg is not None:
                uri = self._tracking_uri_arg
            elif self._save_dir_arg is not None:
                uri = Path(self._save_dir_arg).resolve().as_uri()
            elif os.environ.get("MLFLOW_TRACKING_URI"):
                uri = os.environ["MLFLOW_TRACKING_URI"]
            else:
                trainer = self._current_trainer()
                root = trainer.default_root_dir if trainer is not None else os.getcwd()
                uri = Path(root, "mlruns").resolve().as_uri()
            self._tracking_uri = uri
        return self._tracking_uri

    def _find_or_create_experiment(self) -> str:
        client = self.experiment
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is None:
            try:
                return str(
                    client.create_experiment(self._experiment_name, artifact_location=self._artifacts_root())
                )
            except Exception:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(self._experiment_name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"MLFlowLogger: the experiment {self._experiment_name!r} is deleted in {self.tracking_uri}; "
                f"restore it (mlflow experiments restore) or choose another experiment_name."
            )
        return str(experiment.experiment_id)

    def _artifacts_root(self) -> str | None:
        if self._artifact_location is not None:
            return self._artifact_location
        db = _sqlite_path(self.tracking_uri)
        if db is None:
            return None
        # MLflow's default for SQLite is ./mlruns in the working folder; keep them with the database.
        return Path(os.path.dirname(os.path.abspath(db)), "mlartifacts").as_uri()

    def _active_run(self) -> str:
        run_id = self.run_id
        if self._ended:  # logging after finalize (e.g. a test after fit): the run is running again
            self.experiment.update_run(run_id, status="RUNNING")
            self._ended = False
        return run_id

    def _open_run(self) -> None:
        if not _is_rank_zero():
            raise RuntimeError("MLFlowLogger logs from the main process (global rank 0) only.")
        client = self.experiment
        if self._version is None:
            run = client.create_run(self.experiment_id, tags=self._tags, run_name=self._run_name)
            self._version = run.info.run_id
            self._params = {}
        else:
            from mlflow.exceptions import MlflowException

            try:
                run = client.get_run(self._version)
            except MlflowException as err:
                raise ValueError(
                    f"MLFlowLogger: cannot continue the MLflow run {self._version!r} (given as run_id, or "
                    f"recorded in the checkpoint fit resumes from): not found in {self.tracking_uri}."
                ) from err
            self._experiment_id = run.info.experiment_id
            self._params = dict(run.data.params)
            client.update_run(self._version, status="RUNNING")
            for key, value in self._tags.items():
                client.set_tag(self._version, key, value)
        self._run_open = True

    def _upload_artifacts(self, trainer: Trainer, run_id: str) -> None:
        files: list[tuple[str, str | None]] = []
        if trainer.state.stage == "fit":  # only fit writes a run record
            record = _newest_record(trainer.log_dir)
            if record is not None:
                files.append((record, None))
        for path in self._checkpoints(trainer):
            files.append((path, "checkpoints"))
        self._upload(run_id, files)

    def _upload(self, run_id: str, files: list[tuple[str, str | None]]) -> None:
        for path, folder in files:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._uploaded.get(path) == stamp:
                continue
            if os.path.isdir(path):  # a sharded checkpoint
                dest = os.path.basename(os.path.normpath(path))
                self.experiment.log_artifacts(run_id, path, f"{folder}/{dest}" if folder else dest)
            else:
                self.experiment.log_artifact(run_id, path, folder)
            self._uploaded[path] = stamp

    def _checkpoints(self, trainer: Trainer) -> list[str]:
        if self._log_checkpoints is None:
            return []
        callbacks = trainer.checkpoint_callbacks
        if self._log_checkpoints == "best":
            for cb in callbacks:
                for path in (cb.best_model_path, cb.last_model_path):
                    if path and os.path.exists(path):
                        return [os.path.abspath(path)]
            return []
        paths: dict[str, None] = {}
        for cb in callbacks:
            for path in (*cb.best_k_models, cb.best_model_path, cb.last_model_path):
                if path and os.path.exists(path):
                    paths[os.path.abspath(path)] = None
        return list(paths)


def _mlflow_client_class() -> type[MlflowClient]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ModuleNotFoundError(
            "MLFlowLogger needs the mlflow package: pip install 'fulmen[mlflow]' (or pip install "
            f"mlflow-skinny). Import failed with: {err}"
        ) from err
    return MlflowClient


def _is_rank_zero() -> bool:
    from fulmen.runtime.distributed import rank_zero_only

    return rank_zero_only.rank == 0


def _file_uri_path(uri: str) -> str | None:
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    if "://" not in uri and not re.match(r"^[a-zA-Z][\w+.-]*:", uri):  # a plain path
        return os.path.abspath(uri)
    return None


def _sqlite_path(uri: str) -> str | None:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return uri[len(prefix) :].split("?", 1)[0]


def _key(name: str) -> str:
    """A metric or param name MLflow accepts: letters, digits, ``_-./`` and spaces."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:_MAX_KEY]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:_MAX_PARAM_VALUE]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``"a/b"`` keys (as in the TensorBoard logger)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _newest_record(run_dir: str) -> str | None:
    """``run_dir/run.json``, or the newest ``run-N.json`` of a resumed run."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return None
    found = [(int(m.group(1) or 1), n) for n in names if (m := _RECORD_RE.match(n))]
    return os.path.join(run_dir, max(found)[1]) if found else None


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
