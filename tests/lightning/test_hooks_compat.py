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

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

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


# -- what configure_optimizers may return ----------------------------------------------------------


def test_configure_optimizers_returning_none_warns_and_trains_nothing(tmp_path) -> None:
    class NoOpt(Net):
        def configure_optimizers(self):
            return None

    model = NoOpt()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(tmp_path, limit_val_batches=0)
    with pytest.warns(UserWarning, match="will run with no optimizer"):
        trainer.fit(model)
    assert trainer.global_step == 4  # the steps are taken (and counted), with nothing to update
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_core_refuses_configure_optimizers_returning_none(tmp_path) -> None:
    class NoOpt(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return None

    trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(fulmen.errors.HookReturnError, match="returned None"):
        trainer.fit(NoOpt(), _data())


def test_unknown_scheduler_keys_warn_and_are_ignored(tmp_path) -> None:
    class Extra(Net):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "foo": 1}}

    trainer = _trainer(tmp_path, limit_val_batches=0)
    with pytest.warns(RuntimeWarning, match=r"Found unsupported keys in the lr scheduler dict: \{'foo'\}"):
        trainer.fit(Extra())
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].interval == "epoch"


def test_manual_optimization_ignores_automatic_only_scheduler_keys(tmp_path) -> None:
    class Manual(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.layer(batch[0]).sum())
            opt.step()

        def on_train_epoch_end(self):
            self.lr_schedulers().step(0.0)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return [opt], [{"scheduler": plateau, "monitor": "train_loss", "interval": "step"}]

    trainer = _trainer(tmp_path, limit_val_batches=0)
    with pytest.warns(RuntimeWarning, match=r"\['monitor'\], but the keys will be ignored"):
        trainer.fit(Manual())
    assert trainer.lr_scheduler_configs[0].interval == "step" and trainer.lr_scheduler_configs[0].monitor is None


def test_manual_optimization_takes_a_scheduler_of_any_kind(tmp_path) -> None:
    class Stepless:  # no step(): under manual optimization the user decides how to use it
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    class Manual(Net):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.layer(batch[0]).sum())
            opt.step()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [Stepless(opt)]

    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(Manual())
    assert trainer.global_step == 4


def _returning(make):
    class Configured(Net):
        def configure_optimizers(self):
            return make(self)

    return Configured()


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


class _NotTorch:
    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda m: 1, "Unknown configuration for model optimizers"),
        (lambda m: [{"optimizer": _sgd(m)}, _sgd(m)], "Unknown configuration for model optimizers"),
        (lambda m: {"optimizer": _sgd(m), "lr_scheduler": {}}, 'The lr scheduler dict must have the key "scheduler"'),
        (
            lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1),
                                                                     "interval": "batch"}},
            'The "interval" key in lr scheduler dict must be',
        ),
        (
            lambda m: ([_sgd(m)], [torch.optim.lr_scheduler.ReduceLROnPlateau(_sgd(m))]),
            "`configure_optimizers` must include a monitor when a `ReduceLROnPlateau`",
        ),
        (
            lambda m: ([_sgd(m)], [torch.optim.lr_scheduler.StepLR(_sgd(m), 1)]),
            "attached with an optimizer that wasn't returned",
        ),
        (lambda m: {"optimizer": (o := _sgd(m)), "lr_scheduler": _NotTorch(o)}, "`_NotTorch` doesn't follow"),
    ],
)
def test_invalid_optimizer_configurations_name_lightnings_phrase(tmp_path, make, phrase) -> None:
    from fulmen.lightning.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=phrase):
        _trainer(tmp_path, limit_val_batches=0).fit(_returning(make))


def test_plateau_scheduler_with_a_missing_metric(tmp_path) -> None:
    from fulmen.lightning.utilities.exceptions import MisconfigurationException

    def configure(strict):
        def make(model):
            opt = _sgd(model)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "giraffe", "strict": strict}}

        return make

    with pytest.raises(MisconfigurationException, match=r"ReduceLROnPlateau conditioned on metric giraffe which is not "
                                                        r"available\. Available metrics are:"):
        _trainer(tmp_path).fit(_returning(configure(True)))
    trainer = _trainer(tmp_path)
    with pytest.warns(RuntimeWarning, match="which is not available but strict is set to `False`"):
        trainer.fit(_returning(configure(False)))
    assert trainer.global_step == 4


