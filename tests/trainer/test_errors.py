"""What goes wrong, and what the user is told: each error's type, and a message that names the hook
or flag, what was expected and what was got."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder, empty_loader
from helpers.systems import TinyData, TinySystem, make_loader, quiet_trainer
from torch.utils.data import DataLoader

import fulmen
from fulmen.errors import DataError, FlagError, HookReturnError, NonFiniteLossError


def fit(tmp_path: Path, system: Any, train: Any = None, val: Any = None, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, train, val)
    return trainer


def returning(value: Any) -> TinySystem:
    """A system whose training_step returns ``value(loss)``."""

    class Returns(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return value(super().training_step(batch, batch_idx))

    return Returns()


# -- training_step's return value --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda loss: "0.5", r"Returns\.training_step returned str; expected a scalar loss tensor, a dict"),
        (lambda loss: [loss], r"Returns\.training_step returned list; expected a scalar loss tensor, a dict"),
        (lambda loss: loss.expand(2), r"Returns\.training_step returned a loss of shape \(2,\); it must be a scalar"),
        (lambda loss: loss.detach(), r"Returns\.training_step returned a loss that does not require grad"),
        (lambda loss: {"acc": loss}, r"Returns\.training_step returned a dict without a 'loss' key \(keys: \['acc'\]\)"),
        (lambda loss: {"loss": 0.5}, r"Returns\.training_step returned \{'loss': <float>\}; the loss must be a scalar"),
    ],
    ids=["str", "list", "two-element", "no-grad", "dict-without-loss", "dict-with-float"],
)
def test_bad_training_step_returns(tmp_path: Path, make: Any, pattern: str) -> None:
    with pytest.raises(HookReturnError, match=pattern) as err:
        fit(tmp_path, returning(make), make_loader(16))
    assert isinstance(err.value, TypeError)


def test_a_one_element_loss_is_accepted(tmp_path: Path) -> None:
    trainer = fit(tmp_path, returning(lambda loss: loss.reshape(1, 1)), make_loader(16))
    assert trainer.global_step == 2


def test_missing_training_step(tmp_path: Path) -> None:
    class NoStep(fulmen.System):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(NotImplementedError, match=r"NoStep has no training_step\. Define training_step\(self, batch"):
        fit(tmp_path, NoStep(), make_loader(16))


# -- configure_optimizers ------------------------------------------------------------------------------
def test_configure_optimizers_missing(tmp_path: Path) -> None:
    class NoOpt(fulmen.System):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.zeros((), requires_grad=True)

    with pytest.raises(NotImplementedError, match=r"NoOpt has no configure_optimizers\. Define it and return an optimizer"):
        fit(tmp_path, NoOpt(), make_loader(16))


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (None, r"configure_optimizers returned None; expected an optimizer; .*torch\.optim\.Adam"),
        ("adam", r"configure_optimizers returned str; expected an optimizer; a list of optimizers"),
        ([], r"configure_optimizers returned list \(empty\); expected an optimizer"),
        ([1, 2, 3], r"configure_optimizers returned list \(holding int\); expected an optimizer"),
    ],
)
def test_bad_configure_optimizers_returns(tmp_path: Path, value: Any, pattern: str) -> None:
    class Bad(TinySystem):
        def configure_optimizers(self) -> Any:
            return value

    with pytest.raises(HookReturnError, match=pattern):
        fit(tmp_path, Bad(), make_loader(16))


def test_two_optimizers_are_refused(tmp_path: Path) -> None:
    class Two(TinySystem):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(HookReturnError, match=r"configure_optimizers returned 2 optimizers; .* steps one"):
        fit(tmp_path, Two(), make_loader(16))


# -- data ------------------------------------------------------------------------------------------------
def test_no_train_dataloader(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Trainer\.fit found no training data: pass train_dataloaders=\.\.\."):
        fit(tmp_path, TinySystem())


def test_train_dataloader_hook_returning_none(tmp_path: Path) -> None:
    class NoneLoader(TinySystem):
        def train_dataloader(self) -> Any:
            return None

    with pytest.raises(DataError, match=r"NoneLoader\.train_dataloader\(\) returned None; it should return a DataLoader"):
        fit(tmp_path, NoneLoader())


def test_empty_train_dataloader(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"The train dataloader is empty \(len 0\)"):
        fit(tmp_path, TinySystem(), empty_loader())


def test_train_dataloader_that_yields_nothing(tmp_path: Path) -> None:
    class Nothing(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter(())

    with pytest.raises(DataError, match="The train dataloader produced no batches this epoch"):
        fit(tmp_path, TinySystem(), DataLoader(Nothing(), batch_size=4))


def test_empty_val_dataloader(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"The validation dataloader 1 is empty \(len 0\)"):
        fit(tmp_path, TinySystem(), make_loader(16), [make_loader(16), empty_loader()])


def test_empty_test_dataloader(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"The test dataloader 0 is empty \(len 0\)"):
        quiet_trainer(tmp_path, logger=False).test(TinySystem(), empty_loader(), verbose=False)


def test_no_test_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Trainer\.test found no test data: pass dataloaders=\.\.\."):
        quiet_trainer(tmp_path, logger=False).test(TinySystem(), verbose=False)


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_dataloaders_and_datamodule_together(tmp_path: Path, stage: str) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    with pytest.raises(DataError, match=rf"Trainer\.{stage}\(\) got both dataloaders and a datamodule; pass one"):
        getattr(trainer, stage)(TinySystem(), make_loader(16), datamodule=TinyData())


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("value", [False, 0, "yes"])
def test_weights_only_other_than_none_or_true_is_refused(tmp_path: Path, stage: str, value: Any) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    with pytest.raises(FlagError) as err:
        getattr(trainer, stage)(TinySystem(), make_loader(), weights_only=value)
    message = str(err.value)
    assert message.startswith(f"trainer.{stage}(weights_only={value!r}): ")
    assert "torch.load(weights_only=True)" in message and "expected None or True" in message
    assert "Leave weights_only out or pass True" in message
    assert trainer.system is None  # refused before the run started


def test_two_train_dataloaders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Trainer\.fit got 2 train dataloaders; fulmen trains on one"):
        fit(tmp_path, TinySystem(), [make_loader(16), make_loader(16)])


# -- flags --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_epochs": -5}, "Trainer(max_epochs=-5): expected an int >= -1"),
        ({"min_epochs": -1}, "Trainer(min_epochs=-1): expected an int >= 0"),
        ({"max_steps": -2}, "Trainer(max_steps=-2): expected an int >= -1"),
        ({"limit_train_batches": 1.5}, "Trainer(limit_train_batches=1.5): a float is a fraction of the dataloader"),
        ({"limit_val_batches": -1}, "Trainer(limit_val_batches=-1): expected an int >= 0"),
        ({"val_check_interval": 0}, "Trainer(val_check_interval=0): an int is a number of training batches and must be >= 1"),
        ({"val_check_interval": 1.5}, "Trainer(val_check_interval=1.5): expected a float in (0.0, 1.0]"),
        ({"check_val_every_n_epoch": 0}, "Trainer(check_val_every_n_epoch=0): expected an int >= 1 or None"),
        ({"check_val_every_n_epoch": None, "val_check_interval": 0.5}, "val_check_interval must be an int"),
        ({"num_sanity_val_steps": -2}, "Trainer(num_sanity_val_steps=-2): expected an int >= -1"),
        ({"log_every_n_steps": 0}, "Trainer(log_every_n_steps=0): expected an int >= 1"),
        ({"accelerator": "tpu"}, "Trainer(accelerator='tpu'): expected one of 'auto', 'cpu', 'cuda'"),
        ({"max_time": "tomorrow"}, "Trainer(max_time='tomorrow'): expected a string 'DD:HH:MM:SS'"),
        ({"max_time": {"fortnights": 1}}, "Trainer(max_time={'fortnights': 1}): the dict's keys must be timedelta"),
        ({"max_time": "00:00:00:00"}, "Trainer(max_time='00:00:00:00'): the time limit must be positive"),
        ({"fast_dev_run": -1}, "Trainer(fast_dev_run=-1): expected True, False or an int >= 0"),
        ({"overfit_batches": 2.0}, "Trainer(overfit_batches=2.0): a float is a fraction"),
        ({"deterministic": "yes"}, "Trainer(deterministic='yes'): expected True or False"),
        ({"enable_checkpointing": 1}, "Trainer(enable_checkpointing=1): expected True or False"),
        ({"devices": "two"}, "Trainer(devices='two'): expected 'auto', a positive int"),
        ({"num_nodes": 0}, "Trainer(num_nodes=0): expected a positive int"),
        ({"sync_batchnorm": "yes"}, "Trainer(sync_batchnorm='yes'): expected True or False"),
        ({"use_distributed_sampler": 1}, "Trainer(use_distributed_sampler=1): expected True or False"),
        ({"precision": "fp8"}, "Trainer(precision='fp8'): expected one of '32-true', '64-true', '16-mixed'"),
        ({"strategy": "horovod"}, "Trainer(strategy='horovod'): expected one of 'auto', 'single_device', 'ddp'"),
        ({"strategy": "single_device", "devices": 2}, "Trainer(strategy='single_device') runs one process"),
    ],
)
def test_invalid_flags(tmp_path: Path, flags: dict[str, Any], message: str) -> None:
    with pytest.raises(FlagError, match=re.escape(message)) as err:
        quiet_trainer(tmp_path, **flags)
    assert isinstance(err.value, ValueError)


def test_accelerator_cuda_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlagError, match=r"Trainer\(accelerator='cuda'\) but CUDA is not available here"):
        quiet_trainer(tmp_path, accelerator="cuda")


def test_fraction_of_an_iterable_dataset(tmp_path: Path) -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self) -> Any:
            return iter(torch.randn(16, 4).unbind())

    with pytest.raises(FlagError, match=r"Trainer\(limit_train_batches=0\.5\): the train dataloader has no length"):
        fit(tmp_path, TinySystem(), DataLoader(Stream(), batch_size=4), limit_train_batches=0.5)


# -- non-finite losses ---------------------------------------------------------------------------------------
class NaNAt(Recorder):
    def __init__(self, epoch: int, batch_idx: int) -> None:
        super().__init__()
        self.at = (epoch, batch_idx)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if (self.current_epoch, batch_idx) == self.at else loss


def test_nan_loss_names_the_step_and_batch_at_once_on_cpu(tmp_path: Path) -> None:
    """On the CPU reading a loss costs no device wait, so each loss is checked right away."""
    s = NaNAt(0, 5)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at global step 5 \(epoch 0, batch 5\)") as err:
        fit(tmp_path, s, make_loader(), log_every_n_steps=4, max_epochs=2)
    assert isinstance(err.value, FloatingPointError)
    assert len(s.trained) == 6  # stopped at the NaN batch itself


@pytest.mark.parametrize("log_every", [1, 2, 4])
def test_nan_loss_checked_per_log_window_on_accelerators(
    tmp_path: Path, log_every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where reading a loss waits for the device, losses are checked together once per log window."""
    from fulmen.runtime.strategy import Strategy

    monkeypatch.setattr(Strategy, "host_reads_are_cheap", False)
    s = NaNAt(0, 5)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at global step 5 \(epoch 0, batch 5\)") as err:
        fit(tmp_path, s, make_loader(), log_every_n_steps=log_every, max_epochs=2)
    assert f"log_every_n_steps={log_every}" in str(err.value)
    # Found at the end of the log window holding batch 5, not later.
    assert len(s.trained) == 5 + log_every - (5 % log_every)


