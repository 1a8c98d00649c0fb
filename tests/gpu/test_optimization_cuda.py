"""Optimization features on a CUDA device: 16-mixed loss scaling (skipped steps, clipping after
unscaling), bf16-mixed, accumulation in float64, manual optimization and torch.compile.

Deselected on CPU machines; run with ``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen

pytestmark = [
    pytest.mark.gpu,
    # torch.compile imports torch.jit internals that warn about their own deprecation.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def cuda_trainer(tmp_path: Any, init_scale: float | None = None, **flags: Any) -> fulmen.Trainer:
    flags.setdefault("logger", False)
    flags.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(tmp_path, accelerator="cuda", **flags)
    if init_scale is not None:
        trainer.strategy.precision.scaler = torch.amp.GradScaler("cuda", init_scale=init_scale)  # type: ignore[attr-defined]
    return trainer


def grad_norm(params: Any) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def test_16_mixed_skipped_step_leaves_weights_and_scheduler_alone(tmp_path: Any) -> None:
    class InfAt(TinySystem):
        def __init__(self) -> None:
            super().__init__(lr=0.05)
            self.changed: list[tuple[bool, int]] = []

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            assert self(batch[0]).dtype == torch.float16
            return super().training_step(batch, batch_idx)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self._before = (self.layer.weight.detach().clone(), self.lr_schedulers().last_epoch)

        def on_after_backward(self) -> None:
            if self.global_step == 2:
                self.layer.weight.grad[0, 0] = float("inf")  # type: ignore[index]

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            w0, last0 = self._before
            self.changed.append((not torch.equal(w0, self.layer.weight), self.lr_schedulers().last_epoch - last0))

    s = InfAt()
    trainer = cuda_trainer(tmp_path, init_scale=256.0, precision="16-mixed")
    trainer.fit(s, make_loader(40))
    assert s.changed == [(True, 1), (True, 1), (False, 0), (True, 1), (True, 1)]
    assert trainer.strategy.precision.scaler.get_scale() == 128.0  # type: ignore[attr-defined]


def test_16_mixed_clips_the_unscaled_gradients(tmp_path: Any) -> None:
    clipped: list[float] = []

    class Loud(TinySystem):
        def on_before_zero_grad(self, optimizer: Any) -> None:
            clipped.append(grad_norm(self.parameters()))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = TensorDataset(x, 50 * x.sum(1, keepdim=True) + 20)
    trainer = cuda_trainer(tmp_path, init_scale=1024.0, precision="16-mixed", gradient_clip_val=0.5)
    trainer.fit(Loud(), DataLoader(data, batch_size=4))
    finite = [n for n in clipped if n == n and n != float("inf")]
    assert len(finite) >= 4
    assert finite == pytest.approx([0.5] * len(finite), rel=1e-3)


def test_bf16_mixed_dtypes_and_training(tmp_path: Any) -> None:
    seen: set[tuple[torch.dtype, torch.dtype]] = set()

    class Watch(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.add((self.layer.weight.dtype, self(batch[0]).dtype))
            return super().training_step(batch, batch_idx)

    s = Watch()
    x, y = make_loader(64).dataset.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        before = float(F.mse_loss(s(x), y))
    cuda_trainer(tmp_path, precision="bf16-mixed", max_epochs=4).fit(s, make_loader(64))
    assert seen == {(torch.float32, torch.bfloat16)}
    with torch.no_grad():
        assert float(F.mse_loss(s.cpu()(x), y)) < 0.5 * before


def test_accumulation_in_float64_matches_one_large_batch(tmp_path: Any) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g, dtype=torch.float64)
    y = torch.sin(x).sum(1, keepdim=True)

    class MLP(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).double()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    s = MLP()
    ref = copy.deepcopy(s.net).cuda()
    trainer = cuda_trainer(tmp_path, precision="64-true", accumulate_grad_batches=4, max_epochs=2)
    trainer.fit(s, DataLoader(TensorDataset(x, y), batch_size=8))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    xc, yc = x.cuda(), y.cuda()
    for _ in range(2):
        for i in range(0, 128, 32):
            opt.zero_grad()
            F.mse_loss(ref(xc[i : i + 32]), yc[i : i + 32]).backward()
            opt.step()
    assert trainer.global_step == 8
    for a, b in zip(s.net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_manual_optimization_with_two_optimizers_under_16_mixed(tmp_path: Any) -> None:
    class GAN(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.gen, self.disc = nn.Linear(4, 4), nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x = batch[0]
            opt_g, opt_d = self.optimizers()
            self.toggle_optimizer(opt_d)
            d_loss = F.softplus(-self.disc(x)).mean() + F.softplus(self.disc(self.gen(x).detach())).mean()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            self.clip_gradients(opt_d, 1.0)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            self.toggle_optimizer(opt_g)
            g_loss = F.softplus(-self.disc(self.gen(x))).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            self.untoggle_optimizer(opt_g)

        def configure_optimizers(self) -> Any:
            return [torch.optim.Adam(self.gen.parameters(), 1e-3), torch.optim.Adam(self.disc.parameters(), 1e-3)]

    s = GAN()
    before = copy.deepcopy(s.state_dict())
    trainer = cuda_trainer(tmp_path, precision="16-mixed", max_epochs=2)
    trainer.fit(s, make_loader(64))
    assert trainer.global_step == 32
    assert all(p.requires_grad for p in s.parameters())
    for name, value in s.state_dict().items():
        assert not torch.equal(value.cpu(), before[name]), name


def test_torch_compile_with_inductor_on_cuda(tmp_path: Any) -> None:
    class Compiled(TinySystem):
        def configure_model(self) -> None:
            self.layer = torch.compile(self.layer)  # type: ignore[assignment]

    s = Compiled()
    trainer = cuda_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(s, make_loader(64))
    (path,) = (tmp_path / "checkpoints").iterdir()
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert set(ckpt["state_dict"]) == {"layer.weight", "layer.bias"}
    loaded = Compiled.load_from_checkpoint(path)  # compiled again by configure_model, on the CPU
    assert torch.equal(loaded.layer.weight, s.layer.weight.cpu())