def test_plateau_scheduler_is_not_stepped_in_an_epoch_that_max_steps_cut_short(tmp_path) -> None:
    def make(model):
        opt = _sgd(model)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "giraffe"}}

    trainer = _trainer(tmp_path, max_epochs=None, max_steps=1, limit_val_batches=0)
    trainer.fit(_returning(make))  # (the epoch never ends, so the missing metric is never read)
    assert trainer.global_step == 1


def test_max_epochs_zero_trains_nothing(tmp_path) -> None:
    events: list[str] = []

    class Recording(Net):
        def on_train_start(self):
            events.append("on_train_start")

        def on_fit_end(self):
            events.append("on_fit_end")

    model = Recording()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(tmp_path, max_epochs=0)
    trainer.fit(model)
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert events == ["on_fit_end"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(fulmen.errors.FlagError, match="max_epochs=0"):
        fulmen.Trainer(max_epochs=0)


# -- when schedulers step ----------------------------------------------------------------------------


class StepDecay(Net):
    """StepLR(gamma=0.1) each epoch; records the lr validation sees and the scheduler state saved."""

    def __init__(self, interval: str = "epoch") -> None:
        super().__init__()
        self.interval = interval
        self.val_lrs: list[float] = []
        self.saved: list[int] = []

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking and batch_idx == 0:
            self.val_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint):
        self.saved.append(checkpoint["lr_schedulers"][0]["last_epoch"])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
        return [opt], [{"scheduler": sched, "interval": self.interval}]


def test_epoch_scheduler_steps_before_the_epoch_end_validation_and_checkpoint(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    model = StepDecay()
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path)], enable_checkpointing=True)
    trainer.fit(model)
    assert model.val_lrs == pytest.approx([0.1, 0.01])
    assert model.saved == [1, 2]


def test_core_steps_epoch_schedulers_after_the_epoch_end(tmp_path) -> None:
    class Decay(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.val_lrs: list[float] = []

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            if not self.trainer.sanity_checking and batch_idx == 0:
                self.val_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)]

    system = Decay()
    trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(system, _data(), _data())
    assert system.val_lrs == pytest.approx([1.0, 0.1])


def test_epoch_scheduler_is_not_stepped_in_an_epoch_cut_short(tmp_path) -> None:
    model = StepDecay()
    trainer = _trainer(tmp_path, max_epochs=None, max_steps=2, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 0


def test_step_plateau_scheduler_steps_after_the_validation_of_its_step(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    saved: list[tuple[int, int]] = []

    class Plateau(Net):
        def training_step(self, batch, batch_idx):
            self.log("foo", float(batch_idx))
            return super().training_step(batch, batch_idx)

        def on_save_checkpoint(self, checkpoint):
            plateau, steps = checkpoint["lr_schedulers"]
            saved.append((plateau["last_epoch"], steps["last_epoch"]))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters())
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            steps = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
            return [opt], [{"scheduler": plateau, "interval": "step", "monitor": "foo"},
                           {"scheduler": steps, "interval": "step"}]

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=False)
    trainer = _trainer(tmp_path, limit_val_batches=1, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(Plateau())
    assert saved == [(3, 4)]  # saved at the validation after step 4: the plateau scheduler steps after it
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4


def test_resume_with_lightning_scheduler_timing_continues_exactly(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    straight = StepDecay()
    state = {k: v.clone() for k, v in straight.state_dict().items()}
    trainer = _trainer(tmp_path / "a", max_epochs=3)
    trainer.fit(straight)

    first = StepDecay()
    first.load_state_dict(state)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "b")
    _trainer(tmp_path / "b", max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True).fit(first)
    resumed = StepDecay()
    trainer = _trainer(tmp_path / "b", max_epochs=3)
    trainer.fit(resumed, ckpt_path=checkpoint.last_model_path or checkpoint.best_model_path)
    assert resumed.val_lrs == pytest.approx([0.01, 0.001])
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# -- hooks set on the instance, and the calls Lightning makes --------------------------------------


def test_hooks_set_on_the_instance_are_called(tmp_path) -> None:
    model = Net()
    called: list[str] = []

    def recording(name, fn):
        def hook(*args, **kwargs):
            called.append(name)
            return fn(*args, **kwargs)

        return hook

    for name in ("optimizer_step", "optimizer_zero_grad", "backward", "on_validation_model_eval",
                 "on_predict_model_eval", "configure_gradient_clipping"):
        setattr(model, name, recording(name, getattr(model, name)))
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model)
    trainer.predict(model, _data(2))
    assert called.count("optimizer_step") == 2 and called.count("optimizer_zero_grad") == 2
    assert called.count("backward") == 2 and called.count("configure_gradient_clipping") == 2
    assert called.count("on_validation_model_eval") == 1 and called.count("on_predict_model_eval") == 1
    assert trainer.global_step == 2


