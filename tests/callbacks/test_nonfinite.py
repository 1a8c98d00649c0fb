"""NonFiniteGuard (raise / skip on NaN/inf gradients), the re-run that names the first non-finite
module, and the trainer's NonFiniteLossError naming it on the CPU path."""

from __future__ import annotations

import csv
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F

import fulmen
from fulmen.callbacks import NonFiniteGuard
from fulmen.callbacks.nonfinite import NonFiniteOrigin, first_nonfinite_module
from fulmen.errors import FulmenWarning, NonFiniteGradientError, NonFiniteLossError


class Blowup(nn.Module):
    """Multiplies by ``factor`` while ``on`` is set (1e39 overflows float32 to inf)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e39 if self.on else x


class Net(fulmen.System):
    """``net``: Linear -> Blowup -> Linear. ``bad`` batches ``(epoch, batch_idx)`` go wrong as ``how`` says:

    - ``"module"``: Blowup makes inf, the loss hides it (``nan_to_num``), the gradients are NaN;
    - ``"backward"``: ``where(mask, sqrt(h), 0)`` with negative h: finite forward, NaN gradient;
    - ``"loss"``: the loss itself is multiplied by NaN.
    """

    def __init__(self, how: str = "module", bad: tuple[tuple[int, int], ...] = ((0, 2),)) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), Blowup(), nn.Linear(8, 1))
        self.how = how
        self.bad = set(bad)
        self.seen: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch_idx)
        x, y = batch
        wrong = (self.current_epoch, batch_idx) in self.bad
        self.net[1].on = wrong and self.how == "module"
        h = self.net[1](self.net[0](x))
        if wrong and self.how == "backward":
            h = torch.where(h > 1e9, torch.sqrt(h - 2e9), h)  # sqrt of negatives: NaN, never selected
        out = self.net[2](h)
        loss = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).sub(y).pow(2).mean()
        self.net[1].on = False
        if wrong and self.how == "loss":
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path: Path, system: Any, *callbacks: Any, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    flags.setdefault("max_epochs", 1)
    trainer = quiet_trainer(tmp_path, callbacks=list(callbacks), **flags)
    trainer.fit(system, make_loader(48, batch_size=8))
    return trainer


def weights(system: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in system.parameters()]


# -- raise ---------------------------------------------------------------------------------------------------
def test_raise_names_the_parameters_step_batch_and_module(tmp_path: Path) -> None:
    system = Net("module", bad=((0, 2),))
    with pytest.raises(NonFiniteGradientError) as err:
        fit(tmp_path, system, NonFiniteGuard())
    msg = str(err.value)
    # net.2's bias gradient stays finite (nan_to_num passes zeros back for the inf outputs).
    assert "NaN or inf gradient in 3 parameters at global step 2 (epoch 0, batch 2): net.0.weight, net.0.bias, " \
        "net.2.weight." in msg
    assert "The first module whose output was non-finite: net.1 (Blowup)" in msg
    assert "detect_anomaly=True" in msg
    assert isinstance(err.value, NonFiniteLossError) and isinstance(err.value, FloatingPointError)
    assert system.seen == [0, 1, 2]  # the re-run's training_step call is undone from the system's lists


def test_raise_when_only_the_backward_goes_nan(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteGradientError, match=r"at global step 3 \(epoch 0, batch 3\)") as err:
        fit(tmp_path, Net("backward", bad=((0, 3),)), NonFiniteGuard())
    msg = str(err.value)
    assert "in 2 parameters" in msg and "net.0.weight, net.0.bias." in msg
    assert "all module outputs were finite, so the gradient went non-finite in the backward pass" in msg


def test_many_parameters_are_counted(tmp_path: Path) -> None:
    class Deep(Net):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), *[nn.Linear(8, 8) for _ in range(5)], nn.Linear(8, 1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            out = self.net(x)
            if batch_idx == 1:  # a NaN gradient into every layer, from a finite forward
                out = torch.where(out > 1e9, torch.sqrt(out - 2e9), out)
            return F.mse_loss(out, y)

    with pytest.raises(NonFiniteGradientError, match=r"in 14 parameters .*: net.0.weight, net.0.bias, net.1.weight, "
                       r"net.1.bias, net.2.weight \(and 9 more\)\."):
        fit(tmp_path, Deep(), NonFiniteGuard())


def test_accumulation_names_the_group(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteGradientError, match=r"global step 1 \(epoch 0, batch 3; the step accumulated batches 2 to 3"):
        fit(tmp_path, Net("module", bad=((0, 3),)), NonFiniteGuard(), accumulate_grad_batches=2)


def test_find_module_off(tmp_path: Path) -> None:
    system = Net("module", bad=((0, 1),))
    with pytest.raises(NonFiniteGradientError) as err:
        fit(tmp_path, system, NonFiniteGuard(find_module=False))
    assert "first module" not in str(err.value)
    assert system.seen == [0, 1]


# -- skip ----------------------------------------------------------------------------------------------------
class Weights(fulmen.Callback):
    """Weights before and after each batch (the step in between)."""

    def __init__(self) -> None:
        self.changed: dict[int, bool] = {}
        self._before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
        self._before = weights(system)

    def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        after = weights(system)
        self.changed[trainer.global_step - 1] = not all(torch.equal(a, b) for a, b in zip(self._before, after))
        assert all(bool(torch.isfinite(w).all()) for w in after)


def test_skip_leaves_the_weights_and_goes_on(tmp_path: Path) -> None:
    guard, seen = NonFiniteGuard(mode="skip"), Weights()
    with pytest.warns(FulmenWarning, match=r"skipped the optimizer step: NaN or inf gradient .* net.1 \(Blowup\)"):
        trainer = fit(tmp_path, Net("module", bad=((0, 2), (0, 4))), guard, seen, logger=True, log_every_n_steps=1)
    assert seen.changed == {0: True, 1: True, 2: False, 3: True, 4: False, 5: True}
    assert trainer.global_step == 6  # a skipped step still counts, as under 16-mixed loss scaling
    assert guard.skipped_steps == 2
    assert guard.skipped == [(0, 2, 2), (0, 4, 4)]
    assert isinstance(guard.last_origin, NonFiniteOrigin) and guard.last_origin.label == "net.1 (Blowup)"
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("nonfinite_skipped_steps")]
    assert [(int(r["step"]), float(r["nonfinite_skipped_steps"])) for r in rows] == [
        (0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0)
    ]


def test_skipped_count_survives_a_resume(tmp_path: Path) -> None:
    bad = ((0, 1), (1, 3))
    first = NonFiniteGuard(mode="skip")
    with pytest.warns(FulmenWarning):
        trainer = fit(tmp_path, Net("module", bad=bad), first, enable_checkpointing=True)
    assert first.skipped_steps == 1
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    assert ckpt
    second = NonFiniteGuard(mode="skip")
    trainer = quiet_trainer(tmp_path, callbacks=[second], logger=False, max_epochs=2)
    with pytest.warns(FulmenWarning):
        trainer.fit(Net("module", bad=bad), make_loader(48, batch_size=8), ckpt_path=ckpt)
    assert second.skipped_steps == 2
    assert second.skipped == [(0, 1, 1), (1, 3, 9)]


def test_a_healthy_run_is_unchanged(tmp_path: Path) -> None:
    runs = []
    for callbacks in ([], [NonFiniteGuard()], [NonFiniteGuard(mode="skip")]):
        fulmen.seed_everything(3)
        system = Net("module", bad=())
        fit(tmp_path, system, *callbacks, max_epochs=2)
        runs.append(weights(system))
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_skip_works_with_manual_optimization(tmp_path: Path) -> None:
    class Manual(TinySystem):
        automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = F.mse_loss(self(batch[0]), batch[1])
            if batch_idx == 2:  # this batch's gradients are NaN
                loss = loss * torch.tensor(float("nan"))
            self.manual_backward(loss)
            before = [p.detach().clone() for p in self.parameters()]
            opt.step()  # skipped by the guard for batch 2: a no-op
            if batch_idx == 2:
                self.unchanged = all(torch.equal(a, b) for a, b in zip(before, self.parameters()))
            opt.zero_grad()

    guard = NonFiniteGuard(mode="skip")
    system = Manual()
    with pytest.warns(fulmen.FulmenWarning, match="skipped"):
        trainer = fit(tmp_path, system, guard)
    assert system.unchanged and guard.skipped_steps == 1
    assert trainer.global_step == 6  # 48 samples / 8: the skipped step still counts
    assert all(torch.isfinite(p).all() for p in system.parameters())


def test_manual_optimization_raise_is_not_rerun(tmp_path: Path) -> None:
    class Manual(TinySystem):
        automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = F.mse_loss(self(batch[0]), batch[1])
            if batch_idx == 2:
                loss = torch.where(loss > 1e9, torch.sqrt(loss - 2e9), loss)
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()

    with pytest.raises(NonFiniteGradientError, match="with manual optimization training_step steps the optimizers"):
        fit(tmp_path, Manual(), NonFiniteGuard())


def test_inactive_under_16_mixed(tmp_path: Path) -> None:
    with pytest.warns(FulmenWarning, match="NonFiniteGuard does nothing under precision='16-mixed'"):
        fit(tmp_path, TinySystem(), NonFiniteGuard(), precision="16-mixed")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode='ignore'"):
        NonFiniteGuard(mode="ignore")
    with pytest.raises(ValueError, match="find_module"):
        NonFiniteGuard(find_module="yes")  # type: ignore[arg-type]


def test_state_dict_round_trip() -> None:
    guard = NonFiniteGuard(mode="skip")
    guard.skipped_steps, guard.skipped = 3, [(0, 1, 1), (0, 5, 5), (2, 0, 16)]
    other = NonFiniteGuard(mode="skip")
    other.load_state_dict(guard.state_dict())
    assert (other.skipped_steps, other.skipped) == (3, guard.skipped)
    assert guard.state_key == "NonFiniteGuard"


# -- the trainer's NonFiniteLossError (CPU path) ---------------------------------------------------------------
def test_nan_loss_error_names_the_first_module(tmp_path: Path) -> None:
    class LossFromInf(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            self.seen.append(batch_idx)
            self.net[1].on = batch_idx == 4
            loss = F.mse_loss(self.net(x), y)
            self.net[1].on = False
            self.log("train_loss", loss)
            return loss

    system = LossFromInf()
    with pytest.raises(NonFiniteLossError, match=r"at global step 4 \(epoch 0, batch 4\)") as err:
        fit(tmp_path, system)
    assert "The first module whose output was non-finite: net.1 (Blowup)" in str(err.value)
    assert type(err.value) is NonFiniteLossError
    assert system.seen == [0, 1, 2, 3, 4]


def test_nan_loss_error_says_when_every_module_was_finite(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as err:
        fit(tmp_path, Net("loss", bad=((0, 1),)))
    assert "all module outputs were finite, so the loss computation itself produced it" in str(err.value)


def test_nan_loss_error_says_when_the_batch_holds_nan(tmp_path: Path) -> None:
    x = torch.randn(16, 4)
    x[9, 2] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError, match=r"batch 1\)\. The batch itself contains NaN or inf values\. "
                       r"The first module whose output was non-finite: layer \(Linear\)"):
        trainer.fit(TinySystem(), loader)


# -- the re-run itself ---------------------------------------------------------------------------------------
class Stateful(fulmen.System):
    """Dropout, BatchNorm, a counter, a list and a new attribute: everything a re-run could change."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), Blowup(), nn.Linear(8, 1))
        self.calls = 0
        self.history: list[int] = []
        self.by_batch: dict[int, int] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        self.history.append(batch_idx)
        self.by_batch[batch_idx] = self.calls
        self.added_by_step = True
        self.log("loss_seen", 1.0)
        self.net[3].on = True
        out = self.net(batch[0])
        self.net[3].on = False
        return out.mean() + random.random() * 0 + float(np.random.rand()) * 0


