"""Lightning's deeper import paths, its Tuner, strategy classes and type aliases in fulmen.lightning."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader
from torch.utils.data import DataLoader

import fulmen
import fulmen.lightning as L
from fulmen.lightning._aliases import ALIASES


@pytest.mark.parametrize("prefix", ["fulmen.lightning", "fulmen.lightning.pytorch"])
def test_every_lightning_module_path_gives_fulmens_objects(prefix: str) -> None:
    for path, exports in ALIASES.items():
        module = importlib.import_module(f"{prefix}.{path}")
        for name, (where, attr) in exports.items():
            assert getattr(module, name) is getattr(importlib.import_module(where), attr), f"{path}.{name}"
    from fulmen.lightning.callbacks.model_checkpoint import ModelCheckpoint
    from fulmen.lightning.pytorch.callbacks.progress.tqdm_progress import TQDMProgressBar

    assert ModelCheckpoint is fulmen.ModelCheckpoint and issubclass(TQDMProgressBar, fulmen.ProgressBar)
    assert L.callbacks.early_stopping.EarlyStopping is fulmen.EarlyStopping  # attribute access too
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        L.callbacks.timer.Nope  # noqa: B018


def test_type_aliases_annotate_a_lightning_module() -> None:
    from fulmen.lightning.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

    class Annotated(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> OptimizerLRScheduler:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(Annotated(), make_loader())
    assert trainer.global_step == 2


class _LrSystem(TinySystem):
    def __init__(self, lr: float = 0.05, batch_size: int = 4) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        return make_loader(256, batch_size=self.hparams.batch_size, shuffle=True)


def test_tuner_has_lightnings_defaults(tmp_path: Any) -> None:
    from fulmen.lightning.tuner import Tuner

    torch.manual_seed(1)  # the weights and data order, whatever tests ran before in this process
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False)
    system = _LrSystem()
    finder = Tuner(trainer).lr_find(system, num_training=30)
    assert finder.suggestion() is not None
    assert system.hparams.lr == finder.suggestion()  # update_attr=True by default, as in Lightning
    assert Tuner(trainer).scale_batch_size(system, steps_per_trial=1, max_trials=3) == 8  # 2, 4, 8 fit
    with pytest.raises(ValueError, match="method='validate'"):
        Tuner(trainer).lr_find(system, method="validate")
    with pytest.raises(ValueError, match=r"dataloaders=\.\.\."):
        Tuner(trainer).scale_batch_size(system, dataloaders=make_loader())


def test_ddp_strategy_takes_lightnings_arguments(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.lightning.strategies import DDPStrategy

    # The run exports the launch variables (RANK, WORLD_SIZE, FULMEN_LAUNCHED, ...): monkeypatch puts
    # the environment back afterwards, so later tests in this process do not see a launched run.
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "FULMEN_LAUNCHED"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)

    strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo")
    assert isinstance(strategy, fulmen.DDPStrategy) and strategy.ddp_kwargs == {"find_unused_parameters": True}
    for name in ("accelerator", "cluster_environment", "ddp_comm_hook", "model_averaging_period"):
        with pytest.raises(ValueError, match=rf"DDPStrategy\({name}=\.\.\.\): not supported"):
            DDPStrategy(**{name: object()})
    # A one-process group on the CPU trains through DistributedDataParallel with those arguments.
    seen: dict[str, Any] = {}

    class Look(fulmen.Callback):
        def on_train_start(self, trainer: Any, system: Any) -> None:
            wrapped = trainer.strategy.model
            seen["ddp"] = type(wrapped).__name__
            seen["unused"] = getattr(wrapped, "find_unused_parameters", None)

    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, strategy=strategy, max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Look()],
    )
    try:
        trainer.fit(TinySystem(), make_loader())
    finally:  # the one-process group stays up after fit (as in Lightning): later tests must not see it
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert trainer.global_step == 2 and trainer.strategy is strategy
    assert seen == {"ddp": "DistributedDataParallel", "unused": True}


def test_fsdp_strategy_maps_lightnings_arguments() -> None:
    from torch.distributed.fsdp import CPUOffload, MixedPrecision

    from fulmen.lightning.strategies import FSDPStrategy

    s = FSDPStrategy(
        sharding_strategy="SHARD_GRAD_OP",
        mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
        cpu_offload=CPUOffload(offload_params=True),
        auto_wrap_policy={torch.nn.Linear},
        use_orig_params=True,
    )
    assert isinstance(s, fulmen.FSDPStrategy) and s.reshard_after_forward is False
    assert s.mixed_precision.param_dtype == torch.bfloat16 and s.mixed_precision.reduce_dtype == torch.float32
    assert FSDPStrategy().reshard_after_forward is True
    with pytest.raises(ValueError, match="sharding_strategy='HYBRID_SHARD'"):
        FSDPStrategy(sharding_strategy="HYBRID_SHARD")
    with pytest.raises(ValueError, match=r"FSDPStrategy\(limit_all_gathers=\.\.\.\)"):
        FSDPStrategy(limit_all_gathers=True)
    with pytest.raises(ValueError, match="activation_checkpointing_policy"):
        FSDPStrategy(activation_checkpointing_policy={torch.nn.Linear})
    with pytest.raises(ValueError, match="a set of module classes"):
        FSDPStrategy(auto_wrap_policy=lambda module, recurse, nonwrapped_numel: True)


def test_grad_norm_as_lightning_names_it() -> None:
    from fulmen.lightning.utilities import grad_norm
    from fulmen.lightning.utilities.grads import grad_norm as from_module

    assert from_module is grad_norm
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    assert grad_norm(net, 2) == {}  # no gradients yet
    net(torch.randn(5, 4)).sum().backward()
    norms = grad_norm(net, norm_type=2)
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert set(norms) == {f"grad_2.0_norm/{n}" for n in grads} | {"grad_2.0_norm_total"}
    for name, g in grads.items():
        assert torch.allclose(norms[f"grad_2.0_norm/{name}"], g.norm())
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert torch.allclose(norms["grad_2.0_norm_total"], total)
    inf = grad_norm(net, "inf", group_separator=".")
    assert torch.allclose(inf["grad_inf_norm.0.weight"], grads["0.weight"].abs().max())
    with pytest.raises(ValueError, match="norm_type=0"):
        grad_norm(net, 0)


def test_rank_zero_experiment_for_a_custom_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.lightning.loggers import Logger
    from fulmen.lightning.loggers.logger import DummyExperiment, DummyLogger, rank_zero_experiment
    from fulmen.runtime.distributed import rank_zero_only

    class PrintLogger(Logger):
        @property
        @rank_zero_experiment
        def experiment(self) -> list[str]:
            return ["the real one"]

        def log_metrics(self, metrics: Any, step: int) -> None:
            pass

    assert PrintLogger().experiment == ["the real one"]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    other = PrintLogger().experiment
    assert isinstance(other, DummyExperiment)
    other.add_scalar("x", 1.0)  # anything goes, nothing happens
    other["key"].log({"x": 1})
    dummy = DummyLogger()
    dummy.log_metrics({"x": 1.0}, 0)
    assert dummy.name == "" and isinstance(dummy.experiment, DummyExperiment)


def test_trainer_model_and_the_dataloaders_of_each_stage(tmp_path: Any) -> None:
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False)
    system = TinySystem()
    assert trainer.model is None
    trainer.fit(system, make_loader(), make_loader(16))
    assert trainer.model is system  # one process: the module itself
    # As in Lightning: one dataloader is returned as it is (a list for several), None before any.
    assert len(trainer.val_dataloaders.dataset) == 16 and trainer.test_dataloaders is None
    trainer.test(system, make_loader(24))
    assert len(trainer.test_dataloaders.dataset) == 24
    trainer.predict(system, make_loader(12))
    assert len(trainer.predict_dataloaders.dataset) == 12
    trainer.validate(system, make_loader(4))
    assert len(trainer.val_dataloaders.dataset) == 4