def test_zero_grad_override_is_the_only_zeroing(tmp_path) -> None:
    zero_grad_calls = []

    class EveryOther(Net):
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            if batch_idx % 2 == 0:
                optimizer.zero_grad()

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            original = opt.zero_grad

            def counted(*args, **kwargs):
                zero_grad_calls.append(1)
                return original(*args, **kwargs)

            opt.zero_grad = counted
            return opt

    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(EveryOther(), _data(n=40))
    assert len(zero_grad_calls) == 10


def test_model_mode_hooks_as_lightning_calls_them(tmp_path) -> None:
    events: list[str] = []

    class Modes(Net):
        def __init__(self) -> None:
            super().__init__()
            self.frozen = torch.nn.Linear(2, 2).eval()

        def on_validation_model_eval(self):
            events.append("eval")
            super().on_validation_model_eval()

        def on_validation_model_train(self):
            events.append("train")
            super().on_validation_model_train()

    model = Modes()
    model.on_validation_model_train = None  # not overridden then: each module's mode is restored
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model)
    assert events == ["eval"]
    assert model.training and not model.frozen.training


def test_setup_and_teardown_receive_stage_by_keyword(tmp_path) -> None:
    received: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Recording(Callback):
        def setup(self, trainer, pl_module, *args, **kwargs):
            received.append(("callback.setup", args, kwargs))

        def teardown(self, trainer, pl_module, *args, **kwargs):
            received.append(("callback.teardown", args, kwargs))

    class Module(Net):
        def setup(self, *args, **kwargs):
            received.append(("module.setup", args, kwargs))

    class Data(L.LightningDataModule):
        def setup(self, *args, **kwargs):
            received.append(("datamodule.setup", args, kwargs))

        def train_dataloader(self):
            return _data()

    trainer = _trainer(tmp_path, limit_val_batches=0, callbacks=[Recording()])
    trainer.fit(Module(), datamodule=Data())
    assert received == [
        ("datamodule.setup", (), {"stage": "fit"}),
        ("callback.setup", (), {"stage": "fit"}),
        ("module.setup", (), {"stage": "fit"}),
        ("callback.teardown", (), {"stage": "fit"}),
    ]


def test_a_setup_function_without_the_stage_keyword_gets_it_positionally(tmp_path) -> None:
    from fulmen.lightning.callbacks import LambdaCallback

    got: list[tuple[Any, ...]] = []
    callback = LambdaCallback(setup=lambda trainer, pl_module, *args: got.append(args))
    _trainer(tmp_path, limit_val_batches=0, callbacks=[callback]).fit(Net())
    assert got == [("fit",)]


def test_gradients_are_cleared_as_each_stage_starts(tmp_path) -> None:
    events: list[str] = []

    class Recording(Net):
        def zero_grad(self, set_to_none: bool = True) -> None:
            events.append("zero_grad")
            super().zero_grad(set_to_none)

        def on_fit_start(self):
            events.append("on_fit_start")

        def on_validation_model_zero_grad(self):
            events.append("on_validation_model_zero_grad")

        def on_validation_start(self):
            events.append("on_validation_start")

    model = Recording()
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model)
    assert events == ["on_fit_start", "zero_grad", "on_validation_model_zero_grad", "on_validation_start"]
    events.clear()
    for x in model.parameters():
        x.grad = torch.ones_like(x)
    trainer.validate(model, verbose=False)
    assert events[0] == "zero_grad" and all(x.grad is None for x in model.parameters())


