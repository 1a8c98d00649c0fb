"""configure_optimizers in every form, and when learning-rate schedulers step.

64 samples in batches of 8 (8 batches an epoch) unless a test says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.recording import Recorder
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR, ReduceLROnPlateau, StepLR

import fulmen
from fulmen.errors import HookReturnError
from fulmen.trainer._optim import SchedulerConfig, parse_optimizers


def fit(tmp_path: Path, system: Any, train: Any = None, val: Any = None, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("num_sanity_val_steps", 0)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, train if train is not None else make_loader(), val)
    return trainer


class Configured(Recorder):
    """Returns whatever ``make(system)`` builds; records the learning rate each batch trained with."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make
        self.lrs: list[float] = []

    def configure_optimizers(self) -> Any:
        return self.make(self)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])


def sgd(s: Any, lr: float = 1.0) -> torch.optim.SGD:
    return torch.optim.SGD(s.parameters(), lr=lr)


# -- the forms ---------------------------------------------------------------------------------------
def _one(s: Any) -> Any:
    return sgd(s)


def _list(s: Any) -> Any:
    return [sgd(s)]


def _tuple_of_lists(s: Any) -> Any:
    opt = sgd(s)
    return [opt], [StepLR(opt, 1, gamma=0.5)]


def _tuple_with_one_scheduler(s: Any) -> Any:  # Lightning accepts a scheduler not in a list
    opt = sgd(s)
    return [opt], StepLR(opt, 1, gamma=0.5)


def _tuple_with_config_dicts(s: Any) -> Any:
    opt = sgd(s)
    return [opt], [{"scheduler": StepLR(opt, 1, gamma=0.5), "interval": "epoch"}]


def _dict_without_scheduler(s: Any) -> Any:
    return {"optimizer": sgd(s)}


def _dict(s: Any) -> Any:
    opt = sgd(s)
    return {"optimizer": opt, "lr_scheduler": StepLR(opt, 1, gamma=0.5)}


def _dict_with_config(s: Any) -> Any:
    opt = sgd(s)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5), "interval": "epoch", "frequency": 1}}


def _list_of_dicts(s: Any) -> Any:
    opt = sgd(s)
    return [{"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5)}}]


@pytest.mark.parametrize(
    ("make", "n_scheds"),
    [
        (_one, 0),
        (_list, 0),
        (_tuple_of_lists, 1),
        (_tuple_with_one_scheduler, 1),
        (_tuple_with_config_dicts, 1),
        (_dict_without_scheduler, 0),
        (_dict, 1),
        (_dict_with_config, 1),
        (_list_of_dicts, 1),
    ],
)
def test_every_form_trains_and_steps_its_epoch_scheduler(tmp_path: Path, make: Any, n_scheds: int) -> None:
    s = Configured(make)
    trainer = fit(tmp_path, s, make_loader(16), max_epochs=3)
    assert len(trainer.optimizers) == 1 and isinstance(trainer.optimizers[0], torch.optim.SGD)
    assert len(trainer.lr_scheduler_configs) == n_scheds
    # 2 batches an epoch; an epoch scheduler halves the lr after each epoch.
    expected = [1.0, 1.0, 0.5, 0.5, 0.25, 0.25] if n_scheds else [1.0] * 6
    assert s.lrs == expected
    if n_scheds:
        (cfg,) = trainer.lr_scheduler_configs
        assert (cfg.interval, cfg.frequency, cfg.monitor, cfg.strict, cfg.name) == ("epoch", 1, None, True, None)
        assert cfg.scheduler.last_epoch == 3
        assert s.lr_schedulers() is cfg.scheduler


def test_a_config_dict_keeps_every_field() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = ReduceLROnPlateau(opt)
    _, (cfg,) = parse_optimizers(
        {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": sched,
                "interval": "step",
                "frequency": 3,
                "monitor": "val_loss",
                "strict": False,
                "name": "plateau",
            },
        }
    )
    assert cfg == SchedulerConfig(sched, "step", 3, "val_loss", False, "plateau", reduce_on_plateau=True, takes_metric=True)


def test_several_schedulers_for_one_optimizer(tmp_path: Path) -> None:
    def make(s: Any) -> Any:
        opt = sgd(s)
        return [opt], [StepLR(opt, 1, gamma=0.5), {"scheduler": ExponentialLR(opt, 0.9), "interval": "step"}]

    s = Configured(make)
    trainer = fit(tmp_path, s, make_loader(16), max_epochs=2)
    step_sched, exp_sched = (c.scheduler for c in trainer.lr_scheduler_configs)
    assert (step_sched.last_epoch, exp_sched.last_epoch) == (2, 4)
    assert s.lr_schedulers() == [step_sched, exp_sched]


# -- when schedulers step ------------------------------------------------------------------------------
def test_a_step_scheduler_steps_after_every_optimizer_step(tmp_path: Path) -> None:
    def make(s: Any) -> Any:
        opt = sgd(s)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5), "interval": "step"}}

    s = Configured(make)
    trainer = fit(tmp_path, s, make_loader(32), max_epochs=2)
    assert s.lrs == [0.5**i for i in range(8)]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8


