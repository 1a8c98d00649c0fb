"""The compatibility ``Trainer``: ``fulmen.Trainer`` with PyTorch Lightning's defaults.

Differences from ``fulmen.Trainer``:

- ``logger=True`` is a TensorBoardLogger (a CSVLogger when tensorboard is not installed) writing
  ``<default_root_dir>/lightning_logs/version_N``, as in Lightning; checkpoints go to
  ``lightning_logs/version_N/checkpoints``.
- Lightning's extra arguments are accepted only where their meaning is kept: ``benchmark`` sets
  ``torch.backends.cudnn.benchmark`` (None leaves it as it is), and
  ``barebones=False``, ``enable_autolog_hparams=True``, ``model_registry=None`` (their defaults).
  Any other value, and any argument neither Lightning 2.x nor fulmen knows, raises ``FlagError``
  naming it.

- ``fit``/``validate``/``test``/``predict`` take Lightning's signatures: the module as ``model=``
  (fulmen's ``system=`` works too) and, for ``validate``/``test``, Lightning's positional order
  ``(model, dataloaders, ckpt_path, verbose, datamodule)`` (fulmen's order, with ``datamodule``
  third, is recognised by type).
- ``ckpt_path`` as in Lightning: ``validate``/``test``/``predict`` without a model after ``fit``
  load the best checkpoint of that fit (``ckpt_path=None`` means ``"best"``; the current weights
  when no checkpoint was written), and ``"best"`` is the first ``ModelCheckpoint``'s
  ``best_model_path``, which without a ``monitor`` is the newest checkpoint it wrote.

- Lightning's read-only Trainer properties that scripts and callbacks read: ``precision`` (the
  resolved name, ``"32-true"``, ``"bf16-mixed"``, ...), ``early_stopping_callback(s)``,
  ``validating`` / ``testing`` / ``predicting`` / ``interrupted``, ``is_last_batch``, and the
  flags ``gradient_clip_val``, ``gradient_clip_algorithm``, ``limit_*_batches``,
  ``val_check_interval``, ``check_val_every_n_epoch``, ``num_sanity_val_steps``,
  ``overfit_batches``, ``reload_dataloaders_every_n_epochs`` (after ``fast_dev_run`` is applied, as
  in Lightning).

``weights_only`` on ``fit``/``validate``/``test``/``predict`` and ``trainer.lightning_module`` come
from ``fulmen.Trainer`` itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
from typing import Any

import torch

from fulmen.datamodule import DataModule
from fulmen.errors import FlagError
from fulmen.lightning._rules import LIGHTNING_RULES
from fulmen.trainer.trainer import Trainer as _FulmenTrainer

# Lightning argument -> (the one value fulmen honours, what to do instead).
_DEFAULT_ONLY: dict[str, tuple[Any, str]] = {
    "barebones": (
        False,
        "fulmen has no barebones mode; turn off what costs time with enable_checkpointing=False, "
        "enable_progress_bar=False, enable_model_summary=False, logger=False",
    ),
    "enable_autolog_hparams": (
        True,
        "fulmen always sends the hyperparameters to the loggers; keep them out with "
        "self.save_hyperparameters(logger=False)",
    ),
    "model_registry": (None, "fulmen has no model registry; upload checkpoints yourself"),
}
# Lightning 1.x arguments that Lightning 2.x removed -> what replaces them there (and here).
_REMOVED_IN_2: dict[str, str] = {
    "resume_from_checkpoint": "resume with trainer.fit(model, ..., ckpt_path=path) (or ckpt_path='last')",
    "gpus": "use accelerator='gpu', devices=N",
    "tpu_cores": "use accelerator='tpu', devices=N (fulmen runs on CPUs and CUDA GPUs)",
    "ipus": "use accelerator=..., devices=N (fulmen runs on CPUs and CUDA GPUs)",
    "num_processes": "use accelerator='cpu', devices=N",
    "auto_select_gpus": "use devices=N (or a list of GPU indices)",
    "auto_lr_find": "use Tuner(trainer).lr_find(model) from fulmen.lightning.tuner",
    "auto_scale_batch_size": "use Tuner(trainer).scale_batch_size(model) from fulmen.lightning.tuner",
    "checkpoint_callback": "use enable_checkpointing=True/False",
    "weights_summary": "use enable_model_summary=..., or callbacks=[ModelSummary(max_depth=...)]",
    "progress_bar_refresh_rate": "use callbacks=[TQDMProgressBar(refresh_rate=N)], or enable_progress_bar=False",
    "stochastic_weight_avg": "use callbacks=[StochasticWeightAveraging(swa_lrs=...)]",
    "replace_sampler_ddp": "use use_distributed_sampler=True/False",
    "reload_dataloaders_every_epoch": "use reload_dataloaders_every_n_epochs=1",
    "track_grad_norm": "log gradient norms yourself in on_before_optimizer_step",
    "terminate_on_nan": "not needed: fulmen always stops on a NaN or infinite loss (detect_anomaly=True finds its cause)",
    "flush_logs_every_n_steps": "give it to the logger: CSVLogger(..., flush_logs_every_n_steps=N)",
    "prepare_data_per_node": "set it on the LightningDataModule",
    "amp_backend": "use precision='16-mixed' or 'bf16-mixed'",
    "amp_level": "use precision='16-mixed' or 'bf16-mixed'",
    "move_metrics_to_cpu": "not needed: logged values are kept where they are computed",
    "multiple_trainloader_mode": "return a CombinedLoader-like iterable from train_dataloader yourself",
}
_FULMEN_FLAGS = frozenset(inspect.signature(_FulmenTrainer.__init__).parameters) - {"self"}
#: The flags this Trainer takes that ``fulmen.Trainer`` does not, with Lightning's defaults: all
#: of Lightning 2.x's Trainer flags are fulmen's flags (``fulmen.trainer._validate.LoopConfig`` and
#: ``fulmen.Trainer``'s signature) plus these (checked by tests/trainer/test_flag_table.py).
LIGHTNING_ONLY_FLAGS: dict[str, Any] = {"benchmark": None, **{k: v[0] for k, v in _DEFAULT_ONLY.items()}}


class Trainer(_FulmenTrainer):
    """``fulmen.Trainer`` taking Lightning 2.x arguments and defaults (see the module docstring)."""

    rules = LIGHTNING_RULES

    def __init__(
        self,
        *,
        logger: Any = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        benchmark: bool | None = None,
        **flags: Any,
    ) -> None:
        for name, value in flags.items():
            if name in _DEFAULT_ONLY:
                default, advice = _DEFAULT_ONLY[name]
                if value is not default and value != default:
                    raise FlagError(
                        f"Trainer({name}={value!r}) is a Lightning argument fulmen.lightning does not support "
                        f"(only {name}={default!r}, its default): {advice}."
                    )
            elif name in _REMOVED_IN_2:
                raise FlagError(
                    f"Trainer({name}=...) is a Lightning 1.x argument that Lightning 2.x removed: "
                    f"{_REMOVED_IN_2[name]}."
                )
            elif name not in _FULMEN_FLAGS:
                raise FlagError(
                    f"Trainer({name}=...) is not an argument of Lightning 2.x's Trainer that fulmen.lightning "
                    "supports; see docs/migrating-from-lightning.md."
                )
        flags = {k: v for k, v in flags.items() if k not in _DEFAULT_ONLY}
        # Lightning's None for these means "not given": fulmen's default applies.
        flags = {k: v for k, v in flags.items() if not (v is None and k in _NONE_IS_DEFAULT)}
        if benchmark is not None:
            if not isinstance(benchmark, bool):
                raise FlagError(f"Trainer(benchmark={benchmark!r}): expected True, False or None.")
            if benchmark and flags.get("deterministic"):
                raise FlagError(
                    "Trainer(benchmark=True, deterministic=True): cuDNN benchmarking is not deterministic; "
                    "drop one of the two."
                )
        root = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()
        if logger is None:  # Lightning's default (a config saved by LightningCLI holds it): the default logger
            logger = True
        if logger is True:
            logger = _default_logger(root)
        # As Lightning: max_time is a Timer callback (its stop waits for min_epochs/min_steps), not
        # fulmen's hard limit; alone, it leaves the epochs unlimited.
        max_time = flags.pop("max_time", None)
        timer = _max_time_timer(max_time)
        if timer is not None and flags.get("max_epochs") is None and flags.get("max_steps", -1) == -1:
            flags["max_epochs"] = -1
        # Lightning accepts max_epochs=0 / max_steps=0 (fit sets up, runs the sanity check and trains
        # nothing); fulmen's Trainer refuses them, so they are set after it checked the flags.
        zero: dict[str, Any] = {
            k: 0
            for k in ("max_epochs", "max_steps")
            if type(flags.get(k)) is int and flags[k] == 0 and not flags.get("fast_dev_run")
        }
        flags.update(dict.fromkeys(zero, 1))
        super().__init__(logger=logger, default_root_dir=root, **flags)
        if zero:
            self.config = dataclasses.replace(self.config, **zero)
            self.flags.update(zero)
        if timer is not None:
            self.flags["max_time"] = max_time
            _add_timer(self, timer)
        if benchmark is not None:  # as Lightning: the global cuDNN setting, when the Trainer is built
            torch.backends.cudnn.benchmark = benchmark
        if self.config.fast_dev_run and logger not in (False, None, []):
            # As Lightning: the loggers are replaced by one that records nothing, so code that
            # calls self.logger.experiment.<anything>(...) still runs.
            from fulmen.lightning.loggers._experiment import DummyLogger

            self.loggers = [DummyLogger()]
        _explain_batch_flags(flags, self.config)

    # -- Lightning's read-only properties ------------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        """Lightning's value: ``-1`` when epochs are unlimited (``fulmen.Trainer`` says None)."""
        return self.config.max_epochs

    @property
    def precision(self) -> str:
        """The precision in Lightning's full name: ``"32-true"``, ``"16-mixed"``, ``"bf16-mixed"``, ..."""
        return str(self.strategy.precision.name)

    @property
    def early_stopping_callbacks(self) -> list[Any]:
        from fulmen.callbacks.early_stopping import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Any:
        """The first ``EarlyStopping`` callback, or None."""
        callbacks = self.early_stopping_callbacks
        return callbacks[0] if callbacks else None

    @property
    def validating(self) -> bool:
        """True while a validation loop runs: ``trainer.validate`` or validation inside ``fit``
        (not the sanity check)."""
        if self.state.status != "running" or self.sanity_checking:
            return False
        return self.state.stage == "validate" or (self.state.stage == "fit" and self.metrics.validating)

    @property
    def testing(self) -> bool:
        return self.state.status == "running" and self.state.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.state.status == "running" and self.state.stage == "predict"

    @property
    def interrupted(self) -> bool:
        """True after a run was stopped by Ctrl-C (``KeyboardInterrupt``) or ``SystemExit``."""
        return self.state.status == "interrupted"

    @property
    def is_last_batch(self) -> bool:
        """Whether the training batch being run (or just run) is the epoch's last; Lightning's
        manual optimization docs step schedulers with it."""
        n = self.num_training_batches
        return self.state.stage == "fit" and not math.isinf(n) and n > 0 and self.loop.batches_done >= n

    @property
    def model(self) -> Any:
        """The module as the strategy runs it: ``DistributedDataParallel`` (or the sharded module)
        during a distributed fit, else the LightningModule itself."""
        wrapped = getattr(self.strategy, "model", None)
        return wrapped if wrapped is not None else self.system

    # Lightning's trainer.val_dataloaders / test_dataloaders / predict_dataloaders: the DataLoader
    # itself when there is one, a list for several, None before any (fulmen's Trainer: always a list).
    val_dataloaders = property(
        lambda self: _as_given(self.__dict__.get("_val_loaders")),
        lambda self, loaders: self.__dict__.__setitem__("_val_loaders", loaders),
    )
    test_dataloaders = property(
        lambda self: _as_given(self.__dict__.get("_test_loaders")),
        lambda self, loaders: self.__dict__.__setitem__("_test_loaders", loaders),
    )
    predict_dataloaders = property(
        lambda self: _as_given(self.__dict__.get("_predict_loaders")),
        lambda self, loaders: self.__dict__.__setitem__("_predict_loaders", loaders),
    )

    gradient_clip_val = property(lambda self: self.config.gradient_clip_val)
    # As in Lightning: None when not given (clipping by norm then), else the algorithm in lower case;
    # what configure_gradient_clipping receives.
    gradient_clip_algorithm = property(lambda self: _given_clip_algorithm(self))
    limit_train_batches = property(lambda self: self.config.limit_train_batches)
    limit_val_batches = property(lambda self: self.config.limit_val_batches)
    limit_test_batches = property(lambda self: self.config.limit_test_batches)
    limit_predict_batches = property(lambda self: self.config.limit_predict_batches)
    val_check_interval = property(lambda self: self.config.val_check_interval)
    check_val_every_n_epoch = property(lambda self: self.config.check_val_every_n_epoch)
    num_sanity_val_steps = property(lambda self: self.config.num_sanity_val_steps)
    overfit_batches = property(lambda self: self.config.overfit_batches)
    reload_dataloaders_every_n_epochs = property(lambda self: self.config.reload_dataloaders_every_n_epochs)

    # -- Lightning's entry-point signatures (model=; validate/test take ckpt_path third) ---------------
    def fit(  # type: ignore[override]  # Lightning's signature, by design
        self,
        model: Any = None,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        *,
        system: Any = None,
        trusted_keys: Any = None,
    ) -> None:
        model = _one_module("fit", model, system)
        if model is None:
            raise TypeError("Trainer.fit() needs the LightningModule to train: trainer.fit(model, ...).")
        super().fit(
            model, train_dataloaders, val_dataloaders, datamodule, ckpt_path=ckpt_path, weights_only=weights_only,
            trusted_keys=trusted_keys,
        )

    def validate(  # type: ignore[override]  # Lightning's signature, by design
        self,
        model: Any = None,
        dataloaders: Any = None,
        ckpt_path: Any = None,
        verbose: Any = True,
        datamodule: Any = None,
        weights_only: bool | None = None,
        *,
        system: Any = None,
        trusted_keys: Any = None,
    ) -> list[dict[str, float]]:
        model = _one_module("validate", model, system)
        ckpt_path, datamodule = _ckpt_and_datamodule(ckpt_path, datamodule)
        ckpt_path = self._default_ckpt_path("validate", model, ckpt_path)
        return super().validate(
            model, dataloaders, datamodule, verbose=verbose, ckpt_path=ckpt_path, weights_only=weights_only,
            trusted_keys=trusted_keys,
        )

    def test(  # type: ignore[override]  # Lightning's signature, by design
        self,
        model: Any = None,
        dataloaders: Any = None,
        ckpt_path: Any = None,
        verbose: Any = True,
        datamodule: Any = None,
        weights_only: bool | None = None,
        *,
        system: Any = None,
        trusted_keys: Any = None,
        groups: Any = None,
    ) -> list[dict[str, float]]:
        model = _one_module("test", model, system)
        ckpt_path, datamodule = _ckpt_and_datamodule(ckpt_path, datamodule)
        ckpt_path = self._default_ckpt_path("test", model, ckpt_path)
        return super().test(
            model, dataloaders, datamodule, verbose=verbose, ckpt_path=ckpt_path, weights_only=weights_only,
            trusted_keys=trusted_keys, groups=groups,
        )

    def predict(  # type: ignore[override]  # Lightning's signature, by design
        self,
        model: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        return_predictions: bool | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        *,
        system: Any = None,
        trusted_keys: Any = None,
    ) -> list[Any] | None:
        model = _one_module("predict", model, system)
        ckpt_path = self._default_ckpt_path("predict", model, ckpt_path)
        return super().predict(
            model,
            dataloaders,
            datamodule,
            return_predictions=True if return_predictions is None else return_predictions,
            ckpt_path=ckpt_path,
            weights_only=weights_only,
            trusted_keys=trusted_keys,
        )

    def _default_ckpt_path(self, stage: str, model: Any, ckpt_path: Any) -> Any:
        """Lightning: without a model, an evaluation after ``fit`` uses the best checkpoint of that
        fit. Where Lightning would raise for want of a checkpoint, the current weights are used."""
        if ckpt_path is not None or model is not None or self.system is None:
            return ckpt_path
        callback = self.checkpoint_callback
        if callback is None or not callback.best_model_path or not os.path.isfile(callback.best_model_path):
            return None
        from fulmen.lightning.utilities.rank_zero import rank_zero_info

        rank_zero_info(
            f"`.{stage}(ckpt_path=None)` was called without a model: the best checkpoint of the previous fit is "
            f"used ({callback.best_model_path}). Pass ckpt_path='best' or 'last' to choose."
        )
        return "best"

    def _resolve_ckpt(self, ckpt_path: Any) -> str | None:
        """``"best"`` as in Lightning: the first ``ModelCheckpoint``'s ``best_model_path``; without a
        ``monitor`` that is the newest checkpoint it wrote (fulmen's own Trainer asks for a monitor)."""
        if isinstance(ckpt_path, str) and ckpt_path == "best":
            callback = self.checkpoint_callback
            if callback is None:
                raise ValueError('ckpt_path="best" is set but no ModelCheckpoint is configured.')
            if callback.monitor is None:
                if not callback.best_model_path:
                    raise ValueError(
                        'ckpt_path="best" is set but the ModelCheckpoint has not saved a checkpoint yet '
                        "(train first, or pass a checkpoint's path)."
                    )
                return str(callback.best_model_path)
        return super()._resolve_ckpt(ckpt_path)


