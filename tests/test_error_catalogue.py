"""The error catalogue of docs/errors.md: one test per entry, each making the mistake and checking
the key words of what fulmen says (the type, the hook or flag, and the fix).

Test names start with the entry's number (``test_e07_...`` is entry 7), and the last test checks
that the page and this file list the same entries.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinyData, TinySystem, make_data, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

import fulmen
from fulmen.errors import (
    DataError,
    FlagError,
    FulmenWarning,
    HookReturnError,
    LoggingError,
    NonFiniteLossError,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def fit(tmp_path: Path, system: Any, train: Any = None, val: Any = None, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, train, val)
    return trainer


def warned(action: Callable[[], Any]) -> str:
    """Run ``action`` with fulmen's warnings made errors; return the warning's message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FulmenWarning)
        with pytest.raises(FulmenWarning) as err:
            action()
    return str(err.value)


def has(text: str, *words: str) -> None:
    missing = [w for w in words if w not in text]
    assert not missing, f"{missing} not in: {text}"


class NoVal(fulmen.System):
    """TinySystem without validation_step (for mistakes that need no validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


# -- training_step and the loss -------------------------------------------------------------------------
def test_e01_forgotten_return_loss(tmp_path: Path) -> None:
    class Forgot(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = F.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)

    message = warned(lambda: fit(tmp_path, Forgot(), make_loader(16)))
    has(message, "Forgot.training_step returned None for all 2 batches of epoch 0", "nothing was optimized",
        "global_step is still 0", "missing `return loss`")


def test_e01_an_explicit_return_none_is_not_warned(tmp_path: Path) -> None:
    class Skips(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None  # skipping every batch on purpose

    trainer = fit(tmp_path, Skips(), make_loader(16))
    assert trainer.global_step == 0


def test_e02_dict_without_loss_key(tmp_path: Path) -> None:
    class Outputs(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"prediction": self.layer(batch[0])}

    with pytest.raises(HookReturnError, match="without a 'loss' key") as err:
        fit(tmp_path, Outputs(), make_loader(16))
    has(str(err.value), "Outputs.training_step", "['prediction']", "Put the loss to optimize under 'loss'")


def test_e03_loss_returned_in_a_tuple(tmp_path: Path) -> None:
    class Pair(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            out = self.layer(x)
            return F.mse_loss(out, y), out

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Pair(), make_loader(16))
    has(str(err.value), "Pair.training_step returned tuple", "expected a scalar loss tensor", "a dict with a 'loss' key")


def test_e04_loss_not_reduced(tmp_path: Path) -> None:
    class PerSample(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.mse_loss(self.layer(x), y, reduction="none").squeeze(1)

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, PerSample(), make_loader(16))
    has(str(err.value), "returned a loss of shape (8,)", "it must be a scalar", "loss.mean()")


def test_e05_loss_without_grad(tmp_path: Path) -> None:
    class Detached(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            with torch.no_grad():
                return F.mse_loss(self.layer(x), y)

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Detached(), make_loader(16))
    has(str(err.value), "does not require grad", "not under torch.no_grad()", ".item() or .detach()")


def test_e06_nan_loss(tmp_path: Path) -> None:
    class Log0(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.log(torch.zeros(())) * 0 + super().training_step(batch, batch_idx)  # -inf * 0 = nan

    with pytest.raises(NonFiniteLossError) as err:
        fit(tmp_path, Log0(), make_loader(16))
    has(str(err.value), "non-finite loss (nan) at global step 0 (epoch 0, batch 0)", "learning rate", "log/division")


def test_e07_no_training_step(tmp_path: Path) -> None:
    class Empty(fulmen.System):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(NotImplementedError) as err:
        fit(tmp_path, Empty(), make_loader(16))
    has(str(err.value), "Empty has no training_step", "training_step(self, batch, batch_idx)")


def test_e08_batch_on_another_device_than_the_model(tmp_path: Path) -> None:
    """torch's own device error, from a training_step whose batch is on another device (here
    "meta", which needs no GPU), gets a note with the devices and where batches are moved."""

    class ElsewhereBatch(NoVal):
        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            return [t.to("meta") for t in batch]  # as a batch left on the CPU is beside a CUDA model

    with pytest.raises(RuntimeError, match="not on the expected device") as err:
        fit(tmp_path, ElsewhereBatch(), make_loader(16))
    note = "\n".join(getattr(err.value, "__notes__", []))
    has(note, "device mismatch in ElsewhereBatch.training_step", "the batch's tensors are on meta",
        "parameters and buffers on cpu", "transfer_batch_to_device", "device=self.device")

    class ElsewhereVal(TinySystem):
        def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
            return [t.to("meta") for t in batch]

    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError) as err:
        trainer.validate(ElsewhereVal(), make_loader(16), verbose=False)
    has("\n".join(getattr(err.value, "__notes__", [])), "device mismatch in ElsewhereVal.validation_step")


def test_e08_cuda_message_is_recognised() -> None:
    """The note for torch's CUDA wording, checked without a GPU."""
    from fulmen.trainer._eval import device_mismatch_note

    class Where:
        device = torch.device("cuda", 0)

    system = NoVal()
    err = RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        "(when checking argument for argument mat1 in method wrapper_CUDA_addmm)"
    )
    note = device_mismatch_note(err, Where(), system, {"x": torch.zeros(2), "ids": [torch.zeros(1)]}, "training_step")
    assert note is not None
    has(note, "NoVal.training_step", "batch's tensors are on cpu", "Trainer's device is cuda:0", "transfer_batch_to_device")
    assert device_mismatch_note(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), Where(), system, None, "x") is None


