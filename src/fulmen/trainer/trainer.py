"""``fulmen.Trainer``: the flags, the entry points, and the state callbacks read."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from fulmen.callbacks.base import Callback
from fulmen.errors import DataError, FlagError
from fulmen.loggers.base import Logger
from fulmen.run_dir import redirected
from fulmen.runtime.select import build_strategy
from fulmen.runtime.strategy import Strategy
from fulmen.system import System
from fulmen.trainer import _checkpointing
from fulmen.trainer._hooks import HookTable
from fulmen.trainer._optim import SchedulerConfig
from fulmen.trainer._rules import FULMEN_RULES, LoopRules
from fulmen.trainer._validate import LoopConfig, build_loop_config
from fulmen.trainer._where import note_run_error
from fulmen.trainer.metrics import Metrics
from fulmen.trainer.state import LoopState, TrainerState


class Trainer:
    """Runs a ``System``: ``fit``, ``validate``, ``test`` and ``predict``.

    The flags keep PyTorch Lightning's names. Every flag is checked here, before any data is
    loaded, and a bad value raises ``fulmen.errors.FlagError`` naming the flag and the fix.
    """

    #: Where fulmen and Lightning differ (``fulmen.trainer._rules``); ``fulmen.lightning.Trainer``
    #: sets Lightning's.
    rules: ClassVar[LoopRules] = FULMEN_RULES

    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        sync_batchnorm: bool = False,
        use_distributed_sampler: bool = True,
        precision: Any = "32-true",
        logger: bool | Logger | Sequence[Logger] | None = True,
        callbacks: Callback | Sequence[Callback] | None = None,
        max_epochs: int | None = None,
        min_epochs: int | None = None,
        max_steps: int = -1,
        min_steps: int | None = None,
        max_time: Any = None,
        limit_train_batches: int | float = 1.0,
        limit_val_batches: int | float = 1.0,
        limit_test_batches: int | float = 1.0,
        limit_predict_batches: int | float = 1.0,
        overfit_batches: int | float = 0.0,
        val_check_interval: int | float | str | dict[str, int] | datetime.timedelta = 1.0,
        check_val_every_n_epoch: int | None = 1,
        num_sanity_val_steps: int = 2,
        log_every_n_steps: int = 50,
        fast_dev_run: bool | int = False,
        enable_checkpointing: bool = True,
        enable_progress_bar: bool = True,
        enable_model_summary: bool = True,
        default_root_dir: str | os.PathLike[str] | None = None,
        deterministic: bool | str | None = False,
        inference_mode: bool = True,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        reload_dataloaders_every_n_epochs: int = 0,
        detect_anomaly: bool = False,
        profiler: Any = None,
        plugins: Any = None,
    ) -> None:
        # The flags as given, for the run record (run.json). The loop flags' defaults and checks are
        # LoopConfig's fields (trainer/_validate.py); tests/trainer/test_flag_table.py holds this
        # signature, fulmen.lightning's Trainer and docs/trainer.md to them.
        #: The flags as given (for the run record, run.json).
        self.flags: dict[str, Any] = {k: v for k, v in locals().items() if k != "self"}
        #: The loop's flags, checked, with their defaults filled in (read-only: a frozen dataclass).
        self.config: LoopConfig = build_loop_config(self.flags)
        if not isinstance(use_distributed_sampler, bool):
            raise FlagError(f"Trainer(use_distributed_sampler={use_distributed_sampler!r}): expected True or False.")
        self.use_distributed_sampler = use_distributed_sampler
        from fulmen.profilers import resolve_profiler

        #: ``profiler="simple" | "advanced" | "pytorch"`` or a Profiler: times hooks and steps.
        self.profiler = resolve_profiler(profiler)
        # The runtime layer: processes, devices and precision (the loops' only path to hardware).
        self.strategy: Strategy = build_strategy(accelerator, strategy, devices, num_nodes, precision, sync_batchnorm)
        if plugins is not None:  # AsyncCheckpointIO: checkpoint files written in the background
            from fulmen.checkpoint.background import checkpoint_io_from_plugins

            self.strategy.checkpoint_io = checkpoint_io_from_plugins(plugins)
        if self.config.deterministic:
            # Here rather than when a run starts: cuBLAS reads its workspace setting when CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # "warn": an operation without a deterministic version warns instead of raising.
            torch.use_deterministic_algorithms(True, warn_only=self.config.deterministic == "warn")
            torch.backends.cudnn.benchmark = False
        self.default_root_dir = redirected(os.fspath(default_root_dir)) if default_root_dir is not None else os.getcwd()
        self.loggers: list[Logger] = self._build_loggers(logger)
        self.callbacks: list[Callback] = self._build_callbacks(
            callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary
        )
        self._init_state()

    def _init_state(self) -> None:
        """The run's state, before any run: progress, data, metrics."""
        self.state = TrainerState()
        #: Where the training loop is: epoch, global step, batches done, phase, stop requests
        #: (``fulmen.trainer.state.LoopState``; its state dict is the checkpoint's loop section).
        self.loop = LoopState(accumulate_grad_batches=self.config.accumulate_grad_batches)
        #: What the current run logged: the metric stores, the kept values, sending to the loggers.
        self.metrics = Metrics(self)
        self.sanity_checking = False
        self.num_training_batches: int | float = 0
        self.num_sanity_val_batches: list[int | float] = []
        self.num_val_batches: list[int | float] = []
        self.num_test_batches: list[int | float] = []
        self.num_predict_batches: list[int | float] = []
        #: In ``predict``, when a callback sets ``needs_batch_indices = True`` (a prediction
        #: writer): the dataset indices of each batch, ``[dataloader_idx][batch_idx]``.
        self.predict_batch_indices: list[list[list[int]]] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.train_dataloader: Any = None
        self._clips_gradients = False
        self._clip_kwargs: dict[str, Any] | None = None
        #: The configuration this Trainer was built from (``fulmen fit --config``), for run.json.
        self.run_config: dict[str, Any] | None = None
        #: The checkpoint the current or last fit resumed from (None for a fresh start).
        self.ckpt_path: str | None = None
        self.val_dataloaders: list[Any] = []
        self.test_dataloaders: list[Any] = []
        self.predict_dataloaders: list[Any] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.system: System | None = None
        self.datamodule: Any = None
        self._hooks: HookTable | None = None

    # -- construction helpers ------------------------------------------------------------------
    def _build_loggers(self, logger: Any) -> list[Logger]:
        if self.config.fast_dev_run or logger is False or logger is None:
            return []
        if logger is True:
            from fulmen.loggers.csv import CSVLogger

            return [CSVLogger(self.default_root_dir)]
        loggers = [logger] if isinstance(logger, Logger) else list(logger) if isinstance(logger, Sequence) else None
        if loggers is None or not all(isinstance(lg, Logger) for lg in loggers):
            raise FlagError(
                f"Trainer(logger={logger!r}): expected True (a CSV logger), False, a fulmen.Logger or a list of them."
            )
        return loggers

    def _build_callbacks(self, callbacks: Any, checkpointing: bool, progress: bool, summary: bool) -> list[Callback]:
        from fulmen.callbacks.checkpoint import ModelCheckpoint
        from fulmen.callbacks.progress import ProgressBar
        from fulmen.callbacks.summary import ModelSummary

        given = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        classes = [c for c in given if isinstance(c, type) and issubclass(c, Callback)]
        if classes:
            names = ", ".join(c.__name__ for c in classes)
            raise FlagError(
                f"Trainer(callbacks=...): got the class {names}, not an instance; create it, e.g. "
                f"callbacks=[{classes[0].__name__}(...)]."
            )
        bad = [c for c in given if not isinstance(c, Callback)]
        if bad:
            raise FlagError(
                f"Trainer(callbacks=...): every callback must be a fulmen.Callback instance, got "
                f"{', '.join(type(c).__name__ for c in bad)}."
            )
        for flag, enabled, kind in (
            ("enable_checkpointing", checkpointing, ModelCheckpoint),
            ("enable_progress_bar", progress, ProgressBar),
            ("enable_model_summary", summary, ModelSummary),
        ):
            if not isinstance(enabled, bool):
                raise FlagError(f"Trainer({flag}={enabled!r}): expected True or False.")
            has = any(isinstance(c, kind) for c in given)
            if has and not enabled:
                raise FlagError(
                    f"Trainer({flag}=False) but callbacks include a {kind.__name__} (`{flag}=False` but found "
                    f"`{kind.__name__}` in callbacks); remove one of the two."
                )
            if enabled and not has and not (kind is ModelCheckpoint and self.config.fast_dev_run):
                given.append(kind())
        return given

    # -- properties ------------------------------------------------------------------------------
    @property
    def current_epoch(self) -> int:
        """The epoch running: epochs completed so far (``trainer.loop.epoch``)."""
        return self.loop.epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far (``trainer.loop.global_step``)."""
        return self.loop.global_step

    @property
    def should_stop(self) -> bool:
        """Set it to True (a callback, or the system) to stop the fit after the current batch, once
        ``min_epochs`` and ``min_steps`` are met."""
        return self.loop.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.loop.should_stop = bool(value)

    @property
    def accumulate_grad_batches(self) -> int:
        """Batches whose gradients add up before each optimizer step (a
        ``GradientAccumulationScheduler`` may change it at the start of an epoch)."""
        return self.loop.accumulate_grad_batches

    @accumulate_grad_batches.setter
    def accumulate_grad_batches(self, value: int) -> None:
        self.loop.accumulate_grad_batches = value

    @property
    def logger(self) -> Logger | None:
        """The first logger, or None."""
        return self.loggers[0] if self.loggers else None

    @property
    def lightning_module(self) -> System | None:
        """The system being run: ``trainer.system`` under PyTorch Lightning's name (an alias, for
        code and callbacks written for Lightning). None before the first ``fit``/``validate``/
        ``test``/``predict``."""
        return self.system

    @property
    def log_dir(self) -> str:
        """The run folder: the first logger's ``log_dir``, else ``default_root_dir``."""
        for lg in self.loggers:
            if lg.log_dir is not None:
                return lg.log_dir
        return self.default_root_dir

    @property
    def max_epochs(self) -> int | None:
        return None if self.config.max_epochs == -1 else self.config.max_epochs

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    @property
    def min_epochs(self) -> int:
        return self.config.min_epochs

    @property
    def min_steps(self) -> int:
        return self.config.min_steps

    @property
    def log_every_n_steps(self) -> int:
        return self.config.log_every_n_steps

    @property
    def fast_dev_run(self) -> int:
        return self.config.fast_dev_run

    @property
    def estimated_stepping_batches(self) -> int | float:
        """Optimizer steps this fit will take (for schedulers such as OneCycleLR): ``max_steps``, or
        ``max_epochs`` times the steps per epoch, whichever comes first; inf when neither bounds it.
        Available from ``configure_optimizers`` on (the training data is loaded before it)."""
        if self.train_dataloader is None:
            raise RuntimeError(
                "trainer.estimated_stepping_batches needs the training data: read it during fit (from "
                "configure_optimizers on)."
            )
        n = self.num_training_batches
        per_epoch = math.inf if math.isinf(n) else math.ceil(n / self.accumulate_grad_batches)
        total: int | float = per_epoch * self.config.max_epochs if self.config.max_epochs != -1 else math.inf
        if self.config.max_steps != -1:
            total = min(total, self.config.max_steps)
        return total if math.isinf(total) else int(total)

    @property
    def device(self) -> torch.device:
        return self.strategy.root_device

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def num_nodes(self) -> int:
        return self.strategy.num_nodes

    @property
    def num_devices(self) -> int:
        """Processes (devices) per node."""
        return max(1, self.strategy.world_size // max(1, self.strategy.num_nodes))

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def training(self) -> bool:
        return self.state.stage == "fit" and not self.sanity_checking and not self.metrics.validating

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        from fulmen.callbacks.checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Any:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Any:
        from fulmen.callbacks.progress import ProgressBar

        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

    @property
    def callback_metrics(self) -> dict[str, Any]:
        """Metrics callbacks can act on (tensors): the latest step values and the epoch values.

        Computed when read; reading does not synchronise with the device. Setting a key
        (``trainer.callback_metrics["lr"] = value``, as callbacks do in Lightning) keeps it for the
        rest of the run, until a value logged under the same name replaces it.
        """
        return self.metrics.callback_metrics()

    @property
    def logged_metrics(self) -> dict[str, Any]:
        """The values last sent to the loggers, by name (tensors, as in ``callback_metrics``)."""
        return self.metrics.logged_metrics()

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """Metrics logged with ``prog_bar=True``, as floats (converted when read: at refresh time)."""
        return self.metrics.progress_bar_metrics()

    # -- requests from callbacks -------------------------------------------------------------------
    def skip_optimizer_step(self) -> None:
        """Skip the optimizer step about to be taken: call it in ``on_before_optimizer_step``
        (``fulmen.callbacks.NonFiniteGuard(mode="skip")`` does, for NaN/inf gradients).

        The request is read right after ``on_before_optimizer_step`` and applies to that one step:
        the weights and the optimizer's state stay as they are, step-interval schedulers do not
        step, and ``global_step`` still counts the step (as for a step that 16-mixed's loss scaling
        skips); under 16-mixed the loss scaler starts the next step afresh. With automatic
        optimization the step's gradients are dropped (``on_before_zero_grad`` and the zeroing
        run as after any step); with manual optimization it is the ``opt.step()`` that fired the
        hook that does nothing, and the gradients are yours to zero.
        """
        self.loop.skip_step = True

    def request_stop(self, reason: str) -> None:
        """Stop the fit after the current training batch, with a checkpoint of every step trained:
        what fulmen does on SIGTERM / SIGINT (``reason`` ``"SIGTERM"`` / ``"SIGINT"``: the stop
        checkpoint ``interrupted.ckpt``, then the process exits) and on SLURM's warning signal
        (``"requeue"``: the requeue checkpoint, then the job is requeued). Safe to call from a signal
        handler; with several processes they agree at the next log interval and stop after the
        same step. Outside the training loop nothing happens."""
        self.loop.request_stop(reason, single_process=self.world_size == 1)

    # -- entry points ------------------------------------------------------------------------------
    def _in_spawned_processes(self) -> bool:
        """``strategy="ddp_spawn"`` / ``"ddp_fork"`` outside its processes: the entry point runs in
        new processes (``fulmen.runtime.ddp.spawn_entry``) and this one takes rank 0's results."""
        return self.strategy.launches_processes

    def fit(
        self,
        system: System,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        trusted_keys: Any = None,
    ) -> None:
        """Train ``system``; data comes from the dataloaders given, else ``datamodule``, else the system.

        ``ckpt_path`` (a path, ``"last"`` or ``"best"``) resumes a run exactly where the checkpoint
        was written: same weights, optimizer and scheduler states, epoch and batch position, data
        order and random numbers.

        ``weights_only`` (as in Lightning) may be None or True: fulmen always reads checkpoints with
        ``torch.load(weights_only=True)``; any other value raises ``FlagError``. The same holds for
        ``validate``, ``test`` and ``predict``.

        ``trusted_keys`` (public keys; see ``docs/signing.md``): refuse a ``ckpt_path`` whose content
        digest no signature by one of them covers (``UntrustedCheckpointError``), before the run
        starts. None: no signature is checked. The same holds for ``validate``, ``test`` and ``predict``.
        """
        from fulmen.runtime import signals, slurm
        from fulmen.trainer._fit import run_fit

        _checkpointing.check_weights_only("fit", weights_only)
        if self._in_spawned_processes():
            from fulmen.runtime.ddp import spawn_entry

            spawn_entry(self, "fit", (system, train_dataloaders, val_dataloaders, datamodule, ckpt_path), _keys(trusted_keys))
            return
        train_dataloaders, datamodule = _datamodule_in_loader_slot("fit", train_dataloaders, datamodule)
        self._check_sources("fit", system, datamodule, train_dataloaders, val_dataloaders)
        path, ckpt_for_run = _checkpointing.open_for_fit(self, ckpt_path, trusted_keys)
        handler = slurm.RequeueHandler(self) if slurm.auto_requeue_enabled() else None
        self.loop.clear_requests()
        if handler is not None:
            handler.install()
        # (SIGTERM / SIGINT are handled in _run, runtime/signals.py; every process decides this alike)
        self.loop.watch_signal = self.world_size > 1 and (
            (handler is not None and handler.installed) or signals.handling_enabled()
        )
        try:
            with self._run("fit", system, datamodule):
                run_fit(self, system, train_dataloaders, val_dataloaders, path, ckpt_for_run)
        finally:
            if handler is not None:
                handler.uninstall()

    def validate(
        self,
        system: System | None = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        verbose: bool = True,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        trusted_keys: Any = None,
    ) -> list[dict[str, float]]:
        """Run the validation loop once; returns one dict of epoch metrics per dataloader.
        ``ckpt_path`` (a path, ``"last"``, ``"best"``) loads those weights first; ``weights_only``
        may be None or True (see ``fit``)."""
        _checkpointing.check_weights_only("validate", weights_only)
        return self._evaluate("validate", system, dataloaders, datamodule, verbose, ckpt_path, trusted_keys)

    def test(
        self,
        system: System | None = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        verbose: bool = True,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        trusted_keys: Any = None,
        groups: Any = None,
    ) -> list[dict[str, float]]:
        """Run the test loop once; returns one dict of epoch metrics per dataloader.
        ``ckpt_path`` (a path, ``"last"``, ``"best"``) loads those weights first; ``weights_only``
        may be None or True (see ``fit``). ``groups`` (a batch field, or one value per test sample)
        then runs a bias audit of the test data and writes ``audit.json`` into ``log_dir``
        (``fulmen.audit``; needs fairlearn)."""
        _checkpointing.check_weights_only("test", weights_only)
        results = self._evaluate("test", system, dataloaders, datamodule, verbose, ckpt_path, trusted_keys)
        if groups is not None:
            from fulmen.audit.core import audit_after_test

            audit_after_test(self, self._system_for("test", system), groups)
        return results

    def predict(
        self,
        system: System | None = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        return_predictions: bool = True,
        ckpt_path: str | os.PathLike[str] | None = None,
        weights_only: bool | None = None,
        trusted_keys: Any = None,
    ) -> list[Any] | None:
        """Run ``predict_step`` over the data; returns the outputs per batch (a list per dataloader
        when there are several). ``ckpt_path`` (a path, ``"last"``, ``"best"``) loads those weights
        first; ``weights_only`` may be None or True (see ``fit``)."""
        from fulmen.trainer._eval import run_predict

        _checkpointing.check_weights_only("predict", weights_only)
        if self._in_spawned_processes():
            from fulmen.runtime.ddp import spawn_entry

            return spawn_entry(
                self, "predict", (system, dataloaders, datamodule, return_predictions, ckpt_path), _keys(trusted_keys)
            )
        system = self._system_for("predict", system)
        dataloaders, datamodule = _datamodule_in_loader_slot("predict", dataloaders, datamodule)
        self._check_sources("predict", system, datamodule, dataloaders)
        weights = self._read_weights(ckpt_path, trusted_keys)  # before _run: a bad path or file leaves no run folder
        with self._run("predict", system, datamodule):
            self._load_weights(weights, system)
            if self.rules.lightning_hook_calls:  # Lightning clears the gradients as each stage starts
                system.zero_grad()
            return run_predict(self, system, dataloaders, return_predictions)

    def _evaluate(
        self,
        stage: str,
        system: Any,
        dataloaders: Any,
        datamodule: Any,
        verbose: bool,
        ckpt_path: Any = None,
        trusted_keys: Any = None,
    ) -> list[dict[str, float]]:
        from fulmen.trainer._eval import run_eval_stage

        if self._in_spawned_processes():
            from fulmen.runtime.ddp import spawn_entry

            return spawn_entry(self, stage, (system, dataloaders, datamodule, verbose, ckpt_path), _keys(trusted_keys))
        system = self._system_for(stage, system)
        dataloaders, datamodule = _datamodule_in_loader_slot(stage, dataloaders, datamodule)
        self._check_sources(stage, system, datamodule, dataloaders)
        weights = self._read_weights(ckpt_path, trusted_keys)  # before _run: a bad path or file leaves no run folder
        with self._run(stage, system, datamodule):
            self._load_weights(weights, system)
            if self.rules.lightning_hook_calls:  # Lightning clears the gradients as each stage starts
                system.zero_grad()
            results = run_eval_stage(self, system, stage, dataloaders)
        if verbose and self.is_global_zero and results:
            print(_results_table(stage, results))
        return results

    def _system_for(self, stage: str, system: Any) -> System:
        if system is None:
            if self.system is None:
                raise TypeError(
                    f"Trainer.{stage}() needs a system: pass it as the first argument (no earlier fit to reuse)."
                )
            return self.system
        return system

    def _check_sources(self, stage: str, system: Any, datamodule: Any, *loaders: Any) -> None:
        from fulmen.datamodule import DataModule

        if not isinstance(system, System):
            raise TypeError(
                f"Trainer.{stage}(system, ...): the first argument must be a fulmen.System, got {type(system).__name__}."
            )
        if datamodule is not None and not isinstance(datamodule, DataModule):
            raise TypeError(
                f"Trainer.{stage}(..., datamodule=...): expected a fulmen.DataModule, got {type(datamodule).__name__}."
            )
        if datamodule is not None and any(x is not None for x in loaders):
            raise DataError(
                f"Trainer.{stage}() got both dataloaders and a datamodule; pass one of the two (the datamodule "
                f"provides its own dataloaders)."
            )

    # -- the run: setup, teardown, and failures --------------------------------------------------------
    @contextlib.contextmanager
    def _run(self, stage: str, system: System, datamodule: Any) -> Iterator[None]:
        """The run around an entry point's loop (its phases in ``fulmen.trainer._lifecycle``)."""
        from fulmen.runtime import signals
        from fulmen.trainer import _lifecycle

        # Before the setup hooks: run state, metric stores, callbacks, hook table, profiler, loggers.
        hooks = _lifecycle.start(self, stage, system, datamodule)
        stop = signals.StopHandler(self)  # SIGTERM / SIGINT: stop between two training steps, nothing lost
        stop.install()
        try:
            # The setup hooks (prepare_data, setup, configure_model), then clipping and hyperparameters.
            self._setup_system(system, datamodule, stage, prepare=True)
            _lifecycle.after_setup(self, system, datamodule)
            yield  # the loop runs in the entry point, not below this frame
            _lifecycle.finish_writes(self)  # pending checkpoint writes on disk (a failed one raises)
            self.state.status = "finished"
        except BaseException as err:
            # A failure: its status, which hook raised and where, on_exception; then it propagates.
            _lifecycle.failed(self, hooks, err)
            raise
        finally:
            # Teardown (datamodule first, as setup), then profiler, signal handlers and loggers.
            system._log_store = None
            self.metrics.live = []
            try:
                if self.rules.lightning_hook_calls:  # (stage= by keyword, as Lightning calls them)
                    if datamodule is not None:
                        datamodule.teardown(stage=stage)
                    hooks.call_kw("teardown", stage=stage)
                else:
                    if datamodule is not None:  # the same order as setup, as in Lightning: datamodule first
                        datamodule.teardown(stage)
                    hooks.call("teardown", stage)
            except Exception as err:
                note_run_error(err, self)
                raise
            finally:
                _lifecycle.finish(self, stop)
        stop.finish()  # a signal that came after the last training batch: the run finished, now stop

    def _setup_system(self, system: System, datamodule: Any, stage: str, *, prepare: bool) -> None:
        """``prepare_data`` (when ``prepare``: rank 0), ``setup`` (datamodule, then the hook table:
        callbacks and system), ``configure_model`` once per system, then onto the device."""
        from fulmen.trainer._hooks import overrides

        assert self._hooks is not None

        def prepares_here(owner: Any) -> bool:
            # prepare_data_per_node (default True): local rank 0 of each machine, else global rank 0.
            return self.local_rank == 0 if getattr(owner, "prepare_data_per_node", True) else self.is_global_zero

        if prepare:
            if datamodule is not None and prepares_here(datamodule):
                datamodule.prepare_data()
            if overrides(system, "prepare_data", System) and prepares_here(system):
                system.prepare_data()
        if self.rules.lightning_hook_calls:  # (stage= by keyword, as Lightning calls them)
            if datamodule is not None:
                datamodule.setup(stage=stage)
            self._hooks.call_kw("setup", stage=stage)
        else:
            if datamodule is not None:
                datamodule.setup(stage)
            self._hooks.call("setup", stage)
        if not system.__dict__.get("_model_configured"):
            if overrides(system, "configure_model", System):  # (not when set to None)
                system.configure_model()
            system.__dict__["_model_configured"] = True
        self.strategy.setup_module(system)

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str | os.PathLike[str], weights_only: bool = False) -> None:
        """Write the run's state to ``filepath`` atomically (on the main process).

        Besides the weights, optimizer, scheduler, precision and callback states, a full checkpoint
        records where the loop is (epoch, batches done, the phase it was written in), the random
        number generators now and at the start of the epoch, gradients accumulated but not yet
        stepped, and the current metrics, so that ``fit(ckpt_path=...)`` resumes exactly.
        """
        _checkpointing.save_checkpoint(self, filepath, weights_only)

    # -- resuming ----------------------------------------------------------------------------------
    def _resolve_ckpt(self, ckpt_path: Any) -> str | None:
        """``"last"`` / ``"best"`` through the checkpoint callbacks; a path as it is."""
        return _checkpointing.resolve_ckpt(self, ckpt_path)

    def _resolve_last_run(self, ckpt_path: str) -> str | None:
        """``fit(ckpt_path="last")`` in a new process: the newest run's latest checkpoint."""
        return _checkpointing.resolve_last_run(self, ckpt_path)

    def _read_weights(self, ckpt_path: Any, trusted_keys: Any = None) -> tuple[str, dict[str, Any] | None] | None:
        """validate/test/predict with ``ckpt_path``: the file, read (and checked against
        ``trusted_keys``) before the run starts."""
        return _checkpointing.read_weights(self, ckpt_path, trusted_keys)

    def _load_weights(self, weights: tuple[str, dict[str, Any] | None] | None, system: System) -> None:
        """Load the weights ``_read_weights`` read into ``system`` (inside the run: the hooks see them)."""
        if weights is not None:
            self._load_for_run(weights[0], system, weights[1])

    def _load_for_run(self, path: str, system: System, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore weights, callback and datamodule states from a checkpoint (read unless given)."""
        return _checkpointing.load_for_run(self, path, system, ckpt)



def _keys(trusted_keys: Any) -> dict[str, Any]:
    """The keyword arguments an entry point run in new processes passes on (none by default, so a
    subclass with Lightning's signatures is called as before)."""
    return {} if trusted_keys is None else {"trusted_keys": trusted_keys}


def _datamodule_in_loader_slot(stage: str, loaders: Any, datamodule: Any) -> tuple[Any, Any]:
    """``trainer.fit(system, dm)``: a DataModule given where dataloaders go is taken as the datamodule."""
    from fulmen.datamodule import DataModule

    if isinstance(loaders, DataModule):
        if datamodule is not None:
            raise DataError(
                f"Trainer.{stage}() got two datamodules (one in the dataloaders position); pass one."
            )
        return None, loaders
    return loaders, datamodule


def _results_table(stage: str, results: list[dict[str, float]]) -> str:
    names = sorted({k for r in results for k in r})
    if not names:
        return ""
    title = f"{stage.capitalize()} metric"
    heads = [f"DataLoader {i}" for i in range(len(results))]
    w0 = max(len(title), *(len(n) for n in names))
    cells = [[f"{r[n]:.6g}" if n in r else "" for r in results] for n in names]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = "-" * (w0 + sum(w + 3 for w in widths))
    rows = [line, title.ljust(w0) + "".join(" | " + h.rjust(w) for h, w in zip(heads, widths)), line]
    for n, c in zip(names, cells):
        rows.append(n.ljust(w0) + "".join(" | " + v.rjust(w) for v, w in zip(c, widths)))
    rows.append(line)
    return "\n".join(rows)
