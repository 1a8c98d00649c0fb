"""Signed audit trails: Ed25519 signatures over a run's audit chain head and checkpoint digests.

The audit log (``fulmen.checkpoint.audit``) shows that a run's checkpoints are the ones it wrote,
but it has no secret: someone who edits a weight, recomputes the digests with the public
``tensor_digest`` and rewrites the log gets a consistent run. A signature made with a private key
that stays with its owner closes that gap: ``sign_run`` signs the log's head hash and the content
digest of every checkpoint it names; ``check_run`` (``fulmen verify --key``) and ``require_trusted``
(``load_from_checkpoint(trusted_keys=...)``, ``Trainer.fit(ckpt_path=..., trusted_keys=...)``)
accept only what a trusted public key signed.

The cryptography is Ed25519 from the ``cryptography`` package (``pip install 'fulmen[sign]'``),
imported only here, when a key is used. It works offline with plain PEM key files; the OpenSSF
``model-signing`` package was not used because it pulls in sigstore and network-oriented
dependencies that an offline audit does not need.

``signatures.json`` in the run folder is a JSON list (several keys may sign one run; signing again
with the same key replaces its entry) of::

    {"payload": "<canonical JSON>", "public_key": "<raw key, base64>", "key_id": "<16 hex>",
     "signature": "<base64 Ed25519 signature of the payload's UTF-8 bytes>"}

The payload is ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` of
``{"format": 1, "head": <chain head>, "signed_at": <UTC time>, "checkpoints": [{"file", "digest",
"file_sha256", "step"}, ...]}``, one item per checkpoint line of the log, in order (recorded files
that are not checkpoints, and other kinds of lines, are left out). ``key_id`` is the first 16 hex
digits of the SHA-256 of the raw public key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fulmen.checkpoint.io import CheckpointFileError
from fulmen.checkpoint.verify import Problem

SIGNATURE_FILE = "signatures.json"
SIGNATURE_FORMAT = 1
PASSPHRASE_ENV = "FULMEN_KEY_PASSPHRASE"
INSTALL_HINT = "pip install 'fulmen[sign]'"


class SigningError(ValueError):
    """A key that cannot be used or a run that cannot be signed; the message says what to do."""


class UntrustedCheckpointError(CheckpointFileError, ValueError):
    """A checkpoint refused by ``trusted_keys=``: no signature by a trusted key covers its content
    digest. ``path`` is the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


# -- the cryptography package, imported when a key is used ---------------------------------------
def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(
            f"signing needs the cryptography package, which is not installed: {INSTALL_HINT}"
        ) from None
    return ed25519


def _serialization() -> Any:
    _ed25519()  # the one message when the package is missing
    from cryptography.hazmat.primitives import serialization

    return serialization


# -- keys ------------------------------------------------------------------------------------------
def _passphrase(passphrase: str | bytes | None) -> bytes | None:
    """The passphrase given, else ``$FULMEN_KEY_PASSPHRASE``, else None."""
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase


def generate_key(path: str | os.PathLike[str], *, passphrase: str | bytes | None = None) -> tuple[str, str]:
    """Write a new Ed25519 key pair: the private key to ``path`` (PKCS8 PEM, mode 0600, encrypted
    with ``passphrase`` or ``$FULMEN_KEY_PASSPHRASE`` when one is set) and the public key to
    ``path + ".pub"`` (SubjectPublicKeyInfo PEM). Refuses to overwrite either file
    (``FileExistsError``). Returns both paths."""
    ed25519, ser = _ed25519(), _serialization()
    private_path = os.fspath(path)
    public_path = private_path + ".pub"
    for existing in (private_path, public_path):
        if os.path.lexists(existing):
            raise FileExistsError(f"{existing} already exists; not overwriting a key. Choose another --out path.")
    key = ed25519.Ed25519PrivateKey.generate()
    secret = _passphrase(passphrase)
    encryption = ser.BestAvailableEncryption(secret) if secret else ser.NoEncryption()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    os.makedirs(os.path.dirname(os.path.abspath(private_path)), exist_ok=True)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        os.remove(private_path)
        raise
    return private_path, public_path


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode`` from the start, write and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)


