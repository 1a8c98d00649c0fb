"""fulmen.tuner.Tuner: the learning-rate range test and the batch-size search."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.systems import TinySystem, make_data, make_loader, quiet_trainer
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import fulmen
from fulmen._sandbox import quiet_trainer as quiet_trainer_of
from fulmen.errors import DataError
from fulmen.tuner import LRFinder, Tuner


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- lr_find -------------------------------------------------------------------------------------------
def test_lr_find_suggests_a_learning_rate_that_trains(tmp_path: Path) -> None:
    torch.manual_seed(0)
    system = TinySystem(lr=1e-6)  # a learning rate far too small to learn anything
    loader = make_loader(256, batch_size=16, shuffle=True)
    trainer = quiet_trainer(tmp_path, logger=False, enable_checkpointing=False, max_epochs=3)
    finder = Tuner(trainer).lr_find(system, loader, num_training=80, update_attr=True)
    lr = finder.suggestion()
    assert lr is not None and 1e-3 <= lr <= 1.0
    assert system.hparams.lr == lr  # update_attr wrote it where configure_optimizers reads it

    x, y = make_data(256).tensors
    before = F.mse_loss(system(x), y).item()
    trainer.fit(system, loader)
    after = F.mse_loss(system(x), y).item()
    assert after < 0.01 * before  # 3 epochs at the suggestion all but solve the regression


def test_lr_find_results_rise_and_cover_the_range(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    tuner = Tuner(trainer)
    loader = make_loader(64, batch_size=8)
    exp = tuner.lr_find(TinySystem(), loader, min_lr=1e-5, max_lr=1e-1, num_training=25)
    assert isinstance(exp, LRFinder) and not exp.diverged
    lrs, losses = exp.results["lr"], exp.results["loss"]
    assert len(lrs) == len(losses) == 25
    assert (np.diff(lrs) > 0).all()
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    ratios = np.asarray(lrs[1:]) / np.asarray(lrs[:-1])
    assert max(ratios) == pytest.approx(min(ratios))  # geometric steps
    assert all(np.isfinite(losses))

    lin = tuner.lr_find(TinySystem(), loader, min_lr=0.001, max_lr=0.1, num_training=12, mode="linear")
    steps = np.diff(lin.results["lr"])
    assert len(lin.results["lr"]) == 12 and np.allclose(steps, steps[0]) and steps[0] > 0


def test_lr_find_stops_early_when_the_loss_diverges(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    loader = make_loader(64, batch_size=8, shuffle=True)
    finder = Tuner(trainer).lr_find(TinySystem(), loader, min_lr=1e-3, max_lr=1e4, num_training=100)
    losses = finder.results["loss"]
    assert finder.diverged and 10 < len(losses) < 100
    assert losses[-1] > 4.0 * min(losses)  # the early_stop_threshold rule that stopped it
    assert len(finder.results["lr"]) == len(losses) and finder.results["lr"][-1] < 1e4

    # Without a threshold the search goes on until the loss is no longer finite, then stops too.
    nan = Tuner(trainer).lr_find(
        TinySystem(), loader, min_lr=1e-3, max_lr=1e12, num_training=100, early_stop_threshold=None
    )
    assert nan.diverged and len(nan.results["loss"]) < 100 and all(np.isfinite(nan.results["loss"]))


class _Stateful(fulmen.System):
    """BatchNorm (buffers), dropout (modes), Adam (optimizer state), a step scheduler, and a
    checkpoint callback of its own (which the search must not run)."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self) -> Any:
        return [fulmen.ModelCheckpoint(dirpath=self._ckpt_dir, every_n_train_steps=1, save_top_k=-1)]


