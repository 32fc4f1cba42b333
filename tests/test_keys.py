"""The PyNaCl key adapter: generation, sealed key files, loading and what must never leak."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import re
import stat
from pathlib import Path

import nacl.pwhash.argon2id as argon2id
import pytest

from engine.adapters import keys
from engine.adapters.keys import (
    Ed25519SigningKey,
    generate_key,
    load_public_key,
    load_signer,
    save_key,
    verify_ed25519,
)
from engine.errors import (
    KeyError_,
    KeyFileExistsError,
    KeyFilePermissionError,
    SignatureError,
    WrongPassphraseError,
)
from engine.provenance.signing import PublicKey, PublicKeyInfo, Signer

PASS = "correct horse battery staple"

# RFC 8032 section 7.1, TEST 1 (empty message)
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(keys.ENV_KDF_FAST, "1")
    monkeypatch.delenv(keys.ENV_PASSPHRASE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(keys, "_stdin_is_tty", lambda: False)


def _rfc_key(name: str = "alice") -> Ed25519SigningKey:
    return Ed25519SigningKey.from_seed(RFC_SEED, name=name, role="trainer")


def _secret_forms(seed: bytes) -> list[bytes]:
    return [seed, seed.hex().encode(), base64.b64encode(seed), base64.b64encode(seed).rstrip(b"=")]


# --- the key itself --------------------------------------------------------------------------


def test_rfc8032_known_answer_and_keyid() -> None:
    key = _rfc_key()
    assert key.public_key.raw == RFC_PUB
    assert key.sign(b"") == RFC_SIG
    assert key.keyid == hashlib.sha256(RFC_PUB).hexdigest()
    assert isinstance(key, Signer)
    key.public_key.verify(RFC_SIG, b"")
    assert verify_ed25519(RFC_PUB, RFC_SIG, b"")


def test_public_key_verify_names_the_keyid() -> None:
    key = _rfc_key()
    with pytest.raises(SignatureError, match=re.escape(f"key {key.keyid}: signature does not verify")):
        key.public_key.verify(RFC_SIG, b"x")


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, RFC_SIG + b"\x00"], ids=["empty", "short", "long"])
def test_verify_ed25519_is_false_for_malformed_signatures(sig: bytes) -> None:
    assert not verify_ed25519(RFC_PUB, sig, b"")


def test_generated_keys_are_fresh() -> None:
    a, b = generate_key("a", "trainer"), generate_key("b", "trainer")
    assert a.keyid != b.keyid
    a.public_key.verify(a.sign(b"m"), b"m")


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("../evil", "trainer", "key name '../evil' is invalid"),
        ("", "trainer", "key name '' is invalid"),
        ("alice", "root", "role 'root' is unknown; expected one of admin, approver, data-steward, deployer, ledger"),
    ],
    ids=["path", "empty", "role"],
)
def test_generate_rejects_bad_names_and_roles(name: str, role: str, message: str) -> None:
    with pytest.raises(KeyError_, match="^" + re.escape(message)):
        generate_key(name, role)


def test_repr_and_pickle_do_not_leak_the_seed() -> None:
    key = _rfc_key()
    for text in (repr(key), str(key), f"{key}", repr(key.public_key)):
        for form in _secret_forms(RFC_SEED):
            assert form.decode("latin-1") not in text
    assert repr(key) == f"Ed25519SigningKey(name='alice', role='trainer', keyid='{key.keyid}')"
    with pytest.raises(TypeError, match="refusing to pickle a private key"):
        pickle.dumps(key)


# --- encrypted key files ---------------------------------------------------------------------


def test_save_and_load_encrypted(tmp_path: Path) -> None:
    key = _rfc_key()
    priv, pub = save_key(key, tmp_path / "keys", passphrase=PASS)
    assert (priv.name, pub.name) == ("alice.key", "alice.pub")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    data = priv.read_bytes()
    for form in [*_secret_forms(RFC_SEED), PASS.encode()]:
        assert form not in data
    obj = json.loads(data)
    assert sorted(obj) == sorted(
        ["algorithm", "encrypted", "kdf", "keyid", "name", "public_key", "role", "secretbox"]
    )
    assert obj["encrypted"] is True
    assert obj["kdf"]["alg"] == "argon2id"
    assert (obj["kdf"]["opslimit"], obj["kdf"]["memlimit"]) == (argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)
    assert len(base64.b64decode(obj["secretbox"])) == 24 + 16 + 32  # nonce, MAC, seed
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")] == []  # no temp left

    loaded = load_signer(priv, PASS)
    assert loaded.keyid == key.keyid
    assert (loaded.name, loaded.role) == ("alice", "trainer")
    assert loaded.sign(b"m") == key.sign(b"m")


def test_passphrase_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.ENV_PASSPHRASE, PASS)
    priv, _ = save_key(_rfc_key(), tmp_path)
    assert load_signer(priv).keyid == _rfc_key().keyid


def test_passphrase_prompt_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path, passphrase=PASS)
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return PASS

    monkeypatch.setattr(keys.getpass, "getpass", fake_getpass)
    monkeypatch.setattr(keys, "_stdin_is_tty", lambda: True)
    assert load_signer(priv).keyid == _rfc_key().keyid
    assert prompts == [f"Passphrase for {priv}: "]


def test_wrong_passphrase_message(tmp_path: Path) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path, passphrase=PASS)
    message = f"key file {priv}: wrong passphrase (set CERTUS_KEY_PASSPHRASE)"
    with pytest.raises(WrongPassphraseError, match="^" + re.escape(message) + "$") as info:
        load_signer(priv, "not " + PASS)
    assert PASS not in str(info.value)


def test_no_passphrase_and_no_terminal(tmp_path: Path) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path, passphrase=PASS)
    message = f"key file {priv}: encrypted and no passphrase given (set CERTUS_KEY_PASSPHRASE)"
    with pytest.raises(KeyError_, match="^" + re.escape(message) + "$"):
        load_signer(priv)


def test_interactive_kdf_cost_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.ENV_KDF_FAST)
    assert keys._kdf_limits() == (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)


# --- unencrypted (CI) key files --------------------------------------------------------------


def test_unencrypted_needs_the_explicit_flag(tmp_path: Path) -> None:
    message = (
        f"key file {tmp_path / 'alice.key'}: no passphrase given (set CERTUS_KEY_PASSPHRASE); "
        "an unencrypted key needs an explicit unencrypted flag"
    )
    with pytest.raises(KeyError_, match="^" + re.escape(message) + "$"):
        save_key(_rfc_key(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unencrypted_with_flag(tmp_path: Path) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path, unencrypted=True)
    obj = json.loads(priv.read_bytes())
    assert obj["encrypted"] is False
    assert base64.b64decode(obj["seed"]) == RFC_SEED
    assert "kdf" not in obj and "secretbox" not in obj
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert load_signer(priv).keyid == _rfc_key().keyid


def test_passphrase_and_unencrypted_conflict(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="both a passphrase and unencrypted=True given; choose one"):
        save_key(_rfc_key(), tmp_path, passphrase=PASS, unencrypted=True)


# --- file safety -----------------------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    priv, pub = save_key(_rfc_key(), tmp_path, passphrase=PASS)
    before = priv.read_bytes(), pub.read_bytes()
    message = f"key file {priv}: already exists; refusing to overwrite"
    with pytest.raises(KeyFileExistsError, match="^" + re.escape(message) + "$"):
        save_key(generate_key("alice", "approver"), tmp_path, passphrase=PASS)
    assert (priv.read_bytes(), pub.read_bytes()) == before


def test_refuses_to_overwrite_a_lone_public_key(tmp_path: Path) -> None:
    (tmp_path / "alice.pub").write_text("{}")
    message = f"key file {tmp_path / 'alice.pub'}: already exists"
    with pytest.raises(KeyFileExistsError, match=re.escape(message)):
        save_key(_rfc_key(), tmp_path, passphrase=PASS)
    assert not (tmp_path / "alice.key").exists()


def test_write_new_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    target.write_bytes(b"old")
    with pytest.raises(KeyFileExistsError):
        keys._write_new(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.key"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_refuses_a_private_key_others_can_access(tmp_path: Path, mode: int) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path, passphrase=PASS)
    priv.chmod(mode)
    message = f"key file {priv}: permissions {mode:04o} let group/others access it; run `chmod 600 {priv}`"
    with pytest.raises(KeyFilePermissionError, match="^" + re.escape(message) + "$"):
        load_signer(priv, PASS)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match=re.escape(f"key file {tmp_path / 'nope.key'}: not found")):
        load_signer(tmp_path / "nope.key", PASS)


def _write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_bad_json(tmp_path: Path) -> None:
    p = _write_private(tmp_path / "bad.key", "{not json")
    with pytest.raises(KeyError_, match="^" + re.escape(f"key file {p}: not valid JSON (")):
        load_signer(p, PASS)


def _mutated(tmp_path: Path, **changes: object) -> Path:
    priv, _ = save_key(_rfc_key(), tmp_path / "orig", passphrase=PASS)
    obj = json.loads(priv.read_text())
    for k, v in changes.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return _write_private(tmp_path / "mutated.key", json.dumps(obj))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"extra": 1}, "unknown field 'extra'"),
        ({"secretbox": ...}, "missing field 'secretbox'"),
        ({"encrypted": "yes"}, "field 'encrypted': expected true or false"),
        ({"algorithm": "rsa"}, "field 'algorithm': 'rsa' is not supported; expected ed25519"),
        ({"secretbox": "!!"}, "field 'secretbox': not valid standard padded base64"),
        ({"kdf": {"alg": "scrypt", "opslimit": 1, "memlimit": 1, "salt": ""}},
         "field 'kdf.alg': 'scrypt' is not supported; expected argon2id"),
        ({"public_key": base64.b64encode(b"\x01" * 32).decode()},
         "the recorded public key or keyid does not match the private key"),
        ({"keyid": "0" * 64}, "the recorded public key or keyid does not match the private key"),
    ],
    ids=["unknown", "missing", "encrypted-type", "algorithm", "b64", "kdf-alg", "public-key", "keyid"],
)
def test_malformed_private_key_file(tmp_path: Path, changes: dict[str, object], problem: str) -> None:
    p = _mutated(tmp_path, **changes)
    with pytest.raises(KeyError_, match="^" + re.escape(f"key file {p}: {problem}") + "$"):
        load_signer(p, PASS)


def test_kdf_cost_is_bounded(tmp_path: Path) -> None:
    priv, _ = save_key(_rfc_key(), tmp_path / "orig", passphrase=PASS)
    obj = json.loads(priv.read_text())
    obj["kdf"]["memlimit"] = 1 << 40
    p = _write_private(tmp_path / "greedy.key", json.dumps(obj))
    with pytest.raises(KeyError_, match=re.escape("field 'kdf.memlimit': expected an integer in [")):
        load_signer(p, PASS)


# --- public key files ------------------------------------------------------------------------


def test_public_key_file(tmp_path: Path) -> None:
    key = _rfc_key()
    _, pub = save_key(key, tmp_path, passphrase=PASS)
    assert json.loads(pub.read_text()) == {
        "algorithm": "ed25519",
        "keyid": key.keyid,
        "name": "alice",
        "public_key": base64.b64encode(RFC_PUB).decode(),
        "role": "trainer",
    }
    assert pub.read_text().endswith("}\n")
    info = load_public_key(pub)
    assert info == PublicKeyInfo(name="alice", role="trainer", public_key=PublicKey(RFC_PUB))
    assert info.to_json_bytes() == pub.read_bytes()


def test_public_key_file_keyid_must_match(tmp_path: Path) -> None:
    obj = _rfc_key().info.to_dict() | {"keyid": "ab" * 32}
    pub = tmp_path / "alice.pub"
    pub.write_text(json.dumps(obj))
    message = f"public key file {pub}: field 'keyid': {'ab' * 32} does not match the public key's"
    with pytest.raises(KeyError_, match=re.escape(message)):
        load_public_key(pub)
