"""Signed audit trails (issue 15, item 5): ``fulmen keygen``, ``fulmen sign``, ``fulmen verify
--key`` and ``trusted_keys=`` on loading, on real runs of a tiny system."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fulmen import cli
from fulmen.checkpoint import tensor_digest
from fulmen.checkpoint.audit import AUDIT_HOME_ENV, read_log
from fulmen.checkpoint.signing import (
    SIGNATURE_FILE,
    SigningError,
    UntrustedCheckpointError,
    generate_key,
    key_id,
    load_private_key,
    sign_run,
)
from tests.helpers.systems import TinySystem, make_loader, quiet_trainer

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, list[str]]:
    """``fulmen ARGS`` in this process: its exit status and the lines it printed (stdout, then stderr)."""
    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return status, (out.out + out.err).splitlines()


def fit_run(root: Path, epochs: int = 2) -> Path:
    """A real fit with one checkpoint per epoch; returns its run folder."""
    trainer = quiet_trainer(root, max_epochs=epochs)
    trainer.fit(TinySystem(), make_loader(), make_loader())
    return Path(trainer.log_dir)


def keypair(folder: Path, name: str = "key") -> tuple[Path, Path]:
    private, public = generate_key(folder / name)
    return Path(private), Path(public)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))


def forge(path: Path) -> None:
    """Edit one weight and record the new content digest, as anyone can with the public
    ``tensor_digest``, so that a plain load accepts the file."""
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["layer.weight"][0, 0] += 1.0
    ckpt["digest"]["value"] = tensor_digest(ckpt)
    torch.save(ckpt, path)


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A signed run: (run folder, private key, public key)."""
    private, public = keypair(tmp_path / "keys")
    run_dir = fit_run(tmp_path / "runs")
    sign_run(run_dir, private)
    return run_dir, private, public


def test_sign_and_verify_a_real_run(tmp_path: Path, capsys: Any) -> None:
    private, public = keypair(tmp_path / "keys")
    run_dir = fit_run(tmp_path / "runs")
    assert len(checkpoints(run_dir)) >= 1
    status, lines = run_cli(capsys, "sign", run_dir, "--key", private)
    assert status == 0, lines
    assert lines[0].startswith(f"signed {run_dir}: ") and key_id(public) in lines[0]
    entries = json.loads((run_dir / SIGNATURE_FILE).read_text())
    assert [e["key_id"] for e in entries] == [key_id(public)]
    payload = json.loads(entries[0]["payload"])
    assert payload["format"] == 1
    assert [c["digest"] for c in payload["checkpoints"]] == [e["digest"] for e in read_log(run_dir)]
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 0, lines
    assert lines[0].startswith(f"OK {run_dir}") and lines[0].endswith(", signed by a trusted key (--key)")
    # The signed weights load with the key trusted.
    system = TinySystem.load_from_checkpoint(checkpoints(run_dir)[-1], trusted_keys=public)
    assert isinstance(system, TinySystem)


def test_a_forged_weight_is_refused_by_verify_load_and_fit(signed: tuple[Path, Path, Path], capsys: Any) -> None:
    run_dir, _, public = signed
    target = checkpoints(run_dir)[-1]
    forge(target)
    TinySystem.load_from_checkpoint(target)  # a plain load accepts it: the digest was recomputed
    name = f"checkpoints/{target.name}"
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1
    assert any(line.startswith(f"not_covered: {name}: its content digest") for line in lines), lines
    with pytest.raises(UntrustedCheckpointError, match="not signed by a trusted key") as refused:
        TinySystem.load_from_checkpoint(target, trusted_keys=[public])
    assert len(str(refused.value).splitlines()) == 1 and str(target) in str(refused.value)
    trainer = quiet_trainer(run_dir.parent / "resume", max_epochs=3)
    with pytest.raises(UntrustedCheckpointError):
        trainer.fit(TinySystem(), make_loader(), make_loader(), ckpt_path=target, trusted_keys=public)
    with pytest.raises(UntrustedCheckpointError):
        quiet_trainer(run_dir.parent / "eval").validate(TinySystem(), make_loader(), ckpt_path=target, trusted_keys=public)
    # Without trusted_keys, today's behaviour: the file loads.
    quiet_trainer(run_dir.parent / "eval2").validate(TinySystem(), make_loader(), ckpt_path=target, verbose=False)


def test_fit_resumes_from_a_signed_checkpoint(signed: tuple[Path, Path, Path]) -> None:
    run_dir, _, public = signed
    trainer = quiet_trainer(run_dir.parent.parent, max_epochs=3)
    trainer.fit(TinySystem(), make_loader(), make_loader(), ckpt_path=checkpoints(run_dir)[-1], trusted_keys=public)
    assert trainer.current_epoch == 3 and Path(trainer.log_dir) == run_dir