# -- configure_optimizers and optimization ----------------------------------------------------------------
def test_e09_no_configure_optimizers(tmp_path: Path) -> None:
    class NoOpt(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return F.mse_loss(self.layer(batch[0]), batch[1])

    with pytest.raises(NotImplementedError) as err:
        fit(tmp_path, NoOpt(), make_loader(16))
    has(str(err.value), "NoOpt has no configure_optimizers", "torch.optim.Adam(self.parameters()")


def test_e10_configure_optimizers_returns_nothing(tmp_path: Path) -> None:
    class Forgot(NoVal):
        def configure_optimizers(self) -> Any:
            torch.optim.Adam(self.parameters())

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Forgot(), make_loader(16))
    has(str(err.value), "configure_optimizers returned None", "expected an optimizer", "Return e.g.")


def test_e11_optimizer_over_another_modules_parameters(tmp_path: Path) -> None:
    other = nn.Linear(4, 1)

    class Other(NoVal):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(other.parameters(), lr=0.1)

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Other(), make_loader(16))
    has(str(err.value), "optimizer 0 (SGD) holds none of Other's parameters", "self.parameters()")


def test_e12_optimizer_over_unregistered_layers(tmp_path: Path) -> None:
    class PlainList(NoVal):
        def __init__(self) -> None:
            super().__init__()
            self.heads = [nn.Linear(1, 1)]  # a Python list: not a submodule

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.mse_loss(self.heads[0](self.layer(x)), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([*self.parameters(), *self.heads[0].parameters()], lr=0.05)

    message = warned(lambda: fit(tmp_path, PlainList(), make_loader(16)))
    has(message, "optimizer 0 (SGD) holds 2 of its 4 parameters that are not PlainList's", "plain list",
        "nor saved in checkpoints", "nn.ModuleList")


def test_e13_two_optimizers_with_automatic_optimization(tmp_path: Path) -> None:
    class Gan(NoVal):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Gan(), make_loader(16))
    has(str(err.value), "returned 2 optimizers; automatic optimization steps one", "self.automatic_optimization = False")


def test_e14_optimizer_step_under_automatic_optimization(tmp_path: Path) -> None:
    class StepsToo(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.optimizers().step()
            return loss

    with pytest.raises(RuntimeError) as err:
        fit(tmp_path, StepsToo(), make_loader(16))
    has(str(err.value), "self.optimizers().step() was called", "StepsToo uses automatic optimization",
        "step twice", "self.automatic_optimization = False")


def test_e14_reading_the_optimizer_under_automatic_optimization_is_fine(tmp_path: Path) -> None:
    class ReadsLr(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("lr", self.optimizers().param_groups[0]["lr"])
            return super().training_step(batch, batch_idx)

    assert fit(tmp_path, ReadsLr(), make_loader(16)).global_step == 2


def test_e15_manual_backward_under_automatic_optimization(tmp_path: Path) -> None:
    class Backwards(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

    with pytest.raises(RuntimeError) as err:
        fit(tmp_path, Backwards(), make_loader(16))
    has(str(err.value), "Backwards.manual_backward(loss) is for manual optimization", "computed twice",
        "Return the loss instead")


def test_e16_accumulation_with_manual_optimization(tmp_path: Path) -> None:
    class Manual(NoVal):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(FlagError) as err:
        fit(tmp_path, Manual(), make_loader(16), accumulate_grad_batches=4)
    has(str(err.value), "Manual uses manual optimization", "remove Trainer(accumulate_grad_batches=4)",
        "self.clip_gradients")


def test_e17_scheduler_of_another_optimizer(tmp_path: Path) -> None:
    class Mixed(NoVal):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            stray = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(stray, 1)}

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Mixed(), make_loader(16))
    has(str(err.value), "the scheduler StepLR is bound to an optimizer", "did not return")


def test_e18_plateau_scheduler_without_monitor(tmp_path: Path) -> None:
    class Plateau(NoVal):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Plateau(), make_loader(16))
    has(str(err.value), "ReduceLROnPlateau needs a metric", '"monitor": "val_loss"')


