"""An exception raised in a step, a data hook, a dataloader, another hook or a callback keeps its
type (the same object goes on) and gains exactly one note saying where in the run it happened:
the hook (and whose it is), the stage, the epoch and global step, the dataloader and the batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinyData, TinySystem, make_loader, quiet_trainer
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import fulmen
from fulmen.errors import NonFiniteLossError

# make_loader(): 64 samples in batches of 8, so 8 batches (and 8 global steps) per epoch.


def trainer(tmp_path: Path, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("max_epochs", 2)
    return quiet_trainer(tmp_path, **flags)


def notes(err: pytest.ExceptionInfo[BaseException]) -> list[str]:
    return list(getattr(err.value, "__notes__", []))


class Breaks(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """64 samples; sample 44 (in batch 5 of 8) cannot be read."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 44:
            raise OSError("sample 44: truncated file")
        return torch.zeros(4), torch.zeros(1)


class TwoLoaders(TinySystem):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        pass

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        pass


# -- the batch loops -------------------------------------------------------------------------------------
def test_a_label_out_of_range_in_training_step_names_the_step_epoch_global_step_and_batch(tmp_path: Path) -> None:
    class Classifier(TinySystem):
        raised: BaseException | None = None

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, _ = batch
            logits = torch.cat([self(x)] * 3, dim=1)  # 3 classes
            wrong = self.current_epoch == 1 and batch_idx == 3
            labels = torch.full((x.shape[0],), 3 if wrong else 0)
            try:
                return F.cross_entropy(logits, labels)
            except Exception as err:
                self.raised = err
                raise

    system = Classifier()
    with pytest.raises((IndexError, RuntimeError), match="out of bounds") as err:
        trainer(tmp_path).fit(system, make_loader())
    assert err.value is system.raised  # the same exception object, its type kept
    assert notes(err) == ["[fulmen] raised in Classifier.training_step during fit, epoch 1, global step 11, batch 3"]


def test_validation_with_two_dataloaders_names_the_dataloader_and_adds_one_note(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    class Watch(fulmen.Callback):
        def on_exception(self, trainer: Any, system: Any, exception: BaseException) -> None:
            seen.append(list(getattr(exception, "__notes__", [])))

    class BadSecond(TwoLoaders):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            if dataloader_idx == 1 and batch_idx == 2:
                raise ValueError("bad label file")

    with pytest.raises(ValueError, match="bad label file") as err:
        trainer(tmp_path, num_sanity_val_steps=0, callbacks=[Watch()]).fit(
            BadSecond(), make_loader(), [make_loader(), make_loader()]
        )
    # raised in the validation inside training: the inner loop's note only, and before on_exception
    expected = [
        "[fulmen] raised in BadSecond.validation_step during fit (validation), epoch 0, global step 8, "
        "dataloader 1, batch 2"
    ]
    assert notes(err) == expected
    assert seen == [expected]


def test_a_callback_hook_names_the_callback_class_and_hook(tmp_path: Path) -> None:
    class Boom(fulmen.Callback):
        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise KeyError("boom")

    with pytest.raises(KeyError, match="boom") as err:
        trainer(tmp_path, callbacks=[Boom()]).fit(TinySystem(), make_loader())
    assert notes(err) == [
        "[fulmen] raised in the callback Boom.on_train_batch_end during fit, epoch 1, global step 11, batch 2"
    ]


def test_the_sanity_check_says_so_without_epoch_or_step(tmp_path: Path) -> None:
    class BadVal(TinySystem):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:
                raise RuntimeError("val broke")

    with pytest.raises(RuntimeError, match="val broke") as err:
        trainer(tmp_path).fit(BadVal(), make_loader(), make_loader())
    assert notes(err) == ["[fulmen] raised in BadVal.validation_step during fit (sanity check), batch 1"]


def test_test_step_and_predict_step(tmp_path: Path) -> None:
    class BadTest(TwoLoaders):
        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            if dataloader_idx == 1 and batch_idx == 4:
                raise ValueError("test broke")

    with pytest.raises(ValueError, match="test broke") as err:
        trainer(tmp_path).test(BadTest(), [make_loader(), make_loader()], verbose=False)
    assert notes(err) == ["[fulmen] raised in BadTest.test_step during test, dataloader 1, batch 4"]

    class BadPredict(TinySystem):
        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            if batch_idx == 6:
                raise ValueError("predict broke")
            return super().predict_step(batch, batch_idx)

    with pytest.raises(ValueError, match="predict broke") as err:
        trainer(tmp_path).predict(BadPredict(), make_loader())
    assert notes(err) == ["[fulmen] raised in BadPredict.predict_step during predict, batch 6"]


def test_a_data_hook_and_the_dataloader_itself(tmp_path: Path) -> None:
    class BadTransfer(TinySystem):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            if self.trainer.global_step == 13:
                raise TypeError("cannot move this batch")
            return batch

    with pytest.raises(TypeError, match="cannot move") as err:
        trainer(tmp_path).fit(BadTransfer(), make_loader())
    assert notes(err) == [
        "[fulmen] raised in BadTransfer.on_before_batch_transfer during fit, epoch 1, global step 13, batch 5"
    ]

    # The dataloader failing to make a batch: the batch it was fetching (the loop's index is still
    # the one before), in training and in the second of two validation dataloaders.
    with pytest.raises(OSError, match="truncated") as err:
        trainer(tmp_path).fit(TinySystem(), DataLoader(Breaks(), batch_size=8))
    assert notes(err) == [
        "[fulmen] raised in the train dataloader (fetching the next batch) during fit, epoch 0, global step 5, batch 5"
    ]
    with pytest.raises(OSError, match="truncated") as err:
        trainer(tmp_path, num_sanity_val_steps=0).fit(
            TwoLoaders(), make_loader(), [make_loader(), DataLoader(Breaks(), batch_size=8)]
        )
    assert notes(err) == [
        "[fulmen] raised in the validation dataloader (fetching the next batch) during fit (validation), epoch 0, "
        "global step 8, dataloader 1, batch 5"
    ]


def test_manual_optimization_names_the_callback_hook_and_the_step_it_ran_under(tmp_path: Path) -> None:
    class Manual(TinySystem):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            self.manual_backward(super().training_step(batch, batch_idx))
            opt.step()
            opt.zero_grad()

    class Refuses(fulmen.Callback):
        def on_before_optimizer_step(self, trainer: Any, system: Any, optimizer: Any) -> None:
            if trainer.global_step == 3:
                raise ArithmeticError("gradient check failed")

    with pytest.raises(ArithmeticError) as err:
        trainer(tmp_path, callbacks=[Refuses()]).fit(Manual(), make_loader())
    assert notes(err) == [
        "[fulmen] raised in the callback Refuses.on_before_optimizer_step, called from Manual.training_step during "
        "fit, epoch 0, global step 3, batch 3"
    ]


def test_an_error_in_forward_names_the_step_that_called_it(tmp_path: Path) -> None:
    class BadForward(TinySystem):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x.T)  # a shape error

    with pytest.raises(RuntimeError) as err:
        trainer(tmp_path).fit(BadForward(), make_loader())
    assert notes(err) == ["[fulmen] raised in BadForward.training_step during fit, epoch 0, global step 0, batch 0"]


