"""Manual optimization (``automatic_optimization = False``) and several optimizers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_data, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import fulmen
from fulmen.errors import FlagError
from fulmen.trainer._optim import ManualOptimizer


def fit(tmp_path: Path, system: Any, train: Any = None, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(tmp_path, **flags)
    trainer.fit(system, train if train is not None else make_loader())
    return trainer


class ManualTiny(TinySystem):
    """TinySystem stepped by hand: zero_grad, manual_backward, step."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        self.automatic_optimization = False
        self.hook_log: list[str] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = F.mse_loss(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)
        return loss

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.hook_log.append("on_before_backward")

    def on_after_backward(self) -> None:
        self.hook_log.append("on_after_backward")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        assert isinstance(optimizer, torch.optim.SGD)  # the torch optimizer, not the wrapper
        self.hook_log.append("on_before_optimizer_step")

    def on_before_zero_grad(self, optimizer: Any) -> None:
        self.hook_log.append("on_before_zero_grad")


def test_manual_steps_match_automatic_optimization(tmp_path: Path) -> None:
    torch.manual_seed(0)
    manual = ManualTiny()
    auto = TinySystem()
    auto.load_state_dict(manual.state_dict())
    t_manual = fit(tmp_path, manual, max_epochs=2)
    t_auto = fit(tmp_path, auto, max_epochs=2)
    assert t_manual.global_step == t_auto.global_step == 16
    for pm, pa in zip(manual.parameters(), auto.parameters()):
        torch.testing.assert_close(pm, pa)


def test_the_hooks_fire_from_the_manual_calls(tmp_path: Path) -> None:
    s = ManualTiny()
    fit(tmp_path, s, make_loader(16))
    one = ["on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step"]
    assert s.hook_log == one * 2