def test_validation_data_is_requested_first_with_the_random_state_kept(tmp_path) -> None:
    order: list[str] = []

    class Random(Net):
        def train_dataloader(self):
            order.append("train")
            return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)

        def val_dataloader(self):
            order.append("val")
            return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)

    model = Random()
    torch.manual_seed(0)
    trainer = _trainer(tmp_path)
    trainer.fit(model)
    assert order == ["val", "train"]
    # Built from the same random state, as Lightning builds the validation data inside the sanity check
    assert torch.equal(trainer.train_dataloader.dataset.tensors[0], trainer.val_dataloaders.dataset.tensors[0])
    order.clear()
    _trainer(tmp_path, num_sanity_val_steps=0).fit(model)
    assert order == ["train", "val"]  # no sanity check: requested at the first validation, after the training data


def test_data_of_a_stage_turned_off_is_not_requested(tmp_path) -> None:
    requested: list[str] = []

    class Counting(Net):
        def val_dataloader(self):
            requested.append("val")
            return _data()

    model = Counting()
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.validate(model, verbose=False) == []
    assert requested == []


def test_configure_gradient_clipping_receives_the_trainers_values_by_keyword(tmp_path) -> None:
    received: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class Clipping(Net):
        def configure_gradient_clipping(self, optimizer, *args, **kwargs):
            received.append((args, kwargs))

    _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(Clipping())
    _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, gradient_clip_val=0.5).fit(Clipping())
    assert received == [
        ((), {"gradient_clip_val": None, "gradient_clip_algorithm": None}),
        ((), {"gradient_clip_val": 0.5, "gradient_clip_algorithm": None}),
    ]


def test_a_resumed_fit_restores_the_module_before_the_callbacks_and_skips_the_sanity_check(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    events: list[str] = []

    class Recording(Callback):
        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            events.append("callback.on_load_checkpoint")

        def on_sanity_check_start(self, trainer, pl_module):
            events.append("sanity")

    class Module(Net):
        def on_load_checkpoint(self, checkpoint):
            events.append("module.on_load_checkpoint")

    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    _trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True).fit(Module())
    _trainer(tmp_path, max_epochs=2, callbacks=[Recording()]).fit(Module(), ckpt_path=checkpoint.last_model_path
                                                                  or checkpoint.best_model_path)
    assert events == ["module.on_load_checkpoint", "callback.on_load_checkpoint"]


# -- training_step returning None, optimizers that need a closure -----------------------------------


class EveryOtherNone(Net):
    def __init__(self) -> None:
        super().__init__()
        self.before_step = 0

    def training_step(self, batch, batch_idx):
        return None if batch_idx % 2 else self.layer(batch[0]).pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        self.before_step += 1


def test_a_none_training_step_output_still_steps_under_lightning(tmp_path) -> None:
    model = EveryOtherNone()
    trainer = _trainer(tmp_path, limit_val_batches=0)
    with pytest.warns(UserWarning, match="`training_step` returned `None`"):
        trainer.fit(model)
    assert trainer.global_step == 4 and model.before_step == 4


def test_core_skips_a_batch_whose_training_step_returned_none(tmp_path) -> None:
    class Plain(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Plain(), _data())
    assert trainer.global_step == 2


class Lbfgs(Net):
    def __init__(self) -> None:
        super().__init__()
        self.evaluations = 0

    def training_step(self, batch, batch_idx):
        self.evaluations += 1
        return self.layer(batch[0]).sub(1).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)


@pytest.mark.parametrize("core", [False, True])
def test_lbfgs_evaluates_the_loss_again_through_its_closure(tmp_path, core) -> None:
    model = Lbfgs()
    if core:
        trainer = fulmen.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_progress_bar=False,
                                 enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(model, _data(n=4))
    else:
        trainer = _trainer(tmp_path, limit_val_batches=0)
        trainer.fit(model, _data(n=4))
    assert trainer.global_step == 2
    assert model.evaluations > 2  # LBFGS asked for more evaluations than there were batches
    x = _data(n=4).dataset.tensors[0]
    with torch.no_grad():
        assert float(model.layer(x).sub(1).pow(2).mean()) < 0.5


