"""Checks that need an NVIDIA GPU; deselected on CPU machines (``-m "not gpu"`` in pyproject).

Run them on a GPU machine with ``python -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from helpers.systems import TinySystem, make_loader, quiet_trainer

import fulmen

pytestmark = pytest.mark.gpu


def _weights(system: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in system.parameters()]


def test_fit_validate_test_predict_on_cuda(tmp_path: Any) -> None:
    seen: list[torch.device] = []

    class Where(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch[0].device)
            return super().training_step(batch, batch_idx)

    fulmen.seed_everything(0)
    gpu = Where()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", max_epochs=2)
    trainer.fit(gpu, make_loader(), make_loader())
    assert {d.type for d in seen} == {"cuda"}
    assert all(p.device.type == "cuda" for p in gpu.parameters())
    (val,) = trainer.validate(gpu, make_loader(), verbose=False)
    (test,) = trainer.test(gpu, make_loader(), verbose=False)
    preds = trainer.predict(gpu, make_loader())
    assert preds is not None and preds[0].device.type == "cuda"
    assert val["val_loss"] == pytest.approx(test["test_loss"], rel=1e-6)

    fulmen.seed_everything(0)
    cpu = TinySystem()
    quiet_trainer(tmp_path / "cpu", accelerator="cpu", max_epochs=2).fit(cpu, make_loader(), make_loader())
    for a, b in zip(_weights(gpu), _weights(cpu)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_no_host_device_sync_inside_the_training_steps(tmp_path: Any) -> None:
    """Between the first and the last batch of an epoch nothing waits on the GPU: not the loop,
    not self.log, not the progress bar (which refreshes on a timer far away here)."""
    n_batches = 40

    class SyncGuard(fulmen.Callback):
        def on_train_batch_start(self, trainer: Any, system: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:  # the first batch warms up allocators and kernels
                torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer: Any, system: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == n_batches - 2:
                torch.cuda.set_sync_debug_mode("default")

    class Logs(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("also_epoch", loss, on_step=True, on_epoch=True, prog_bar=True)
            return loss

    loader = make_loader(n=8 * n_batches, batch_size=8, pin_memory=True)
    trainer = quiet_trainer(
        tmp_path,
        accelerator="cuda",
        callbacks=[SyncGuard(), fulmen.ProgressBar(refresh_rate=3600, print_every_n_seconds=3600)],
        enable_progress_bar=True,
        logger=True,
        log_every_n_steps=10_000,
    )
    try:
        trainer.fit(Logs(), loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.global_step == n_batches
    assert "also_epoch_epoch" in trainer.callback_metrics


def test_checkpoint_written_on_cuda_loads_on_cpu_and_cuda(tmp_path: Any) -> None:
    system = TinySystem()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", max_epochs=1)
    trainer.fit(system, make_loader())
    path = trainer.checkpoint_callback.last_model_path
    on_cpu = TinySystem.load_from_checkpoint(path)
    on_gpu = TinySystem.load_from_checkpoint(path, map_location="cuda")
    assert next(on_cpu.parameters()).device.type == "cpu"
    assert next(on_gpu.parameters()).device.type == "cuda"
    for a, b in zip(_weights(system), _weights(on_cpu)):
        assert torch.equal(a, b)


def test_float64_precision_on_cuda(tmp_path: Any) -> None:
    dtypes: list[torch.dtype] = []

    class Record(TinySystem):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            dtypes.append(batch[0].dtype)
            return super().training_step(batch, batch_idx)

    system = Record()
    quiet_trainer(tmp_path, accelerator="cuda", precision="64-true").fit(system, make_loader())
    assert set(dtypes) == {torch.float64}
    assert next(system.parameters()).dtype == torch.float64


def test_digits_example_on_gpu(tmp_path: Any) -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "digits.py"), "--root", str(tmp_path), "--epochs", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.path.join(root, "src")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    acc = float(next(line for line in out.stdout.splitlines() if line.startswith("test_acc")).split("=")[1])
    assert acc >= 0.95, out.stdout