def test_an_error_after_the_step_names_the_batch(tmp_path: Path) -> None:
    class NoLoss(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"prediction": self(batch[0])} if batch_idx == 2 else super().training_step(batch, batch_idx)

    with pytest.raises(fulmen.HookReturnError, match="without a 'loss' key") as err:
        trainer(tmp_path).fit(NoLoss(), make_loader())
    assert notes(err) == ["[fulmen] raised during fit, epoch 0, global step 2, batch 2"]


def test_a_nan_loss_gets_no_note_its_message_says_where(tmp_path: Path) -> None:
    class NaN(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * float("nan")

    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(epoch 0, batch 0\)") as err:
        trainer(tmp_path).fit(NaN(), make_loader())
    assert notes(err) == []


# -- hooks around the batch loops --------------------------------------------------------------------------
def test_epoch_hooks_give_the_epoch_and_global_step(tmp_path: Path) -> None:
    class BadEpochEnd(TinySystem):
        def on_train_epoch_end(self) -> None:
            if self.current_epoch == 1:
                raise ValueError("epoch summary failed")

    with pytest.raises(ValueError, match="epoch summary") as err:
        trainer(tmp_path).fit(BadEpochEnd(), make_loader())
    assert notes(err) == ["[fulmen] raised in BadEpochEnd.on_train_epoch_end during fit, epoch 1, global step 16"]

    class BadValEnd(TinySystem):
        def on_validation_epoch_end(self) -> None:
            raise ValueError("no metric")

    with pytest.raises(ValueError, match="no metric") as err:
        trainer(tmp_path, num_sanity_val_steps=0).fit(BadValEnd(), make_loader(), make_loader())
    assert notes(err) == [
        "[fulmen] raised in BadValEnd.on_validation_epoch_end during fit (validation), epoch 0, global step 8"
    ]


class SetupFails(TinySystem):
    def setup(self, stage: str) -> None:
        raise LookupError("failed")


class OptimizersFail(TinySystem):
    def configure_optimizers(self) -> Any:
        raise LookupError("failed")


class FitStartFails(TinySystem):
    def on_fit_start(self) -> None:
        raise LookupError("failed")


class TeardownFails(TinySystem):
    def teardown(self, stage: str) -> None:
        raise LookupError("failed")


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (SetupFails, "[fulmen] raised in SetupFails.setup during fit"),
        (OptimizersFail, "[fulmen] raised in OptimizersFail.configure_optimizers during fit"),
        (FitStartFails, "[fulmen] raised in FitStartFails.on_fit_start during fit"),
        (TeardownFails, "[fulmen] raised in TeardownFails.teardown during fit, epoch 2, global step 16"),
    ],
)
def test_hooks_before_and_after_training(tmp_path: Path, system: type[TinySystem], expected: str) -> None:
    """Before training there is no epoch or step to give; teardown says where training ended."""
    with pytest.raises(LookupError, match="failed") as err:
        trainer(tmp_path).fit(system(), make_loader())
    assert notes(err) == [expected]


def test_a_datamodule_hook_and_the_other_stages(tmp_path: Path) -> None:
    class BadData(TinyData):
        def train_dataloader(self) -> Any:
            raise FileNotFoundError("data/train.csv")

    with pytest.raises(FileNotFoundError) as err:
        trainer(tmp_path).fit(TinySystem(), datamodule=BadData())
    assert notes(err) == ["[fulmen] raised in the datamodule BadData.train_dataloader during fit"]

    class BadStart(fulmen.Callback):
        def on_test_start(self, trainer: Any, system: Any) -> None:
            raise RuntimeError("no test set")

    with pytest.raises(RuntimeError, match="no test set") as err:
        trainer(tmp_path, callbacks=[BadStart()]).test(TinySystem(), make_loader(), verbose=False)
    assert notes(err) == ["[fulmen] raised in the callback BadStart.on_test_start during test"]


def test_fulmens_own_errors_outside_hooks_get_no_note(tmp_path: Path) -> None:
    with pytest.raises(fulmen.DataError, match="found no training data") as err:
        trainer(tmp_path).fit(TinySystem())
    assert notes(err) == []
