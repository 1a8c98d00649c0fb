"""fulmen.report's recording side (EpochTimes, save_predictions) does not import its plotting side.

A training run that records for the report must not pay for matplotlib (about a second to import,
and an optional dependency); the plots and the page are imported only when a report is written.
Checked in a fresh interpreter, where nothing else has imported them yet.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_PLOTTING = ("matplotlib", "fulmen.report.plots", "fulmen.report.page")


def _loaded_after(code: str, cwd: Path) -> list[str]:
    """The plotting modules present in ``sys.modules`` after running ``code`` in a new interpreter."""
    script = textwrap.dedent(code) + f"\nimport sys\nprint([m for m in {_PLOTTING!r} if m in sys.modules])\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import fulmen.report",
        "from fulmen.report import EpochTimes, save_predictions",
        "import fulmen.report.recording",
        "from fulmen.report.recording import EpochTimes",
    ],
)
def test_importing_the_recording_side_loads_no_plotting(code: str, tmp_path: Path) -> None:
    assert _loaded_after(code, tmp_path) == []


def test_a_run_that_records_for_the_report_loads_no_plotting(tmp_path: Path) -> None:
    code = """
        import torch
        from torch import nn
        from torch.nn import functional as F
        from torch.utils.data import DataLoader, TensorDataset

        import fulmen
        from fulmen.report import EpochTimes, save_predictions


        class Tiny(fulmen.System):
            def __init__(self):
                super().__init__()
                self.net = nn.Linear(4, 2)

            def training_step(self, batch, batch_idx):
                loss = F.cross_entropy(self.net(batch[0]), batch[1])
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)


        x, y = torch.randn(16, 4), torch.arange(16) % 2
        system = Tiny()
        trainer = fulmen.Trainer(
            max_epochs=2, logger=fulmen.CSVLogger("runs"), callbacks=[EpochTimes()],
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )
        trainer.fit(system, DataLoader(TensorDataset(x, y), batch_size=8))
        with torch.no_grad():
            save_predictions(trainer.log_dir, system.net(x), y)
    """
    assert _loaded_after(code, tmp_path) == []
    run = next((tmp_path / "runs").glob("*/version_0"))
    assert (run / "epoch_times.csv").is_file() and (run / "predictions.pt").is_file()


def test_writing_a_report_loads_the_plotting_side(tmp_path: Path) -> None:
    """The control: the same check sees the plotting modules once a report is written."""
    pytest.importorskip("matplotlib")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,step,train_loss\n0,1,0.5\n0,2,0.4\n")
    assert _loaded_after("from fulmen.report import write_report\nwrite_report('run')", tmp_path) == list(_PLOTTING)
