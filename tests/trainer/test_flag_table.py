"""One declaration of the Trainer's flags: ``LoopConfig``'s fields (``fulmen.trainer._validate``)
hold each loop flag's default and check; everything else that names the flags is held to them here.

- ``fulmen.Trainer.__init__`` keeps an explicit signature (for IDEs, type checkers and the
  ``fulmen fit --config`` parser): its loop flags are LoopConfig's, in the same order, with the
  same defaults; the other flags (devices, precision, loggers, callbacks, the run folder) are
  listed in ``NOT_LOOP_FLAGS`` below, and their defaults are declared in the signature only.
- The flag table of docs/trainer.md lists exactly the signature's flags, with its defaults.
- ``fulmen.lightning.Trainer`` takes exactly fulmen's flags plus its Lightning-only ones
  (``fulmen.lightning._trainer.LIGHTNING_ONLY_FLAGS``), with fulmen's defaults where it declares
  one of fulmen's flags itself, and its "None means the default" flags are loop flags.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import fulmen
import fulmen.lightning as L
from fulmen.errors import FlagError
from fulmen.lightning import _trainer as lightning_trainer
from fulmen.trainer._validate import LOOP_FLAGS, LoopConfig, build_loop_config

ROOT = Path(__file__).resolve().parents[2]

#: The Trainer's flags that are not loop configuration, in the signature's order.
NOT_LOOP_FLAGS = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "sync_batchnorm",
    "use_distributed_sampler",
    "precision",
    "logger",
    "callbacks",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "default_root_dir",
    "profiler",
    "plugins",
)


def _signature(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``1``, ``1.0`` and ``True`` are three different defaults)."""
    return type(a) is type(b) and a == b


def test_loop_config_declares_each_loop_flag_once_with_its_default_and_check() -> None:
    flags = [f for f in dataclasses.fields(LoopConfig) if f.metadata]
    assert [f.name for f in flags] == list(LOOP_FLAGS)
    assert all(callable(f.metadata["check"]) and "default" in f.metadata for f in flags)
    derived = {f.name for f in dataclasses.fields(LoopConfig)} - set(LOOP_FLAGS)
    assert derived == {"default_max_epochs", "val_check_time"}  # resolved from the flags, not flags


def test_trainer_signature_is_loop_config_plus_the_other_flags() -> None:
    params = _signature(fulmen.Trainer)
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
    assert [n for n in params if n in LOOP_FLAGS] == list(LOOP_FLAGS), "loop flags missing or out of order"
    assert tuple(n for n in params if n not in LOOP_FLAGS) == NOT_LOOP_FLAGS
    wrong = {n: (params[n].default, d) for n, d in LOOP_FLAGS.items() if not _same(params[n].default, d)}
    assert not wrong, f"signature default != LoopConfig default: {wrong}"


def test_the_defaults_pass_their_checks() -> None:
    assert build_loop_config({}) == build_loop_config(dict(LOOP_FLAGS))
    assert fulmen.Trainer(logger=False, enable_checkpointing=False).config == build_loop_config({})


def test_each_loop_flag_is_checked() -> None:
    """Every loop flag refuses a value of the wrong kind, naming itself."""
    for name in LOOP_FLAGS:
        with pytest.raises(FlagError, match=rf"^Trainer\({name}=<object object at 0x\w+>\): "):
            build_loop_config({name: object()})


def _docs_flag_table() -> dict[str, str]:
    """docs/trainer.md's "## Flags" table: flag -> its Default cell."""
    text = (ROOT / "docs" / "trainer.md").read_text(encoding="utf-8")
    section = text.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or cells[0] == "Flag" or set(cells[0]) <= set("-: "):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"docs/trainer.md lists `{name}` twice"
        rows[name] = cells[1]
    return rows


def test_docs_table_lists_exactly_the_flags_with_their_defaults() -> None:
    rows = _docs_flag_table()
    params = _signature(fulmen.Trainer)
    assert set(rows) == set(params), (
        f"missing from docs/trainer.md: {sorted(set(params) - set(rows))}; "
        f"not flags: {sorted(set(rows) - set(params))}"
    )
    for name, cell in rows.items():
        first = re.match(r"`([^`]*)`", cell)  # the cell's first code span is the default
        assert first is not None, f"docs/trainer.md: `{name}`'s default is not in backticks: {cell}"
        default = params[name].default
        assert _same(ast.literal_eval(first[1]), default), f"docs/trainer.md `{name}`: {cell}; Trainer: {default!r}"


