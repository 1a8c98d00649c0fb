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


def test_ddp_strategy_takes_lightnings_arguments(tmp_path: Any) -> None:
    from fulmen.lightning.strategies import DDPStrategy

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
    trainer.fit(TinySystem(), make_loader())
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