def test_optimizers_are_wrappers_around_the_torch_optimizers(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Look(ManualTiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append((self.optimizers(), self.optimizers(use_fulmen_optimizer=False)))
            return super().training_step(batch, batch_idx)

    trainer = fit(tmp_path, Look(), make_loader(8))
    wrapped, plain = seen[0]
    assert isinstance(wrapped, ManualOptimizer)
    assert wrapped.optimizer is plain is trainer.optimizers[0]
    assert wrapped.param_groups is plain.param_groups  # everything else is the torch optimizer's
    assert wrapped.state_dict() == plain.state_dict()


class GAN(fulmen.System):
    """Two models, two optimizers, each step toggled to its own parameters."""

    def __init__(self, freeze_gen_bias: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.gen = nn.Linear(4, 4)
        self.disc = nn.Linear(4, 1)
        if freeze_gen_bias:
            self.gen.bias.requires_grad_(False)
        self.flags: list[tuple[str, dict[str, bool]]] = []
        self.steps_seen: list[int] = []

    def requires_grad(self) -> dict[str, bool]:
        return {n: p.requires_grad for n, p in self.named_parameters()}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()

        self.toggle_optimizer(opt_d)
        self.flags.append(("d", self.requires_grad()))
        real = self.disc(x)
        fake = self.disc(self.gen(x).detach())
        d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.steps_seen.append(self.global_step)

        self.toggle_optimizer(opt_g)
        self.flags.append(("g", self.requires_grad()))
        g_loss = F.softplus(-self.disc(self.gen(x))).mean()
        opt_g.zero_grad()
        disc_grads = [p.grad.clone() for p in self.disc.parameters()]  # type: ignore[union-attr]
        self.manual_backward(g_loss)
        for p, g in zip(self.disc.parameters(), disc_grads):  # toggled off: the backward left them alone
            assert torch.equal(p.grad, g)  # type: ignore[arg-type]
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self.flags.append(("after", self.requires_grad()))
        self.steps_seen.append(self.global_step)
        if batch_idx == 3:  # the last batch of a 32-sample epoch
            sched_g.step()
            sched_d.step()

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.Adam(self.gen.parameters(), lr=1e-2)
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=1e-2)
        return [opt_g, opt_d], [
            torch.optim.lr_scheduler.StepLR(opt_g, 1, gamma=0.5),
            torch.optim.lr_scheduler.StepLR(opt_d, 1, gamma=0.1),
        ]


def test_two_optimizers_each_step_counts_in_global_step(tmp_path: Path) -> None:
    s = GAN()
    before = copy.deepcopy(s.state_dict())
    trainer = fit(tmp_path, s, make_loader(32), max_epochs=2)  # 4 batches an epoch
    assert trainer.global_step == 2 * 4 * 2
    assert s.steps_seen == list(range(1, 17))
    for name, value in s.state_dict().items():
        assert not torch.equal(value, before[name]), name  # both models trained


def test_schedulers_are_the_users_to_step(tmp_path: Path) -> None:
    s = GAN()
    trainer = fit(tmp_path, s, make_loader(32), max_epochs=2)
    sched_g, sched_d = (c.scheduler for c in trainer.lr_scheduler_configs)
    # Stepped once per epoch by training_step; fulmen adds no step of its own at the epoch's end.
    assert (sched_g.last_epoch, sched_d.last_epoch) == (2, 2)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.01)


def test_toggle_optimizer_restores_requires_grad_exactly(tmp_path: Path) -> None:
    s = GAN(freeze_gen_bias=True)
    fit(tmp_path, s, make_loader(16))
    original = {"gen.weight": True, "gen.bias": False, "disc.weight": True, "disc.bias": True}
    d_on = {"gen.weight": False, "gen.bias": False, "disc.weight": True, "disc.bias": True}
    g_on = {"gen.weight": True, "gen.bias": False, "disc.weight": False, "disc.bias": False}  # frozen stays frozen
    assert s.flags == [("d", d_on), ("g", g_on), ("after", original)] * 2
    assert s.requires_grad() == original


def test_toggle_twice_without_untoggle_keeps_the_first_state(tmp_path: Path) -> None:
    s = GAN(freeze_gen_bias=True)
    opt_g = torch.optim.SGD(s.gen.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(s.disc.parameters(), lr=0.1)
    s.toggle_optimizer(opt_d)
    s.toggle_optimizer(opt_g)
    assert s.requires_grad() == {"gen.weight": True, "gen.bias": False, "disc.weight": False, "disc.bias": False}
    s.untoggle_optimizer(opt_g)
    assert s.requires_grad() == {"gen.weight": True, "gen.bias": False, "disc.weight": True, "disc.bias": True}


def test_toggled_optimizer_context_restores_also_after_an_error() -> None:
    s = GAN(freeze_gen_bias=True)
    opt_d = torch.optim.SGD(s.disc.parameters(), lr=0.1)
    original = s.requires_grad()
    with s.toggled_optimizer(opt_d):
        assert s.requires_grad() == {"gen.weight": False, "gen.bias": False, "disc.weight": True, "disc.bias": True}
    assert s.requires_grad() == original
    with pytest.raises(RuntimeError, match="inside"), s.toggled_optimizer(opt_d):
        raise RuntimeError("inside")
    assert s.requires_grad() == original


def test_lr_schedulers_returns_one_or_a_list_or_none(tmp_path: Path) -> None:
    seen: list[Any] = []

    class One(ManualTiny):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(self.lr_schedulers())
            return super().training_step(batch, batch_idx)

    trainer = fit(tmp_path, One(), make_loader(8))
    assert seen == [trainer.lr_scheduler_configs[0].scheduler]
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 0  # never stepped by fulmen

    class Nothing(ManualTiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(self.lr_schedulers())
            return super().training_step(batch, batch_idx)

    fit(tmp_path, Nothing(), make_loader(8))
    assert seen[-1] is None


def test_clip_gradients_in_manual_optimization(tmp_path: Path) -> None:
    class Clipped(ManualTiny):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            x, y = batch
            opt.zero_grad()
            self.manual_backward(F.mse_loss(self(x), y))
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
            opt.step()

    data = make_data(8)
    x, y = data.tensors
    s = Clipped(lr=1.0)
    s.layer.weight.data.mul_(-5)  # far from the solution: a large gradient
    ref = copy.deepcopy(s.layer)
    F.mse_loss(ref(x), y).backward()
    assert float(torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)) > 0.5
    expected = [p.detach() - p.grad for p in ref.parameters()]  # type: ignore[operator]
    fit(tmp_path, s, DataLoader(data, batch_size=8))
    for p, e in zip(s.layer.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_manual_optimization_under_16_mixed_scales_and_unscales(tmp_path: Path) -> None:
    class Mixed(ManualTiny):
        def __init__(self) -> None:
            super().__init__(lr=0.05)
            self.losses: list[float] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            assert self(batch[0]).dtype == torch.float16
            self.losses.append(float(loss.detach()))
            return loss

    s = Mixed()
    trainer = fit(tmp_path, s, make_loader(64), precision="16-mixed", max_epochs=5)
    assert trainer.global_step == 40
    assert sum(s.losses[-8:]) < 0.5 * sum(s.losses[:8])
    assert trainer.strategy.precision.scaler.get_scale() > 1.0  # type: ignore[attr-defined]


def test_nothing_is_stepped_for_the_user(tmp_path: Path) -> None:
    class Idle(ManualTiny):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.mse_loss(self(batch[0]), batch[1])  # no backward, no step

    s = Idle()
    before = copy.deepcopy(s.state_dict())
    trainer = fit(tmp_path, s, make_loader(32))
    assert trainer.global_step == 0
    for name, value in s.state_dict().items():
        assert torch.equal(value, before[name])


@pytest.mark.parametrize(
    "flags",
    [{"accumulate_grad_batches": 2}, {"gradient_clip_val": 1.0}, {"accumulate_grad_batches": 4, "gradient_clip_val": 0.0}],
)
def test_accumulation_and_clipping_flags_are_refused(tmp_path: Path, flags: dict[str, Any]) -> None:
    s = ManualTiny()
    with pytest.raises(
        FlagError,
        match=r"ManualTiny uses manual optimization \(automatic_optimization = False\), so gradient accumulation "
        r"and clipping are yours.*remove Trainer\(" + ", ".join(f"{k}={v}" for k, v in flags.items()) + r"\).*"
        r"self\.clip_gradients",
    ):
        fit(tmp_path, s, **flags)
