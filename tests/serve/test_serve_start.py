"""``fulmen serve`` of checkpoints through their system, and the refusals to start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import torch
from helpers.systems import make_loader, quiet_trainer
from servable import MLP, HookedSystem, ServableSystem
from serve_helpers import make_pt2, refused, running_server

from fulmen.cli import _parser
from fulmen.export import export_checkpoint


def fit(system: torch.nn.Module, tmp_path: Path) -> Path:
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(system, make_loader(32))
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "the fit wrote no checkpoint"
    return ckpts[-1]


def test_a_checkpoint_is_served_through_predict_step(tmp_path: Path) -> None:
    ckpt = fit(ServableSystem(), tmp_path)
    run_json = next(tmp_path.rglob("run.json"))
    assert json.loads(run_json.read_text())["system"] == "servable.ServableSystem"
    loaded = ServableSystem.load_from_checkpoint(ckpt)
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = loaded.predict_step(x, 0).numpy()
    with running_server(ckpt) as url:  # the system class comes from the run folder's run.json
        r = httpx.post(url + "/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200, r.text
        assert np.array_equal(np.asarray(r.json()["outputs"], dtype=np.float32), expected)
        meta = httpx.get(url + "/metadata").json()
        assert meta["model"]["format"] == "ckpt"
        assert meta["source"]["system"] == "servable.ServableSystem"
        assert meta["inputs"] == [{"name": "input", "shape": [None, 4], "dtype": "float32"}]
        assert httpx.post(url + "/predict", json={"inputs": [[1, 2, 3]]}).status_code == 400


def test_serve_preprocess_and_postprocess_decide_what_a_request_means(tmp_path: Path) -> None:
    ckpt = fit(HookedSystem(), tmp_path)
    loaded = HookedSystem.load_from_checkpoint(ckpt)
    records = [{"a": 1.0, "b": 2.0, "c": -1.0, "d": 0.5}, {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}]
    with torch.no_grad():
        expected = loaded(torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]))[:, 0].tolist()
    with running_server(ckpt, "--system", "servable:HookedSystem") as url:
        r = httpx.post(url + "/predict", json={"inputs": records})
        assert r.status_code == 200, r.text
        assert r.json() == {"outputs": [{"prediction": v} for v in expected]}
        bad = httpx.post(url + "/predict", json={"inputs": [[1.0, 2.0, 3.0, 4.0]]})
        assert bad.status_code == 400
        assert "serve_preprocess refused the inputs: ValueError: expected a list of records" in bad.json()["detail"]
        assert httpx.post(url + "/predict", json={"inputs": records[:1]}).json() == {"outputs": [{"prediction": expected[0]}]}


def test_a_card_that_does_not_match_the_file_refuses_to_start(tmp_path: Path) -> None:
    path = make_pt2(tmp_path, MLP().eval())
    card_file = Path(str(path) + ".json")
    card = json.loads(card_file.read_text())
    card["model"]["sha256"] = "0" * 64
    card_file.write_text(json.dumps(card))
    done = refused(path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "refusing to start" in lines[0] and "does not match" in lines[0] and "0000000000000000" in lines[0]


def test_an_exported_checkpoint_serves_and_a_replaced_source_checkpoint_refuses_to_start(tmp_path: Path) -> None:
    ckpt = fit(ServableSystem(), tmp_path / "a")
    path = tmp_path / "model.pt2"
    card = export_checkpoint(ckpt, path, verbose=False)
    assert card["source"]["system"] == "servable.ServableSystem"
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = ServableSystem.load_from_checkpoint(ckpt)(x).numpy()
    with running_server(path) as url:
        r = httpx.post(url + "/predict", json={"inputs": x.tolist()})
        assert np.array_equal(np.asarray(r.json()["outputs"], dtype=np.float32), expected)
        assert httpx.get(url + "/metadata").json() == json.loads(Path(str(path) + ".json").read_text())
    other = fit(ServableSystem(lr=0.5), tmp_path / "b")
    shutil.copyfile(other, ckpt)  # the run's checkpoint is no longer the one exported
    done = refused(path)
    assert done.returncode == 1
    assert "does not check" in done.stderr and "content digest" in done.stderr and done.stderr.count("\n") == 1


def test_a_changed_file_refuses_to_start(tmp_path: Path) -> None:
    path = make_pt2(tmp_path, MLP().eval())
    with open(path, "ab") as f:
        f.write(b"\0")
    done = refused(path)
    assert done.returncode == 1
    assert "does not match" in done.stderr and done.stderr.count("\n") == 1


def test_a_missing_card_refuses_to_start_unless_no_card(tmp_path: Path) -> None:
    path = make_pt2(tmp_path, MLP().eval())
    Path(str(path) + ".json").unlink()
    done = refused(path)
    assert done.returncode == 1
    assert "no model card beside" in done.stderr and "--no-card" in done.stderr
    with running_server(path, "--no-card") as url:
        assert httpx.get(url + "/metadata").json()["checked"] is False
        assert httpx.post(url + "/predict", json={"inputs": [[0.0] * 8]}).status_code == 200


def test_a_checkpoint_without_a_known_system_refuses_to_start(tmp_path: Path) -> None:
    ckpt = fit(ServableSystem(), tmp_path)
    done = refused(ckpt, "--system", "no_such_module:System")
    assert done.returncode == 1
    assert "could not import 'no_such_module:System'" in done.stderr


def test_the_server_binds_to_localhost_by_default() -> None:
    args = _parser().parse_args(["serve", "model.pt2"])
    assert args.host == "127.0.0.1"
    assert (args.max_batch_size, args.max_wait_ms, args.max_request_rows) == (32, 5.0, 1024)
