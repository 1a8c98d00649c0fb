"""LightningModule's module API on fulmen: freeze/unfreeze, dtype, to_torchscript/to_onnx,
strict_loading, and the optimizer_zero_grad / backward / on_*_model_eval|train overrides."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytest
import torch
from helpers.systems import make_loader
from torch import nn
from torch.nn import functional as F

import fulmen
import fulmen.lightning as L

# torch.jit.script / trace warn that TorchScript is deprecated; that is torch's word, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def quiet(tmp_path: Any, **kwargs: Any) -> L.Trainer:
    flags: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "max_epochs": 1,
    }
    flags.update(kwargs)
    return L.Trainer(**flags)


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 1))
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# -- freeze / unfreeze ----------------------------------------------------------------------------
class WithFrozenBackbone(L.LightningModule):
    """Lightning's documented transfer-learning pattern: a trained module, frozen, inside another."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Regressor()
        self.backbone.freeze()
        self.head = nn.Linear(1, 1)
        self.backbone_modes = []  # (no annotation: TorchScript would warn about it)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.backbone_modes.append(self.backbone.training)
        return F.mse_loss(self.head(self.backbone(x)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_frozen_module_does_not_train(tmp_path: Any) -> None:
    model = WithFrozenBackbone()
    backbone, head = weights(model.backbone), weights(model.head)
    assert not any(p.requires_grad for p in model.backbone.parameters()) and not model.backbone.training
    quiet(tmp_path, max_epochs=2).fit(model, make_loader())
    assert model.backbone_modes and not any(model.backbone_modes)  # stayed in eval mode through fit
    assert all(torch.equal(a, b) for a, b in zip(backbone, model.backbone.parameters()))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(head, model.head.parameters()))  # the head trained

    model.backbone.unfreeze()
    assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone.training
    assert all(m.training for m in model.backbone.modules())


def test_freeze_is_on_every_fulmen_system() -> None:
    class Plain(fulmen.System):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 2)

    system = Plain()
    system.freeze()
    assert not system.training and not any(p.requires_grad for p in system.parameters())
    system.unfreeze()
    assert system.training and all(p.requires_grad for p in system.parameters())


