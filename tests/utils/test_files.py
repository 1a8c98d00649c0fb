"""Files fulmen writes get the mode a plain ``open()`` gives under the umask (atomic writes included)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fulmen.utils.files import current_umask, plain_file_mode

# A small fit with a CSV logger and a checkpoint, then `fulmen export` of that checkpoint.
_RUN = textwrap.dedent(
    """
    import glob, os, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import fulmen
    from fulmen import cli

    class Reg(fulmen.System):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(3, 1)
        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    root = sys.argv[1]
    data = TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
    trainer = fulmen.Trainer(max_epochs=1, default_root_dir=root, logger=fulmen.CSVLogger(root),
                             log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Reg(), DataLoader(data, batch_size=8))
    ckpt = glob.glob(os.path.join(root, "**", "*.ckpt"), recursive=True)[0]
    assert cli.main(["export", ckpt, "--to", os.path.join(root, "export", "model.safetensors")]) == 0
    """
)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_every_file_of_a_run_gets_the_umask_mode(tmp_path: Path, umask: int) -> None:
    pytest.importorskip("safetensors")
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(umask),  # the child's own umask, set before it starts
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    want = 0o666 & ~umask
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".py")]
    names = {p.name for p in files}
    assert {"metrics.csv", "hparams.yaml", "run.json", "model.safetensors", "checkpoints.jsonl"} <= names, names
    assert any(n.endswith(".ckpt") for n in names)
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if stat.S_IMODE(p.stat().st_mode) != want}
    assert not wrong, f"expected {oct(want)} under umask {oct(umask)}: {wrong}"


def test_plain_file_mode_follows_the_umask() -> None:
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert plain_file_mode() == 0o640
        os.umask(0o002)
        assert plain_file_mode() == 0o664
    finally:
        os.umask(old)
    assert current_umask() == old