def test_nan_loss_in_a_later_epoch(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"at global step 11 \(epoch 1, batch 3\)"):
        fit(tmp_path, NaNAt(1, 3), make_loader(), log_every_n_steps=5, max_epochs=3)


def test_nan_loss_in_the_last_batches_is_caught_at_the_epoch_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.runtime.strategy import Strategy

    monkeypatch.setattr(Strategy, "host_reads_are_cheap", False)
    s = NaNAt(0, 7)
    with pytest.raises(NonFiniteLossError, match=r"at global step 7 \(epoch 0, batch 7\)"):
        fit(tmp_path, s, make_loader(), log_every_n_steps=50, max_epochs=3)
    assert len(s.trained) == 8


# -- exceptions in hooks -----------------------------------------------------------------------------------
class Boom(fulmen.Callback):
    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 2:
            raise KeyError("boom")


def test_callback_exception_keeps_its_type_and_gets_a_note(tmp_path: Path) -> None:
    seen: list[BaseException] = []

    class Watch(fulmen.Callback):
        def on_exception(self, trainer: Any, system: Any, exception: BaseException) -> None:
            seen.append(exception)

    with pytest.raises(KeyError, match="boom") as err:
        trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, callbacks=[Boom(), Watch()])
        trainer.fit(TinySystem(), make_loader())
    notes = getattr(err.value, "__notes__", [])
    assert any("Boom.on_train_batch_end" in n for n in notes), notes
    assert seen == [err.value]
    assert trainer.state.status == "failed"
    assert trainer.global_step == 3


