"""fulmen.lightning: how hooks are found and called (a hook set to None, hooks set on the instance,
steps without ``batch_idx``), Lightning's hook order, and its optimization semantics."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import fulmen
import fulmen.lightning as L
from fulmen.lightning.callbacks import Callback


def _data(n: int = 8, batch_size: int = 2) -> DataLoader:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x), batch_size=batch_size)


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.calls: list[Any] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.calls.append(("validation_step", batch_idx))
        self.log("val_loss", self.layer(batch[0]).pow(2).mean())

    def test_step(self, batch, batch_idx):
        self.calls.append(("test_step", batch_idx))

    def train_dataloader(self):
        return _data()

    def val_dataloader(self):
        return _data()

    def test_dataloader(self):
        return _data()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **flags: Any) -> L.Trainer:
    flags = {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **flags,
    }
    return L.Trainer(**flags)


# -- a hook set to None is switched off ----------------------------------------------------------


def test_validation_step_set_to_none_turns_validation_off(tmp_path) -> None:
    model = Net()
    model.validation_step = None
    trainer = _trainer(tmp_path)
    with pytest.warns(UserWarning, match="no validation_step"):  # (as Lightning warns: a val_dataloader without a step)
        trainer.fit(model)
    assert trainer.global_step == 4
    assert model.calls == []
    assert "val_loss" not in trainer.callback_metrics


def test_val_dataloader_set_to_none_turns_validation_off(tmp_path) -> None:
    model = Net()
    model.val_dataloader = None
    trainer = _trainer(tmp_path)
    trainer.fit(model)
    assert trainer.global_step == 4
    assert model.calls == []


def test_test_step_set_to_none_is_not_called(tmp_path) -> None:
    model = Net()
    model.test_step = None
    with pytest.raises(NotImplementedError, match="test_step"):
        _trainer(tmp_path).test(model)


def test_configure_model_set_to_none_on_the_class_is_not_called(tmp_path) -> None:
    class Configured(Net):
        pass

    Configured.configure_model = None  # type: ignore[assignment,method-assign]
    model = Configured()
    trainer = _trainer(tmp_path)
    trainer.fit(model)
    assert trainer.global_step == 4


def test_core_system_hook_set_to_none_is_switched_off_too(tmp_path) -> None:
    class Plain(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            raise AssertionError("switched off")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    system = Plain()
    system.validation_step = None
    trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match="no validation_step"):
        trainer.fit(system, _data(), _data())
    assert trainer.global_step == 4


# -- names starting with on_ -----------------------------------------------------------------------


def test_data_attribute_named_like_a_hook_is_accepted() -> None:
    class Counting(Net):
        on_before_zero_grad_called = 0

        def on_before_zero_grad(self, optimizer):
            self.on_before_zero_grad_called += 1

    assert Counting.on_before_zero_grad_called == 0


def test_data_attribute_named_like_a_hook_is_accepted_on_callbacks() -> None:
    class Counter(Callback):
        on_train_batch_end_calls = 0

    assert Counter.on_train_batch_end_calls == 0


def test_misspelt_hook_method_is_still_refused() -> None:
    with pytest.raises(TypeError, match="Did you mean 'on_before_zero_grad'"):

        class Misspelt(Net):
            def on_before_zero_gradd(self, optimizer):
                pass


def test_on_before_zero_grad_counts_each_step_with_a_counter_attribute(tmp_path) -> None:
    class Counting(Net):
        on_before_zero_grad_called = 0

        def on_before_zero_grad(self, optimizer):
            self.on_before_zero_grad_called += 1

    model = Counting()
    _trainer(tmp_path, max_steps=3, max_epochs=2).fit(model)
    assert model.on_before_zero_grad_called == 3


# -- steps without batch_idx, dataloader_idx only with several dataloaders -------------------------


def test_steps_without_batch_idx(tmp_path) -> None:
    seen: list[str] = []

    class NoIndex(Net):
        def training_step(self, batch):
            seen.append("train")
            return self.layer(batch[0]).sum()

        def validation_step(self, batch):
            seen.append("val")

        def test_step(self, batch):
            seen.append("test")

        def predict_step(self, batch):
            seen.append("predict")
            return self.layer(batch[0])

    model = NoIndex()
    trainer = _trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(model)
    trainer.test(model, verbose=False)
    predictions = trainer.predict(model, _data())
    assert trainer.global_step == 4
    assert seen.count("train") == 4 and seen.count("val") == 4 and seen.count("test") == 4
    assert seen.count("predict") == 4 and len(predictions) == 4


def test_core_training_step_without_batch_idx(tmp_path) -> None:
    class Plain(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Plain(), _data())
    assert trainer.global_step == 4


def test_eval_batch_hooks_get_dataloader_idx_only_with_several_dataloaders(tmp_path) -> None:
    received: list[tuple[Any, ...]] = []

    class Recording(Callback):
        def on_test_batch_start(self, trainer, pl_module, *args):
            received.append(args[1:])

    class Module(Net):
        def on_test_batch_end(self, *args):
            received.append(("module", *args[3:]))

        def test_step(self, batch, batch_idx, dataloader_idx=0):
            pass

    model = Module()
    trainer = _trainer(tmp_path, callbacks=[Recording()], limit_test_batches=1)
    trainer.test(model, _data(), verbose=False)
    assert received == [(0,), ("module",)]  # batch_idx only: one dataloader
    received.clear()
    trainer.test(model, [_data(), _data()], verbose=False)
    assert received == [(0, 0), ("module", 0), (0, 1), ("module", 1)]