def test_e19_scheduler_monitors_a_metric_nobody_logs(tmp_path: Path) -> None:
    class Plateau(NoVal):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    with pytest.raises(KeyError) as err:
        fit(tmp_path, Plateau(), make_loader(16))
    has(str(err.value), "ReduceLROnPlateau monitors 'val_loss', which was not logged", "self.log('val_loss'",
        '"strict": False')


def test_e20_unknown_lr_scheduler_key(tmp_path: Path) -> None:
    class Typo(NoVal):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "intervall": "step"}}

    with pytest.raises(HookReturnError) as err:
        fit(tmp_path, Typo(), make_loader(16))
    has(str(err.value), "unknown lr_scheduler keys ['intervall']", "allowed: scheduler, interval")


# -- self.log -------------------------------------------------------------------------------------------------
def test_e21_log_outside_a_step(tmp_path: Path) -> None:
    class LogsLr(NoVal):
        def configure_optimizers(self) -> Any:
            self.log("lr", 0.05)
            return super().configure_optimizers()

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, LogsLr(), make_loader(16))
    has(str(err.value), "self.log('lr', ...) was called outside the hooks that can log", "*_step methods")


def test_e22_log_a_tensor_with_several_elements(tmp_path: Path) -> None:
    class LogsVector(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("prediction", self.layer(batch[0]))
            return super().training_step(batch, batch_idx)

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, LogsVector(), make_loader(16))
    has(str(err.value), "self.log('prediction', value)", "must be a scalar", "shape (8, 1)", "value.mean()")


def test_e23_log_a_string(tmp_path: Path) -> None:
    class LogsText(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("phase", "warmup")
            return super().training_step(batch, batch_idx)

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, LogsText(), make_loader(16))
    has(str(err.value), "self.log('phase', value)", "a number or a one-element tensor, got str")


def test_e24_one_key_logged_with_different_settings(tmp_path: Path) -> None:
    class Twice(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            self.log("loss", loss, on_epoch=True)
            return loss

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, Twice(), make_loader(16))
    has(str(err.value), "self.log('loss', ...)", "differ from an earlier call", "on_epoch=False before, on_epoch=True now")


def test_e25_one_name_logged_by_training_and_validation(tmp_path: Path) -> None:
    class SameName(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = F.mse_loss(self(batch[0]), batch[1])
            self.log("loss", loss)  # on_step=True in training
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("loss", F.mse_loss(self(batch[0]), batch[1]))  # on_epoch=True in validation

    message = warned(lambda: fit(tmp_path, SameName(), make_loader(16), make_loader(16)))
    has(message, "self.log('loss', ...) is logged by both training and validation with different settings",
        "on_step=True in training, on_step=False in validation", "self.log('train_loss', ...)",
        "self.log('val_loss', ...)")

    class SameSettings(SameName):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = F.mse_loss(self(batch[0]), batch[1])
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

    from fulmen.errors import _reset_warn_once

    _reset_warn_once()  # (the same key was warned about above)
    message = warned(lambda: fit(tmp_path, SameSettings(), make_loader(16), make_loader(16)))
    has(message, "is logged by both training and validation: callback_metrics", "overwrite")


def test_e26_log_with_neither_on_step_nor_on_epoch(tmp_path: Path) -> None:
    class Nowhere(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss, on_step=False, on_epoch=False)
            return loss

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, Nowhere(), make_loader(16))
    has(str(err.value), "on_step=False, on_epoch=False) would record nothing")


def test_e27_unknown_reduce_fx(tmp_path: Path) -> None:
    class Median(NoVal):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss, reduce_fx="median")
            return loss

    with pytest.raises(LoggingError) as err:
        fit(tmp_path, Median(), make_loader(16))
    has(str(err.value), "reduce_fx='median'", "must be one of 'mean', 'sum', 'max', 'min' or a callable")


