"""``TensorBoardLogger``: scalars and hyperparameters as TensorBoard event files in ``log_dir``.

Point TensorBoard at ``save_dir`` (or ``save_dir/name``) to compare versions side by side; the
hyperparameters show in the HPARAMS tab next to the metrics logged as scalars.

``torch.utils.tensorboard`` (and the ``tensorboard`` package behind it) is imported only when the
writer is first needed: importing it costs far more than the rest of fulmen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fulmen.loggers._yaml import HPARAMS_FILE, to_plain, write_yaml_atomic
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
        **writer_kwargs: Passed on to ``torch.utils.tensorboard.SummaryWriter`` (``flush_secs``,
            ``max_queue``, ``filename_suffix``, ...).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str = "fulmen_logs",
        version: int | str | None = None,
        **writer_kwargs: Any,
    ) -> None:
        super().__init__(save_dir, name=name, version=version)
        self._writer_kwargs = writer_kwargs
        self._writer: SummaryWriter | None = None
        self._hparams: dict[str, Any] = {}

    @property
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter``, created (with the run folder) on first access."""
        if self._writer is None:
            writer_cls = _summary_writer_class()
            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = writer_cls(log_dir=self.log_dir, **self._writer_kwargs)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        writer = self.experiment
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        writer = self.experiment  # first: a missing tensorboard is reported with the install hint
        from torch.utils.tensorboard.summary import hparams

        self._hparams.update(params)
        write_yaml_atomic(os.path.join(self.log_dir, HPARAMS_FILE), self._hparams)

        # Only the session-start summary is written. The "experiment" summary that hparams() also
        # returns would pin the HPARAMS table to the metric names given here (none) and, with
        # several versions in one TensorBoard, to whichever version it reads first; without it
        # TensorBoard builds the table from every version's hparams and scalar tags.
        _, session_start, _ = hparams(_tensorboard_hparams(self._hparams), {})
        _file_writer(writer).add_summary(session_start)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is None:
            return  # nothing was logged: do not create an empty run folder now
        if self._hparams:
            # The session's end status (shown in the HPARAMS tab) is only known now.
            _file_writer(self._writer).add_summary(_session_end_summary(status))
        self._writer.flush()
        self._writer.close()


def _summary_writer_class() -> type[SummaryWriter]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError for a too-old tensorboard too
        raise ModuleNotFoundError(
            "TensorBoardLogger needs the tensorboard package: pip install 'fulmen[tensorboard]' "
            f"(or pip install tensorboard). Import failed with: {err}"
        ) from err
    return SummaryWriter


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

    code = api_pb2.Status.Value(_END_STATUS.get(status, "STATUS_UNKNOWN"))
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=code), version=metadata.PLUGIN_DATA_VERSION
    )
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    meta = SummaryMetadata(plugin_data=plugin)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])