@pytest.mark.parametrize(("interval", "frequency", "steps"), [("epoch", 2, 2), ("epoch", 3, 1), ("step", 3, 5)])
def test_frequency(tmp_path: Path, interval: str, frequency: int, steps: int) -> None:
    # 4 epochs of 4 batches: 4 epochs / 16 optimizer steps, every `frequency`-th of them steps.
    def make(s: Any) -> Any:
        opt = sgd(s)
        sched = StepLR(opt, 1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "frequency": frequency}}

    s = Configured(make)
    trainer = fit(tmp_path, s, make_loader(32), max_epochs=4)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == steps
    if interval == "step":  # after optimizer steps 3, 6, 9, ...: the 4th, 7th, ... batches see a new lr
        assert s.lrs == [0.5 ** (i // 3) for i in range(16)]


def test_a_step_scheduler_steps_once_per_optimizer_step_with_accumulation(tmp_path: Path) -> None:
    def make(s: Any) -> Any:
        opt = sgd(s)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5), "interval": "step"}}

    s = Configured(make)
    trainer = fit(tmp_path, s, max_epochs=2, accumulate_grad_batches=4)
    # 8 batches an epoch, an optimizer step every 4: the lr changes every 4 batches.
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert s.lrs == [0.5 ** (i // 4) for i in range(16)]


class RecordingPlateau(ReduceLROnPlateau):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[float] = []

    def step(self, metrics: Any, epoch: Any = None) -> None:  # type: ignore[override]
        self.seen.append(float(metrics))
        super().step(metrics)


class ValMetric(Recorder):
    """Logs ``val_metric`` = 10 + the epoch in validation, and steps a plateau scheduler on it."""

    def __init__(self, **sched_cfg: Any) -> None:
        super().__init__()
        self.sched_cfg = sched_cfg

    def validation_step(self, batch: Any, batch_idx: int, *rest: int) -> None:
        super().validation_step(batch, batch_idx, *rest)
        self.log("val_metric", 10.0 + self.current_epoch)

    def configure_optimizers(self) -> Any:
        opt = sgd(self)
        sched = RecordingPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_metric", **self.sched_cfg}}


def test_a_plateau_scheduler_sees_this_epochs_validation_metric(tmp_path: Path) -> None:
    s = ValMetric()
    trainer = fit(tmp_path, s, make_loader(16), make_loader(16), max_epochs=3)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.seen == [10.0, 11.0, 12.0]
    # The metric rises every epoch (mode "min", patience 0): epochs 1 and 2 halve the lr.
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25)


def test_a_plateau_scheduler_sees_the_validation_inside_the_epoch(tmp_path: Path) -> None:
    # val_check_interval=0.5 validates after batches 1 and 3; the scheduler steps once per epoch on
    # the last value (from the epoch's end).
    s = ValMetric()
    trainer = fit(tmp_path, s, make_loader(32), make_loader(16), max_epochs=2, val_check_interval=0.5)
    assert trainer.lr_scheduler_configs[0].scheduler.seen == [10.0, 11.0]


def test_a_missing_monitored_metric_names_the_logged_ones(tmp_path: Path) -> None:
    s = ValMetric()
    s.sched_cfg = {"monitor": "val_acc"}
    with pytest.raises(KeyError) as info:
        fit(tmp_path, s, make_loader(16), make_loader(16))
    message = str(info.value)
    assert message.startswith("The lr scheduler RecordingPlateau monitors 'val_acc', which was not logged.")
    assert "Logged metrics: ['train_loss', 'val_loss', 'val_metric']" in message
    assert """set "strict": False""" in message  # the message reads as written, no escaped quotes


def test_a_missing_metric_with_strict_false_skips_the_step(tmp_path: Path) -> None:
    s = ValMetric(strict=False)
    # Validation every second epoch: after epoch 0 nothing was logged yet, so the step is skipped.
    # As in Lightning, a metric stays in callback_metrics until logged again: after epoch 2 the
    # scheduler sees epoch 1's value a second time (frequency=2 avoids that, see below).
    trainer = fit(tmp_path, s, make_loader(16), make_loader(16), max_epochs=4, check_val_every_n_epoch=2)
    assert trainer.lr_scheduler_configs[0].scheduler.seen == [11.0, 11.0, 13.0]


def test_validation_every_second_epoch_needs_the_same_frequency(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"monitors 'val_metric'.*give the scheduler the same \"frequency\""):
        fit(tmp_path, ValMetric(), make_loader(16), make_loader(16), max_epochs=2, check_val_every_n_epoch=2)
    trainer = fit(
        tmp_path, ValMetric(frequency=2), make_loader(16), make_loader(16), max_epochs=4, check_val_every_n_epoch=2
    )
    assert trainer.lr_scheduler_configs[0].scheduler.seen == [11.0, 13.0]


def test_the_top_level_monitor_key_of_the_dict(tmp_path: Path) -> None:
    class TopLevel(ValMetric):
        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            return {"optimizer": opt, "lr_scheduler": RecordingPlateau(opt), "monitor": "val_metric"}

    trainer = fit(tmp_path, TopLevel(), make_loader(16), make_loader(16), max_epochs=2)
    assert trainer.lr_scheduler_configs[0].scheduler.seen == [10.0, 11.0]


def test_a_torch_scheduler_with_a_monitor_key_steps_without_the_metric(tmp_path: Path) -> None:
    """As in Lightning, only plateau schedulers get the metric: ``StepLR.step(x)`` would read x as
    an epoch number (and warn that the argument is deprecated)."""

    def make(s: Any) -> Any:
        opt = sgd(s)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5), "monitor": "train_loss"}}

    s = Configured(make)
    trainer = fit(tmp_path, s, make_loader(16), max_epochs=3)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert type(lr) is float and lr == 0.125