def test_lbfgs_zeroes_the_gradients_once_per_evaluation(tmp_path) -> None:
    from unittest import mock

    model = Lbfgs()
    with mock.patch("torch.optim.LBFGS.zero_grad") as zero_grad:
        _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model)
    assert zero_grad.call_count == 5  # max_iter evaluations, each from a zeroed gradient (as Lightning's closure)


def test_lbfgs_with_an_optimizer_step_override_gets_the_closure(tmp_path) -> None:
    class Warmup(Lbfgs):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)

    model = Warmup()
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(model, _data(n=4))
    assert trainer.global_step == 2 and model.evaluations > 2


def test_resume_with_lightnings_zeroing_order_takes_no_extra_step(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    class ZeroesLate(Net):  # Lightning's order: the gradients of a step stay until the next group starts
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            optimizer.zero_grad()

    torch.manual_seed(0)
    straight = ZeroesLate()
    state = {k: v.clone() for k, v in straight.state_dict().items()}
    trainer = _trainer(tmp_path / "a", max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(straight)

    first = ZeroesLate()
    first.load_state_dict(state)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "b")
    _trainer(tmp_path / "b", max_epochs=1, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[checkpoint],
             enable_checkpointing=True).fit(first)
    assert torch.load(checkpoint.best_model_path, weights_only=True).get("pending_gradients") is None
    resumed = ZeroesLate()
    trainer = _trainer(tmp_path / "b", max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0)
    trainer.fit(resumed, ckpt_path=checkpoint.best_model_path)
    assert trainer.global_step == 4
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_trainer_gradient_clip_algorithm_is_what_configure_gradient_clipping_receives(tmp_path) -> None:
    received: list[Any] = []

    class Clipping(Net):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val, gradient_clip_algorithm):
            received.append((gradient_clip_algorithm, self.trainer.gradient_clip_algorithm))

    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, gradient_clip_val=1.0,
                       gradient_clip_algorithm="Value")
    trainer.fit(Clipping())
    assert received == [("value", "value")]
    assert _trainer(tmp_path).gradient_clip_algorithm is None


def test_gradients_are_zeroed_in_lightnings_place(tmp_path) -> None:
    events: list[str] = []

    class Ordered(Net):
        def training_step(self, batch, batch_idx):
            events.append("training_step")
            return super().training_step(batch, batch_idx)

        def on_before_zero_grad(self, optimizer):
            events.append("on_before_zero_grad")

        def on_before_backward(self, loss):
            events.append("on_before_backward")

        def on_before_optimizer_step(self, optimizer):
            events.append("on_before_optimizer_step")

    model = Ordered()
    _trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(model)
    step = ["training_step", "on_before_zero_grad", "on_before_backward", "on_before_optimizer_step"]
    assert events == step + step
    assert all(p.grad is not None for p in model.parameters())  # (kept until the next zeroing, as in Lightning)


def test_a_resumed_datamodule_state_is_restored_before_its_dataloaders_are_requested(tmp_path) -> None:
    from fulmen.lightning.callbacks import ModelCheckpoint

    class Stateful(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.stage_of_curriculum = 0
            self.seen: list[int] = []

        def train_dataloader(self):
            self.seen.append(self.stage_of_curriculum)
            return _data()

        def state_dict(self):
            return {"stage_of_curriculum": self.stage_of_curriculum}

        def load_state_dict(self, state):
            self.stage_of_curriculum = state["stage_of_curriculum"]

    class NoVal(Net):
        val_dataloader = None  # type: ignore[assignment]

    first = Stateful()
    first.stage_of_curriculum = 3
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    _trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True).fit(NoVal(), datamodule=first)
    resumed = Stateful()
    _trainer(tmp_path, max_epochs=2).fit(NoVal(), datamodule=resumed, ckpt_path=checkpoint.best_model_path)
    assert resumed.seen == [3]
