"""Roles are class attributes, so a subclass keeps its base's role (issue 14, item 5).

A checkpointing callback (``saves_checkpoints``) runs after the other monitoring callbacks, a
timer (``limits_time``) silences the 1000-epoch warning, a strategy that runs the entry point in
processes it starts says so with ``launches_processes``; nothing recognises a role by class name.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.callbacks.checkpoint import ModelCheckpoint
from fulmen.callbacks.early_stopping import EarlyStopping
from fulmen.callbacks.timer import Timer
from fulmen.checkpoint.io import load_checkpoint
from fulmen.errors import _reset_warn_once
from fulmen.runtime.ddp import DDPStrategy
from fulmen.runtime.precision import Precision
from fulmen.runtime.strategy import Strategy

SRC = Path(fulmen.__file__).parent


class MyCkpt(ModelCheckpoint):
    """A user's checkpoint callback: a subclass, with its own name."""


class Frozen(TinySystem):
    """val_loss never improves (lr 0): EarlyStopping's wait count grows by one per validation."""

    def __init__(self) -> None:
        super().__init__(lr=0.0)


def test_roles_are_declared_on_the_base_classes() -> None:
    assert (fulmen.Callback.monitors, fulmen.Callback.saves_checkpoints, fulmen.Callback.limits_time) == (
        False,
    ) * 3
    assert ModelCheckpoint.monitors and ModelCheckpoint.saves_checkpoints and not ModelCheckpoint.limits_time
    assert EarlyStopping.monitors and not EarlyStopping.saves_checkpoints
    assert Timer.limits_time and not Timer.saves_checkpoints
    assert MyCkpt.saves_checkpoints and type("MyTimer", (Timer,), {}).limits_time


def test_a_model_checkpoint_subclass_saves_after_early_stopping_in_the_same_hook(tmp_path: Path) -> None:
    """MyCkpt is listed before EarlyStopping, yet its checkpoint written in on_validation_end holds
    the EarlyStopping state updated in that same hook (best score, wait count)."""
    ckpt = MyCkpt(dirpath=tmp_path / "ckpts", filename="{epoch}", save_top_k=-1)
    stopping = EarlyStopping(monitor="val_loss", patience=10)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[ckpt, stopping], logger=False)
    trainer.fit(Frozen(), make_loader(16), make_loader(16))
    for epoch in range(3):
        state = load_checkpoint(tmp_path / "ckpts" / f"epoch={epoch}.ckpt")["callbacks"][stopping.state_key]
        assert state["wait_count"] == epoch  # 0 after the first validation sets the best score
        assert torch.isfinite(state["best_score"])  # (before the check it is still inf)


def test_monitoring_callbacks_keep_their_order_before_the_checkpointing_ones(tmp_path: Path) -> None:
    calls: list[str] = []

    class Watch(fulmen.Callback):
        monitors = True

        def __init__(self, name: str) -> None:
            self.name = name

        def on_validation_end(self, trainer: Any, system: Any) -> None:
            calls.append(self.name)

    class Saves(Watch):
        saves_checkpoints = True

    class SavesToo(Saves):  # (a subclass keeps the role)
        pass

    class Plain(fulmen.Callback):
        def on_validation_end(self, trainer: Any, system: Any) -> None:
            calls.append("plain")

    callbacks = [Saves("saves"), Watch("first"), SavesToo("saves too"), Plain(), Watch("second")]
    trainer = quiet_trainer(
        tmp_path, limit_train_batches=1, num_sanity_val_steps=0, callbacks=callbacks, logger=False
    )
    trainer.fit(TinySystem(), make_loader(8), make_loader(8))
    assert calls == ["plain", "first", "second", "saves", "saves too"]


def test_a_timer_subclass_keeps_the_timer_role(tmp_path: Path) -> None:
    class MyTimer(Timer):
        pass

    class StopAtOnce(TinySystem):
        def on_train_batch_end(self, *args: Any) -> None:
            self.trainer.should_stop = True

    def warned(callbacks: list[fulmen.Callback]) -> bool:
        _reset_warn_once()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_trainer(tmp_path, max_epochs=None, callbacks=callbacks).fit(StopAtOnce(), make_loader(8))
        return any("stops after 1000 epochs" in str(w.message) for w in caught)

    assert warned([])
    assert not warned([MyTimer(duration={"hours": 1})])


def test_launches_processes_is_the_strategys_role() -> None:
    assert Strategy(torch.device("cpu"), Precision()).launches_processes is False

    class MyDDP(DDPStrategy):
        pass

    spawn, popen = MyDDP(start_method="spawn"), DDPStrategy(start_method="popen")
    assert not spawn.launches_processes  # one process: nothing to start
    spawn.world_size = popen.world_size = 2
    assert spawn.launches_processes and not popen.launches_processes
    trainer = fulmen.Trainer(strategy="ddp_spawn", devices=2, accelerator="cpu", logger=False)
    assert trainer.strategy.launches_processes


def _class_names() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return names


def test_no_role_is_recognised_by_a_class_name() -> None:
    """``type(x).__name__ == "ModelCheckpoint"`` (or ``in (...)``) for one of fulmen's own classes
    breaks for subclasses: declare a class attribute instead."""
    ours, found = _class_names(), []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        where = {id(n): f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if not any(
                isinstance(s, ast.Attribute) and s.attr in ("__name__", "__qualname__") for s in sides
            ):
                continue
            literals = [
                c
                for s in sides
                for c in ast.walk(s)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
            found += [f"{path.relative_to(SRC)}:{where.get(id(node))}" for c in literals if c.value in ours]
    # torch's FSDP MixedPrecision (same name as fulmen's precision class), recognised without
    # importing torch.distributed.fsdp:
    allowed = {"lightning/strategies.py:_policy"}
    assert not [f for f in found if f not in allowed], f"class-name role checks: {found}"
