"""The names and module paths Lightning code imports from ``fulmen.lightning``: they exist, they are
fulmen's own objects, and they behave as Lightning code expects (LightningOptimizer, the trainer
state enums, is_overridden, the demo models, the tuner's result, ...)."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import math
import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import fulmen
import fulmen.lightning as L
from fulmen.errors import FlagError, MisconfigurationError
from fulmen.lightning.demos.boring_classes import (
    BoringDataModule,
    BoringModel,
    DemoModel,
    IterableBoringDataModule,
    ManualOptimBoringModel,
    Net,
    RandomDataset,
    RandomDictDataset,
    RandomIterableDataset,
    RandomIterableDatasetWithLen,
)


def _trainer(tmp_path: Any, **flags: Any) -> Any:
    defaults: dict[str, Any] = dict(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **flags})


# -- module paths ------------------------------------------------------------------------------------
PATHS = [
    ("core.optimizer", "LightningOptimizer"),
    ("core.module", "LightningModule"),
    ("core.datamodule", "LightningDataModule"),
    ("core.saving", "load_hparams_from_yaml"),
    ("trainer.states", "TrainerFn"),
    ("trainer.trainer", "Trainer"),
    ("tuner.tuning", "Tuner"),
    ("tuner.lr_finder", "_LRFinder"),
    ("profilers", "PassThroughProfiler"),
    ("profilers.simple", "SimpleProfiler"),
    ("loops", "_EvaluationLoop"),
    ("loops.optimization.automatic", "Closure"),
    ("strategies", "Strategy"),
    ("utilities", "AttributeDict"),
    ("utilities", "GradClipAlgorithmType"),
    ("utilities.imports", "_OMEGACONF_AVAILABLE"),
    ("utilities.model_helpers", "is_overridden"),
    ("utilities.types", "LRSchedulerConfig"),
    ("demos.boring_classes", "BoringModel"),
    ("demos", "DemoModel"),
]


@pytest.mark.parametrize(("path", "name"), PATHS)
def test_lightning_module_paths_exist_under_both_prefixes(path: str, name: str) -> None:
    module = importlib.import_module(f"fulmen.lightning.{path}")
    assert importlib.import_module(f"fulmen.lightning.pytorch.{path}") is module  # the same module, not a copy
    assert hasattr(module, name)


def test_names_are_fulmens_own_objects() -> None:
    from fulmen.lightning.core.datamodule import LightningDataModule
    from fulmen.lightning.core.module import LightningModule
    from fulmen.lightning.profilers.simple import SimpleProfiler
    from fulmen.lightning.strategies import SingleDeviceStrategy, Strategy
    from fulmen.lightning.trainer.states import RunningStage, TrainerFn, TrainerStatus
    from fulmen.lightning.utilities import AttributeDict
    from fulmen.lightning.utilities.types import LRSchedulerConfig
    from fulmen.runtime import strategy as runtime_strategy
    from fulmen.trainer import _optim, state

    assert LightningModule is L.LightningModule and LightningDataModule is fulmen.DataModule
    assert SimpleProfiler is fulmen.profilers.SimpleProfiler
    assert Strategy is runtime_strategy.Strategy and SingleDeviceStrategy is runtime_strategy.SingleDeviceStrategy
    assert (TrainerFn, TrainerStatus, RunningStage) == (state.TrainerFn, state.TrainerStatus, state.RunningStage)
    assert LRSchedulerConfig is _optim.SchedulerConfig
    assert type(BoringModel().hparams) is AttributeDict


def test_version_is_the_lightning_release_followed() -> None:
    major, minor, *_ = (int(p) for p in L.__version__.split("."))
    assert (major, minor) >= (2, 6) and L.__version__ != fulmen.__version__
    assert "__version__" in dir(L)


def test_unknown_pytorch_path_still_fails_to_import() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fulmen.lightning.pytorch.no_such_module")


# -- trainer state ----------------------------------------------------------------------------------
def test_trainer_state_values_are_string_enums(tmp_path: Any) -> None:
    from fulmen.lightning.trainer.states import RunningStage, TrainerFn, TrainerStatus

    seen: list[Any] = []

    class Record(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen.append((trainer.state.fn, trainer.state.stage, trainer.state.status))

    trainer = _trainer(tmp_path, callbacks=[Record()])
    assert trainer.state.fn is None and trainer.state.status is TrainerStatus.INITIALIZING
    trainer.fit(BoringModel())
    fn, stage, status = seen[0]
    assert fn is TrainerFn.FITTING and stage is TrainerFn.FITTING and status is TrainerStatus.RUNNING
    assert fn == "fit" and f"{fn}" == "fit" and str(status) == "running"
    assert trainer.state.finished and trainer.state.status == "finished" and trainer.state.stopped
    trainer.state.fn = "validate"  # strings assigned are converted
    assert trainer.state.stage is TrainerFn.VALIDATING
    assert RunningStage.SANITY_CHECKING.dataloader_prefix == "val" and RunningStage.TESTING.evaluating
    with pytest.raises(ValueError):
        trainer.state.status = "sleeping"


# -- utilities --------------------------------------------------------------------------------------
def test_import_flags_follow_the_environment() -> None:
    from fulmen.lightning.utilities import imports

    try:
        found = tuple(int(x) for x in importlib.metadata.version("torchmetrics").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        found = None
    assert imports._TORCHMETRICS_GREATER_EQUAL_0_11 is (found is not None and found >= (0, 11))
    assert imports._OMEGACONF_AVAILABLE is (importlib.util.find_spec("omegaconf") is not None)
    assert imports._release("2.13.0+cpu") == (2, 13, 0, 0)
    assert imports._release("1.0.0rc1") < imports._release("1.0.0") < imports._release("1.0.1")
    assert imports._release("2.9.0.dev20250101") < imports._release("2.9.0")


def test_is_overridden() -> None:
    from fulmen.lightning.utilities.model_helpers import is_overridden

    class Plain(BoringModel):
        pass

    class Hooked(BoringModel):
        def on_train_start(self) -> None: ...

    assert not is_overridden("on_train_start", Plain())
    assert is_overridden("on_train_start", Hooked())
    assert is_overridden("training_step", Plain())  # BoringModel's own, relative to LightningModule
    assert not is_overridden("training_step", Plain(), parent=BoringModel)
    assert not is_overridden("on_validation_model_train", Plain())  # a LightningModule-only hook
    model = Plain()
    model.on_train_start = lambda: None  # on the instance
    assert is_overridden("on_train_start", model)
    model.on_train_end = mock.Mock(wraps=model.on_train_end)  # a mock of the original: not an override
    assert not is_overridden("on_train_end", model)
    model.on_fit_end = functools.partial(Hooked.on_train_start, model)  # a partial of another function
    assert is_overridden("on_fit_end", model)
    model.on_fit_start = None
    assert not is_overridden("on_fit_start", model)
    assert not is_overridden("on_train_start", None)

    class Data(fulmen.DataModule):
        def prepare_data(self) -> None: ...

    class Cb(fulmen.Callback):
        def on_train_end(self, trainer: Any, system: Any) -> None: ...

    assert is_overridden("prepare_data", Data()) and not is_overridden("setup", Data())
    assert is_overridden("on_train_end", Cb()) and not is_overridden("on_fit_end", Cb())
    with pytest.raises(ValueError, match="pass parent="):
        is_overridden("forward", nn.Linear(1, 1))
    assert not is_overridden("nope", Plain())  # not on the instance at all
    with pytest.raises(ValueError, match="has no method 'step'"):
        is_overridden("step", Plain())  # BoringModel's own method, which LightningModule does not define


def test_grad_clip_algorithm_type_and_attribute_dict(tmp_path: Any) -> None:
    from fulmen.lightning.utilities import AttributeDict, GradClipAlgorithmType

    assert GradClipAlgorithmType("value") is GradClipAlgorithmType.VALUE and GradClipAlgorithmType.NORM == "norm"
    assert GradClipAlgorithmType.supported_type("norm") and not GradClipAlgorithmType.supported_type("l1")

    class Clipped(BoringModel):
        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any) -> None:
            self.clip_gradients(optimizer, 1e-3, GradClipAlgorithmType.VALUE)
            assert all(p.grad.abs().max() <= 1e-3 for p in self.parameters())

    _trainer(tmp_path, limit_train_batches=2).fit(Clipped())
    hp = AttributeDict(lr=0.1)
    assert hp.lr == 0.1 and hp == {"lr": 0.1}


def test_lr_scheduler_config_compares_with_lightnings_fields(tmp_path: Any) -> None:
    from fulmen.lightning.utilities.types import LRSchedulerConfig

    class Plateau(BoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("foo", float(batch_idx))
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters())
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt), "monitor": "foo"}

    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(Plateau())
    cfg = trainer.lr_scheduler_configs[0]
    assert cfg == LRSchedulerConfig(
        scheduler=cfg.scheduler, monitor="foo", interval="epoch", frequency=1, reduce_on_plateau=True, strict=True, name=None
    )


def test_configure_optimizers_helpers_use_fulmens_parser() -> None:
    from fulmen.lightning.core.optimizer import (
        _configure_optimizers,
        _configure_schedulers_automatic_opt,
        _init_optimizers_and_lr_schedulers,
    )
    from fulmen.lightning.utilities.types import LRSchedulerConfig

    model = BoringModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    optimizers, configs, monitor = _configure_optimizers({"optimizer": opt, "lr_scheduler": sched, "monitor": "m"})
    assert optimizers == [opt] and monitor == "m" and configs[0].scheduler is sched
    assert _configure_schedulers_automatic_opt([sched], None) == [LRSchedulerConfig(sched)]
    model.configure_optimizers = lambda: ([opt], [sched])  # type: ignore[method-assign]
    optimizers, configs = _init_optimizers_and_lr_schedulers(model)
    assert optimizers == [opt] and configs == [LRSchedulerConfig(sched)]
    model.configure_optimizers = lambda: 1  # type: ignore[method-assign]
    with pytest.raises(MisconfigurationError):
        _init_optimizers_and_lr_schedulers(model)


def test_hparams_yaml_round_trip(tmp_path: Any) -> None:
    from fulmen.lightning.core.saving import load_hparams_from_yaml, save_hparams_to_yaml

    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, {"lr": 0.1, "layers": [1, 2], "nested": {"a": "b"}, "cls": nn.Linear}, use_omegaconf=False)
    assert load_hparams_from_yaml(path, use_omegaconf=False) == {
        "lr": 0.1,
        "layers": [1, 2],
        "nested": {"a": "b"},
        "cls": "torch.nn.modules.linear.Linear",
    }
    with pytest.warns(UserWarning, match="does not exist"):
        assert load_hparams_from_yaml(tmp_path / "missing.yaml") == {}
    with pytest.raises(RuntimeError, match="missing folder"):
        save_hparams_to_yaml(tmp_path / "no" / "hparams.yaml", {"a": 1})


# -- profilers, loops, placeholders ------------------------------------------------------------------
def test_profilers_under_lightnings_names(tmp_path: Any) -> None:
    from fulmen.lightning.profilers import PassThroughProfiler
    from fulmen.lightning.profilers.simple import SimpleProfiler

    trainer = _trainer(tmp_path, profiler="simple", limit_train_batches=2)
    trainer.fit(BoringModel())
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert trainer.profiler.recorded_durations is trainer.profiler.durations
    assert len(trainer.profiler.recorded_durations["training_step"]) == 2
    passthrough = PassThroughProfiler()
    trainer = _trainer(tmp_path, profiler=passthrough, limit_train_batches=2)
    trainer.fit(BoringModel())
    assert trainer.profiler is passthrough and passthrough.describe() == ""


def test_evaluation_loop_print_results(capsys: Any) -> None:
    from fulmen.lightning._internal import UnprovidedInternal
    from fulmen.lightning.loops import _EvaluationLoop, _FitLoop

    _EvaluationLoop._print_results(
        [{"log": torch.tensor(5)}, {"perf": {"a": torch.tensor([[1.5]])}, "x/dataloader_idx_1": 3}], "test"
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "Test metric" in out and "DataLoader 1" in out
    assert any(line.startswith("perf:a") and "1.5" in line for line in lines)
    assert any(line.startswith("x ") and line.rstrip().endswith("3") for line in lines)
    _EvaluationLoop._print_results([{}], "validate")
    assert capsys.readouterr().out == ""
    with pytest.raises(NotImplementedError, match=r"fulmen\.lightning does not provide"):
        _EvaluationLoop()
    with pytest.raises(UnprovidedInternal, match=r"trainer\.current_epoch"):
        _FitLoop()


def test_placeholders_import_and_refuse_use() -> None:
    from fulmen.lightning.core.module import _TrainerFabricShim

    assert not isinstance(object(), _TrainerFabricShim)
    with pytest.raises(NotImplementedError, match="_TrainerFabricShim is a Lightning internal"):
        _TrainerFabricShim()
    with pytest.raises(NotImplementedError, match="attribute 'run'"):
        _TrainerFabricShim.run  # noqa: B018
    assert not hasattr(_TrainerFabricShim, "__wrapped__")  # introspection sees a plain class


def test_optimizer_step_override_receives_a_closure(tmp_path: Any) -> None:
    from fulmen.lightning.loops.optimization.automatic import Closure

    got: list[Any] = []

    class Stepped(BoringModel):
        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            assert isinstance(optimizer_closure, Closure)
            got.append(optimizer.step(closure=optimizer_closure))

    _trainer(tmp_path, limit_train_batches=2).fit(Stepped())
    assert len(got) == 2 and all(isinstance(loss, torch.Tensor) and loss.ndim == 0 for loss in got)


# -- demos --------------------------------------------------------------------------------------------
def test_demo_datasets() -> None:
    torch.manual_seed(0)
    ds = RandomDataset(32, 64)
    torch.manual_seed(0)
    assert torch.equal(ds.data, torch.randn(64, 32))  # one draw of (length, size) when built
    assert len(ds) == 64 and ds[3].shape == (32,)
    item = RandomDictDataset(4, 10)[2]
    assert set(item) == {"a", "b"} and torch.equal(item["b"], item["a"] + 2)
    rows = list(RandomIterableDataset(3, 5))
    assert len(rows) == 5 and rows[0].shape == (3,)
    assert len(RandomIterableDatasetWithLen(3, 7)) == 7 and len(list(RandomIterableDatasetWithLen(3, 7))) == 7
    with pytest.raises(TypeError):
        len(RandomIterableDataset(3, 5))  # type: ignore[arg-type]


def test_demo_models_train(tmp_path: Any) -> None:
    model = BoringModel()
    assert isinstance(model.layer, nn.Linear) and (model.layer.in_features, model.layer.out_features) == (32, 2)
    assert len(model.train_dataloader().dataset) == 64 and model.train_dataloader().batch_size == 1
    optimizers, schedulers = model.configure_optimizers()
    assert isinstance(optimizers[0], torch.optim.SGD) and optimizers[0].defaults["lr"] == 0.1
    assert isinstance(schedulers[0], torch.optim.lr_scheduler.StepLR)
    assert torch.equal(model.loss(torch.ones(3, 2)), torch.tensor(0.0))
    before = model.layer.weight.detach().clone()
    trainer = _trainer(tmp_path, limit_val_batches=2)
    trainer.fit(model)
    assert trainer.global_step == 4 and not torch.equal(before, model.layer.weight)
    assert trainer.validate(model, verbose=False)[0] == {}  # validation_step returns {"x": ...}, logs nothing

    manual = ManualOptimBoringModel()
    trainer = _trainer(tmp_path)
    trainer.fit(manual)  # its training_step asserts the optimizer is a torch Optimizer (LightningOptimizer)
    assert trainer.global_step == 4

    demo = DemoModel(out_dim=3, learning_rate=0.01)
    assert demo(torch.randn(5, 32)).shape == (5, 3) and (demo(torch.randn(5, 32)) >= 0).all()
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(demo, DataLoader(RandomDataset(32, 8), batch_size=4))
    assert trainer.global_step == 2
    assert Net()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_demo_datamodules(tmp_path: Any) -> None:
    dm = BoringDataModule()
    dm.setup("fit")
    dm.setup("test")
    dm.setup("predict")
    rows = [set(split.indices) for split in (dm.random_train, dm.random_val, dm.random_test, dm.random_predict)]
    assert all(len(r) == 64 for r in rows) and len(set().union(*rows)) == 256
    assert len(dm.train_dataloader()) == 64
    trainer = _trainer(tmp_path, limit_val_batches=2)
    trainer.fit(BoringModel(), datamodule=BoringDataModule())
    assert trainer.global_step == 4
    it = IterableBoringDataModule()
    it.setup("fit")
    loaders = it.train_dataloader()
    assert len(loaders) == 2 and len(loaders[0]) == 16 and len(list(loaders[1])) == 16


# -- LightningOptimizer --------------------------------------------------------------------------------
def test_lightning_optimizer_is_the_wrapped_optimizer() -> None:
    from fulmen.lightning.core.optimizer import LightningOptimizer

    model = nn.Linear(3, 4)
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    opt = LightningOptimizer(adam)
    assert isinstance(opt, torch.optim.Adam) and isinstance(opt, LightningOptimizer) and opt.optimizer is adam
    assert type(opt).__name__ == "LightningAdam" and str(opt) == "Lightning" + str(adam)
    assert type(LightningOptimizer(torch.optim.Adam(model.parameters()))) is type(opt)  # one class per optimizer class
    assert opt.param_groups is adam.param_groups and opt.state is adam.state and opt.defaults is adam.defaults
    adam.param_groups[0]["lr"] = 1.0
    assert opt.param_groups[0]["lr"] == 1.0
    opt.state = adam.state  # assigning goes to the wrapped optimizer
    assert opt.state_dict() == adam.state_dict()
    state = adam.state_dict()
    other = LightningOptimizer(torch.optim.Adam(model.parameters(), lr=100))
    other.load_state_dict(state)
    assert other.optimizer.param_groups[0]["lr"] == 1.0  # loaded into the wrapped optimizer
    model(torch.randn(2, 3)).sum().backward()
    assert opt.step() is None and len(adam.state) == 2  # a hand-built wrapper steps the optimizer itself
    opt.zero_grad()
    assert model.weight.grad is None
    assert not isinstance(adam, LightningOptimizer)
    with pytest.raises(TypeError, match=r"expected a torch\.optim\.Optimizer"):
        LightningOptimizer(model)  # type: ignore[arg-type]


def test_optimizers_returns_lightning_optimizers_in_a_run(tmp_path: Any) -> None:
    from fulmen.lightning.core.optimizer import LightningOptimizer

    seen: list[Any] = []

    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            sgd, adam = self.optimizers()
            again = self.optimizers()
            seen.append((sgd, adam, again, self.optimizers(use_pl_optimizer=False)))
            loss = self.step(batch)
            sgd.zero_grad()
            self.manual_backward(loss)
            result = sgd.step(closure=lambda: loss, foo="bar") if batch_idx == 0 else sgd.step()
            assert batch_idx != 0 or result == "stepped with bar"
            return loss

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters(), lr=0.1)]

    original = torch.optim.SGD.step

    def step(self: Any, closure: Any = None, foo: str | None = None) -> Any:
        original(self, closure)
        return f"stepped with {foo}" if foo else None

    trainer = _trainer(tmp_path, limit_train_batches=2)
    with mock.patch.object(torch.optim.SGD, "step", step):
        trainer.fit(Manual())
    sgd, adam, again, raw = seen[0]
    assert isinstance(sgd, LightningOptimizer) and isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    assert again[0] is sgd and again[1] is adam and seen[1][0] is sgd  # the same wrappers on every call
    assert raw == list(trainer.optimizers) and not isinstance(raw[0], LightningOptimizer)
    assert trainer.global_step == 2  # each step() counts, as fulmen's manual optimization counts


def test_fit_start_clears_gradients_without_calling_zero_grad(tmp_path: Any) -> None:
    class ZeroOnEven(BoringModel):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            if batch_idx % 2 == 0:
                optimizer.zero_grad()

    model = ZeroOnEven()
    model.layer.weight.grad = torch.ones_like(model.layer.weight)  # left over from before the fit
    with mock.patch.object(torch.optim.SGD, "zero_grad") as zero_grad:
        _trainer(tmp_path, limit_train_batches=6).fit(model)
    assert zero_grad.call_count == 3  # the override's calls only


def test_manual_backward_arguments_go_through_the_strategy(tmp_path: Any) -> None:
    from fulmen.lightning.strategies import Strategy

    class TwoBackwards(ManualOptimBoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            loss = self.step(batch)
            opt.zero_grad()
            self.manual_backward(loss, retain_graph=True)
            self.manual_backward(loss)
            opt.step()
            return loss

    trainer = _trainer(tmp_path, limit_train_batches=2)
    with mock.patch.object(Strategy, "backward", wraps=trainer.strategy.backward) as backward:
        trainer.fit(TwoBackwards())
    assert backward.call_count == 4
    assert backward.call_args_list[0].kwargs == {"retain_graph": True}


# -- toggling, clipping, the trainer reference ----------------------------------------------------------
def test_toggle_optimizer_leaves_parameters_of_no_optimizer_alone(tmp_path: Any) -> None:
    class Two(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.head = nn.Linear(2, 2)
            self.free = nn.Linear(2, 2)  # in no optimizer
            self.frozen = nn.Linear(2, 2)
            self.frozen.weight.requires_grad_(False)
            self.checked = False

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt_a, _ = self.optimizers()
            self.toggle_optimizer(opt_a)
            assert self._param_requires_grad_state
            assert all(p.requires_grad for p in self.layer.parameters())
            assert not any(p.requires_grad for p in self.head.parameters())
            assert all(p.requires_grad for p in self.free.parameters())
            assert not self.frozen.weight.requires_grad and self.frozen.bias.requires_grad  # its own setting kept
            loss = self.free(self.layer(batch)).sum()  # the untrained layer's gradient path still works
            self.manual_backward(loss)
            opt_a.step()
            opt_a.zero_grad()
            self.untoggle_optimizer(opt_a)
            assert not self._param_requires_grad_state
            assert all(p.requires_grad for p in self.head.parameters()) and not self.frozen.weight.requires_grad
            self.checked = True
            return loss

        def configure_optimizers(self) -> Any:
            return [
                torch.optim.SGD([*self.layer.parameters(), *self.frozen.parameters()], lr=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1),
            ]

    model = Two()
    _trainer(tmp_path, limit_train_batches=1).fit(model)
    assert model.checked


def test_clip_gradients_refuses_values_that_contradict_the_trainer(tmp_path: Any) -> None:
    class Custom(BoringModel):
        clip: dict[str, Any] = {}

        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any) -> None:
            self.clip_gradients(optimizer, **self.clip)

    model = Custom()
    model.clip = {"gradient_clip_val": 1e-2}
    with pytest.raises(
        FlagError, match=r"Trainer\(gradient_clip_val=0.0001\)` and have passed `clip_gradients\(gradient_clip_val=0.01"
    ) as err:
        _trainer(tmp_path, gradient_clip_val=1e-4).fit(model)
    assert isinstance(err.value, MisconfigurationError)
    model.clip = {"gradient_clip_algorithm": "value"}
    with pytest.raises(FlagError, match=r"gradient_clip_algorithm='norm'\)` and have passed"):
        _trainer(tmp_path, gradient_clip_algorithm="norm").fit(model)
    model.clip = {"gradient_clip_val": 1e-4}  # the same value: accepted
    _trainer(tmp_path, gradient_clip_val=1e-4, limit_train_batches=1).fit(model)

    class Default(BoringModel):  # no values given: the Trainer's are used
        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any) -> None:
            self.clip_gradients(optimizer)
            assert all(p.grad.abs().max() <= 1e-3 for p in self.parameters())

    _trainer(tmp_path, gradient_clip_val=1e-3, gradient_clip_algorithm="value", limit_train_batches=2).fit(Default())


def test_trainer_reference_reaches_nested_modules() -> None:
    outer, inner = L.LightningModule(), L.LightningModule()
    outer.inner = inner
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = outer.trainer
    trainer = mock.Mock()
    outer.trainer = trainer
    assert outer.trainer is trainer and inner.trainer is trainer
    outer.trainer = None
    with pytest.raises(RuntimeError, match="attached to a `Trainer"):
        _ = inner.trainer


# -- the tuner ----------------------------------------------------------------------------------------
class _LrModel(BoringModel):
    def __init__(self, learning_rate: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_lr_find_with_two_optimizers_is_refused(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner

    class Two(_LrModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters(), lr=0.1)]

    model = Two()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationError, match="only works with single optimizer"):
        Tuner(_trainer(tmp_path)).lr_find(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # put back as it was


def test_lr_find_takes_min_above_max_with_a_warning(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner

    with pytest.warns(UserWarning, match="min_lr is not below max_lr"):
        finder = Tuner(_trainer(tmp_path)).lr_find(
            _LrModel(), min_lr=1.0, max_lr=1e-8, num_training=3, early_stop_threshold=None, update_attr=False
        )
    lrs = finder.results["lr"]
    assert len(lrs) == 3 and lrs[0] == 1.0 and lrs == sorted(lrs, reverse=True) and all(1e-8 <= x <= 1.0 for x in lrs)
    with pytest.raises(ValueError, match="two learning rates > 0"):
        Tuner(_trainer(tmp_path)).lr_find(_LrModel(), min_lr=0.0)


def test_tuner_skips_under_fast_dev_run(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner

    model = _LrModel()
    model.batch_size = 8
    tuner = Tuner(_trainer(tmp_path, fast_dev_run=True))
    with pytest.warns(UserWarning, match="Skipping learning rate finder since `fast_dev_run` is enabled."):
        assert tuner.lr_find(model) is None
    with pytest.warns(UserWarning, match="Skipping batch size scaler since `fast_dev_run` is enabled."):
        assert tuner.scale_batch_size(model) is None
    assert model.hparams.learning_rate == 0.1 and model.batch_size == 8


def test_lr_find_without_an_lr_attribute_names_the_fields(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner

    with pytest.raises(AttributeError, match=r"should have one of these fields: \['lr', 'learning_rate'\]"):
        Tuner(_trainer(tmp_path)).lr_find(BoringModel(), update_attr=True)


def test_lr_finder_suggestion_follows_lightnings_rule(caplog: Any) -> None:
    from fulmen.lightning.tuner.lr_finder import _LRFinder

    finder = _LRFinder(mode="exponential", lr_min=1e-6, lr_max=1e-1, num_training=20)
    assert (finder.lr_min, finder.lr_max, finder.results) == (1e-6, 1e-1, {"lr": [], "loss": []})
    lrs = torch.linspace(0, 2 * math.pi, steps=1000)
    finder.results = {"lr": lrs.tolist(), "loss": torch.sin(lrs).tolist()}
    # the steepest descent against the learning rate itself (not log10 of it): sin falls fastest at pi
    assert abs(finder.suggestion(skip_begin=2, skip_end=2) - math.pi) < 1e-2
    nan, inf = float("nan"), float("inf")
    finder.results = {"lr": list(range(11)), "loss": [nan, nan, 0, inf, 1, 2, 3, inf, 2, nan, 1]}
    assert finder.suggestion(skip_begin=0, skip_end=1) is not None  # non-finite losses are left out
    assert finder._optimal_idx is not None and math.isfinite(finder.results["loss"][finder._optimal_idx])
    finder.results = {"lr": [0, 1, 2], "loss": [0, 1, 2]}
    with caplog.at_level(logging.ERROR):
        assert finder.suggestion(skip_begin=1, skip_end=1) is None
    assert "Failed to compute suggestion for learning rate" in caplog.text
    assert finder.suggestion(skip_begin=0, skip_end=1) == 0  # two points are enough


def test_compat_lr_find_returns_the_lightning_result(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner
    from fulmen.lightning.tuner.lr_finder import _LRFinder

    torch.manual_seed(0)
    model = _LrModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder = Tuner(_trainer(tmp_path)).lr_find(model, num_training=30, early_stop_threshold=None)
    assert isinstance(finder, _LRFinder) and isinstance(finder, fulmen.tuner.LRFinder)
    assert len(finder.results["lr"]) == 30 and finder.suggestion() is not None
    assert model.hparams.learning_rate == finder.suggestion()  # update_attr=True by default
    assert repr(finder).startswith("_LRFinder(mode='exponential'")
