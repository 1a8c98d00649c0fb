"""``lightning.pytorch.core.saving``: reading and writing ``hparams.yaml`` (the file the CSV and
TensorBoard loggers write next to the metrics)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fulmen.loggers._yaml import write_yaml_atomic

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]


def _omegaconf() -> Any:
    from fulmen.lightning.utilities.imports import _OMEGACONF_AVAILABLE

    if not _OMEGACONF_AVAILABLE:
        return None
    import omegaconf

    return omegaconf


def load_hparams_from_yaml(config_yaml: str | os.PathLike[str], use_omegaconf: bool = True) -> Any:
    """The hyperparameters in ``config_yaml`` as a dict (an OmegaConf ``DictConfig`` when
    ``use_omegaconf`` and omegaconf is installed, as in Lightning). A missing file gives ``{}``
    with a warning."""
    from fulmen.lightning.utilities.rank_zero import rank_zero_warn

    path = os.fspath(config_yaml)
    if not os.path.isfile(path):
        rank_zero_warn(f"load_hparams_from_yaml: {path} does not exist; returning no hyperparameters ({{}}).")
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        hparams = yaml.safe_load(f) or {}
    omegaconf = _omegaconf() if use_omegaconf else None
    if omegaconf is not None:
        return omegaconf.OmegaConf.create(hparams)
    return hparams


def save_hparams_to_yaml(
    config_yaml: str | os.PathLike[str], hparams: Mapping[str, Any] | Any, use_omegaconf: bool = True
) -> None:
    """Write ``hparams`` (a dict, an ``argparse.Namespace`` or an OmegaConf container) to
    ``config_yaml``. Values YAML cannot hold as they are (tensors, paths, classes) are written as
    plain values or their text, as the loggers write them. The folder must exist."""
    path = os.fspath(config_yaml)
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise RuntimeError(f"save_hparams_to_yaml: missing folder {folder}; create it first.")
    omegaconf = _omegaconf() if use_omegaconf else None
    if omegaconf is not None and isinstance(hparams, omegaconf.Container):
        hparams = omegaconf.OmegaConf.to_container(hparams, resolve=True)
    if not isinstance(hparams, Mapping):
        hparams = vars(hparams)
    write_yaml_atomic(path, hparams)
