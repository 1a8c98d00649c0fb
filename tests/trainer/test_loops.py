"""The loops: evaluation results and dataloader indices, train/eval modes, where data comes from,
batch transfer, hooks that steer training, reproducibility, and parity with a plain torch loop."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder, indexed_loader
from helpers.systems import TinyData, TinySystem, make_data, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import fulmen
from fulmen.errors import DataError


def trainer_for(tmp_path: Path, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    return quiet_trainer(tmp_path, **flags)


def full_mse(system: nn.Module, loader: DataLoader) -> float:
    x, y = loader.dataset.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        return float(F.mse_loss(system(x), y))


# -- validate / test / predict results ---------------------------------------------------------------
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_one_loader_gives_one_dict_and_no_dataloader_idx(tmp_path: Path, stage: str) -> None:
    s, loader = Recorder(), make_loader(40, seed=1)
    results = getattr(trainer_for(tmp_path), stage)(s, loader, verbose=False)
    name = "val_loss" if stage == "validate" else "test_loss"
    assert [set(r) for r in results] == [{name}]
    assert results[0][name] == pytest.approx(full_mse(s, loader), rel=1e-5)
    seen = s.validated if stage == "validate" else s.tested
    assert [x[-2:] for x in seen] == [(None, b) for b in range(5)]  # validation_step got no dataloader_idx


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_several_loaders_give_a_dict_each_with_suffixes_and_dataloader_idx(tmp_path: Path, stage: str) -> None:
    s = Recorder()
    loaders = [make_loader(16, seed=1), make_loader(24, seed=2)]
    results = getattr(trainer_for(tmp_path), stage)(s, loaders, verbose=False)
    name = "val_loss" if stage == "validate" else "test_loss"
    assert [set(r) for r in results] == [{f"{name}/dataloader_idx_0"}, {f"{name}/dataloader_idx_1"}]
    for i, (r, loader) in enumerate(zip(results, loaders)):
        assert r[f"{name}/dataloader_idx_{i}"] == pytest.approx(full_mse(s, loader), rel=1e-5)
    seen = s.validated if stage == "validate" else s.tested
    assert [x[-2:] for x in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_several_val_loaders_during_fit_log_suffixed_metrics(tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path)
    s = Recorder()
    trainer.fit(s, make_loader(), [make_loader(16, seed=1), make_loader(16, seed=2)])
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(trainer.callback_metrics)
    assert "val_loss" not in trainer.callback_metrics
    assert [x[1:] for x in s.validated] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_predict_returns_the_outputs_per_batch(tmp_path: Path) -> None:
    s, loader = Recorder(), make_loader(20, batch_size=8)
    preds = trainer_for(tmp_path).predict(s, loader)
    assert isinstance(preds, list) and [p.shape for p in preds] == [(8, 1), (8, 1), (4, 1)]
    x = loader.dataset.tensors[0]  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(torch.cat(preds), s(x))


def test_predict_with_several_loaders_returns_a_list_per_loader(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    class P(Recorder):
        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            seen.append((dataloader_idx, batch_idx))
            return batch[0].sum() * 0 + dataloader_idx

    preds = trainer_for(tmp_path).predict(P(), [make_loader(16), make_loader(24)])
    assert isinstance(preds, list) and [len(p) for p in preds] == [2, 3]
    assert [[float(t) for t in p] for p in preds] == [[0.0, 0.0], [1.0, 1.0, 1.0]]
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_predict_without_return_predictions(tmp_path: Path) -> None:
    assert trainer_for(tmp_path).predict(Recorder(), make_loader(), return_predictions=False) is None


# -- train/eval modes -----------------------------------------------------------------------------------
class Frozen(Recorder):
    """A backbone the user keeps in eval mode (its BatchNorm statistics must not move)."""

    def __init__(self, freeze_in_init: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.modes: dict[str, set[tuple[bool, bool, bool]]] = {"train": set(), "val": set()}
        if freeze_in_init:
            self.backbone.eval()

    def on_train_start(self) -> None:
        self.backbone.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.backbone(x))

    def _note(self, stage: str) -> None:
        self.modes[stage].add((self.training, self.layer.training, self.backbone[1].training))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self._note("train")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        self._note("val")
        super().validation_step(batch, batch_idx, *rest)


def test_validation_restores_each_modules_mode_exactly(tmp_path: Path) -> None:
    s = Frozen()
    stats = s.backbone[1].running_mean.clone()
    trainer = trainer_for(tmp_path, max_epochs=2, val_check_interval=0.5, num_sanity_val_steps=2)
    trainer.fit(s, make_loader(), make_loader(16))
    assert s.val_steps == [4, 8, 12, 16]  # validation ran mid-epoch too
    assert s.modes["val"] == {(False, False, False)}
    assert s.modes["train"] == {(True, True, False)}  # the frozen layer stayed frozen after every validation
    assert (s.training, s.layer.training, s.backbone[1].training) == (True, True, False)
    assert torch.equal(s.backbone[1].running_mean, stats)


def test_fit_keeps_a_submodule_frozen_before_fit(tmp_path: Path) -> None:
    s = Frozen(freeze_in_init=True)
    s.on_train_start = lambda: None  # type: ignore[method-assign]  # frozen only in __init__
    trainer_for(tmp_path, val_check_interval=0.5).fit(s, make_loader(), make_loader(16))
    assert s.modes["train"] == {(True, True, False)}


def test_fit_puts_a_system_left_in_eval_mode_into_training(tmp_path: Path) -> None:
    s = Recorder().eval()
    seen: list[bool] = []
    s.on_train_batch_start = lambda batch, batch_idx: seen.append(s.layer.training)  # type: ignore[method-assign]
    trainer_for(tmp_path, limit_train_batches=2).fit(s, make_loader())
    assert seen == [True, True]


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_entry_points_restore_modes(tmp_path: Path, stage: str) -> None:
    s = Frozen()
    s.backbone.eval()
    kwargs = {} if stage == "predict" else {"verbose": False}
    getattr(trainer_for(tmp_path), stage)(s, make_loader(16), **kwargs)
    assert (s.training, s.layer.training, s.backbone[1].training) == (True, True, False)


# -- where the data comes from ---------------------------------------------------------------------------
class WithHooks(Recorder):
    """A system with its own train/val dataloaders (samples 100.. so they can be told apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_calls: list[str] = []

    def train_dataloader(self) -> DataLoader:
        self.hook_calls.append("train_dataloader")
        return indexed_loader(16, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        self.hook_calls.append("val_dataloader")
        return make_loader(8)


class IndexedData(TinyData):
    def train_dataloader(self) -> DataLoader:
        return indexed_loader(24, batch_size=8)


def test_dataloaders_passed_win_over_the_system_hooks(tmp_path: Path) -> None:
    s = WithHooks()
    trainer_for(tmp_path).fit(s, indexed_loader(32, batch_size=16))
    assert [len(i) for i in s.train_idx] == [16, 16]
    assert s.hook_calls == ["val_dataloader"]  # only what was not passed is asked for
    assert len(s.validated) == 1


def test_datamodule_wins_over_the_system_hooks(tmp_path: Path) -> None:
    s = WithHooks()
    trainer_for(tmp_path).fit(s, datamodule=IndexedData(n=16))
    assert len(s.train_idx) == 3  # 24 samples from IndexedData, not the system's 16
    assert len(s.validated) == 2  # TinyData(n=16).val_dataloader: 2 batches
    assert s.hook_calls == []


def test_system_hooks_are_used_when_nothing_else_is_given(tmp_path: Path) -> None:
    s = WithHooks()
    trainer_for(tmp_path).fit(s)
    assert s.train_idx == [list(range(8)), list(range(8, 16))]
    assert s.hook_calls == ["train_dataloader", "val_dataloader"]


def test_dataloaders_and_datamodule_together_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="both dataloaders and a datamodule"):
        trainer_for(tmp_path).fit(Recorder(), make_loader(), datamodule=TinyData())


def test_datamodule_hooks_per_stage(tmp_path: Path) -> None:
    dm = TinyData(n=16)
    trainer = trainer_for(tmp_path)
    s = Recorder()
    trainer.fit(s, datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"]
    assert dm.trainer is trainer and trainer.datamodule is dm
    for stage in ("validate", "test", "predict"):
        dm.calls.clear()
        kwargs = {} if stage == "predict" else {"verbose": False}
        getattr(trainer, stage)(s, datamodule=dm, **kwargs)
        assert dm.calls == ["prepare_data", f"setup:{stage}", f"teardown:{stage}"]
    assert trainer.global_step == 2


def test_datamodule_teardown_runs_when_fit_fails(tmp_path: Path) -> None:
    class Broken(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise RuntimeError("broken step")

    dm = TinyData(n=16)
    with pytest.raises(RuntimeError, match="broken step"):
        trainer_for(tmp_path).fit(Broken(), datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"]


# -- moving batches -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Box:
    t: torch.Tensor
    label: str = "box"


def nested_collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    x = torch.stack([s[0] for s in samples])
    y = torch.stack([s[1] for s in samples])
    return {"x": x, "pair": [y, y * 2], "box": Box(x[:, :1])}


class Transfers(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []
        self.steps: list[tuple[str, bool]] = []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.calls.append(("before", type(batch).__name__, dataloader_idx))
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        assert device == torch.device("cpu")
        self.calls.append(("transfer", type(batch).__name__, dataloader_idx))
        moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
        moved["moved"] = True
        return moved

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.calls.append(("after", type(batch).__name__, dataloader_idx))
        return batch

    def _check(self, stage: str, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(batch["box"], Box) and batch["box"].label == "box"
        assert torch.equal(batch["pair"][1], batch["pair"][0] * 2)
        self.steps.append((stage, batch["moved"]))
        return batch["x"], batch["pair"][0]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = self._check("train", batch)
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = self._check(f"val{dataloader_idx}", batch)
        self.log("val_loss", F.mse_loss(self(x), y))


def test_transfer_batch_to_device_override_sees_nested_batches(tmp_path: Path) -> None:
    s = Transfers()
    train = DataLoader(make_data(16), batch_size=8, collate_fn=nested_collate)
    vals = [DataLoader(make_data(8, seed=i), batch_size=8, collate_fn=nested_collate) for i in (1, 2)]
    trainer_for(tmp_path).fit(s, train, vals)
    per_batch = lambda idx: [("before", "dict", idx), ("transfer", "dict", idx), ("after", "dict", idx)]  # noqa: E731
    assert s.calls == per_batch(0) * 2 + per_batch(0) + per_batch(1)
    assert s.steps == [("train", True), ("train", True), ("val0", True), ("val1", True)]
    assert s.global_step == 2


# -- hooks and return values that steer training ---------------------------------------------------------
def test_on_train_batch_start_returning_minus_one_ends_the_epoch(tmp_path: Path) -> None:
    class Cut(Recorder):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
            return -1 if batch_idx == 3 else None

        def on_train_epoch_end(self) -> None:
            self.val_runs.append((self.current_epoch, -1, False))  # reuse the list as an epoch-end log

    trainer = trainer_for(tmp_path, max_epochs=2)
    s = Cut()
    trainer.fit(s, make_loader())
    assert s.trained == [(e, b) for e in range(2) for b in range(3)]
    assert trainer.global_step == 6
    assert [e for e, *_ in s.val_runs] == [0, 1]


def test_on_train_batch_start_returning_minus_one_at_the_first_batch_skips_the_epoch(tmp_path: Path) -> None:
    class SkipEpoch1(Recorder):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
            return -1 if self.current_epoch == 1 else None

    trainer = trainer_for(tmp_path, max_epochs=3)
    s = SkipEpoch1()
    trainer.fit(s, make_loader(16))
    assert s.trained == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert trainer.global_step == 4 and trainer.current_epoch == 3


def test_training_step_returning_none_skips_the_optimizer_step(tmp_path: Path) -> None:
    class Odd(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.optimizer_steps: list[int] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self.optimizer_steps.append(len(self.trained) - 1)

    trainer = trainer_for(tmp_path, max_epochs=2)
    s = Odd()
    trainer.fit(s, make_loader())
    assert trainer.global_step == 8
    assert s.optimizer_steps == [0, 2, 4, 6, 8, 10, 12, 14]


def test_training_step_always_none_leaves_the_weights_alone(tmp_path: Path) -> None:
    class Never(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            super().training_step(batch, batch_idx)
            return None

    s = Never()
    before = copy.deepcopy(s.state_dict())
    trainer = trainer_for(tmp_path, max_epochs=2)
    trainer.fit(s, make_loader())
    assert trainer.global_step == 0 and len(s.trained) == 16
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())


def test_training_step_dict_with_loss_trains_and_reaches_on_train_batch_end(tmp_path: Path) -> None:
    outputs: list[Any] = []

    class Dict(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": super().training_step(batch, batch_idx), "batch_idx": batch_idx}

    class Spy(fulmen.Callback):
        def on_train_batch_end(self, trainer: Any, system: Any, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)

    s = Dict()
    before = s.layer.weight.detach().clone()
    trainer = trainer_for(tmp_path, callbacks=[Spy()])
    trainer.fit(s, make_loader(24))
    assert trainer.global_step == 3
    assert [o["batch_idx"] for o in outputs] == [0, 1, 2]
    # As in Lightning, the loss reaches the hook detached from the graph.
    assert all(isinstance(o["loss"], torch.Tensor) and o["loss"].ndim == 0 for o in outputs)
    assert not any(o["loss"].requires_grad for o in outputs)
    assert not torch.equal(s.layer.weight, before)


def test_on_train_batch_end_gets_a_loss_dict_when_training_step_returns_a_tensor(tmp_path: Path) -> None:
    outputs: list[Any] = []
    losses: list[float] = []

    class Sys(Recorder):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            losses.append(float(loss.detach()))
            return None if batch_idx == 1 else loss

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)

    trainer_for(tmp_path).fit(Sys(), make_loader(24))
    assert outputs[1] is None  # a skipped batch
    assert [sorted(o) for o in (outputs[0], outputs[2])] == [["loss"], ["loss"]]
    assert [float(outputs[0]["loss"]), float(outputs[2]["loss"])] == [losses[0], losses[2]]
    assert not outputs[0]["loss"].requires_grad


# -- reproducibility ---------------------------------------------------------------------------------------
def seeded_run(tmp_path: Path, seed: int) -> dict[str, torch.Tensor]:
    fulmen.seed_everything(seed)
    s = TinySystem()
    trainer_for(tmp_path, max_epochs=2).fit(s, make_loader(48, shuffle=True))
    return s.state_dict()


def test_seed_everything_gives_identical_weights(tmp_path: Path) -> None:
    a, b = seeded_run(tmp_path, 7), seeded_run(tmp_path, 7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = seeded_run(tmp_path, 8)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_sanity_check_does_not_change_training(tmp_path: Path) -> None:
    # The train loader shuffles with torch's global generator; a sanity check that drew from it
    # (iterating a dataloader does) would change the order training sees.
    def run(sanity_steps: int) -> torch.Tensor:
        torch.manual_seed(0)
        s = TinySystem()
        trainer = trainer_for(tmp_path, max_epochs=2, num_sanity_val_steps=sanity_steps)
        trainer.fit(s, make_loader(48, shuffle=True), make_loader(16))
        return s.layer.weight.detach().clone()

    assert torch.equal(run(0), run(2))


class Momentum(TinySystem):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def test_fit_matches_a_hand_written_torch_loop(tmp_path: Path) -> None:
    def loader() -> DataLoader:
        return make_loader(48, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))

    torch.manual_seed(0)
    system = Momentum()
    trainer_for(tmp_path, max_epochs=3).fit(system, loader())

    torch.manual_seed(0)
    model = Momentum()
    opt = model.configure_optimizers()
    data = loader()
    for _ in range(3):
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    got, want = system.state_dict(), model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(want["layer.weight"], Momentum().state_dict()["layer.weight"])


def test_an_empty_list_of_val_dataloaders_means_no_validation(tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path, num_sanity_val_steps=2)
    s = Recorder()
    trainer.fit(s, make_loader(16), [])
    assert s.val_runs == [] and trainer.num_val_batches == []
    assert trainer.global_step == 2


def test_validate_with_limit_val_batches_zero_runs_nothing(tmp_path: Path) -> None:
    s = Recorder()
    assert trainer_for(tmp_path, limit_val_batches=0).validate(s, make_loader(), verbose=False) == []
    assert s.val_runs == [] and s.validated == []


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_a_datamodule_passed_in_the_dataloaders_position(tmp_path: Path, stage: str) -> None:
    # Lightning accepts trainer.fit(model, dm) and trainer.validate(model, dm) etc.
    dm = TinyData(n=16)
    trainer = trainer_for(tmp_path)
    s = Recorder()
    kwargs = {"verbose": False} if stage in ("validate", "test") else {}
    getattr(trainer, stage)(s, dm, **kwargs)
    assert dm.calls == ["prepare_data", f"setup:{stage}", f"teardown:{stage}"]
    assert trainer.datamodule is dm


def test_a_plateau_scheduler_stepped_every_step(tmp_path: Path) -> None:
    class Plateau(Recorder):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "monitor": "train_loss"}}

    s = Plateau()
    trainer_for(tmp_path).fit(s, make_loader(32))
    # threshold=10 (relative, mode "min"): no value counts as an improvement, so with patience=0
    # every step halves the learning rate: 4 steps -> 4 halvings.
    assert s.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 / 16)


class LightningStyleHooks(fulmen.Callback):
    """Batch hooks declared without dataloader_idx, as Lightning allows with one dataloader."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_validation_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("val_start", batch_idx))

    def on_test_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("test_end", batch_idx))

    def on_predict_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("predict_end", batch_idx))


class WithIdx(fulmen.Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def on_validation_batch_end(
        self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int
    ) -> None:
        self.calls.append((dataloader_idx, batch_idx))


def test_batch_hooks_without_dataloader_idx_work_with_one_loader(tmp_path: Path) -> None:
    class Sys(Recorder):
        def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.val_runs.append((-1, batch_idx, False))

    cb, with_idx = LightningStyleHooks(), WithIdx()
    trainer = trainer_for(tmp_path, callbacks=[cb, with_idx])
    s = Sys()
    trainer.validate(s, make_loader(16), verbose=False)
    trainer.test(s, make_loader(16), verbose=False)
    trainer.predict(s, make_loader(16))
    assert cb.calls == [
        ("val_start", 0),
        ("val_start", 1),
        ("test_end", 0),
        ("test_end", 1),
        ("predict_end", 0),
        ("predict_end", 1),
    ]
    assert [x[:2] for x in s.val_runs if x[0] == -1] == [(-1, 0), (-1, 1)]
    trainer.validate(s, [make_loader(8), make_loader(16)], verbose=False)
    assert with_idx.calls == [(0, 0), (0, 1), (0, 0), (1, 0), (1, 1)]


def test_an_error_in_a_hook_without_dataloader_idx_names_the_hook(tmp_path: Path) -> None:
    class Fails(fulmen.Callback):
        def on_validation_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            raise LookupError("nope")

    with pytest.raises(LookupError) as err:
        trainer_for(tmp_path, callbacks=[Fails()]).validate(Recorder(), make_loader(8), verbose=False)
    assert any("Fails.on_validation_batch_end" in n for n in getattr(err.value, "__notes__", []))


def test_lightning_module_is_trainer_system(tmp_path: Path) -> None:
    seen: list[tuple[Any, Any]] = []

    class Look(fulmen.Callback):
        def on_fit_start(self, trainer: Any, system: Any) -> None:
            seen.append((trainer.lightning_module, system))

        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append((trainer.lightning_module, trainer.system))

    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, limit_train_batches=2, callbacks=[Look()])
    assert trainer.lightning_module is None  # no run yet
    system = TinySystem()
    trainer.fit(system, make_loader())
    assert len(seen) == 3 and all(a is system and b is system for a, b in seen)
    assert trainer.lightning_module is trainer.system is system
    other = TinySystem()
    trainer.test(other, make_loader(), verbose=False)
    assert trainer.lightning_module is other
