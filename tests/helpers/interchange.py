"""One small Lightning program, run by PyTorch Lightning (as a script) and by fulmen.lightning
(imported), for tests/lightning/test_interchange.py: checkpoints written by one are read by the other.

Imported (the fulmen test process), it uses ``fulmen.lightning``. Run as a script with
``FULMEN_INTERCHANGE_SIDE=lightning`` and PyTorch Lightning on ``PYTHONPATH`` (outside fulmen's
venv, see dev.sh), it uses Lightning:

    python interchange.py write OUT   # Lightning trains; its checkpoints and results go to OUT
    python interchange.py read OUT    # Lightning loads and resumes the checkpoints fulmen wrote in OUT

Everything is deterministic on the CPU (fixed data order, seeded initial weights, no dropout), so
both frameworks compute the same numbers bitwise.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if os.environ.get("FULMEN_INTERCHANGE_SIDE") == "lightning":
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
else:
    import fulmen.lightning as L  # type: ignore[no-redef]
    from fulmen.lightning.callbacks import EarlyStopping, ModelCheckpoint  # type: ignore[assignment]

BATCHES = 5  # training batches per epoch


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


class CountingData(L.LightningDataModule):
    """A datamodule with state: ``epochs_done`` (counted by the model) is checkpointed."""

    def __init__(self, n: int = 8 * BATCHES, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.epochs_done = 0

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_data(self.hparams.n, 0), batch_size=self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_data(16, 1), batch_size=8)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_done = state_dict["epochs_done"]


class Regressor(L.LightningModule):
    """Adam with a StepLR (epoch interval); records which batches it trained on."""

    def __init__(self, lr: float = 0.05, hidden: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.seen: list[tuple[int, int, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.append((self.current_epoch, batch_idx, float(batch[0][0, 0])))
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def on_train_epoch_end(self) -> None:
        self.trainer.datamodule.epochs_done += 1

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}


class FromConfig(L.LightningModule):
    """Hyperparameters saved from one dict argument (Lightning's ``hparams_name`` is "config")."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(config)
        self.layer = nn.Linear(config["width"], 1)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(root: str, max_epochs: int, callbacks: list[Any] | None = None, **kwargs: Any) -> Any:
    """The Trainer both frameworks run: ModelCheckpoint(monitor val_loss, last) and EarlyStopping
    unless ``callbacks`` are given."""
    if callbacks is None:
        callbacks = [ModelCheckpoint(monitor="val_loss", save_last=True), EarlyStopping("val_loss", patience=3)]
    return L.Trainer(
        max_epochs=max_epochs,
        default_root_dir=root,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def every_7_steps() -> Any:
    """A ModelCheckpoint that writes ``step=7.ckpt`` inside epoch 1 (after its second batch)."""
    return ModelCheckpoint(every_n_train_steps=7, save_top_k=-1, filename="{step}")


def results(model: Any, trainer: Any) -> dict[str, Any]:
    """What a finished fit is compared by."""
    callbacks = {type(cb).__name__: cb for cb in trainer.callbacks}
    stopping = callbacks.get("EarlyStopping")
    checkpoint = callbacks.get("ModelCheckpoint")
    dm = trainer.datamodule
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "seen": list(model.seen),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "optimizer": trainer.optimizers[0].state_dict(),
        "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "early_stopping": None if stopping is None else {
            "wait_count": int(stopping.wait_count),
            "best_score": float(stopping.best_score),
        },
        "best_model_score": None if checkpoint is None or checkpoint.best_model_score is None
        else float(checkpoint.best_model_score),
        "epochs_done": None if dm is None else dm.epochs_done,
    }


def config_checkpoint(root: str) -> str:
    """Train ``FromConfig`` for one batch and return its checkpoint's path."""
    model = FromConfig({"width": 3, "name": "wide"})
    data = DataLoader(TensorDataset(torch.randn(4, 3, generator=torch.Generator().manual_seed(2))), batch_size=2)
    t = trainer(root, 1, callbacks=[], enable_checkpointing=False, limit_train_batches=1)
    t.fit(model, data)
    path = os.path.join(root, "config.ckpt")
    t.save_checkpoint(path)
    return path


def _write(out: str) -> None:
    """Lightning trains: uninterrupted runs, and the checkpoints fulmen.lightning will read."""
    m = Regressor()
    t = trainer(os.path.join(out, "full"), 4)
    t.fit(m, datamodule=CountingData())
    torch.save(results(m, t), os.path.join(out, "lightning_full.pt"))
    m = Regressor()
    t = trainer(os.path.join(out, "half"), 2)
    t.fit(m, datamodule=CountingData())
    shutil.copy(os.path.join(out, "half", "checkpoints", "last.ckpt"), os.path.join(out, "half.ckpt"))
    m = Regressor()
    t = trainer(os.path.join(out, "mid"), 2, callbacks=[every_7_steps()])
    t.fit(m, datamodule=CountingData())
    torch.save(results(m, t), os.path.join(out, "lightning_mid_full.pt"))
    config_checkpoint(out)


def _read(out: str) -> None:
    """Lightning reads what fulmen.lightning wrote in ``out``: builds the model and the datamodule
    from it, and resumes training from an epoch's end and from inside an epoch."""
    found: dict[str, Any] = {}
    half = os.path.join(out, "fhalf.ckpt")
    model = Regressor.load_from_checkpoint(half)
    found["loaded_state_dict"] = model.state_dict()
    found["loaded_hparams"] = dict(model.hparams)
    dm = CountingData.load_from_checkpoint(half)
    found["dm_hparams"] = dict(dm.hparams)
    found["dm_epochs_done"] = dm.epochs_done
    config = FromConfig.load_from_checkpoint(os.path.join(out, "fconfig.ckpt"))
    found["config"] = dict(config.hparams)
    m = Regressor()
    t = trainer(os.path.join(out, "fhalf"), 4)
    t.fit(m, datamodule=CountingData(), ckpt_path=os.path.join(out, "fhalf", "checkpoints", "last.ckpt"))
    found["resumed"] = results(m, t)
    m = Regressor()
    t = trainer(os.path.join(out, "fmid_resumed"), 2, callbacks=[], enable_checkpointing=False)
    t.fit(m, datamodule=CountingData(), ckpt_path=os.path.join(out, "fmid", "checkpoints", "step=7.ckpt"))
    found["mid_resumed"] = results(m, t)
    torch.save(found, os.path.join(out, "lightning_read.pt"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"write": _write, "read": _read}[sys.argv[1]](sys.argv[2])