# -- dtype --------------------------------------------------------------------------------------------
def test_dtype_follows_the_parameters(tmp_path: Any) -> None:
    model = Regressor()
    assert model.dtype == torch.float32
    assert model.double().dtype == torch.float64
    assert model.half().dtype == torch.float16
    assert L.LightningModule().dtype == torch.get_default_dtype()  # no parameters

    class Records(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.seen = self.dtype
            return super().training_step(batch, batch_idx)

    for precision, dtype in (("16-mixed", torch.float32), ("64-true", torch.float64)):
        model = Records()
        quiet(tmp_path, max_steps=1, precision=precision).fit(model, make_loader())
        assert model.seen == dtype, precision  # mixed precision keeps float32 weights


# -- to_torchscript / to_onnx ----------------------------------------------------------------------------
def test_to_torchscript_scripts_and_traces_to_the_same_outputs(tmp_path: Any) -> None:
    model = Regressor()
    model.net[2].eval()  # a mode of its own, which the export must leave as it was
    x = torch.randn(5, 4)
    expected = model.eval()(x)
    model.train()
    model.net[2].eval()

    scripted = model.to_torchscript()
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert torch.allclose(scripted(x), expected)

    path = tmp_path / "traced.pt"
    traced = model.to_torchscript(file_path=path, method="trace")
    assert torch.allclose(traced(x), expected)
    assert torch.allclose(torch.jit.load(str(path))(x), expected)  # saved with torch.jit.save
    # example_inputs given explicitly
    assert torch.allclose(model.to_torchscript(method="trace", example_inputs=torch.randn(2, 4))(x), expected)
    assert model.training and not model.net[2].training  # each module's mode restored

    with pytest.raises(ValueError, match="expected 'script' or 'trace'"):
        model.to_torchscript(method="compile")
    model.example_input_array = None
    with pytest.raises(ValueError, match="needs an example input: pass example_inputs"):
        model.to_torchscript(method="trace")


def test_to_torchscript_traces_in_eval_mode_without_gradients() -> None:
    class Records(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[bool, bool]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append((torch.is_grad_enabled(), self.training))
            return self.net(x)

    model = Records()
    model.to_torchscript(method="trace", check_trace=False)
    assert model.calls == [(False, False)]
    assert model.training


def test_a_trained_system_with_a_frozen_system_inside_scripts(tmp_path: Any) -> None:
    class Full(WithFrozenBackbone):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

    model = Full()
    trainer = quiet(tmp_path, max_steps=2)
    trainer.fit(model, make_loader())
    x = torch.randn(4, 4)
    with torch.no_grad():
        expected = model.head(model.backbone(x))  # (the backbone is in eval mode, frozen)
    assert model.trainer is trainer  # attached: the export does not read the trainer either
    assert torch.allclose(model.to_torchscript()(x), expected)
    assert torch.allclose(model.to_torchscript(method="trace", example_inputs=x)(x), expected)
    assert model.training and not model.backbone.training  # the frozen backbone stays in eval mode


def test_to_onnx_names_the_package_to_install(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "onnxscript") else real(name, *a)
    )
    model = Regressor()
    with pytest.raises(ModuleNotFoundError, match=r"pip install onnx onnxscript \(or pass dynamo=False"):
        model.to_onnx(tmp_path / "model.onnx", dynamo=True)
    with pytest.raises(ModuleNotFoundError, match=r"to_onnx needs onnx, not installed: pip install onnx\.$"):
        model.to_onnx(tmp_path / "model.onnx", dynamo=False)
    model.example_input_array = None
    with pytest.raises(ValueError, match="needs an example input: pass input_sample"):
        model.to_onnx(tmp_path / "model.onnx")


@pytest.mark.parametrize("dynamo", [False, True])
def test_to_onnx_writes_a_model_that_computes_forward(tmp_path: Any, dynamo: bool) -> None:
    onnx = pytest.importorskip("onnx", reason="to_onnx needs the optional onnx package")
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch's dynamo-based ONNX exporter needs onnxscript")
    from onnx.reference import ReferenceEvaluator

    model = Regressor()
    model.net[2].eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation notes
        model.to_onnx(path, dynamo=dynamo, input_names=["x"])
        model.to_onnx(tmp_path / "given.onnx", torch.randn(2, 4), dynamo=dynamo)  # input_sample given
    assert model.training and not model.net[2].training  # each module's mode restored
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    x = model.example_input_array
    (out,) = ReferenceEvaluator(proto).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x)
    assert torch.allclose(torch.from_numpy(out), expected, atol=1e-6)


# -- strict_loading -------------------------------------------------------------------------------------------
class WithExtraBuffer(Regressor):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.register_buffer("calibration", torch.ones(1))


class Tolerant(WithExtraBuffer):
    strict_loading = False


def _checkpoint(tmp_path: Any) -> tuple[str, Regressor]:
    model = Regressor()
    trainer = quiet(tmp_path, max_epochs=1)
    trainer.fit(model, make_loader())
    path = str(tmp_path / "plain.ckpt")
    trainer.save_checkpoint(path)
    return path, model


def test_strict_loading_false_loads_a_checkpoint_with_missing_keys(tmp_path: Any) -> None:
    path, trained = _checkpoint(tmp_path)
    with pytest.raises(RuntimeError, match="calibration"):
        WithExtraBuffer.load_from_checkpoint(path)
    loaded = Tolerant.load_from_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), loaded.parameters()))
    assert torch.equal(loaded.calibration, torch.ones(1))
    with pytest.raises(RuntimeError, match="calibration"):  # an explicit strict=True still wins
        Tolerant.load_from_checkpoint(path, strict=True)

    class SetInInit(WithExtraBuffer):  # as Lightning scripts do: self.strict_loading = False
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__(lr)
            self.strict_loading = False

    assert torch.equal(SetInInit.load_from_checkpoint(path).net[0].weight, trained.net[0].weight)