def _read_pem(key: Any, what: str) -> bytes:
    """The PEM bytes of ``key`` given as a path or as bytes."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        return key.encode("ascii")
    if isinstance(key, (str, os.PathLike)):
        try:
            with open(key, "rb") as f:
                return f.read()
        except OSError as err:
            raise SigningError(f"cannot read the {what} {os.fspath(key)!r}: {err.strerror or err}") from None
    raise SigningError(f"expected the {what} as a path, PEM bytes or a key object, got {type(key).__name__}")


def load_private_key(key: Any, *, passphrase: str | bytes | None = None) -> Any:
    """An Ed25519 private key from a path, PEM bytes or a key object (a PEM encrypted with a
    passphrase: ``passphrase`` or ``$FULMEN_KEY_PASSPHRASE``)."""
    ed25519, ser = _ed25519(), _serialization()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    name = os.fspath(key) if isinstance(key, (str, os.PathLike)) and not str(key).startswith("-----") else "key"
    pem = _read_pem(key, "private key")
    try:
        loaded = ser.load_pem_private_key(pem, password=_passphrase(passphrase))
    except TypeError as err:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SigningError(f"private key {name}: {err}; set ${PASSPHRASE_ENV} to its passphrase") from None
    except ValueError as err:
        first = (str(err).splitlines() or [""])[0]
        raise SigningError(f"private key {name}: not a PEM private key, or a wrong passphrase ({first})") from None
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise SigningError(f"private key {name}: a {type(loaded).__name__}, expected an Ed25519 key (fulmen keygen)")
    return loaded


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key from a path or PEM bytes (a public key file, ``PATH.pub`` of
    ``fulmen keygen``) or a key object (a private key gives its public key)."""
    ed25519, ser = _ed25519(), _serialization()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    name = os.fspath(key) if isinstance(key, (str, os.PathLike)) and not str(key).startswith("-----") else "key"
    pem = _read_pem(key, "public key")
    try:
        loaded = ser.load_pem_public_key(pem)
    except ValueError:
        hint = " (this is a private key: pass its .pub file)" if b"PRIVATE KEY" in pem else ""
        raise SigningError(f"public key {name}: not a PEM public key{hint}") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise SigningError(f"public key {name}: a {type(loaded).__name__}, expected an Ed25519 key (fulmen keygen)")
    return loaded


def _raw(public_key: Any) -> bytes:
    ser = _serialization()
    return bytes(public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))


def key_id(key: Any) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key (of a public or private key)."""
    return hashlib.sha256(_raw(load_public_key(key))).hexdigest()[:16]


def _key_list(keys: Any) -> list[Any]:
    """One key or several, as public key objects."""
    if isinstance(keys, (str, bytes, bytearray, os.PathLike)) or not isinstance(keys, Iterable):
        keys = [keys]
    loaded = [load_public_key(k) for k in keys]
    if not loaded:
        raise SigningError("no trusted key given: pass at least one public key")
    return loaded


# -- what is signed ----------------------------------------------------------------------------------
def locate_run(folder: str | os.PathLike[str], log: str | os.PathLike[str] | None = None) -> tuple[str, str | None]:
    """``(run folder, log file)`` as ``fulmen verify`` finds them: the folder itself, or the run
    folder above a checkpoint folder, with its log (in it, or kept for it under
    ``$FULMEN_AUDIT_HOME`` for ``fulmen.lightning`` runs); ``log`` names the log explicitly."""
    from fulmen.checkpoint.audit import find_run, log_file

    run_dir = os.path.realpath(os.fspath(folder))
    if log is not None:
        return run_dir, os.fspath(log)
    found = find_run(run_dir)
    if found is not None:
        return found
    return run_dir, log_file(run_dir)


def _log_lines(log: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Each line of the log: its hash (SHA-256 of its bytes, as the chain links lines) and its
    entry (None for a line that does not parse)."""
    with open(log, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[tuple[str, dict[str, Any] | None]] = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        out.append((hashlib.sha256(raw).hexdigest(), entry if isinstance(entry, dict) else None))
    return out


def _is_checkpoint_line(entry: dict[str, Any] | None) -> bool:
    """A checkpoint's line (``file``); not a recorded file (``artifact``) nor a weight digest."""
    return entry is not None and "file" in entry and "artifact" not in entry


def build_payload(log: str) -> dict[str, Any]:
    """What ``sign_run`` signs for the log file ``log``: its head and every checkpoint line."""
    lines = _log_lines(log)
    if not lines:
        raise SigningError(f"the audit log {log} is empty: the run has no checkpoint to sign")
    checkpoints = [
        {"file": e["file"], "digest": e.get("digest"), "file_sha256": e.get("file_sha256"), "step": e.get("step")}
        for _, e in lines
        if e is not None and _is_checkpoint_line(e)
    ]
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "format": SIGNATURE_FORMAT,
        "head": lines[-1][0],
        "signed_at": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "checkpoints": checkpoints,
    }


