"""``TensorBoardLogger``: scalars and hyperparameters as TensorBoard event files in ``log_dir``.

Point TensorBoard at ``save_dir`` (or ``save_dir/name``) to compare versions side by side; the
hyperparameters show in the HPARAMS tab next to the metrics logged as scalars.

``torch.utils.tensorboard`` (and the ``tensorboard`` package behind it) is imported only when the
writer is first needed: importing it costs far more than the rest of fulmen.

The writer flushes its events every 5 seconds (``flush_secs``, TensorBoard's default is 120) and
before each checkpoint is written. A resumed fit (``fit(ckpt_path=...)`` in the same version
folder) opens its event file with ``purge_step`` set to the step of the last events written before
the checkpoint, and writes those events again: TensorBoard then hides what the stopped run logged
after the checkpoint, and each step shows once.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fulmen.errors import FulmenWarning
from fulmen.loggers._yaml import HPARAMS_FILE, params_dict, to_plain, write_yaml_atomic
from fulmen.loggers.base import FolderLogger

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# Logger.finalize status -> name of the hparams plugin's ``Status`` enum value.
_END_STATUS = {"success": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "interrupted": "STATUS_ABORTED"}


class TensorBoardLogger(FolderLogger):
    """Log metrics and hyperparameters for TensorBoard in ``save_dir/name/version_N``.

    Args:
        save_dir: Root folder for all runs.
        name: Sub-folder for this experiment (``""`` writes versions straight into ``save_dir``).
        version: An int gives ``version_<int>``, a str is used as the folder name; None picks
            the next free ``version_N`` when the logger is first used.
        log_graph: Add the system's graph (traced with ``example_input_array``, in eval mode, with
            weights, buffers, modes and random number generators left as they were) when each
            run starts; see TensorBoard's GRAPHS tab.
        sub_dir: Write the event files into ``log_dir/sub_dir`` (the run folder, with its
            checkpoints and ``hparams.yaml``, stays ``log_dir``).
        **writer_kwargs: Passed on to ``torch.utils.tensorboard.SummaryWriter`` (``flush_secs``,
            default 5 here, ``max_queue``, ``filename_suffix``, ...).
    """

    NAME_HPARAMS_FILE = HPARAMS_FILE

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "fulmen_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        sub_dir: str | os.PathLike[str] | None = None,
        **writer_kwargs: Any,
    ) -> None:
        super().__init__(save_dir, name=name, version=version)
        self._log_graph = bool(log_graph)
        self._sub_dir = os.fspath(sub_dir) if sub_dir is not None else None
        self._writer_kwargs = {"flush_secs": _FLUSH_SECS, **writer_kwargs}
        self._experiment: SummaryWriter | None = None
        self._hparams: dict[str, Any] = {}
        self._graph_logged = False
        # The step of the last scalars written and the rows written at that step (log_position).
        self._last_step: int | None = None
        self._rows_at_last_step: list[dict[str, float]] | None = []
        self._purge: tuple[int, list[dict[str, float]]] | None = None  # asked by resume_at, applied on first use

    @property
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter``, created (with the run folder) on first access."""
        if self._experiment is None:
            writer_cls = _summary_writer_class()
            folder = self._events_dir
            os.makedirs(folder, exist_ok=True)
            kwargs = dict(self._writer_kwargs)
            if self._purge is not None:
                kwargs["purge_step"] = self._purge[0]
                _after_existing_event_files(folder)
            self._experiment = writer_cls(log_dir=folder, **kwargs)
        elif self._purge is not None:  # (a writer of an earlier fit: closed, it reopens with the purge)
            self._experiment.close()
            self._experiment.purge_step = self._purge[0]
            _after_existing_event_files(self._events_dir)
        if self._purge is not None:
            step, rows = self._purge
            self._purge = None
            for row in rows:  # the rows at that step written before the checkpoint, again
                for key, value in row.items():
                    self._experiment.add_scalar(key, value, global_step=step)
        return self._experiment

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def hparams(self) -> dict[str, Any]:
        """Every hyperparameter logged so far (what ``hparams.yaml`` holds)."""
        return self._hparams

    @property
    def _events_dir(self) -> str:
        """Where the event files go: ``log_dir/sub_dir`` (``log_dir`` without a ``sub_dir``)."""
        return os.path.join(self.log_dir, self._sub_dir) if self._sub_dir else self.log_dir

    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        """With ``log_graph=True``: trace ``model`` on ``input_array`` (default: its
        ``example_input_array``) and add the graph, once per logger. The model runs in eval mode
        without gradients; its modes, buffers and the random number generators are put back, so
        the run goes on exactly as without the graph. A model that cannot be traced is reported
        with a warning, and the run goes on."""
        if not self._log_graph or self._graph_logged:
            return
        from fulmen.seed import RNGState
        from fulmen.system import _exporting
        from fulmen.utils.apply import move_to_device

        example = input_array if input_array is not None else getattr(model, "example_input_array", None)
        # Warned at each call (Python shows a repeated warning once): a graph asked for and not drawn.
        if example is None:
            warnings.warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute is not "
                f"set or `input_array` was not given. TensorBoardLogger(log_graph=True) adds no graph for "
                f"{type(model).__name__}, which has no example_input_array; set self.example_input_array = "
                "torch.randn(...) in its __init__ (one input batch), or call logger.log_graph(model, input_array).",
                FulmenWarning,
                stacklevel=2,
            )
            return
        if isinstance(example, Mapping):
            warnings.warn(
                f"Could not log computational graph to TensorBoard: the input ({type(example).__name__}) can't be "
                "traced by TensorBoard: the graph is traced with positional inputs only, so no graph is added. Make "
                "example_input_array a tensor, or a tuple of the positional arguments of forward().",
                FulmenWarning,
                stacklevel=2,
            )
            return
        device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        inputs = move_to_device(example, device)
        self._graph_logged = True
        modes = [(m, m.training) for m in model.modules()]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        rng = RNGState()
        try:
            # Eval mode, no gradients, and ``system.trainer`` None rather than an error while the
            # tracer reads every attribute (log_graph may be called outside a run).
            with _exporting(model), warnings.catch_warnings():
                # add_graph traces with torch.jit, which torch now marks deprecated: not the user's concern.
                warnings.filterwarnings("ignore", r".*torch\.jit\.trace.* is deprecated", DeprecationWarning)
                self.experiment.add_graph(model, tuple(inputs) if isinstance(inputs, list) else inputs)
        except Exception as err:  # tracing is best effort: never end a run over a picture
            warnings.warn(
                f"Could not log computational graph to TensorBoard: tracing {type(model).__name__} with "
                f"torch.jit.trace failed, so no graph is added ({type(err).__name__}: {str(err)[:300]}).",
                FulmenWarning,
                stacklevel=2,
            )
        finally:
            for m, training in modes:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            rng.restore()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        # Kept for log_position (a row at the log interval: no per-step cost).
        if step is None:
            return  # (no step: nothing TensorBoard can hide or show again by step)
        if step != self._last_step:
            self._last_step, self._rows_at_last_step = step, []
        rows = self._rows_at_last_step
        if rows is not None:
            row = {k: v for k, v in ((k, _number(v)) for k, v in metrics.items()) if v is not None}
            # (a step with very many rows is not kept: the purge then hides them and nothing is written again)
            self._rows_at_last_step = [*rows, row] if len(rows) < _MAX_ROWS_KEPT else None

    def log_position(self) -> dict[str, Any] | None:
        """``{"step": s, "rows": [...]}``: the step of the last scalars written, and the rows
        (name -> value) written at that step; None before any."""
        if self._last_step is None:
            return None
        return {"step": int(self._last_step), "rows": list(self._rows_at_last_step or [])}

    def resume_at(self, step: int, position: Any) -> None:
        """Open the event file with ``purge_step`` at the step of the last scalars written before
        the checkpoint (its ``log_position``; without one, ``step + 1``) and write that step's rows
        again, so that TensorBoard hides the events the stopped run wrote after the checkpoint."""
        saved = position.get("step") if isinstance(position, dict) else None
        if isinstance(saved, int):
            rows = [dict(r) for r in position.get("rows") or [] if isinstance(r, dict)]
            self._purge = (saved, rows)
            self._last_step, self._rows_at_last_step = saved, [dict(r) for r in rows]
        else:
            self._purge = (int(step) + 1, [])
            self._last_step, self._rows_at_last_step = None, []

    def log_hyperparams(
        self,
        params: Mapping[str, Any] | argparse.Namespace | None = None,
        metrics: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        """Record ``params`` (merged with earlier calls) in the HPARAMS tab and ``hparams.yaml``.
        ``metrics`` (name -> value) are logged as scalars at ``step`` (default 0), so the HPARAMS
        table shows them next to the hyperparameters."""
        writer = self.experiment  # first: a missing tensorboard is reported with the install hint
        from torch.utils.tensorboard.summary import hparams

        self._hparams.update(params_dict(params))
        write_yaml_atomic(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self._hparams)

        # Only the session-start summary is written. The "experiment" summary that hparams() also
        # returns would pin the HPARAMS table to the metric names given here (none) and, with
        # several versions in one TensorBoard, to whichever version it reads first; without it
        # TensorBoard builds the table from every version's hparams and scalar tags.
        _, session_start, _ = hparams(_tensorboard_hparams(self._hparams), {})
        _file_writer(writer).add_summary(session_start)
        if metrics:
            self.log_metrics({k: _scalar(v) for k, v in metrics.items()}, 0 if step is None else step)

    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.flush()

    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return  # nothing was logged: do not create an empty run folder now
        if self._hparams:
            # The session's end status (shown in the HPARAMS tab) is only known now.
            _file_writer(self._experiment).add_summary(_session_end_summary(status))
        self._experiment.flush()
        self._experiment.close()


_FLUSH_SECS = 5
_MAX_ROWS_KEPT = 64
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def _after_existing_event_files(folder: str) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second
    its writer was created: a resumed run's file (with the purge) must come after the stopped
    run's, so within the same second this waits for the next one."""
    newest = max((int(m.group(1)) for n in os.listdir(folder) if (m := _EVENT_FILE.match(n))), default=None)
    if newest is not None and time.time() < newest + 1:
        time.sleep(newest + 1 - time.time())


def _number(value: Any) -> float | None:
    try:
        return float(_scalar(value))
    except (TypeError, ValueError):
        return None


def _summary_writer_class() -> type[SummaryWriter]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError for a too-old tensorboard too
        raise ModuleNotFoundError(
            "TensorBoardLogger needs the tensorboard package: pip install 'fulmen[tensorboard]' "
            f"(or pip install tensorboard). Import failed with: {err}"
        ) from err
    return SummaryWriter


def _scalar(value: Any) -> Any:
    """A metric value for ``add_scalar``: a one-element tensor or array becomes its number."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):
            pass
    return value


def _file_writer(writer: SummaryWriter) -> Any:
    # ``writer.file_writer`` is None after ``close()``; the getter reopens it, as add_scalar does.
    return writer._get_file_writer()


def _tensorboard_hparams(params: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten nested dicts to ``"a/b"`` keys; keep numbers, str and bool, stringify the rest."""
    flat: dict[str, Any] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                visit(f"{key}/{k}", v)
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = str(value)

    # to_plain first: tensors and numpy scalars become numbers, paths and classes readable text.
    for key, value in to_plain(dict(params)).items():
        visit(key, value)
    return flat


def _session_end_summary(status: str) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    name = _END_STATUS.get(status, "STATUS_UNKNOWN")
    if name not in api_pb2.Status.DESCRIPTOR.values_by_name:  # (its hparams plugin has no STATUS_ABORTED)
        name = "STATUS_UNKNOWN"
    code = api_pb2.Status.Value(name)
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=code), version=metadata.PLUGIN_DATA_VERSION
    )
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    meta = SummaryMetadata(plugin_data=plugin)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])
