"""Pins the exact order of every hook, for the system and for callbacks (the one place it is fixed).

Rule under test: callbacks run before the system's hook, in list order; callbacks with
``monitors = True`` (checkpointing, early stopping) run after it.
"""

from __future__ import annotations

from typing import Any

import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.trainer._hooks import CALLBACK_HOOKS, SHARED_HOOKS


def _recording_callback(name: str, log: list[str], monitors: bool = False) -> fulmen.Callback:
    def make(hook: str) -> Any:
        def method(self: Any, trainer: Any, system: Any, *args: Any) -> None:
            log.append(f"{name}.{hook}")

        return method

    cls = type(f"Rec{name}", (fulmen.Callback,), {h: make(h) for h in CALLBACK_HOOKS if h != "on_exception"})
    cls.monitors = monitors
    return cls()


class RecordingSystem(TinySystem):
    def __init__(self) -> None:
        super().__init__()
        self.log_: list[str] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log_.append("training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log_.append("validation_step")
        super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log_.append("test_step")
        super().test_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        self.log_.append("predict_step")
        return super().predict_step(batch, batch_idx)

    def configure_model(self) -> None:
        self.log_.append("configure_model")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.log_.append("configure_optimizers")
        return super().configure_optimizers()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.log_.append("on_before_batch_transfer")
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        self.log_.append("transfer_batch_to_device")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.log_.append("on_after_batch_transfer")
        return batch


def _add_system_hooks(cls: type) -> None:
    def make(hook: str) -> Any:
        def method(self: Any, *args: Any) -> None:
            self.log_.append(f"system.{hook}")

        return method

    for hook in SHARED_HOOKS:
        setattr(cls, hook, make(hook))


_add_system_hooks(RecordingSystem)


def _run_and_record(tmp_path: Any, action: str) -> list[str]:
    log: list[str] = []
    system = RecordingSystem()
    system.log_ = log
    trainer = quiet_trainer(
        tmp_path,
        callbacks=[_recording_callback("cb", log), _recording_callback("mon", log, monitors=True)],
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        limit_predict_batches=1,
        num_sanity_val_steps=1,
        enable_checkpointing=False,
        logger=False,
    )
    loader = make_loader(n=32, batch_size=8)
    if action == "fit":
        trainer.fit(system, loader, loader)
    elif action == "validate":
        trainer.validate(system, loader, verbose=False)
    elif action == "test":
        trainer.test(system, loader, verbose=False)
    else:
        trainer.predict(system, loader)
    return log


def _both(hook: str) -> list[str]:
    return [f"cb.{hook}", f"system.{hook}", f"mon.{hook}"]


_TRANSFER = ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def _eval_epoch(name: str, step: str) -> list[str]:
    return [
        *_both(f"on_{name}_start"),
        *_both(f"on_{name}_epoch_start"),
        *_TRANSFER,
        *_both(f"on_{name}_batch_start"),
        step,
        *_both(f"on_{name}_batch_end"),
        *_both(f"on_{name}_epoch_end"),
        *_both(f"on_{name}_end"),
    ]


def _train_batch() -> list[str]:
    return [
        *_TRANSFER,
        *_both("on_train_batch_start"),
        "training_step",
        *_both("on_before_backward"),
        *_both("on_after_backward"),
        *_both("on_before_optimizer_step"),
        *_both("on_before_zero_grad"),
        *_both("on_train_batch_end"),
    ]


def test_fit_hook_order(tmp_path: Any) -> None:
    expected = [
        *_both("setup"),
        "configure_model",
        "configure_optimizers",
        *_both("on_fit_start"),
        "cb.on_sanity_check_start",
        "mon.on_sanity_check_start",
        *_eval_epoch("validation", "validation_step"),
        "cb.on_sanity_check_end",
        "mon.on_sanity_check_end",
        *_both("on_train_start"),
        *_both("on_train_epoch_start"),
        *_train_batch(),
        *_train_batch(),
        *_eval_epoch("validation", "validation_step"),
        *_both("on_train_epoch_end"),
        *_both("on_train_end"),
        *_both("on_fit_end"),
        *_both("teardown"),
    ]
    assert _run_and_record(tmp_path, "fit") == expected


def test_validate_test_predict_hook_order(tmp_path: Any) -> None:
    # Each run records a new system, so configure_model is called in each.
    assert _run_and_record(tmp_path, "validate") == [
        *_both("setup"),
        "configure_model",
        *_eval_epoch("validation", "validation_step"),
        *_both("teardown"),
    ]
    assert _run_and_record(tmp_path, "test") == [
        *_both("setup"),
        "configure_model",
        *_eval_epoch("test", "test_step"),
        *_both("teardown"),
    ]
    assert _run_and_record(tmp_path, "predict") == [
        *_both("setup"),
        "configure_model",
        *_eval_epoch("predict", "predict_step"),
        *_both("teardown"),
    ]


def test_configure_model_is_not_called_again_by_a_later_run(tmp_path: Any) -> None:
    log: list[str] = []
    system = RecordingSystem()
    system.log_ = log
    trainer = quiet_trainer(tmp_path, limit_train_batches=1, num_sanity_val_steps=0, enable_checkpointing=False, logger=False)
    loader = make_loader(n=8, batch_size=8)
    trainer.fit(system, loader)
    trainer.test(system, loader, verbose=False)
    assert log.count("configure_model") == 1
    assert log.index("system.setup") < log.index("configure_model") < log.index("configure_optimizers")


def test_only_overridden_hooks_are_in_the_tables(tmp_path: Any) -> None:
    """A callback overriding one hook appears in that hook's table and nowhere else."""

    class OnlyEpochEnd(fulmen.Callback):
        def on_train_epoch_end(self, trainer: Any, system: Any) -> None: ...

    trainer = quiet_trainer(tmp_path, callbacks=[OnlyEpochEnd()], enable_checkpointing=False, logger=False)
    system = TinySystem()
    trainer.fit(system, make_loader(n=16))
    tables = trainer._hooks
    assert tables is not None
    for hook in CALLBACK_HOOKS:
        owners = [type(getattr(fn, "func", fn).__self__).__name__ for fn in tables[hook]]
        assert owners == (["OnlyEpochEnd"] if hook == "on_train_epoch_end" else []), hook