def canonical(payload: dict[str, Any]) -> str:
    """The text that is signed: sorted keys, no spaces, ASCII."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# -- signing -------------------------------------------------------------------------------------------
def sign_run(
    run_dir: str | os.PathLike[str],
    key: Any,
    *,
    log: str | os.PathLike[str] | None = None,
    passphrase: str | bytes | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Sign the run's audit log (its head and every checkpoint digest) with the private ``key``
    and write the signature into ``run_dir/signatures.json``; returns the new entry.

    A run that ``fulmen verify`` finds problems in is refused (``SigningError``): a signature must
    never vouch for a broken run (``check=False``: the caller has just run ``verify_run`` itself,
    as ``fulmen sign`` does to print the problems). Signing again with the same key replaces that
    key's entry."""
    from fulmen.checkpoint.verify import verify_run

    private = load_private_key(key, passphrase=passphrase)
    folder, log_path = locate_run(run_dir, log)
    if log_path is None or not os.path.isfile(log_path):
        raise SigningError(f"{folder} has no audit log (checkpoints.jsonl): there is no checkpoint to sign")
    problems = verify_run(folder, log=log_path) if check else []
    if problems:
        raise SigningError(
            f"{folder} has {len(problems)} problem(s) (first: {problems[0]}); run `fulmen verify {folder}` and "
            f"fix them before signing: a signature must not vouch for a broken run"
        )
    text = canonical(build_payload(log_path))
    raw = _raw(private.public_key())
    entry = {
        "payload": text,
        "public_key": base64.b64encode(raw).decode("ascii"),
        "key_id": hashlib.sha256(raw).hexdigest()[:16],
        "signature": base64.b64encode(private.sign(text.encode("utf-8"))).decode("ascii"),
    }
    path = os.path.join(folder, SIGNATURE_FILE)
    try:
        kept = [e for e in _read_signatures(path) if e.get("key_id") != entry["key_id"]]
    except SigningError as err:  # (it may hold other keys' signatures: never overwritten unread)
        raise SigningError(
            f"{err}; nothing was signed: move {path} aside (other keys' signatures may be in it) and sign again"
        ) from None
    _write_signatures(path, [*kept, entry])
    return entry


