"""fulmen.report: the HTML report of one run or several, from real short fits.

The browser test opens the page in Debian's chromium (installed by the ``chromium`` fixture when
missing and we are root) and checks from a screenshot that the plots rendered.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen.report import EpochTimes, main, save_predictions, write_report

matplotlib_image = pytest.importorskip("matplotlib.image")

N_CLASSES = 3


def _patterns(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images of three classes: a horizontal bar, a vertical bar, a diagonal; plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLASSES
    x = torch.rand(n, 8, 8, generator=g) * 0.6
    for i in range(n):
        pos = int(torch.randint(1, 7, (1,), generator=g))
        if y[i] == 0:
            x[i, pos, :] += 1.0
        elif y[i] == 1:
            x[i, :, pos] += 1.0
        else:
            x[i] += torch.eye(8)
    return x.reshape(n, 64), y


class TinyClassifier(fulmen.System):
    def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": sched}


def _fit(root: Path, lr: float, epochs: int = 6) -> str:
    torch.manual_seed(0)
    x, y = _patterns(240, seed=1)
    xv, yv = _patterns(60, seed=2)
    system = TinyClassifier(lr=lr)
    trainer = fulmen.Trainer(
        max_epochs=epochs,
        logger=fulmen.CSVLogger(root),
        callbacks=[EpochTimes(), fulmen.LearningRateMonitor()],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    trainer.fit(
        system,
        train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True),
        val_dataloaders=DataLoader(TensorDataset(xv, yv), batch_size=60),
    )
    system.eval()
    with torch.no_grad():
        logits = system(xv)
    save_predictions(trainer.log_dir, logits, yv, inputs=xv, class_names=["row", "column", "diagonal"])
    return trainer.log_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("report_runs")
    return _fit(root, lr=0.05), _fit(root, lr=0.01)


def _png_ok(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib_image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, (path, pixels.shape)
    assert float(pixels[..., :3].var()) > 1e-3, f"{path} looks blank"
    return pixels


def _colourful(pixels: np.ndarray) -> np.ndarray:
    """Pixels that are neither white, black nor grey: max - min channel above 0.2."""
    rgb = pixels[..., :3].astype(np.float32)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    return (rgb.max(-1) - rgb.min(-1)) > 0.2


EXPECTED = {
    "curves_loss.png",
    "curves_acc.png",
    "lr.png",
    "epoch_times.png",
    "confusion_matrix.png",
    "top_losses.png",
}


def test_epoch_times_and_predictions_files(runs: tuple[str, str]) -> None:
    run_dir = runs[0]
    with open(os.path.join(run_dir, "epoch_times.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    for r in rows:
        assert float(r["seconds"]) > 0
        assert float(r["train_seconds"]) + float(r["val_seconds"]) == pytest.approx(float(r["seconds"]), abs=1e-5)
        assert float(r["val_seconds"]) > 0  # validation ran inside every epoch
    assert float(rows[-1]["end_time"]) <= time.time()

    pred = torch.load(os.path.join(run_dir, "predictions.pt"), weights_only=True)
    assert pred["probs"].shape == (60, N_CLASSES)
    assert torch.allclose(pred["probs"].sum(1), torch.ones(60), atol=1e-5)
    assert pred["targets"].dtype == torch.long and pred["inputs"].shape == (60, 64)
    assert pred["class_names"] == ["row", "column", "diagonal"]


def test_single_run_report(runs: tuple[str, str], tmp_path: Path) -> None:
    page = write_report(runs[0], tmp_path / "one")
    assert page == str(tmp_path / "one" / "index.html")
    out = Path(page).parent
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == EXPECTED
    text = Path(page).read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" data-file="([^"]+)"', text)
    assert {name for _, name in embedded} == EXPECTED  # every PNG is in the page, inline
    for data, name in embedded:
        assert base64.b64decode(data) == (out / name).read_bytes()
        assert f'href="{name}"' in text
    for name in sorted(EXPECTED):
        pixels = _png_ok(str(out / name))
        assert _colourful(pixels).sum() > 200, f"{name}: no coloured plot pixels"
    # tables: final metrics and hyperparameters
    for needle in ("Final metrics", "val_acc", "train_loss", "lr-SGD", "Hyperparameters", "<td>hidden</td>", "Highest losses"):
        assert needle in text, needle
    assert re.search(r"<td>(row|column|diagonal)</td><td>(row|column|diagonal)</td>", text)  # class names
    assert "seconds" in text and "training time (epochs)" in text


def test_default_out_dir_and_cli(runs: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([runs[0]]) == 0
    page = capsys.readouterr().out.strip()
    assert page == os.path.join(runs[0], "report", "index.html")
    assert os.path.isfile(page)


def test_overlay_of_two_runs(runs: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = write_report(list(runs), tmp_path / "both")
    out = Path(page).parent
    text = Path(page).read_text(encoding="utf-8")
    label_a, label_b = "fulmen_logs/version_0", "fulmen_logs/version_1"  # parent folder / run folder
    # shared curves: one file per family with both runs' legends; predictions per run
    pngs = {p.name for p in out.glob("*.png")}
    per_run = {f"{kind}_{label.replace('/', '_')}.png" for kind in ("confusion_matrix", "top_losses") for label in (label_a, label_b)}
    assert pngs == {"curves_loss.png", "curves_acc.png", "lr.png", "epoch_times.png"} | per_run
    for name in pngs:
        _png_ok(str(out / name))
        assert f'data-file="{name}"' in text
    assert f"fulmen report: {label_a}, {label_b}" in text
    assert text.count(f"<th>{label_a}</th>") >= 2 and text.count(f"<th>{label_b}</th>") >= 2  # metrics + hparams
    assert 'class="differs"' in text  # lr differs between the runs
    # the legend text of the overlaid loss plot names both runs
    fig_text = _legend_texts(runs, monkeypatch)
    assert any(label_a in t for t in fig_text) and any(label_b in t for t in fig_text)


def _legend_texts(runs: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The legend entries of the overlaid loss plot, read from the figure before it is saved."""
    from fulmen import report

    captured: list[str] = []
    save = report._save

    def spy(fig: Any, path: str) -> str:
        if os.path.basename(path) == "curves_loss.png":
            for ax in fig.axes:
                legend = ax.get_legend()
                if legend is not None:
                    captured.extend(t.get_text() for t in legend.get_texts())
        return save(fig, path)

    monkeypatch.setattr(report, "_save", spy)
    write_report(list(runs), Path(runs[0]).parent / "legend-check")
    return captured


