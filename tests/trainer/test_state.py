"""``trainer.loop`` (``LoopState``) and ``trainer.metrics`` (``Metrics``): the run's state in two
objects, the checkpoint's loop section is the loop state's state dict, and the run is changed
through the Trainer's requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.trainer._phase import Phase
from fulmen.trainer.state import LoopState


class RecordLoopAtSave(fulmen.Callback):
    """Keeps, at each checkpoint, the loop section written and the loop state at that moment."""

    def __init__(self) -> None:
        self.pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def on_save_checkpoint(self, trainer: Any, system: Any, checkpoint: dict[str, Any]) -> None:
        self.pairs.append((dict(checkpoint["loops"]), trainer.loop.state_dict()))


def _without_rng(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "epoch_start_rng"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


def test_the_checkpoints_loop_section_is_the_loop_states_state_dict(tmp_path: Path) -> None:
    record = RecordLoopAtSave()
    trainer = fulmen.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record, fulmen.callbacks.ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=3, save_top_k=-1)],
    )
    trainer.fit(TinySystem(), make_loader(n=40, shuffle=True), make_loader(n=16))
    assert len(record.pairs) == 3  # steps 3, 6 and 9 of 10
    for written, live in record.pairs:
        assert _without_rng(written) == _without_rng(live)
        assert _same(written["epoch_start_rng"], live["epoch_start_rng"])
    # mid-epoch checkpoints record the position inside the epoch, as the loop state had it
    positions = {(w["epoch"], w["global_step"], w["batches_done"], w["phase"]) for w, _ in record.pairs}
    assert (0, 3, 3, "batch") in positions and (1, 6, 1, "batch") in positions
    assert trainer.loop.epoch == trainer.current_epoch == 2 and trainer.loop.global_step == trainer.global_step == 10


def test_state_dict_round_trip_and_reading_an_old_file() -> None:
    loop = LoopState(epoch=3, global_step=41, batches_done=5, phase=Phase.VALIDATION, accumulate_grad_batches=2)
    loop.describe_data(12, {"train_batch_size": 8, "train_dataset_len": 96})
    back = LoopState()
    back.load_state_dict(loop.state_dict())
    assert back.state_dict() == loop.state_dict()
    assert (back.epoch, back.global_step, back.batch_idx, back.phase) == (3, 41, 4, Phase.VALIDATION)
    # a file without a loop section (weights only, or Lightning's without fulmen's keys)
    old = LoopState.from_checkpoint({"epoch": 2, "global_step": 17})
    assert (old.epoch, old.global_step, old.batches_done, old.phase) == (2, 17, 0, Phase.AFTER_EPOCH)
    assert not old.has_data_facts and old.accumulate_grad_batches == 0


def test_position_and_requests_go_through_the_trainer(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    with pytest.raises(AttributeError):
        trainer.global_step = 5  # type: ignore[misc]  # counted by the loop (read-only, as in Lightning)
    with pytest.raises(AttributeError):
        trainer.current_epoch = 1  # type: ignore[misc]
    trainer.should_stop = True
    assert trainer.loop.should_stop is True
    trainer.accumulate_grad_batches = 4
    assert trainer.loop.accumulate_grad_batches == 4


class StopBySignalAt(fulmen.Callback):
    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.batch_idx:
            trainer.request_stop("SIGTERM")


def test_request_stop_stops_after_the_batch_with_every_step_saved(tmp_path: Path, capsys: Any) -> None:
    trainer = fulmen.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StopBySignalAt(2)],
    )
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(TinySystem(), make_loader(n=40))
    assert stopped.value.code == 143
    saved = list(tmp_path.rglob("interrupted.ckpt"))
    assert len(saved) == 1
    ckpt = torch.load(saved[0], weights_only=True)
    assert (ckpt["loops"]["global_step"], ckpt["loops"]["batches_done"], ckpt["loops"]["phase"]) == (3, 3, "batch")
    assert trainer.state.status == "interrupted" and "SIGTERM received: stopped after global step 3" in capsys.readouterr().err


def test_metrics_own_the_stores_and_kept_values(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=1)
    system = TinySystem()
    trainer.fit(system, make_loader(n=16), make_loader(n=16))
    metrics = trainer.metrics
    assert set(metrics.stores) == {"train", "val", "test"} and metrics.live == []
    assert "val_loss" in trainer.callback_metrics and "train_loss" in trainer.logged_metrics
    trainer.callback_metrics["extra"] = torch.tensor(1.5)  # kept, as callbacks do in Lightning
    assert metrics.kept_callback["extra"].item() == 1.5 and trainer.callback_metrics["extra"].item() == 1.5
    trainer.test(system, make_loader(n=16), verbose=False)  # a new run starts with empty metrics
    assert "val_loss" not in trainer.callback_metrics and "test_loss" in trainer.callback_metrics
