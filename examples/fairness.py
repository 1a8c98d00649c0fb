"""From a trained system to a served, audited model: train, export, serve, audit.

    python examples/fairness.py [--epochs 8] [--root runs/fairness] [--port 0]

The data is made here, offline: a tabular loan-style dataset of 4,000 people with six numeric
features and a binary group attribute (30% in group 1). The label depends on the features and
also, by construction, on the group (+0.8 on the logit for group 1): a known, injected
dependence. The classifier sees the group as a feature, so it learns it, and the bias audit
shows the disparity it produces.

The script then
1. trains the classifier (deterministic, with logs, checkpoints and the run record);
2. tests it with ``trainer.test(..., groups="group")``: a bias audit per group (fairlearn) into
   ``audit.json`` in the run folder;
3. exports the best checkpoint to ONNX and ``torch.export`` (``.pt2``), each checked against
   the eager model before it is written, with a model card beside it;
4. serves the ``.pt2`` with ``fulmen serve`` on localhost and queries it over HTTP;
5. writes the report (``fulmen report``) with the audit's section, and prints what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

import fulmen

FEATURES = 6
GROUP_SHIFT = 0.8  # the injected dependence of the label's logit on the group


def make_people(n: int = 4000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Features ``x`` (n, 7: six numeric and the group), label ``y`` (0/1), ``group`` (0/1)."""
    g = torch.Generator().manual_seed(seed)
    group = (torch.rand(n, generator=g) < 0.3).long()
    numeric = torch.randn(n, FEATURES, generator=g)
    weights = torch.tensor([1.2, -0.8, 0.6, 0.0, 0.4, -0.3])
    logit = numeric @ weights - 0.3 + GROUP_SHIFT * group + 0.5 * torch.randn(n, generator=g)
    y = (logit > 0).float()
    x = torch.cat([numeric, group.float().unsqueeze(1)], dim=1)
    return {"x": x, "y": y, "group": group}


class People(Dataset):
    """Rows as dicts: ``{"x": features, "y": label, "group": group}``."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["y"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


class PeopleData(fulmen.DataModule):
    """The made-up people, split 70/15/15 with a fixed seed."""

    def __init__(self, n: int = 4000, seed: int = 0, batch_size: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        columns = make_people(self.hparams.n, self.hparams.seed)
        order = torch.randperm(self.hparams.n, generator=torch.Generator().manual_seed(self.hparams.seed))
        cut1, cut2 = int(0.7 * self.hparams.n), int(0.85 * self.hparams.n)
        self.splits = {
            name: People({k: v[idx] for k, v in columns.items()})
            for name, idx in (("train", order[:cut1]), ("val", order[cut1:cut2]), ("test", order[cut2:]))
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=512)


class LoanClassifier(fulmen.System):
    """A small MLP giving one logit: approve (1) or not (0)."""

    def __init__(self, hidden: int = 32, lr: float = 5e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(FEATURES + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.example_input_array = torch.zeros(4, FEATURES + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["x"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["y"])
        acc = ((logits > 0).float() == batch["y"]).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train")
        self.log(f"{stage}_acc", acc, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int = 0) -> torch.Tensor:
        """The probability of approval, for a batch of features (a dict batch or the features)."""
        x = batch["x"] if isinstance(batch, dict) else batch
        return torch.sigmoid(self(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_query(model_path: str, rows: torch.Tensor, port: int) -> list[float]:
    """Start ``fulmen serve`` on localhost, send ``rows`` in one request, stop it; its outputs."""
    import httpx

    port = port or _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fulmen", "serve", model_path, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fulmen serve did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
        response = httpx.post(f"{url}/predict", json={"inputs": rows.tolist()}, timeout=30.0)
        response.raise_for_status()
        return [float(v) for v in torch.tensor(response.json()["outputs"]).reshape(-1)]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--root", default=os.path.join("runs", "fairness"), help="folder for logs and checkpoints")
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    fulmen.seed_everything(0, workers=True)
    data, system = PeopleData(), LoanClassifier()
    checkpoint = fulmen.callbacks.ModelCheckpoint(monitor="val_loss", mode="min")
    trainer = fulmen.Trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        callbacks=[checkpoint],
        deterministic=True,
        enable_progress_bar=False,
        log_every_n_steps=10,
    )
    trainer.fit(system, datamodule=data)

    # 2. The bias audit: per-group metrics and disparities of the test set, into audit.json.
    (metrics,) = trainer.test(system, datamodule=data, verbose=False, groups="group")
    with open(os.path.join(trainer.log_dir, "audit.json"), encoding="utf-8") as f:
        audit = json.load(f)

    # 3. Verified exports of the best checkpoint, each with its model card.
    from fulmen.export import export_checkpoint

    best = checkpoint.best_model_path
    exports = {}
    for suffix in ("onnx", "pt2"):
        path = os.path.join(trainer.log_dir, f"model.{suffix}")
        exports[suffix] = export_checkpoint(best, path, system_class=LoanClassifier)

    # 4. Serve the .pt2 and query it: the server's outputs are the eager model's.
    rows = data.splits["test"].columns["x"][:8]
    served = serve_and_query(os.path.join(trainer.log_dir, "model.pt2"), rows, args.port)
    eager = LoanClassifier.load_from_checkpoint(best).eval()
    with torch.no_grad():
        expected = eager(rows).tolist()
    largest = max(abs(a - b) for a, b in zip(served, expected))

    # 5. The report, with the audit's section.
    from fulmen.report import write_report

    report = write_report(trainer.log_dir)
    summary = {
        "test_acc": metrics["test_acc"],
        "audit": audit,
        "exports": {k: v["check"] for k, v in exports.items()},
        "served_max_abs_diff": largest,
        "report": report,
        "run_dir": trainer.log_dir,
    }
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from fulmen.audit.cli import summary as audit_summary

    print()
    print(f"test_acc = {summary['test_acc']:.4f}")
    print(audit_summary(summary["audit"]))
    for fmt, check in summary["exports"].items():
        print(f"export {fmt}: checked, largest difference {check['max_abs_diff']:.2e} (rtol {check['rtol']}, atol {check['atol']})")
    print(f"served .pt2: largest difference from the eager model {summary['served_max_abs_diff']:.2e}")
    print(f"report: {summary['report']}")


if __name__ == "__main__":
    main()