def test_missing_metrics_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match=r"no metrics\.csv in .*CSVLogger"):
        write_report(tmp_path)
    nested = tmp_path / "logs" / "version_3"
    nested.mkdir(parents=True)
    (nested / "metrics.csv").write_text("epoch,step,loss\n0,1,0.5\n")
    with pytest.raises(FileNotFoundError, match="version_3; pass one of those"):
        write_report(tmp_path / "logs")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        write_report(tmp_path / "nowhere")
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_without_extras(tmp_path: Path) -> None:
    """Only metrics.csv (no epoch times, predictions, lr or hparams): curves and notes saying what to add."""
    run = tmp_path / "run"
    run.mkdir()
    rows = ["epoch,step,train_loss,val_loss"] + [f"{i},{i * 10 + 9},{1 / (i + 1)},{1.2 / (i + 1)}" for i in range(5)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    page = write_report(run)
    assert {p.name for p in (run / "report").glob("*.png")} == {"curves_loss.png"}
    text = Path(page).read_text(encoding="utf-8")
    assert "LearningRateMonitor" in text and "EpochTimes" in text and "save_predictions" in text


def test_save_predictions_checks_and_kinds(tmp_path: Path) -> None:
    probs = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    path = save_predictions(tmp_path, probs, torch.tensor([0, 1]))
    assert torch.equal(torch.load(path, weights_only=True)["probs"], probs)  # auto: already probabilities
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    stored = torch.load(save_predictions(tmp_path, logits, torch.tensor([0, 1])), weights_only=True)["probs"]
    assert torch.allclose(stored, torch.softmax(logits, 1))
    binary = torch.load(save_predictions(tmp_path, torch.tensor([0.0, 2.0]), torch.tensor([0, 1])), weights_only=True)
    assert binary["probs"].shape == (2, 2) and torch.allclose(binary["probs"][:, 1], torch.sigmoid(torch.tensor([0.0, 2.0])))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        save_predictions(tmp_path, logits, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="targets must be"):
        save_predictions(tmp_path, logits, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="kind="):
        save_predictions(tmp_path, logits, torch.tensor([0, 1]), kind="softmax")


# -- the page in a real browser -------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium, installed with apt-get when missing and we are root."""
    found = shutil.which("chromium")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        start = time.monotonic()
        try:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                env=env, check=False, capture_output=True, timeout=900,
            )
        except (OSError, subprocess.SubprocessError):
            pass
        print(f"chromium: apt-get install took {time.monotonic() - start:.1f} s")
        found = shutil.which("chromium")
    if found is None:
        pytest.skip(
            "!!! BROWSER TEST NOT RUN: chromium is not installed and could not be installed "
            "(needs root and apt-get with a reachable Debian mirror: apt-get install -y chromium) !!!"
        )
    return found


def _screenshot(chromium: str, page: str, shot: Path) -> np.ndarray:
    proc = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={shot.parent / 'chromium-profile'}",
            f"--screenshot={shot}", "--window-size=1200,2400", Path(page).as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return matplotlib_image.imread(str(shot))


def test_report_renders_in_chromium(runs: tuple[str, str], tmp_path: Path, chromium: str) -> None:
    page = write_report(runs[0], tmp_path / "report")
    pixels = _screenshot(chromium, page, tmp_path / "shot.png")
    assert pixels.shape[:2] == (2400, 1200)
    assert float(pixels[..., :3].var()) > 1e-3, "the screenshot is blank"
    colour = _colourful(pixels)
    assert colour.sum() > 20_000, f"only {colour.sum()} coloured pixels: the plots did not render"
    # The plots sit below the tables: coloured pixels fill several bands of the page, in both columns.
    bands = [int(colour[y : y + 300].sum()) for y in range(0, 2400, 300)]
    assert sum(b > 1000 for b in bands) >= 4, bands
    assert colour[:, :600].sum() > 5000 and colour[:, 600:].sum() > 5000

    # Control: the same page with its images removed has (almost) no coloured pixels, so the
    # colour above came from the plots.
    bare = Path(tmp_path / "bare.html")
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', Path(page).read_text(encoding="utf-8")))
    control = _colourful(_screenshot(chromium, str(bare), tmp_path / "bare.png"))
    assert control.sum() < 500, control.sum()

    # Self-contained: a copy of index.html alone, elsewhere, renders the same plots.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(page, alone / "index.html")
    moved = _colourful(_screenshot(chromium, str(alone / "index.html"), tmp_path / "alone.png"))
    assert moved.sum() > 0.9 * colour.sum()