def test_system_hook_exception_gets_a_note(tmp_path: Path) -> None:
    class Bad(TinySystem):
        def on_train_epoch_start(self) -> None:
            raise ValueError("bad epoch")

    with pytest.raises(ValueError, match="bad epoch") as err:
        fit(tmp_path, Bad(), make_loader(16))
    assert any("Bad.on_train_epoch_start" in n for n in getattr(err.value, "__notes__", []))


def test_exception_during_sanity_check_clears_sanity_checking(tmp_path: Path) -> None:
    class BadVal(TinySystem):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            raise RuntimeError("val broke")

    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="val broke"):
        trainer.fit(BadVal(), make_loader(16), make_loader(16))
    assert trainer.sanity_checking is False


def test_misspelt_callback_hook_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"defines 'on_train_batch_ned'.*Did you mean 'on_train_batch_end'\?"):

        class Typo(fulmen.Callback):
            def on_train_batch_ned(self, trainer: Any, system: Any, *args: Any) -> None: ...


def test_misspelt_system_hook_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"defines 'on_validaton_epoch_end'.*Did you mean 'on_validation_epoch_end'\?"):

        class Typo(TinySystem):
            def on_validaton_epoch_end(self) -> None: ...


@pytest.mark.parametrize("hook", ["optimizer_step", "optimizer_zero_grad", "backward", "on_validation_model_eval", "training_epoch_end"])
def test_lightning_hooks_fulmen_never_calls_fail_at_class_definition(hook: str) -> None:
    with pytest.raises(TypeError, match=rf"defines '{hook}', a PyTorch Lightning hook that fulmen does not call.*Instead: "):
        type("Ported", (TinySystem,), {hook: lambda self, *args: None})