def test_lr_find_leaves_system_optimizer_trainer_and_rng_as_they_were(tmp_path: Path) -> None:
    torch.manual_seed(0)
    system = _Stateful()
    system._ckpt_dir = str(tmp_path / "ckpts")
    early = fulmen.EarlyStopping(monitor="train_loss", patience=50, check_on_train_epoch_end=True)
    trainer = quiet_trainer(tmp_path, callbacks=[early], max_epochs=2)
    loader = make_loader(64, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3))
    trainer.fit(system, loader)
    system.net[3].eval()  # a submodule frozen in eval mode by the user stays so

    weights = {k: v.clone() for k, v in system.state_dict().items()}
    opt = trainer.optimizers[0]
    opt_state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())}
    groups = [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]
    sched_state = dict(trainer.lr_scheduler_configs[0].scheduler.state_dict())
    step, epoch, early_state = trainer.global_step, trainer.current_epoch, dict(early.state_dict())
    modes = [m.training for m in system.modules()]
    loader_state = loader.generator.get_state()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    files = _files(tmp_path)

    finder = Tuner(trainer).lr_find(system, loader, num_training=30)
    assert len(finder.results["lr"]) > 10

    for k, v in system.state_dict().items():
        assert torch.equal(v, weights[k]), k  # bitwise, buffers (running stats) included
    assert system.trainer is trainer
    assert all(p.grad is None for p in system.parameters())
    assert [m.training for m in system.modules()] == modes
    assert trainer.optimizers[0] is opt
    for i, s in enumerate(opt.state.values()):
        for k, v in s.items():
            assert torch.equal(v, opt_state[i][k])
    assert [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups] == groups
    assert trainer.lr_scheduler_configs[0].scheduler.state_dict() == sched_state
    assert (trainer.global_step, trainer.current_epoch) == (step, epoch)
    assert early.state_dict() == early_state
    assert torch.equal(loader.generator.get_state(), loader_state)
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    # The search wrote no checkpoint (the system's own ModelCheckpoint did not run) and no log;
    # the plot is the one file added, in the run folder.
    assert _files(tmp_path) - files == {str(Path(trainer.log_dir).relative_to(tmp_path) / "lr_find.png")}


def test_lr_find_plot_is_a_real_png(tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    trainer = quiet_trainer(tmp_path, enable_checkpointing=False)  # a CSV logger: a run folder
    finder = Tuner(trainer).lr_find(TinySystem(), make_loader(64, batch_size=8), min_lr=1e-4, max_lr=10.0, num_training=40)
    saved = Path(trainer.log_dir) / "lr_find.png"
    assert saved.is_file() and saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(trainer.log_dir)) == ["lr_find.png"]  # no metrics, no hparams written

    fig = finder.plot(suggest=True, path=tmp_path / "plots" / "lr.png")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) >= 2  # the curve and the suggestion
    for png in (saved, tmp_path / "plots" / "lr.png"):
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        rgb = img[..., :3].reshape(-1, 3)
        assert rgb.std() > 0.05  # not a blank canvas
        assert (rgb.min(axis=1) < 0.5).mean() > 0.005  # dark pixels: axes, ticks, labels
        red = (rgb[:, 0] > 0.7) & (rgb[:, 1] < 0.35) & (rgb[:, 2] < 0.35)
        blue = (rgb[:, 2] > 0.6) & (rgb[:, 0] < 0.3)
        assert red.sum() > 20 and blue.sum() > 100  # the suggestion marker and the loss curve


