"""Trainer.test(..., groups=...) writes audit.json into the run folder, recorded in its audit log,
and fulmen report draws it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from audit_systems import Classifier, GroupData, tabular
from helpers.systems import quiet_trainer
from torch.utils.data import DataLoader

from fulmen.checkpoint.audit import file_sha256, read_artifacts
from fulmen.checkpoint.verify import verify_run
from fulmen.report import write_report


def _fit(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    system = Classifier()
    trainer.fit(system, datamodule=GroupData())
    return trainer, system


def test_trainer_test_with_groups_writes_a_recorded_audit(tmp_path):
    trainer, system = _fit(tmp_path)
    results = trainer.test(system, datamodule=GroupData(), groups="group", verbose=False)
    assert set(results[0]) == {"test_loss"}  # the return value is unchanged
    path = os.path.join(trainer.log_dir, "audit.json")
    audit = json.loads(Path(path).read_text(encoding="utf-8"))
    assert audit["task"] == "binary" and audit["samples"] == 240 and audit["group_by"] == "group"
    assert {g["group"]: g["size"] for g in audit["groups"]} == {"g0": 160, "g1": 80}
    assert audit["system"].endswith("audit_systems.Classifier")
    artifacts = [a for a in read_artifacts(trainer.log_dir) if a.get("kind") == "bias_audit"]
    assert [a["artifact"] for a in artifacts] == ["audit.json"]
    assert artifacts[0]["file_sha256"] == file_sha256(path)
    assert not [p for p in verify_run(trainer.log_dir) if "audit.json" in str(p)]


def test_trainer_test_with_an_array_of_groups(tmp_path):
    trainer, system = _fit(tmp_path)
    data = tabular()
    groups = np.array([f"h{i % 2}" for i in range(len(data))])
    trainer.test(system, dataloaders=DataLoader(data, batch_size=50), groups=groups, verbose=False)
    audit = json.loads(Path(os.path.join(trainer.log_dir, "audit.json")).read_text(encoding="utf-8"))
    assert {g["group"]: g["size"] for g in audit["groups"]} == {"h0": 120, "h1": 120}
    assert audit["group_by"] == "array"


def test_trainer_test_without_groups_writes_no_audit(tmp_path):
    trainer, system = _fit(tmp_path)
    trainer.test(system, datamodule=GroupData(), verbose=False)
    assert not os.path.exists(os.path.join(trainer.log_dir, "audit.json"))


def test_the_report_has_a_bias_audit_section(tmp_path):
    trainer, system = _fit(tmp_path)
    trainer.test(system, datamodule=GroupData(), groups="group", verbose=False)
    index = write_report(trainer.log_dir)
    page = Path(index).read_text(encoding="utf-8")
    assert "<h2>Bias audit</h2>" in page
    assert "demographic_parity_difference" in page and "equalized_odds_difference" in page
    assert "<td>g1</td><td class=\"num\">80</td>" in page  # the group table with its size
    assert os.path.isfile(os.path.join(os.path.dirname(index), "bias_audit.png"))
    assert 'data-file="bias_audit.png"' in page


def test_the_report_marks_small_groups(tmp_path):
    import pytest

    from fulmen.errors import FulmenWarning

    trainer, system = _fit(tmp_path)
    groups = np.array(["big"] * 230 + ["tiny"] * 10)
    with pytest.warns(FulmenWarning, match=r"'tiny' \(10\)"):
        trainer.test(system, dataloaders=DataLoader(tabular(), batch_size=64), groups=groups, verbose=False)
    page = Path(write_report(trainer.log_dir)).read_text(encoding="utf-8")
    assert "<strong>Small groups</strong> (under 30 samples, hatched): tiny (10)" in page
    assert '<td>tiny</td><td class="num">10</td><td class="num">small</td>' in page


def test_a_run_without_an_audit_has_no_section(tmp_path):
    trainer, _system = _fit(tmp_path)
    page = Path(write_report(trainer.log_dir)).read_text(encoding="utf-8")
    assert "Bias audit" not in page


def test_lightning_trainer_test_passes_groups_on(tmp_path):
    import torch
    from torch.nn import functional as F
    from torch.utils.data import TensorDataset

    import fulmen.lightning as L

    class LitRegressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.layer(x)

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self(batch[0]), batch[1])

        def test_step(self, batch, batch_idx):
            self.log("test_loss", F.mse_loss(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(80, 4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    model = LitRegressor()
    trainer.fit(model, loader)
    trainer.test(model, loader, groups=["u"] * 40 + ["v"] * 40, verbose=False)
    audit = json.loads(Path(os.path.join(trainer.log_dir, "audit.json")).read_text(encoding="utf-8"))
    assert audit["task"] == "regression" and [g["size"] for g in audit["groups"]] == [40, 40]
    assert set(audit["disparities"]) == {"mae_difference", "rmse_difference"}
    assert [a["kind"] for a in read_artifacts(trainer.log_dir)] == ["bias_audit"]


def test_each_test_dataloader_gets_its_audit(tmp_path):
    trainer, system = _fit(tmp_path)
    loaders = [DataLoader(tabular(seed=1), batch_size=64), DataLoader(tabular(n=90, seed=2), batch_size=64)]
    trainer.test(system, dataloaders=loaders, groups="group", verbose=False)
    first = json.loads(Path(os.path.join(trainer.log_dir, "audit.json")).read_text(encoding="utf-8"))
    second = json.loads(Path(os.path.join(trainer.log_dir, "audit_1.json")).read_text(encoding="utf-8"))
    assert (first["dataloader"], first["samples"]) == (0, 240)
    assert (second["dataloader"], second["samples"]) == (1, 90)
    assert sorted(a["artifact"] for a in read_artifacts(trainer.log_dir)) == ["audit.json", "audit_1.json"]