def _read_signatures(path: str) -> list[dict[str, Any]]:
    """The entries of a ``signatures.json`` ([] when there is none)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise SigningError(f"{SIGNATURE_FILE} is not valid JSON ({err}): it was altered or damaged") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise SigningError(f"{SIGNATURE_FILE} is not a list of signature entries: it was altered or damaged")
    return data


def _write_signatures(path: str, entries: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with ``entries`` (mode as a plain ``open`` would give)."""
    from fulmen.utils.files import fsync_dir, plain_file_mode

    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".part")
    try:
        os.fchmod(fd, plain_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


# -- checking ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """A valid entry of ``signatures.json`` by a trusted key: its key id and the signed payload."""

    key_id: str
    payload: dict[str, Any]


def _check_entry(entry: dict[str, Any], trusted: dict[bytes, Any]) -> Signature | Problem | None:
    """A trusted, valid entry (``Signature``), a broken one (``Problem``), or None for a valid
    entry by a key that is not trusted."""
    from cryptography.exceptions import InvalidSignature

    ed25519 = _ed25519()
    try:
        raw = base64.b64decode(str(entry["public_key"]), validate=True)
        signature = base64.b64decode(str(entry["signature"]), validate=True)
        text = str(entry["payload"])
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (KeyError, ValueError) as err:
        return Problem("bad_signature", SIGNATURE_FILE, f"an entry is malformed ({err}): the file was altered")
    kid = hashlib.sha256(raw).hexdigest()[:16]
    try:
        key.verify(signature, text.encode("utf-8"))
    except InvalidSignature:
        return Problem(
            "bad_signature",
            SIGNATURE_FILE,
            f"the signature by key {kid} does not match its payload: {SIGNATURE_FILE} was altered after signing",
        )
    if entry.get("key_id") != kid:
        return Problem("bad_signature", SIGNATURE_FILE, f"an entry names key id {entry.get('key_id')} for key {kid}: the file was altered")
    payload = json.loads(text)
    if not isinstance(payload, dict) or not isinstance(payload.get("checkpoints"), list):
        return Problem("bad_signature", SIGNATURE_FILE, f"the payload signed by key {kid} is not a signed audit trail")
    if isinstance(payload.get("format"), int) and payload["format"] > SIGNATURE_FORMAT:
        return Problem("bad_signature", SIGNATURE_FILE, f"key {kid} signed format {payload['format']} (a newer fulmen); upgrade fulmen")
    return Signature(kid, payload) if raw in trusted else None


def trusted_signatures(path: str, keys: Any) -> tuple[list[Signature], list[Problem]]:
    """The entries of the ``signatures.json`` at ``path`` made by one of ``keys`` (public keys)
    whose signature is valid, and the problems found: no file, an altered file or entry, or
    signatures by other keys only."""
    trusted = {_raw(k): k for k in _key_list(keys)}
    if not os.path.exists(path):
        return [], [Problem("unsigned", SIGNATURE_FILE, "the run carries no signature: sign it with `fulmen sign RUN_DIR --key PRIVATE_KEY`")]
    try:
        entries = _read_signatures(path)
    except SigningError as err:
        return [], [Problem("bad_signature", SIGNATURE_FILE, str(err))]
    found: list[Signature] = []
    problems: list[Problem] = []
    for entry in entries:
        checked = _check_entry(entry, trusted)
        if isinstance(checked, Signature):
            found.append(checked)
        elif isinstance(checked, Problem):
            problems.append(checked)
    if not found and not problems:
        others = ", ".join(str(e.get("key_id")) for e in entries) or "none"
        wanted = ", ".join(hashlib.sha256(r).hexdigest()[:16] for r in trusted)
        problems.append(
            Problem(
                "wrong_key",
                SIGNATURE_FILE,
                f"signed by key(s) {others}, not by the given key(s) {wanted}: the key does not match; pass the "
                f"public key the run was signed with",
            )
        )
    return found, problems


def check_run(
    run_dir: str | os.PathLike[str], keys: Any, *, log: str | os.PathLike[str] | None = None, load: bool = True
) -> list[Problem]:
    """What ``fulmen verify --key`` adds to ``verify_run``: the run must carry a valid signature by
    one of ``keys``; the signed head must still be a line of the log (checkpoint lines after it
    are reported as unsigned); and every checkpoint the log names that is on disk must have a
    signed content digest (its bytes equal a signed file, or, with ``load``, its tensor digest)."""
    folder, log_path = locate_run(run_dir, log)
    found, problems = trusted_signatures(os.path.join(folder, SIGNATURE_FILE), keys)
    if not found:
        return problems
    lines = _log_lines(log_path) if log_path is not None and os.path.isfile(log_path) else []
    hashes = [h for h, _ in lines]
    signed_at = -1
    for sig in found:
        head = sig.payload.get("head")
        if head in hashes:
            signed_at = max(signed_at, hashes.index(head))
        else:
            problems.append(
                Problem(
                    "history_rewritten",
                    "checkpoints.jsonl",
                    f"the head hash key {sig.key_id} signed ({head}) is no longer a line of the audit log: the log "
                    f"was rewritten or cut after signing",
                )
            )
    reported: set[str] = set()
    if signed_at >= 0:
        for number, (_, entry) in enumerate(lines[signed_at + 1 :], signed_at + 2):
            if entry is not None and _is_checkpoint_line(entry):
                reported.add(str(entry["file"]))
                problems.append(
                    Problem("unsigned_checkpoint", str(entry["file"]), f"line {number} of the log was written after the run was signed: sign it again to cover it")
                )
    problems += _uncovered_files(folder, lines, found, reported, load)
    return problems


def _uncovered_files(
    folder: str, lines: list[tuple[str, dict[str, Any] | None]], found: list[Signature], reported: set[str], load: bool
) -> list[Problem]:
    """The checkpoints the log names that are on disk and whose content no signature covers."""
    from fulmen.checkpoint.audit import file_sha256

    covered = {c.get("digest") for s in found for c in s.payload["checkpoints"] if isinstance(c, dict)}
    covered_bytes = {c.get("file_sha256") for s in found for c in s.payload["checkpoints"] if isinstance(c, dict)}
    keys = ", ".join(s.key_id for s in found)
    names = dict.fromkeys(str(e["file"]) for _, e in lines if e is not None and _is_checkpoint_line(e))
    problems = []
    for name in names:
        path = name if os.path.isabs(name) else os.path.join(folder, name)
        if name in reported or not os.path.isfile(path) or file_sha256(path) in covered_bytes:
            continue
        digest = _content_digest(path) if load else None
        if digest is not None and digest in covered:
            continue
        what = f"its content digest {digest}" if digest is not None else "its bytes (SHA-256)"
        problems.append(
            Problem("not_covered", name, f"{what} is not one the signature by key {keys} covers: it changed after signing")
        )
    return problems


def _content_digest(path: str) -> str | None:
    """The tensor digest of the checkpoint at ``path`` (None when it does not load safely)."""
    import torch

    from fulmen.checkpoint.integrity import tensor_digest

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # (verify_run reports it as unreadable)
    return tensor_digest(ckpt)


# -- loading with trusted keys ------------------------------------------------------------------------------
def _signature_files(path: str) -> list[str]:
    """The ``signatures.json`` files in the checkpoint's folder and every folder above it."""
    found = []
    current = os.path.dirname(os.path.realpath(path))
    while True:
        candidate = os.path.join(current, SIGNATURE_FILE)
        if os.path.isfile(candidate):
            found.append(candidate)
        parent = os.path.dirname(current)
        if parent == current:
            return found
        current = parent


def require_trusted(path: str | os.PathLike[str], ckpt: Any, trusted_keys: Any, *, verified: bool) -> None:
    """Refuse (``UntrustedCheckpointError``) the checkpoint ``ckpt`` read from ``path`` unless a
    valid signature by one of ``trusted_keys`` (in a ``signatures.json`` in its folder or a folder
    above it) covers its content digest. ``verified``: the loader already checked that the digest
    stored in ``ckpt`` matches its content (else the digest is computed here). Called once per
    load, never per step."""
    from fulmen.checkpoint.integrity import DIGEST_ALGORITHM, stored_digest, tensor_digest

    path = os.fspath(path)
    keys = _key_list(trusted_keys)
    wanted = ", ".join(key_id(k) for k in keys)
    if os.path.isdir(path):
        raise UntrustedCheckpointError(
            f"{path!r}: a sharded checkpoint folder cannot be checked against signatures (trusted_keys={wanted}); "
            f"load a single-file checkpoint, or leave trusted_keys out",
            path,
        )
    stored = stored_digest(ckpt)
    digest = stored[1] if verified and stored is not None and stored[0] == DIGEST_ALGORITHM else tensor_digest(ckpt)
    files = _signature_files(path)
    why = f"no {SIGNATURE_FILE} in its folder or a folder above it (the run was not signed)"
    for sig_file in files:
        found, problems = trusted_signatures(sig_file, keys)
        if any(digest == c.get("digest") for s in found for c in s.payload["checkpoints"] if isinstance(c, dict)):
            return
        why = (
            f"{sig_file} has a signature by a trusted key, but not of this content (it changed after signing)"
            if found
            else f"{sig_file}: {problems[0].message}"
        )
    raise UntrustedCheckpointError(
        f"{path!r} is not signed by a trusted key ({wanted}): its content digest {digest} is not covered; {why}. "
        f"Load only runs signed with `fulmen sign RUN_DIR --key KEY`, or leave trusted_keys out to load it unchecked.",
        path,
    )