class _LRAttribute(fulmen.System):
    """The learning rates are attributes (no hparams)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.learning_rate = 1e-6
        self.head_lr = 1e-6

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


def test_lr_find_update_attr_targets(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    loader = make_loader(64, batch_size=8, shuffle=True)
    tuner = Tuner(trainer)

    system = _LRAttribute()
    finder = tuner.lr_find(system, loader, num_training=30, update_attr=True)
    assert system.learning_rate == finder.suggestion() and system.head_lr == 1e-6

    system = _LRAttribute()
    finder = tuner.lr_find(system, loader, num_training=30, update_attr=True, attr_name="head_lr")
    assert system.head_lr == finder.suggestion() and system.learning_rate == 1e-6

    system = TinySystem(lr=1e-6)
    tuner.lr_find(system, loader, num_training=30)  # update_attr=False: nothing changes
    assert system.hparams.lr == 1e-6

    with pytest.raises(AttributeError, match="attr_name"):  # checked before any step runs
        tuner.lr_find(TinySystem(), loader, update_attr=True, attr_name="momentum")


def test_lr_find_steps_with_accumulation_and_checks_arguments(tmp_path: Path) -> None:
    class Counting(TinySystem):
        batches = 0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            Counting.batches += 1
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, logger=False, accumulate_grad_batches=2, gradient_clip_val=1.0)
    tuner = Tuner(trainer)
    tmp = quiet_trainer_of(trainer, max_steps=1)  # (the tuner's quiet Trainer, built by fulmen._sandbox)
    assert (tmp.config.accumulate_grad_batches, tmp.config.gradient_clip_val) == (2, 1.0)
    assert tmp.loggers == [] and tmp.checkpoint_callback is None
    finder = tuner.lr_find(Counting(), make_loader(64, batch_size=8), num_training=10)
    assert len(finder.results["lr"]) == 10 and Counting.batches == 20  # one lr per optimizer step

    for bad in ({"mode": "cosine"}, {"min_lr": 1.0, "max_lr": 0.1}, {"num_training": 0}, {"early_stop_threshold": 0}):
        with pytest.raises(ValueError):
            tuner.lr_find(TinySystem(), make_loader(), **bad)


def test_suggestion_needs_enough_points() -> None:
    lrs5, loss5 = [1e-3, 1e-2, 1e-1, 1.0, 10.0], [3.0, 2.9, 1.0, 0.95, 0.9]
    finder = LRFinder("exponential", 1e-3, 10.0, 100, {"lr": lrs5, "loss": loss5}, True)
    assert finder.suggestion() is None  # 10 points are skipped at the start by default
    assert finder.suggestion(skip_begin=0, skip_end=0) == pytest.approx(1e-2)  # the steepest fall: 2.9 -> 1.0
    assert finder.suggestion(skip_begin=3, skip_end=1) is None
    lrs = list(np.logspace(-4, 0, 40))
    loss = [1.0 / (1 + np.exp((np.log10(lr) + 2) * 4)) for lr in lrs]  # steepest fall at lr = 1e-2
    assert LRFinder("exponential", 1e-4, 1.0, 40, {"lr": lrs, "loss": loss}, False).suggestion() == pytest.approx(
        1e-2, rel=0.3
    )


# -- scale_batch_size --------------------------------------------------------------------------------
SAMPLE_MB = 4


def _hungry_collate(items: list[Any]) -> tuple[torch.Tensor, ...]:
    """A batch that holds SAMPLE_MB of real (written) memory per sample."""
    x = torch.stack([i[0] for i in items])
    y = torch.stack([i[1] for i in items])
    return x, y, torch.ones(len(items), SAMPLE_MB * 2**18)


class _Hungry(TinySystem):
    def __init__(self, batch_size: int = 64, n: int = 256, lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, pad = batch
        return F.mse_loss(self(x), y) + 0.0 * pad[:, :1].mean()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_data(self.hparams.n), batch_size=self.hparams.batch_size, collate_fn=_hungry_collate)


class _HungryStep(TinySystem):
    training_step = _Hungry.training_step


class _HungryData(fulmen.DataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_data(256), batch_size=self.hparams.batch_size, collate_fn=_hungry_collate)


def _memory_trials(tuner: Tuner) -> tuple[list[int], list[int]]:
    fitted = [t["batch_size"] for t in tuner.batch_size_trials if t["failure"] is None]
    failed = [t["batch_size"] for t in tuner.batch_size_trials if t["failure"] is not None]
    for t in tuner.batch_size_trials:  # each failure was the memory limit, measured
        assert t["peak_mb"] is not None
        assert (t["failure"] is None) == (t["peak_mb"] <= 100), t
    return fitted, failed


def test_scale_batch_size_power_finds_the_largest_doubling_under_the_memory_limit(tmp_path: Path) -> None:
    system = _Hungry()
    weights = {k: v.clone() for k, v in system.state_dict().items()}
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    tuner = Tuner(quiet_trainer(tmp_path, logger=False))
    found = tuner.scale_batch_size(system, max_memory_mb=100, steps_per_trial=2)
    fitted, failed = _memory_trials(tuner)
    # A batch holds 4 MB per sample: 2, 4, 8 fit under 100 MB, and 16 or 32 does not (the loop may
    # hold the next batch while the last one is still referenced).
    assert found in (8, 16) and fitted == [2 ** k for k in range(1, found.bit_length())] and failed == [2 * found]
    assert found * SAMPLE_MB <= 100 < 2 * found * SAMPLE_MB * 2
    assert system.hparams.batch_size == found  # set where the dataloader reads it
    for k, v in system.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert _files(tmp_path) == set()  # trials write nothing


def test_scale_batch_size_binsearch_refines_between_success_and_failure(tmp_path: Path) -> None:
    data = _HungryData()
    system = _HungryStep()  # the batch size lives in the datamodule's hparams
    tuner = Tuner(quiet_trainer(tmp_path, logger=False))
    found = tuner.scale_batch_size(system, datamodule=data, mode="binsearch", max_memory_mb=100, steps_per_trial=1)
    fitted, failed = _memory_trials(tuner)
    power = max(s for s in fitted if s & (s - 1) == 0)
    assert found == max(fitted) and power < found < 2 * power  # refined beyond the last doubling
    assert min(failed) == found + 1  # the search closed the gap: found fits, found + 1 does not
    assert data.hparams.batch_size == found


def test_scale_batch_size_stops_at_the_dataset_size(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, logger=False)
    system = _Hungry(n=20)
    assert Tuner(trainer).scale_batch_size(system, steps_per_trial=1, max_memory_mb=10_000) == 16
    tuner = Tuner(trainer)
    assert tuner.scale_batch_size(system, mode="binsearch", steps_per_trial=1, max_memory_mb=10_000) == 20
    # The failure says how large the dataset is: the binary search tries that size next.
    assert [t["batch_size"] for t in tuner.batch_size_trials] == [2, 4, 8, 16, 32, 20]
    assert "larger than the dataset (20 samples)" in tuner.batch_size_trials[-2]["failure"]
    assert system.hparams.batch_size == 20


def test_scale_batch_size_treats_cuda_out_of_memory_as_too_large(tmp_path: Path) -> None:
    class Limited(TinySystem):
        def __init__(self, batch_size: int = 2, lr: float = 0.05) -> None:
            super().__init__(lr=lr)
            self.save_hyperparameters()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if len(batch[0]) > 24:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().training_step(batch, batch_idx)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(make_data(1024), batch_size=self.hparams.batch_size)

    system = Limited()
    tuner = Tuner(quiet_trainer(tmp_path, logger=False))
    assert tuner.scale_batch_size(system, steps_per_trial=1) == 16
    assert tuner.batch_size_trials[-1]["failure"].startswith("out of memory")
    assert tuner.scale_batch_size(system, mode="binsearch", steps_per_trial=1, init_val=3) == 24
    assert tuner.scale_batch_size(system, steps_per_trial=1, init_val=100) == 12  # halves until one fits
    assert Tuner(quiet_trainer(tmp_path, logger=False)).scale_batch_size(system, max_trials=2, steps_per_trial=1) == 4


def test_scale_batch_size_errors(tmp_path: Path) -> None:
    tuner = Tuner(quiet_trainer(tmp_path, logger=False))
    with pytest.raises(AttributeError, match=r"no 'batch_size' to scale.*save_hyperparameters"):
        tuner.scale_batch_size(TinySystem())
    with pytest.raises(AttributeError, match="'bs'"):
        tuner.scale_batch_size(_Hungry(), batch_arg_name="bs")
    with pytest.raises(DataError, match="dataloaders passed in"):
        tuner.scale_batch_size(_Hungry(), make_loader())
    with pytest.raises(ValueError, match="mode"):
        tuner.scale_batch_size(_Hungry(), mode="linear")

    class Ignores(_Hungry):  # builds its loader with a fixed batch size: the search would mean nothing
        def train_dataloader(self) -> DataLoader:
            return DataLoader(make_data(64), batch_size=8)

    system = Ignores()
    with pytest.raises(DataError, match="batch_size=8 although 2 was set"):
        tuner.scale_batch_size(system)
    assert system.hparams.batch_size == 64  # put back after the failure
    with pytest.raises(fulmen.FlagError, match="one process"):
        Tuner(quiet_trainer(tmp_path, logger=False, devices=2, strategy="ddp")).scale_batch_size(_Hungry())


class _Configured(fulmen.System):
    """Its layer is made in configure_model (seeded), i.e. during the first trial of a search."""

    def __init__(self, lr: float = 0.05, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head: nn.Module | None = None

    def configure_model(self) -> None:
        if self.head is None:
            torch.manual_seed(123)
            self.head = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        assert self.head is not None
        return F.mse_loss(self.head(x), y)

    def train_dataloader(self) -> DataLoader:
        return make_loader(64, batch_size=self.hparams.batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


@pytest.mark.parametrize("search", ["lr_find", "scale_batch_size"])
def test_layers_made_by_configure_model_come_back_untrained(tmp_path: Path, search: str) -> None:
    torch.manual_seed(123)
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    system = _Configured()
    tuner = Tuner(quiet_trainer(tmp_path, logger=False))
    if search == "lr_find":
        tuner.lr_find(system, num_training=20)
    else:
        tuner.scale_batch_size(system, steps_per_trial=2, max_trials=3, max_memory_mb=10_000)
    assert system.head is not None and system.head.training  # made once, in the first trial
    for (name, got), want in zip(system.head.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(got.cpu(), want), name  # as configure_model made it, not as a trial left it