def test_lightning_trainer_takes_fulmens_flags_and_its_own() -> None:
    fulmen_flags = _signature(fulmen.Trainer)
    own = lightning_trainer.LIGHTNING_ONLY_FLAGS
    assert not set(own) & set(fulmen_flags)
    assert set(fulmen_flags) == lightning_trainer._FULMEN_FLAGS
    assert not set(lightning_trainer._REMOVED_IN_2) & (set(fulmen_flags) | set(own))
    for name, param in _signature(L.Trainer).items():
        if param.kind is param.VAR_KEYWORD:
            continue
        assert name in fulmen_flags or name in own, name
        if name in fulmen_flags:  # declared again for Lightning's behaviour: the same default
            assert _same(param.default, fulmen_flags[name].default), name
        else:
            assert _same(param.default, own[name]), name
    for name in lightning_trainer._NONE_IS_DEFAULT:  # None means the default, which is not None
        assert name in fulmen_flags and fulmen_flags[name].default is not None, name


def test_lightning_trainer_accepts_every_flag_at_its_default(tmp_path: Path) -> None:
    defaults = {n: p.default for n, p in _signature(fulmen.Trainer).items()}
    defaults.update(lightning_trainer.LIGHTNING_ONLY_FLAGS, default_root_dir=str(tmp_path), logger=False)
    trainer = L.Trainer(**defaults)
    assert trainer.config == build_loop_config({})
    with pytest.raises(FlagError, match=r"not an argument of Lightning 2\.x's Trainer"):
        L.Trainer(no_such_flag=1)


#: Lightning 2.x's ``Trainer.__init__`` defaults (lightning/pytorch/trainer/trainer.py), where
#: None often means "the default" and is replaced inside Lightning's Trainer.
LIGHTNING_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "strategy": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "precision": None,
    "logger": None,
    "callbacks": None,
    "fast_dev_run": False,
    "max_epochs": None,
    "min_epochs": None,
    "max_steps": -1,
    "min_steps": None,
    "max_time": None,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "limit_test_batches": None,
    "limit_predict_batches": None,
    "overfit_batches": 0.0,
    "val_check_interval": None,
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": None,
    "log_every_n_steps": None,
    "enable_checkpointing": None,
    "enable_progress_bar": None,
    "enable_model_summary": None,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "gradient_clip_algorithm": None,
    "deterministic": None,
    "benchmark": None,
    "inference_mode": True,
    "use_distributed_sampler": True,
    "profiler": None,
    "detect_anomaly": False,
    "barebones": False,
    "plugins": None,
    "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0,
    "default_root_dir": None,
    "enable_autolog_hparams": True,
    "model_registry": None,
}
def test_lightning_trainer_has_lightnings_flags() -> None:
    assert set(LIGHTNING_DEFAULTS) == set(_signature(fulmen.Trainer)) | set(lightning_trainer.LIGHTNING_ONLY_FLAGS)
    assert all(_same(LIGHTNING_DEFAULTS[n], d) for n, d in lightning_trainer.LIGHTNING_ONLY_FLAGS.items())


def _what_it_runs(trainer: fulmen.Trainer) -> tuple[Any, ...]:
    return (
        trainer.config,
        trainer.strategy.precision.name,
        [type(c).__name__ for c in trainer.callbacks],
        [type(lg).__name__ for lg in trainer.loggers],
        type(trainer.profiler).__name__,
    )


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, d in LIGHTNING_DEFAULTS.items()
        if n in lightning_trainer.LIGHTNING_ONLY_FLAGS or not _same(d, _signature(fulmen.Trainer)[n].default)
    ],
)
def test_lightnings_default_means_the_default(name: str, tmp_path: Path) -> None:
    """Where Lightning's default is not fulmen's (mostly None), fulmen.lightning's Trainer given
    Lightning's default runs as if the flag were not given."""
    given = L.Trainer(default_root_dir=tmp_path, **{name: LIGHTNING_DEFAULTS[name]})
    assert _what_it_runs(given) == _what_it_runs(L.Trainer(default_root_dir=tmp_path))
