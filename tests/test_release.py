"""Model bundles in OpenSSF Model Signing v1.0 format: interop both ways with the ``model-signing``
package, tamper cases refused and named, reproducible tar bytes. Real files, real keys, temp dirs."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.adapters.release_keys import generate_ecdsa_key, load_ecdsa_signer, save_ecdsa_key
from engine.cli.main import main
from engine.provenance.signing import ECDSA_P256, PublicKey, PublicKeyInfo
from engine.provenance.trust import TrustStore
from engine.release.bundle import PackageRequest, build_bundle, write_tar
from engine.release.oms import PREDICATE_TYPE
from engine.release.verify import verify_bundle

model_signing = pytest.importorskip("model_signing")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "correct horse")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "mymodel"
    (model / "a").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(200_000))
    (model / "a" / "b").write_text("nested\n")
    (model / "a.txt").write_text("sorts before a/b in the spec's order, after it in model-signing's\n")
    (model / "tokenizer.json").write_text('{"vocab": []}\n')
    return tmp_path


def _key(directory: Path, name: str = "rel") -> tuple[object, Path]:
    key = generate_ecdsa_key(name)
    priv, _, pem = save_ecdsa_key(key, directory)
    return load_ecdsa_signer(priv), pem


def _trust(*entries: tuple[object, tuple[str, ...]]) -> TrustStore:
    store = TrustStore()
    for key, roles in entries:
        store = store.add_key(key.info, roles=roles)  # type: ignore[attr-defined]
    return store


def _package(env: Path, signer: object, version: str = "1.0.0", out: str = "dist") -> Path:
    req = PackageRequest(model=str(env / "mymodel"), name="clf", version=version, out=str(env / out),
                         intended_use="tests", metrics={"m.json": {"values": {"acc": 0.9}}})
    return build_bundle(req, signer).path  # type: ignore[arg-type]


# --- keys and trust -----------------------------------------------------------------------------


def test_ecdsa_key_files_and_trust_entry(env: Path) -> None:
    signer, pem = _key(env / "keys")
    info = PublicKeyInfo.from_json_bytes((env / "keys" / "rel.pub").read_bytes())
    assert info.public_key.algorithm == ECDSA_P256 and info.keyid == signer.keyid
    assert (env / "keys" / "rel.key").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (env / "keys" / "rel.key").read_bytes()
    store = _trust((signer, ("releaser",)))
    text = store.to_json()
    assert '"type": "ecdsa-p256"' in text and TrustStore.from_json(text) == store
    with pytest.raises(Exception, match="may hold only releaser"):
        _trust((signer, ("releaser", "trainer")))


def test_ed25519_trust_entries_are_byte_identical(env: Path) -> None:
    from engine.adapters.keys import generate_key

    text = _trust((generate_key("alice", "trainer"), ("trainer",))).to_json()
    assert '"type"' not in text and TrustStore.from_json(text).to_json() == text


def test_cli_keys_generate_ecdsa(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256"]) == 0
    assert (env / "home" / "keys" / "rel.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert main(["keys", "generate", "--name", "r2", "--role", "trainer", "--type", "ecdsa-p256",
                 "--unencrypted"]) != 0
    assert "may hold only releaser" in capsys.readouterr().err


# --- interop with model-signing --------------------------------------------------------------------


def test_model_signing_verifies_a_certus_bundle(env: Path) -> None:
    signer, pem = _key(env / "keys")
    bundle = _package(env, signer)
    cfg = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pem)
    cfg.verify(bundle, bundle / "model.sig")  # raises on any mismatch
    sig = json.loads((bundle / "model.sig").read_text())
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert sig["verificationMaterial"]["publicKey"]["hint"] == signer.keyid
    import base64

    st = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
    assert st["predicateType"] == PREDICATE_TYPE
    names = [r["name"] for r in st["predicate"]["resources"]]
    assert names == sorted(names) and names.index("model/a.txt") < names.index("model/a/b")  # the spec's order
    (bundle / "model" / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ValueError):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pem).verify(bundle, bundle / "model.sig")


def test_certus_verifies_a_model_signing_bundle(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer, pem = _key(env / "keys")
    model = env / "mymodel"
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])
    cfg = model_signing.signing.Config().use_elliptic_key_signer(private_key=env / "keys" / "rel.key",
                                                                 password=b"correct horse")
    cfg.set_hashing_config(hashing).sign(model, model / "model.sig")
    report = verify_bundle(model, trust=_trust((signer, ("releaser",))))
    assert report.ok, report.failures
    assert report.files == 4 and any("model-signing 1.x sorts by path components" in n for n in report.notes)
    (env / "trust.json").write_text(_trust((signer, ("releaser",))).to_json())
    assert main(["bundle", "verify", str(model)]) == 0
    assert "bundle OK: mymodel" in capsys.readouterr().out
    assert main(["bundle", "verify", str(model), "--pubkey", str(pem), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (model / "a.txt").write_text("changed")
    assert not verify_bundle(model, pubkey=signer.public_key).ok


# --- tamper cases ----------------------------------------------------------------------------------


@pytest.fixture
def released(env: Path) -> tuple[Path, object, TrustStore]:
    signer, _ = _key(env / "keys")
    bundle = _package(env, signer)
    trust = _trust((signer, ("releaser",)))
    assert verify_bundle(bundle, trust=trust).ok
    return bundle, signer, trust


def _fails(bundle: Path, trust: TrustStore | None = None, **kw: object) -> list[str]:
    report = verify_bundle(bundle, trust=trust, **kw)  # type: ignore[arg-type]
    assert not report.ok
    return report.failures


def test_tampered_weight_byte_is_named(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    w = bundle / "model" / "weights.bin"
    data = bytearray(w.read_bytes())
    data[12345] ^= 1
    w.write_bytes(bytes(data))
    assert _fails(bundle, trust) == [_one(_fails(bundle, trust), "model/weights.bin: digest mismatch")]


def _one(failures: list[str], prefix: str) -> str:
    assert len(failures) == 1 and failures[0].startswith(prefix), failures
    return failures[0]


def test_extra_file_is_named(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    (bundle / "model" / "backdoor.py").write_text("import os\n")
    _one(_fails(bundle, trust), "model/backdoor.py: not signed")


def test_removed_file_is_named(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    (bundle / "LICENSE").unlink()
    _one(_fails(bundle, trust), "LICENSE: missing")


def test_symlink_is_refused(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    (bundle / "model" / "link").symlink_to("/etc/passwd")
    _one(_fails(bundle, trust), "model/link: a symbolic link")


def test_tampered_signature_file(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    sig = json.loads((bundle / "model.sig").read_text())
    raw = bytearray(__import__("base64").b64decode(sig["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 1
    sig["dsseEnvelope"]["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(raw)).decode()
    (bundle / "model.sig").write_text(json.dumps(sig))
    _one(_fails(bundle, trust), "model.sig: the signature does not verify")
    (bundle / "model.sig").write_text("{not json")
    _one(_fails(bundle, trust), "model.sig: not valid JSON")
    (bundle / "model.sig").unlink()
    _one(_fails(bundle, trust), "model.sig: cannot read")


def test_rewritten_manifest_with_another_key(released: tuple[Path, object, TrustStore], env: Path) -> None:
    bundle, _, trust = released
    other, _ = _key(env / "k2", "mallory")
    (bundle / "model" / "weights.bin").write_bytes(b"evil")
    (bundle / "model.sig").unlink()
    copy = env / "copy"
    shutil.copytree(bundle / "model", copy)
    rebuilt = build_bundle(PackageRequest(model=str(copy), name="clf", version="9", out=str(env / "evil")), other)
    _one(_fails(rebuilt.path, trust), "model.sig: signed by key")


def test_releaser_key_not_in_trust_file(env: Path) -> None:
    from engine.adapters.keys import generate_key

    signer, _ = _key(env / "keys")
    bundle = _package(env, signer)
    others = TrustStore().add_key(generate_key("bob", "trainer").info, roles=("trainer",))
    _one(_fails(bundle, others), "model.sig: signed by key")
    assert "not in the trust file" in _fails(bundle, others)[0]


def test_releaser_key_lacking_role_in_cli_trust(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer, _ = _key(env / "keys")
    bundle = _package(env, signer)
    text = _trust((signer, ("releaser",))).to_json()
    # an ECDSA key may only hold releaser; a trust file granting it "deployer" instead is refused by name
    (env / "trust.json").write_text(text.replace('"releaser"', '"deployer"'))
    assert main(["bundle", "verify", str(bundle)]) != 0
    assert "may hold only releaser" in capsys.readouterr().err


def test_revoked_releaser(released: tuple[Path, object, TrustStore]) -> None:
    bundle, _, trust = released
    revoked = trust.revoke("rel", datetime.now(UTC) - timedelta(hours=1), "key leaked")
    _one(_fails(bundle, revoked), "model.sig: key 'rel'")
    assert "revoked" in _fails(bundle, revoked)[0]


def test_wrong_pubkey(released: tuple[Path, object, TrustStore], env: Path) -> None:
    bundle, _, _ = released
    other, _ = _key(env / "k3", "other")
    _one(_fails(bundle, pubkey=other.public_key), "model.sig: signed by key")


def test_cli_verify_names_each_failure(released: tuple[Path, object, TrustStore], env: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bundle, _, trust = released
    (env / "trust.json").write_text(trust.to_json())
    (bundle / "extra").write_text("x")
    (bundle / "serving.yaml").write_text("guardrails: {}\n")
    assert main(["bundle", "verify", str(bundle)]) == 1
    out, err = capsys.readouterr()
    assert "FAIL: extra: not signed" in out and "FAIL: serving.yaml: digest mismatch" in out
    assert err.count("\n") == 1 and err.startswith("certus: error: bundle")
    assert main(["bundle", "verify", str(bundle), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and len(doc["failures"]) == 2


# --- packaging rules and reproducibility --------------------------------------------------------------


def test_tar_is_reproducible(env: Path) -> None:
    signer, _ = _key(env / "keys")
    a = write_tar(_package(env, signer, out="one"))
    b = write_tar(_package(env, signer, out="two"))
    assert a.read_bytes() == b.read_bytes()
    import tarfile

    with tarfile.open(a) as t:
        members = t.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1767225600)}


def test_package_refuses_overwrite_and_ed25519(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256"]) == 0
    assert main(["package", "mymodel", "--name", "clf", "--version", "1", "--key", "rel"]) == 0
    assert main(["package", "mymodel", "--name", "clf", "--version", "1", "--key", "rel"]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keys", "generate", "--name", "ed", "--role", "releaser"]) == 0
    assert main(["package", "mymodel", "--name", "clf", "--version", "2", "--key", "ed"]) == 1
    assert "ECDSA P-256" in capsys.readouterr().err
    assert not list((env / "dist").glob(".*tmp"))
    card = json.loads((env / "dist" / "clf-1" / "model_card.json").read_text())
    assert card["gates"]["status"] == "ungated" and card["releaser"]["name"] == "rel"


def test_single_file_model(env: Path) -> None:
    signer, pem = _key(env / "keys")
    built = build_bundle(PackageRequest(model=str(env / "mymodel" / "weights.bin"), name="w", version="1",
                                        out=str(env / "dist")), signer)  # type: ignore[arg-type]
    assert (built.path / "model" / "weights.bin").is_file()
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pem).verify(built.path,
                                                                                    built.path / "model.sig")
    assert verify_bundle(built.path, pubkey=PublicKey(signer.public_key.raw, ECDSA_P256)).ok