def test_strict_loading_false_loads_a_checkpoint_with_unexpected_keys(tmp_path: Any) -> None:
    model = Tolerant()
    trainer = quiet(tmp_path)
    trainer.fit(model, make_loader())
    path = str(tmp_path / "extra.ckpt")
    trainer.save_checkpoint(path)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        Regressor.load_from_checkpoint(path)

    class Lenient(Regressor):
        strict_loading = False

    loaded = Lenient.load_from_checkpoint(path)
    assert torch.equal(loaded.net[0].weight, model.net[0].weight)


def test_strict_loading_false_in_the_trainers_ckpt_path(tmp_path: Any) -> None:
    path, trained = _checkpoint(tmp_path)
    with pytest.raises(RuntimeError, match="in the model but not in the checkpoint: calibration"):
        quiet(tmp_path).validate(WithExtraBuffer(), make_loader(), ckpt_path=path, verbose=False)
    model = Tolerant()
    quiet(tmp_path).validate(model, make_loader(), ckpt_path=path, verbose=False)
    assert torch.equal(model.net[0].weight, trained.net[0].weight)
    resumed = Tolerant()
    trainer = quiet(tmp_path, max_epochs=2)
    trainer.fit(resumed, make_loader(), ckpt_path=path)  # resumes: optimizer and loop states too
    assert trainer.global_step == 16 and trainer.current_epoch == 2


# -- optimizer_zero_grad -----------------------------------------------------------------------------------------
class ZeroesToZero(Regressor):
    """optimizer_zero_grad overridden to keep zero-filled gradients (set_to_none=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.zero_calls: list[tuple[int, int, Any]] = []
        self.grad_before_backward: list[str] = []

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        self.zero_calls.append((epoch, batch_idx, optimizer))
        optimizer.zero_grad(set_to_none=False)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        grad = self.net[0].weight.grad
        self.grad_before_backward.append("none" if grad is None else "zero" if not grad.any() else "filled")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_an_optimizer_zero_grad_override_is_called_once_per_step(tmp_path: Any, accumulate: int) -> None:
    torch.manual_seed(0)
    model = ZeroesToZero()
    torch.manual_seed(0)
    reference = Regressor()
    trainer = quiet(tmp_path, max_epochs=2, accumulate_grad_batches=accumulate)
    trainer.fit(model, make_loader())
    quiet(tmp_path, max_epochs=2, accumulate_grad_batches=accumulate).fit(reference, make_loader())

    assert trainer.global_step == 16 // accumulate == len(model.zero_calls)
    # Lightning's arguments: the epoch, the first batch of each accumulation group, the optimizer
    assert [(e, b) for e, b, _ in model.zero_calls] == [(e, b) for e in range(2) for b in range(0, 8, accumulate)]
    assert all(opt is trainer.optimizers[0] for _, _, opt in model.zero_calls)
    # set_to_none=False is honoured: after the first step the gradients are zero-filled, not None
    assert model.grad_before_backward[0] == "none"  # (fulmen's own zeroing before fit: None)
    group_starts = model.grad_before_backward[accumulate::accumulate]
    assert group_starts and set(group_starts) == {"zero"}
    if accumulate == 2:  # inside a group the gradients accumulate
        assert set(model.grad_before_backward[1::2]) == {"filled"}
    # training matches the default
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))


def test_an_optimizer_zero_grad_that_skips_zeroing_accumulates_as_in_lightning(tmp_path: Any) -> None:
    """Zeroing only every other batch: the override runs before backward (as in Lightning), so the
    step after an unzeroed batch uses the sum of two batches' gradients."""

    class EveryOther(Regressor):
        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            if batch_idx % 2 == 0:
                optimizer.zero_grad()

    torch.manual_seed(0)
    model = EveryOther()
    torch.manual_seed(0)
    by_hand = Regressor()
    quiet(tmp_path).fit(model, make_loader())
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.05)
    for batch_idx, (x, y) in enumerate(make_loader()):
        loss = F.mse_loss(by_hand(x), y)
        if batch_idx % 2 == 0:
            opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), by_hand.parameters()))