def test_a_wrong_key_is_named(signed: tuple[Path, Path, Path], tmp_path: Path, capsys: Any) -> None:
    run_dir, _, public = signed
    _, other = keypair(tmp_path / "keys", "other")
    status, lines = run_cli(capsys, "verify", run_dir, "--key", other)
    assert status == 1
    assert f"wrong_key: {SIGNATURE_FILE}: signed by key(s) {key_id(public)}, not by the given key(s) {key_id(other)}" in lines[0]
    with pytest.raises(UntrustedCheckpointError, match=key_id(other)):
        TinySystem.load_from_checkpoint(checkpoints(run_dir)[-1], trusted_keys=other)
    # One of several keys is enough (repeatable --key).
    status, lines = run_cli(capsys, "verify", run_dir, "--key", other, "--key", public)
    assert status == 0, lines


def test_an_altered_signature_file_is_named(signed: tuple[Path, Path, Path], capsys: Any) -> None:
    run_dir, _, public = signed
    path = run_dir / SIGNATURE_FILE
    entries = json.loads(path.read_text())
    payload = json.loads(entries[0]["payload"])
    payload["checkpoints"][0]["digest"] = "0" * 64
    entries[0]["payload"] = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    path.write_text(json.dumps(entries))
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1
    assert lines[0] == (
        f"bad_signature: {SIGNATURE_FILE}: the signature by key {key_id(public)} does not match its payload: "
        f"{SIGNATURE_FILE} was altered after signing"
    )
    path.write_text("[{not json")
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1 and lines[0].startswith(f"bad_signature: {SIGNATURE_FILE}: {SIGNATURE_FILE} is not valid JSON")


def test_sign_never_overwrites_a_signature_file_it_cannot_read(
    signed: tuple[Path, Path, Path], tmp_path: Path, capsys: Any
) -> None:
    run_dir, _, _ = signed
    other, _ = keypair(tmp_path / "other", "other")
    path = run_dir / SIGNATURE_FILE
    path.write_text("[{damaged")
    status, lines = run_cli(capsys, "sign", run_dir, "--key", other)
    assert status == 1 and "nothing was signed: move" in lines[-1]
    assert path.read_text() == "[{damaged"  # other keys' signatures may be in it: left as it is


def test_an_unsigned_run_and_checkpoints_after_signing(tmp_path: Path, capsys: Any) -> None:
    private, public = keypair(tmp_path / "keys")
    run_dir = fit_run(tmp_path / "runs", epochs=1)
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1 and lines[0].startswith(f"unsigned: {SIGNATURE_FILE}: the run carries no signature")
    with pytest.raises(UntrustedCheckpointError, match=f"no {SIGNATURE_FILE} in its folder"):
        TinySystem.load_from_checkpoint(checkpoints(run_dir)[-1], trusted_keys=public)
    sign_run(run_dir, private)
    before = {p.name for p in checkpoints(run_dir)}
    # The run goes on after it was signed: its new checkpoint is not covered.
    trainer = quiet_trainer(tmp_path / "runs", max_epochs=2)
    trainer.fit(TinySystem(), make_loader(), make_loader(), ckpt_path=checkpoints(run_dir)[-1])
    assert Path(trainer.log_dir) == run_dir
    new = [p.name for p in checkpoints(run_dir) if p.name not in before]
    assert new
    status, lines = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1
    assert any(line.startswith(f"unsigned_checkpoint: checkpoints/{new[0]}: line ") for line in lines), lines
    # Signing again with the same key replaces its entry and covers it.
    status, lines = run_cli(capsys, "sign", run_dir, "--key", private)
    assert status == 0, lines
    assert len(json.loads((run_dir / SIGNATURE_FILE).read_text())) == 1
    assert run_cli(capsys, "verify", run_dir, "--key", public)[0] == 0