def test_rerun_restores_rng_buffers_and_attributes() -> None:
    system = Stateful().train()
    batch = (torch.randn(8, 4), torch.randn(8, 1))
    history = system.history
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    buffers = [b.clone() for b in system.buffers()]
    origin = first_nonfinite_module(system, batch, 7)
    assert origin.label == "net.3 (Blowup)" and origin.module == "net.3" and origin.module_type == "Blowup"
    assert origin.reran and not origin.in_batch and origin.loss_finite is False
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert all(torch.equal(a, b) for a, b in zip(buffers, system.buffers()))  # BatchNorm statistics untouched
    assert system.calls == 0 and system.history == [] and system.by_batch == {}
    assert system.history is history  # restored in place
    assert not hasattr(system, "added_by_step")
    assert system._log_store is None and system.training and system.net[3].on is False
    assert all(h == {} for m in system.modules() for h in (m._forward_hooks,))  # hooks removed


def test_rerun_reports_an_error_without_raising() -> None:
    class Broken(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise KeyError("boom")

    origin = first_nonfinite_module(Broken(), (torch.randn(2, 4), torch.randn(2, 1)), 0)
    assert not origin.reran and "raised KeyError" in origin.note
    assert "not re-run" in origin.describe("loss")


def test_rerun_of_a_finite_loss_says_it_did_not_reproduce() -> None:
    origin = first_nonfinite_module(TinySystem(), (torch.randn(2, 4), torch.randn(2, 1)), 0)
    assert origin.module is None and origin.loss_finite is True
    assert "depends on random numbers" in origin.describe("loss")


def test_rerun_of_the_systems_own_forward() -> None:
    class Own(TinySystem):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x) * 1e39

    origin = first_nonfinite_module(Own(), (torch.ones(2, 4), torch.randn(2, 1)), 0)
    assert origin.module == "" and origin.label == "the system's own forward (Own)"


def test_exports() -> None:
    import fulmen.callbacks as cbs

    assert cbs.NonFiniteGuard is NonFiniteGuard
    assert "NonFiniteGuard" in cbs.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert issubclass(NonFiniteGradientError, NonFiniteLossError)