def test_a_skipped_batch_still_zeroes_through_the_override(tmp_path: Any) -> None:
    """training_step returning None at the start of a group: the override still zeroes there (as
    in Lightning), so the next group does not step on the gradients of an earlier one."""

    class Skips(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
            return None if batch_idx == 2 else super().training_step(batch, batch_idx)

    class SkipsAndZeroes(Skips):
        def __init__(self) -> None:
            super().__init__()
            self.zeroed: list[int] = []

        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            self.zeroed.append(batch_idx)
            optimizer.zero_grad(set_to_none=False)

    torch.manual_seed(0)
    model = SkipsAndZeroes()
    torch.manual_seed(0)
    reference = Skips()
    trainer = quiet(tmp_path, accumulate_grad_batches=2)
    with pytest.warns(UserWarning, match="`training_step` returned `None`"):  # (the step is taken, as in Lightning)
        trainer.fit(model, make_loader())
    with pytest.warns(UserWarning, match="`training_step` returned `None`"):
        quiet(tmp_path, accumulate_grad_batches=2).fit(reference, make_loader())
    assert model.zeroed == [0, 2, 4, 6] and trainer.global_step == 4
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))


# -- backward -----------------------------------------------------------------------------------------------------
class OwnBackward(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self.received: list[float] = []
        self.scales: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.item())
        return loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.received.append(loss.item())
        scaler = getattr(self.trainer.strategy.precision, "scaler", None)
        self.scales.append(float(scaler.get_scale()) if scaler is not None else 1.0)
        loss.backward(*args, **kwargs)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_a_backward_override_gets_the_scaled_loss_and_trains_as_the_default(tmp_path: Any, precision: str) -> None:
    torch.manual_seed(0)
    model = OwnBackward()
    torch.manual_seed(0)
    reference = Regressor()
    trainer = quiet(tmp_path, max_epochs=2, precision=precision)
    trainer.fit(model, make_loader())
    quiet(tmp_path, max_epochs=2, precision=precision).fit(reference, make_loader())
    assert len(model.received) == trainer.global_step == 16
    expected = [loss * scale for loss, scale in zip(model.losses, model.scales)]
    assert model.received == pytest.approx(expected, rel=1e-6)
    if precision == "16-mixed":
        assert model.scales[0] == 2.0**16  # (GradScaler's initial scale)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model.parameters(), reference.parameters()))


def test_a_backward_override_divides_nothing_itself_under_accumulation(tmp_path: Any) -> None:
    model = OwnBackward()
    quiet(tmp_path, max_steps=2, accumulate_grad_batches=4).fit(model, make_loader())
    assert model.received == pytest.approx([loss / 4 for loss in model.losses])


def test_manual_backward_goes_through_a_backward_override(tmp_path: Any) -> None:
    class Manual(OwnBackward):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = F.mse_loss(self(batch[0]), batch[1])
            self.losses.append(loss.item())
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    model = Manual()
    trainer = quiet(tmp_path, max_steps=3)
    trainer.fit(model, make_loader())
    assert len(model.received) == 3 and model.received == pytest.approx(model.losses)