def test_sign_refuses_a_broken_run(tmp_path: Path, capsys: Any) -> None:
    private, _ = keypair(tmp_path / "keys")
    run_dir = fit_run(tmp_path / "runs", epochs=1)
    forge(checkpoints(run_dir)[-1])
    status, lines = run_cli(capsys, "sign", run_dir, "--key", private)
    assert status == 1
    assert lines[0].startswith(f"modified: checkpoints/{checkpoints(run_dir)[-1].name}: ")
    assert lines[-1].endswith("not signing a broken run")
    with pytest.raises(SigningError, match=r"1 problem\(s\) \(first: modified: .*a signature must not vouch for a broken run"):
        sign_run(run_dir, private)
    assert not (run_dir / SIGNATURE_FILE).exists()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "keys" / "signing.pem"
    out.parent.mkdir()
    status, lines = run_cli(capsys, "keygen", "--out", out)
    assert status == 0, lines
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in out.read_bytes()
    assert b"BEGIN PUBLIC KEY" in Path(f"{out}.pub").read_bytes()
    before = out.read_bytes()
    status, lines = run_cli(capsys, "keygen", "--out", out)
    assert status == 2 and lines == [f"fulmen keygen: {out} already exists; not overwriting a key. Choose another --out path."]
    assert out.read_bytes() == before


def test_a_passphrase_from_the_environment_encrypts_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULMEN_KEY_PASSPHRASE", "correct horse")
    private, public = keypair(tmp_path)
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in private.read_bytes()
    assert key_id(load_private_key(private)) == key_id(public)
    monkeypatch.delenv("FULMEN_KEY_PASSPHRASE")
    with pytest.raises(ValueError, match="FULMEN_KEY_PASSPHRASE"):
        load_private_key(private)


def test_cli_sign_and_verify_in_real_processes(tmp_path: Path) -> None:
    run_dir = fit_run(tmp_path / "runs", epochs=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def fulmen(*args: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fulmen.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
        )

    key = tmp_path / "k.pem"
    assert fulmen("keygen", "--out", key).returncode == 0
    done = fulmen("sign", run_dir, "--key", key)
    assert done.returncode == 0, done.stderr
    done = fulmen("verify", run_dir, "--key", f"{key}.pub")
    assert done.returncode == 0 and done.stdout.startswith(f"OK {run_dir}"), done.stdout + done.stderr
    done = fulmen("verify", run_dir, "--key", key)  # the private key where the public one goes
    assert done.returncode == 2
    assert done.stderr.strip() == f"fulmen verify: public key {key}: not a PEM public key (this is a private key: pass its .pub file)"


def test_a_lightning_run_with_its_log_outside_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """fulmen.lightning keeps the log under $FULMEN_AUDIT_HOME; sign and verify find it there."""
    import fulmen.lightning as L

    monkeypatch.setenv(AUDIT_HOME_ENV, str(tmp_path / "audit"))
    private, public = keypair(tmp_path / "keys")

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    trainer = L.Trainer(
        default_root_dir=tmp_path / "runs", max_epochs=1, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    trainer.fit(Tiny(), make_loader())
    ckpt = Path(trainer.checkpoint_callback.best_model_path)
    folder = ckpt.parent
    assert not (folder / "checkpoints.jsonl").exists() and (tmp_path / "audit").is_dir()
    status, lines = run_cli(capsys, "sign", folder, "--key", private)
    assert status == 0, lines
    assert run_cli(capsys, "verify", folder, "--key", public)[0] == 0
    forge_target = torch.load(ckpt, weights_only=True)
    forge_target["state_dict"]["layer.weight"][0, 0] += 1.0
    torch.save(forge_target, ckpt)
    status, lines = run_cli(capsys, "verify", folder, "--key", public)
    assert status == 1 and any(line.startswith("not_covered: ") for line in lines), lines


def test_without_the_cryptography_package_the_commands_say_what_to_install(tmp_path: Path) -> None:
    """A Python where ``cryptography`` cannot be imported: one line naming the extra to install."""
    code = (
        "import sys; sys.modules['cryptography'] = None\n"  # import cryptography now raises ImportError
        "from fulmen import cli\n"
        f"sys.exit(cli.main(['keygen', '--out', {str(tmp_path / 'k.pem')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fulmen keygen: signing needs the cryptography package, which is not installed: pip install 'fulmen[sign]'"
    )
    assert not (tmp_path / "k.pem").exists()


def test_a_rewritten_log_loses_its_signed_head(signed: tuple[Path, Path, Path], capsys: Any) -> None:
    run_dir, _, public = signed
    log = run_dir / "checkpoints.jsonl"
    lines = log.read_bytes().splitlines()
    last = json.loads(lines[-1])
    last["metrics"] = {"val_loss": 0.0}
    lines[-1] = json.dumps(last, separators=(",", ":")).encode()
    log.write_bytes(b"\n".join(lines) + b"\n")
    status, out = run_cli(capsys, "verify", run_dir, "--key", public)
    assert status == 1
    assert any(
        line.startswith(f"history_rewritten: checkpoints.jsonl: the head hash key {key_id(public)} signed (")
        and line.endswith("is no longer a line of the audit log: the log was rewritten or cut after signing")
        for line in out
    ), out