def _max_time_timer(max_time: Any) -> Any:
    """The ``Timer`` that carries out ``Trainer(max_time=...)`` (None without one)."""
    if max_time is None:
        return None
    from fulmen.callbacks.timer import Timer
    from fulmen.errors import ArgumentError

    try:
        return Timer(duration=max_time, interval="step")
    except ArgumentError as err:
        raise FlagError(f"Trainer(max_time={max_time!r}): {err}") from err


def _add_timer(trainer: Trainer, timer: Any) -> None:
    from fulmen.callbacks.timer import Timer
    from fulmen.lightning.utilities.rank_zero import rank_zero_info

    if any(isinstance(cb, Timer) for cb in trainer.callbacks):
        rank_zero_info("Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer.")
        return
    trainer.callbacks.append(timer)


def _as_given(loaders: Any) -> Any:
    if not loaders:
        return None
    return loaders[0] if isinstance(loaders, list) and len(loaders) == 1 else loaders


_NONE_IS_DEFAULT = frozenset(
    (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "limit_predict_batches",
        "val_check_interval",
        "precision",
        "num_sanity_val_steps",
        "log_every_n_steps",
        "enable_checkpointing",
        "enable_progress_bar",
        "enable_model_summary",
    )
)


def _explain_batch_flags(flags: dict[str, Any], cfg: Any) -> None:
    """Lightning's info messages for flags whose int/float meaning is easy to mix up: a value of
    ``1`` (one batch) or ``1.0`` (all batches) given explicitly, and the ``fast_dev_run`` notice."""
    from fulmen.lightning.utilities.rank_zero import rank_zero_info

    names = ["overfit_batches"]
    if cfg.fast_dev_run:
        n = cfg.fast_dev_run
        rank_zero_info(
            f"Running in `fast_dev_run` mode: will run the requested loop using {n} batch(es). Logging and "
            f"checkpointing is suppressed."
        )
    else:
        if not cfg.overfit_batches:
            names += ["limit_train_batches", "limit_val_batches"]
        names += ["limit_test_batches", "limit_predict_batches", "val_check_interval"]
    for name in names:
        value = flags.get(name)
        if isinstance(value, bool) or value is None or value != 1:
            continue
        if isinstance(value, int):
            what = {
                "limit_train_batches": "1 batch per epoch will be used.",
                "val_check_interval": "validation will run after every batch.",
            }.get(name, "1 batch will be used.")
        elif isinstance(value, float):
            what = {
                "limit_train_batches": "100% of the batches per epoch will be used.",
                "val_check_interval": "validation will run at the end of the training epoch.",
            }.get(name, "100% of the batches will be used.")
        else:
            continue
        rank_zero_info(f"`Trainer({name}={value!r})` was configured so {what}")