# -- lr_scheduler_step and custom schedulers ----------------------------------------------------------
class HalvingScheduler:
    """Not a torch scheduler: halves the lr on step(), or on step(metric) when the metric rose."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.calls: list[Any] = []

    def step(self, metric: Any = None) -> None:
        self.calls.append(None if metric is None else float(metric))
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5

    def state_dict(self) -> dict[str, Any]:
        return {"calls": list(self.calls)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = list(state["calls"])


class CustomStep(ValMetric):
    def __init__(self, **sched_cfg: Any) -> None:
        super().__init__(**sched_cfg)
        self.hook_calls: list[tuple[str, Any]] = []

    def configure_optimizers(self) -> Any:
        opt = sgd(self)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": HalvingScheduler(opt), **self.sched_cfg}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.hook_calls.append((type(scheduler).__name__, None if metric is None else float(metric)))
        scheduler.step() if metric is None else scheduler.step(metric)


def test_lr_scheduler_step_steps_a_custom_scheduler(tmp_path: Path) -> None:
    s = CustomStep()
    trainer = fit(tmp_path, s, make_loader(16), make_loader(16), max_epochs=2, enable_checkpointing=True)
    assert s.hook_calls == [("HalvingScheduler", None)] * 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.25
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    # The scheduler's own state_dict is saved. The checkpoint is written in on_train_epoch_end,
    # before the epoch's scheduler step (the order Lightning has too), so it holds one call.
    assert torch.load(ckpt, weights_only=True)["lr_schedulers"] == [{"calls": [None]}]


def test_lr_scheduler_step_gets_the_metric_a_custom_scheduler_monitors(tmp_path: Path) -> None:
    s = CustomStep(monitor="val_metric", interval="epoch")
    fit(tmp_path, s, make_loader(16), make_loader(16), max_epochs=2)
    assert s.hook_calls == [("HalvingScheduler", 10.0), ("HalvingScheduler", 11.0)]


def test_the_reduce_on_plateau_key_of_lightning(tmp_path: Path) -> None:
    """A scheduler of the user's own that monitors a metric may say so with "reduce_on_plateau";
    then it needs a "monitor", as ReduceLROnPlateau does."""
    with pytest.raises(HookReturnError, match="needs a metric"):
        fit(tmp_path, CustomStep(reduce_on_plateau=True), make_loader(16), make_loader(16))
    s = CustomStep(reduce_on_plateau=True, monitor="val_metric")
    trainer = fit(tmp_path, s, make_loader(16), make_loader(16), max_epochs=2)
    assert trainer.lr_scheduler_configs[0].reduce_on_plateau
    assert s.hook_calls == [("HalvingScheduler", 10.0), ("HalvingScheduler", 11.0)]


def test_lr_scheduler_step_is_called_for_torch_schedulers_too(tmp_path: Path) -> None:
    calls: list[tuple[Any, Any]] = []

    class Hooked(Recorder):
        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": StepLR(opt, 1), "interval": "step"}}

        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            calls.append((scheduler, metric))  # not stepped: the hook replaces the default

    trainer = fit(tmp_path, Hooked(), make_loader(24))
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert calls == [(sched, None)] * 3
    assert sched.last_epoch == 0


# -- bad configurations ------------------------------------------------------------------------------
def _bad_system(make: Any) -> TinySystem:
    class Bad(TinySystem):
        def configure_optimizers(self) -> Any:
            return make(self)

    return Bad()


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": {"scheduler": StepLR(o, 1), "intervall": "step"}},
            r"unknown lr_scheduler keys \['intervall'\]; allowed: scheduler, interval, frequency, monitor, strict, name",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": {"sched": StepLR(o, 1)}},
            r"an \"lr_scheduler\" dict needs a \"scheduler\" key, got keys \['sched'\]",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": {"scheduler": StepLR(o, 1), "interval": "batch"}},
            r"lr_scheduler \"interval\" must be \"epoch\" or \"step\", got 'batch'",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": {"scheduler": StepLR(o, 1), "frequency": 0}},
            r"lr_scheduler \"frequency\" must be an int >= 1, got 0",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": {"scheduler": ReduceLROnPlateau(o), "monitor": ["val_loss"]}},
            r"lr_scheduler \"monitor\" must be the name of a logged metric \(a str\), got \['val_loss'\]",
        ),
        (
            lambda s: {"optimizer": sgd(s), "lr_scheduler": {"scheduler": "cosine"}},
            r"the lr scheduler must have a step\(\) method, got str",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": ReduceLROnPlateau(o)},
            r"ReduceLROnPlateau needs a metric: .*\"monitor\": \"val_loss\"",
        ),
        (
            lambda s: {"optimizer": sgd(s), "scheduler": None},
            r"returned a dict with unknown keys \['scheduler'\]; allowed: optimizer, lr_scheduler, monitor",
        ),
        (
            lambda s: {"optimizer": "sgd"},
            r"returned a dict whose \"optimizer\" is str; it must be a torch.optim.Optimizer",
        ),
        (
            lambda s: ([sgd(s)], [StepLR(sgd(s), 1)]),
            r"the scheduler StepLR is bound to an optimizer \(SGD\) that configure_optimizers did not return",
        ),
        (
            lambda s: torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1),
            r"optimizer 0 \(SGD\) holds none of Bad's parameters \(1 others\)\. Build it from self\.parameters\(\)",
        ),
        (
            lambda s: [sgd(s), sgd(s)],
            r"returned 2 optimizers; automatic optimization steps one\. .*self\.automatic_optimization = False",
        ),
        (
            lambda s: [{"optimizer": sgd(s)}, {"optimizer": sgd(s)}],
            r"returned 2 optimizers; automatic optimization steps one",
        ),
        (
            lambda s: {"optimizer": (o := sgd(s)), "lr_scheduler": HalvingScheduler(o)},
            r"HalvingScheduler is not a torch lr scheduler, so fulmen does not know how to step it\. Define "
            r"Bad\.lr_scheduler_step\(self, scheduler, metric\)",
        ),
    ],
    ids=[
        "unknown-config-key",
        "config-without-scheduler",
        "bad-interval",
        "bad-frequency",
        "monitor-not-a-str",
        "scheduler-without-step",
        "plateau-without-monitor",
        "unknown-dict-key",
        "optimizer-not-an-optimizer",
        "scheduler-of-another-optimizer",
        "optimizer-without-the-systems-parameters",
        "two-optimizers-automatic",
        "two-optimizer-dicts-automatic",
        "custom-scheduler-without-lr_scheduler_step",
    ],
)
def test_bad_configurations(tmp_path: Path, make: Any, pattern: str) -> None:
    with pytest.raises(HookReturnError, match=pattern):
        fit(tmp_path, _bad_system(make), make_loader(16))


def test_a_custom_scheduler_needs_state_dict_for_checkpoints(tmp_path: Path) -> None:
    class Stateless:
        def __init__(self, optimizer: Any) -> None:
            self.optimizer = optimizer

        def step(self) -> None: ...

    class Custom(TinySystem):
        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            return {"optimizer": opt, "lr_scheduler": Stateless(opt)}

        def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
            scheduler.step()

    with pytest.raises(HookReturnError, match=r"the lr scheduler Stateless has no state_dict\(\) or load_state_dict\(\)"):
        fit(tmp_path, Custom(), make_loader(16))


def test_a_bad_configuration_fails_before_training(tmp_path: Path) -> None:
    s = Recorder()
    s.configure_optimizers = lambda: {"optimizer": sgd(s), "lr_scheduler": {"scheduler": LambdaLR(sgd(s), lambda e: 1.0)}}  # type: ignore[method-assign]
    with pytest.raises(HookReturnError, match="bound to an optimizer"):
        fit(tmp_path, s, make_loader(16))
    assert s.trained == []