def test_e28_log_without_a_trainer() -> None:
    message = warned(lambda: TinySystem().log("loss", 1.0))
    has(message, "not attached to a Trainer", "the value is ignored")


# -- data ------------------------------------------------------------------------------------------------------
def test_e29_no_training_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fit(tmp_path, TinySystem())
    has(str(err.value), "Trainer.fit found no training data", "train_dataloaders=", "datamodule")


def test_e30_train_dataloader_returns_none(tmp_path: Path) -> None:
    class Forgot(NoVal):
        def train_dataloader(self) -> Any:
            make_loader(16)

    with pytest.raises(DataError) as err:
        fit(tmp_path, Forgot())
    has(str(err.value), "Forgot.train_dataloader() returned None", "should return a DataLoader")


def test_e31_drop_last_leaves_no_batch(tmp_path: Path) -> None:
    loader = DataLoader(make_data(5), batch_size=8, drop_last=True)
    with pytest.raises(DataError) as err:
        fit(tmp_path, NoVal(), loader)
    has(str(err.value), "The train dataloader is empty (len 0)", "5 samples, fewer than batch_size=8",
        "drop_last=True", "drop_last=False or a batch_size <= 5")


def test_e32_two_train_dataloaders(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fit(tmp_path, NoVal(), [make_loader(16), make_loader(16)])
    has(str(err.value), "Trainer.fit got 2 train dataloaders; fulmen trains on one", "ConcatDataset")


def test_e33_dataset_instead_of_dataloader(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fit(tmp_path, NoVal(), make_data(16))
    has(str(err.value), "got TensorDataset", "a Dataset", "DataLoader(dataset, batch_size=32")


def test_e34_datamodule_as_val_dataloaders(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        fit(tmp_path, TinySystem(), make_loader(16), TinyData())
    has(str(err.value), "The val dataloader must be", "got TinyData", "a fulmen.DataModule", "datamodule=dm")


def test_e35_dataloaders_and_datamodule_together(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    with pytest.raises(DataError) as err:
        trainer.fit(TinySystem(), make_loader(16), datamodule=TinyData())
    has(str(err.value), "Trainer.fit() got both dataloaders and a datamodule; pass one")


def test_e36_validation_data_without_validation_step(tmp_path: Path) -> None:
    message = warned(lambda: fit(tmp_path, NoVal(), make_loader(16), make_loader(16)))
    has(message, "Validation data was given but NoVal has no validation_step", "validation is skipped")


def test_e37_fraction_of_an_iterable_dataset(tmp_path: Path) -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter([(torch.randn(4), torch.randn(1)) for _ in range(8)])

    with pytest.raises(FlagError) as err:
        fit(tmp_path, NoVal(), DataLoader(Stream(), batch_size=4), limit_train_batches=0.5)
    has(str(err.value), "Trainer(limit_train_batches=0.5)", "has no length", "Pass an int number of batches")


# -- Trainer flags ------------------------------------------------------------------------------------------------
def test_e38_val_check_interval_longer_than_the_epoch(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        fit(tmp_path, TinySystem(), make_loader(16), make_loader(16), val_check_interval=100)
    has(str(err.value), "Trainer(val_check_interval=100) is more than the 2 training batches per epoch",
        "validation would never run", "check_val_every_n_epoch=None")


def test_e39_limit_as_a_float_above_one(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, limit_train_batches=10.0)
    has(str(err.value), "Trainer(limit_train_batches=10.0)", "a fraction", "pass an int (e.g. limit_train_batches=10)")


def test_e40_max_epochs_zero(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, max_epochs=0)
    has(str(err.value), "Trainer(max_epochs=0)", "fit would train nothing", "trainer.validate")


def test_e41_min_epochs_above_max_epochs(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, min_epochs=5, max_epochs=2)
    has(str(err.value), "Trainer(min_epochs=5, max_epochs=2)", "min_epochs is more than max_epochs")


def test_e42_max_time_in_a_wrong_format(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, max_time="12h")
    has(str(err.value), "Trainer(max_time='12h')", "'DD:HH:MM:SS'", "{'hours': 12}")


def test_e43_unknown_precision(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, precision="fp16")
    has(str(err.value), "Trainer(precision='fp16')", "'16-mixed'", "'bf16-mixed'")


def test_e44_mixed_precision_the_cpu_torch_cannot_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.trainer import _validate

    # This torch can: the check lets bf16-mixed on the CPU through.
    assert fit(tmp_path, NoVal(), make_loader(16), precision="bf16-mixed").global_step == 2
    # A torch that cannot autocast to float16 on the CPU (it would warn and run in float32).
    monkeypatch.setattr(_validate, "_autocast_works", lambda device_type, dtype: False)
    with pytest.raises(FlagError) as err:
        fit(tmp_path, NoVal(), make_loader(16), precision="16-mixed")
    has(str(err.value), "Trainer(precision='16-mixed') on cpu", "cannot autocast to float16",
        "precision='bf16-mixed' or '32-true'", "accelerator='cuda'")


def test_e45_cuda_asked_for_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, accelerator="cuda")
    has(str(err.value), "Trainer(accelerator='cuda') but CUDA is not available here", "accelerator='cpu' or 'auto'")


def test_e46_step_based_validation_with_a_fraction(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, check_val_every_n_epoch=None, val_check_interval=0.25)
    has(str(err.value), "check_val_every_n_epoch=None", "val_check_interval must be an int")


def test_e47_no_max_epochs(tmp_path: Path) -> None:
    trainer = fulmen.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
    message = warned(lambda: trainer.fit(NoVal(), make_loader(16)))
    has(message, "Trainer(max_epochs=None, max_steps=-1): training stops after 1000 epochs", "Set max_epochs")


# -- callbacks, hooks, systems and checkpoints ---------------------------------------------------------------------
def test_e48_callback_class_instead_of_instance(tmp_path: Path) -> None:
    with pytest.raises(FlagError) as err:
        quiet_trainer(tmp_path, callbacks=[fulmen.EarlyStopping])
    has(str(err.value), "Trainer(callbacks=...)", "got the class EarlyStopping, not an instance", "EarlyStopping(...)")


def test_e49_misspelt_hook() -> None:
    with pytest.raises(TypeError) as err:

        class Typo(fulmen.Callback):
            def on_train_epoch_ned(self, trainer: Any, system: Any) -> None: ...

    has(str(err.value), "defines 'on_train_epoch_ned'", "Did you mean 'on_train_epoch_end'?")


def test_e50_lightning_1x_hook() -> None:
    with pytest.raises(TypeError) as err:

        class Ported(NoVal):
            def validation_epoch_end(self, outputs: Any) -> None: ...

    has(str(err.value), "defines 'validation_epoch_end', a PyTorch Lightning hook that fulmen does not call",
        "on_validation_epoch_end")


def test_e51_early_stopping_on_a_metric_nobody_logs(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as err:
        fit(tmp_path, NoVal(), make_loader(16), callbacks=[fulmen.EarlyStopping("val_loss")])
    has(str(err.value), "EarlyStopping(monitor='val_loss') found no metric 'val_loss'", "self.log('val_loss', value)",
        "strict=False")


def test_e52_a_plain_module_given_to_fit(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    with pytest.raises(TypeError) as err:
        trainer.fit(nn.Linear(4, 1), make_loader(16))  # type: ignore[arg-type]
    has(str(err.value), "Trainer.fit(system, ...): the first argument must be a fulmen.System, got Linear")


def test_e53_save_top_k_without_monitor() -> None:
    with pytest.raises(ValueError) as err:
        fulmen.ModelCheckpoint(save_top_k=3)
    has(str(err.value), "ModelCheckpoint(save_top_k=3, monitor=None)", "pass monitor='<logged metric>'")


def test_e54_resume_a_different_model(tmp_path: Path) -> None:
    trainer = fit(tmp_path, NoVal(), make_loader(16))
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    class Wider(NoVal):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 2)
            self.head = nn.Linear(2, 1)

    resumed = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=2)
    with pytest.raises(RuntimeError) as err:
        resumed.fit(Wider(), make_loader(16), ckpt_path=tmp_path / "run.ckpt")
    has(str(err.value), "does not fit Wider", "layer.weight: checkpoint (1, 4), model (2, 4)",
        "same model definition and hyperparameters")


def test_e55_validate_without_validation_step(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError) as err:
        quiet_trainer(tmp_path, logger=False).validate(NoVal(), make_loader(16), verbose=False)
    has(str(err.value), "Trainer.validate needs NoVal.validation_step(self, batch, batch_idx)")


# -- the page and this file agree -----------------------------------------------------------------------------------
def test_every_catalogue_entry_has_a_test() -> None:
    text = DOCS.read_text()
    section = text.split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    tested = {int(m) for m in re.findall(r"^def test_e(\d+)_", Path(__file__).read_text(), flags=re.MULTILINE)}
    assert len(documented) >= 30
    assert documented == tested, (sorted(documented - tested), sorted(tested - documented))