def _given_clip_algorithm(trainer: Any) -> Any:
    algorithm = trainer.flags.get("gradient_clip_algorithm")
    return algorithm.lower() if isinstance(algorithm, str) else algorithm


def _one_module(stage: str, model: Any, system: Any) -> Any:
    if model is not None and system is not None:
        raise TypeError(f"Trainer.{stage}() got both model= and system=; pass the module once.")
    return model if model is not None else system


def _ckpt_and_datamodule(ckpt_path: Any, datamodule: Any) -> tuple[Any, Any]:
    """Lightning's ``validate``/``test`` take ``(model, dataloaders, ckpt_path, verbose, datamodule)``,
    fulmen's ``(system, dataloaders, datamodule, verbose, ckpt_path)``: a call in fulmen's order
    (a datamodule third, or a path fifth) is put right."""
    if isinstance(ckpt_path, DataModule) or isinstance(datamodule, (str, os.PathLike)):
        return datamodule, ckpt_path
    return ckpt_path, datamodule


def _default_logger(root: str) -> Any:
    if _tensorboard_available():
        from fulmen.lightning.loggers.tensorboard import TensorBoardLogger

        return TensorBoardLogger(root)
    from fulmen.lightning.loggers.csv_logs import CSVLogger

    return CSVLogger(root)


def _tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None
