"""LearningRateMonitor: names, intervals, values per step/epoch, momentum and weight decay."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen
from fulmen.callbacks import LearningRateMonitor
from fulmen.trainer._optim import SchedulerConfig


class Recording(fulmen.Logger):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]


class Configured(TinySystem):
    """TinySystem whose configure_optimizers is a function given at construction."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def configure_optimizers(self) -> Any:
        return self.make(self)


def run(tmp_path: Any, system: TinySystem, monitor: LearningRateMonitor, **kwargs: Any) -> Recording:
    logger = Recording()
    flags: dict[str, Any] = {
        "max_epochs": 3,
        "limit_train_batches": 4,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "logger": logger,
        "enable_checkpointing": False,
        "callbacks": [monitor],
    }
    flags.update(kwargs)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, make_loader(16, batch_size=4))
    return logger


def step_lr(system: TinySystem) -> Any:
    opt = torch.optim.SGD(system.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_step_lr_schedule_in_metrics_csv(tmp_path: Any) -> None:
    logger = fulmen.CSVLogger(tmp_path)
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=4,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(Configured(step_lr), make_loader(16, batch_size=4))
    with open(logger.metrics_file, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-SGD")]
    got = [(int(r["step"]), float(r["lr-SGD"])) for r in rows]
    # The rate each step used, at that step's index: StepLR halves it every 2 steps.
    assert got == [(s, pytest.approx(0.1 * 0.5 ** (s // 2))) for s in range(8)]
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4


def test_log_every_n_steps(tmp_path: Any) -> None:
    logger = run(tmp_path, Configured(step_lr), LearningRateMonitor(), log_every_n_steps=3, max_epochs=2)
    # The trainer logs its step metrics at the same steps (global_step % 3 == 0, labelled global_step - 1).
    assert logger.series("lr-SGD") == [(2, pytest.approx(0.05)), (5, pytest.approx(0.025))]
    train_steps = [s for s, m in logger.rows if "train_loss" in m]
    assert train_steps == [2, 5]


def test_only_batches_that_step_count(tmp_path: Any) -> None:
    class SkipOdd(Configured):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return None if batch_idx % 2 else loss  # odd batches take no optimizer step

    logger = run(tmp_path, SkipOdd(step_lr), LearningRateMonitor(), max_epochs=2)
    assert logger.series("lr-SGD") == [(s, pytest.approx(0.1 * 0.5 ** (s // 2))) for s in range(4)]


def test_epoch_interval(tmp_path: Any) -> None:
    def make(system: TinySystem) -> Any:
        opt = torch.optim.SGD(system.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    logger = run(tmp_path, Configured(make), LearningRateMonitor(logging_interval="epoch"))
    assert logger.series("lr-SGD") == [(0, 0.1), (4, 0.05), (8, 0.025)]


def test_none_follows_the_scheduler_interval(tmp_path: Any) -> None:
    def make(system: TinySystem) -> Any:
        opt = torch.optim.SGD(system.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    logger = run(tmp_path, Configured(make), LearningRateMonitor())
    assert [s for s, _ in logger.series("lr-SGD")] == [0, 4, 8]  # an epoch scheduler: per epoch
    plain = run(tmp_path, TinySystem(), LearningRateMonitor(), max_epochs=1)
    # No scheduler: at the epoch's start (step 0) and per step, as in Lightning.
    assert plain.series("lr-SGD") == [(0, 0.05)] + [(s, 0.05) for s in range(4)]


def test_param_groups_momentum_and_weight_decay(tmp_path: Any) -> None:
    def make(system: TinySystem) -> Any:
        return torch.optim.SGD(
            [
                {"params": [system.layer.weight], "lr": 0.1, "weight_decay": 0.01},
                {"params": [system.layer.bias], "lr": 0.2},
            ],
            lr=0.5,
            momentum=0.9,
        )

    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    logger = run(tmp_path, Configured(make), monitor, max_epochs=1, limit_train_batches=1)
    assert logger.rows[0] == (
        0,
        {
            "lr-SGD/pg1": 0.1,
            "lr-SGD/pg1-momentum": 0.9,
            "lr-SGD/pg1-weight_decay": 0.01,
            "lr-SGD/pg2": 0.2,
            "lr-SGD/pg2-momentum": 0.9,
            "lr-SGD/pg2-weight_decay": 0.0,
            "epoch": 0.0,
        },
    )
    assert monitor.last_values["lr-SGD/pg2"] == 0.2


def test_adam_betas_as_momentum_and_named_groups_and_scheduler_name(tmp_path: Any) -> None:
    def make(system: TinySystem) -> Any:
        opt = torch.optim.Adam(
            [
                {"params": [system.layer.weight], "name": "weights"},
                {"params": [system.layer.bias], "name": "bias"},
            ],
            lr=0.01,
            betas=(0.8, 0.99),
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "my-lr"}}

    logger = run(
        tmp_path,
        Configured(make),
        LearningRateMonitor(log_momentum=True),
        max_epochs=1,
        limit_train_batches=1,
    )
    _, metrics = logger.rows[0]
    assert metrics["my-lr/weights"] == pytest.approx(0.01)
    assert metrics["my-lr/bias-momentum"] == 0.8


def test_optimizer_without_momentum_warns(tmp_path: Any) -> None:
    def make(system: TinySystem) -> Any:
        return torch.optim.Adagrad(system.parameters(), lr=0.1)

    monitor = LearningRateMonitor(log_momentum=True)
    with pytest.warns(RuntimeWarning, match=r"some optimizers do not have momentum. Adagrad has neither"):
        logger = run(tmp_path, Configured(make), monitor, max_epochs=1)
    assert logger.series("lr-Adagrad-momentum")[0] == (0, 0.0)  # Lightning logs 0 for it
    assert monitor.last_momentum_values == {"lr-Adagrad-momentum": 0.0}
    assert logger.series("lr-Adagrad")[0] == (0, 0.1)


def test_names_for_two_optimizers_of_one_class() -> None:
    model = torch.nn.Linear(2, 2)
    a = torch.optim.SGD([model.weight], lr=0.1)
    b = torch.optim.SGD([model.bias], lr=0.2)
    c = torch.optim.Adam(model.parameters(), lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(c, step_size=1)
    trainer = SimpleNamespace(
        optimizers=[a, b, c], lr_scheduler_configs=[SchedulerConfig(sched, name="adam-lr")]
    )
    monitor = LearningRateMonitor()
    monitor._refresh(trainer)
    # Lightning's names: optimizers with a scheduler first; the second of a class is "-1".
    assert [e.names for e in monitor._entries] == [["adam-lr"], ["lr-SGD"], ["lr-SGD-1"]]
    assert [sorted(e.intervals) for e in monitor._entries] == [["epoch"], ["epoch", "step"], ["epoch", "step"]]
    assert monitor._values("step") == {"lr-SGD": 0.1, "lr-SGD-1": 0.2}


def test_no_logger_is_an_error(tmp_path: Any) -> None:
    trainer = quiet_trainer(
        tmp_path, logger=False, callbacks=[LearningRateMonitor()], enable_checkpointing=False
    )
    with pytest.raises(ValueError, match="LearningRateMonitor needs a logger"):
        trainer.fit(TinySystem(), make_loader(16))


def test_fast_dev_run_is_quiet(tmp_path: Any) -> None:
    monitor = LearningRateMonitor()
    trainer = quiet_trainer(tmp_path, fast_dev_run=True, callbacks=[monitor])
    trainer.fit(TinySystem(), make_loader(16))
    assert trainer.global_step == 1 and monitor.last_values == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"logging_interval": "batch"},
            r"LearningRateMonitor\(logging_interval='batch'\): expected 'step', 'epoch'",
        ),
        ({"log_momentum": 1}, r"LearningRateMonitor\(log_momentum=1\): expected True or False"),
        ({"log_weight_decay": "yes"}, r"log_weight_decay='yes'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LearningRateMonitor(**kwargs)