def test_zero_grad_and_backward_overrides_run_in_lightnings_order(tmp_path: Any) -> None:
    class Ordered(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.events.append(f"training_step {batch_idx}")
            return super().training_step(batch, batch_idx)

        def on_before_zero_grad(self, optimizer: Any) -> None:
            self.events.append("on_before_zero_grad")

        def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
            self.events.append("optimizer_zero_grad")
            optimizer.zero_grad()

        def on_before_backward(self, loss: torch.Tensor) -> None:
            self.events.append("on_before_backward")

        def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            self.events.append("backward")
            loss.backward()

        def on_after_backward(self) -> None:
            self.events.append("on_after_backward")

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self.events.append("on_before_optimizer_step")

    model = Ordered()
    quiet(tmp_path, max_steps=2, accumulate_grad_batches=2, profiler="simple").fit(model, make_loader())
    group = ["on_before_backward", "backward", "on_after_backward"]
    assert model.events == [
        "training_step 0", "on_before_zero_grad", "optimizer_zero_grad", *group,
        "training_step 1", *group, "on_before_optimizer_step",
        "training_step 2", "on_before_zero_grad", "optimizer_zero_grad", *group,
        "training_step 3", *group, "on_before_optimizer_step",
    ]  # fmt: skip


def test_the_hooks_cost_nothing_unless_overridden() -> None:
    class NoOverrides(Regressor): ...

    assert not NoOverrides._zero_grad_hook and not NoOverrides._backward_hook
    assert not NoOverrides._optimizer_step_hook
    # (the eval-mode switches are called as each evaluation starts, as Lightning calls them: not per step)
    assert NoOverrides._model_mode_hooks == {"on_validation_model_eval", "on_test_model_eval", "on_predict_model_eval"}
    assert ZeroesToZero._zero_grad_hook and OwnBackward._backward_hook


@pytest.mark.parametrize("hook", ["optimizer_zero_grad", "backward", "on_validation_model_eval", "on_test_model_train"])
def test_plain_fulmen_systems_still_refuse_the_hooks(hook: str) -> None:
    with pytest.raises(TypeError, match=rf"defines '{hook}', a PyTorch Lightning hook that fulmen does not call"):
        type("Plain", (fulmen.System,), {hook: lambda self, *args: None})


# -- on_*_model_eval / on_*_model_train -----------------------------------------------------------------------------
class MonteCarloDropout(Regressor):
    """Keeps dropout active during validation and test (a common reason to override the hooks)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.dropout_modes: list[bool] = []

    def on_validation_model_eval(self) -> None:
        self.events.append("on_validation_model_eval")
        self.eval()
        self.net[2].train()

    def on_validation_model_train(self) -> None:
        self.events.append("on_validation_model_train")
        self.train()

    def on_test_model_eval(self) -> None:
        self.events.append("on_test_model_eval")
        self.eval()
        self.net[2].train()

    def on_predict_model_eval(self) -> None:
        self.events.append("on_predict_model_eval")
        super().on_predict_model_eval()

    def on_validation_start(self) -> None:
        self.events.append("on_validation_start")

    def on_validation_end(self) -> None:
        self.events.append("on_validation_end")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.dropout_modes.append(self.net[2].training and not self.net[0].training)
        super().validation_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.dropout_modes.append(self.net[2].training and not self.net[0].training)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        self.dropout_modes.append(self.net[2].training)
        return self(batch[0])


def test_model_eval_and_train_overrides_switch_the_modes(tmp_path: Any) -> None:
    model = MonteCarloDropout()
    trainer = quiet(tmp_path, num_sanity_val_steps=0, limit_val_batches=2)
    trainer.fit(model, make_loader(), make_loader())
    assert model.events == [
        "on_validation_model_eval", "on_validation_start", "on_validation_end", "on_validation_model_train"
    ]
    assert model.dropout_modes == [True, True]  # the override's modes held during validation
    assert model.training and all(m.training for m in model.modules())  # on_validation_model_train ran

    model.events, model.dropout_modes = [], []
    model.train()
    model.net[0].eval()  # a mode of its own: on_test_model_train is not overridden, so it is restored
    trainer.test(model, make_loader(n=16), verbose=False)
    assert model.events == ["on_test_model_eval"] and model.dropout_modes == [True, True]
    assert model.training and not model.net[0].training and model.net[2].training

    model.events, model.dropout_modes = [], []
    trainer.predict(model, make_loader(n=16))
    assert model.events == ["on_predict_model_eval"] and model.dropout_modes == [False, False]
    assert model.training and not model.net[0].training  # restored after predict
