"""Cosignatures (C2SP tlog-cosignature/v1) and comparing checkpoints across copies of a ledger.

Vectors: tests/vectors/tlog_cosignature.json (its ``sources`` name the C2SP spec commit, the
transparency-dev/formats test file, and how the hand-built vector was made with an Ed25519
implementation other than the engine's). The CLI tests build real signed workspaces through the
real CLI (keys generate / trust, repro), as tests/test_tamper.py does, and exchange checkpoints
between copies of them: an agreeing copy, one that is behind, and one whose history forked.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import BIN, SeedSigner, init_diamond

from engine.adapters.keys import load_public_key, load_signer
from engine.cli.main import main
from engine.provenance import merkle
from engine.provenance.cosignature import (
    Cosignature,
    Cosigner,
    cosign,
    cosignature_key_id,
    cosignature_timestamp,
    signed_message,
    verify_cosignatures,
)
from engine.provenance.ledger import ForkError, RollbackError
from engine.provenance.note import (
    Checkpoint,
    CheckpointError,
    Note,
    NoteError,
    UnverifiedNoteError,
    Verifier,
    parse_vkey,
)
from engine.provenance.recorder import NoteSignerAdapter
from engine.provenance.trust import TrustStore
from engine.provenance.witness import BehindError, DifferentLogError, HistoryForkError, compare

VECTORS = json.loads((Path(__file__).parent / "vectors" / "tlog_cosignature.json").read_text())
C2SP, FORMATS, BUILT = VECTORS["c2sp_example"], VECTORS["formats"], VECTORS["built"]
WITNESS = SeedSigner(BUILT["name"], bytes.fromhex(BUILT["seed"]))
LOG = SeedSigner("example.com/behind-the-sofa", bytes(range(32)))


def log_note(body: str = BUILT["body"]) -> Note:
    return Note.sign(body, LOG)


def flip_base64(line: str, at: int) -> str:
    """The signature line with one base64 character of its signature changed (still valid base64)."""
    head, b64 = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 0x01
    return f"{head} {base64.b64encode(bytes(raw)).decode()}\n"


# -- known answers ------------------------------------------------------------------------------------


def test_c2sp_example_key_id_timestamp_and_message() -> None:
    note = Note.from_text(C2SP["note"])
    log_sig, cosig = note.signatures
    assert cosig.name == C2SP["witness_name"] and cosig.key_id.hex() == C2SP["witness_key_id"]
    assert cosignature_timestamp(cosig) == C2SP["timestamp"]
    assert signed_message(note.text, C2SP["timestamp"]) == C2SP["signed_message"].encode()
    with pytest.raises(NoteError, match="68 bytes|64 bytes"):
        cosignature_timestamp(log_sig)  # the log's own 0x01 signature is no cosignature
    # a verifier that knows another witness ignores this one's line
    assert verify_cosignatures(note, [Cosigner.from_vkey(BUILT["vkey"])]) == ()


def test_formats_vkey_and_timestamp() -> None:
    c = Cosigner.from_vkey(FORMATS["vkey"])
    assert c.to_vkey() == FORMATS["vkey"] and c.key_id.hex() == "da77ade7"
    assert parse_vkey(FORMATS["vkey"])[:2] == ("remora.n621.de", 0x04)
    with pytest.raises(NoteError, match="0x01"):
        Verifier.from_vkey(FORMATS["vkey"])  # a cosigner key is not a plain note key
    with pytest.raises(NoteError, match="0x04"):
        Cosigner.from_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    raw = base64.b64decode(FORMATS["timestamp_sig"])
    from engine.provenance.note import NoteSignature

    assert cosignature_timestamp(NoteSignature("x", raw[:4], raw[4:])) == FORMATS["timestamp"]
    wrong = base64.b64decode(FORMATS["wrong_type_sig"])
    with pytest.raises(NoteError, match="72"):
        cosignature_timestamp(NoteSignature("x", wrong[:4], wrong[4:]))


def test_built_vector_byte_for_byte() -> None:
    c = Cosigner.from_vkey(BUILT["vkey"])
    assert c.public_key.hex() == BUILT["public_key"] == WITNESS.public_key.hex()
    assert cosignature_key_id(BUILT["name"], c.public_key).hex() == BUILT["key_id"]
    assert signed_message(BUILT["body"], BUILT["timestamp"]).decode() == BUILT["signed_message"]
    signed = cosign(log_note(), WITNESS, BUILT["timestamp"])
    assert signed.signatures[-1].to_line() == BUILT["line"]
    assert signed.signatures[-1].signature[8:].hex() == BUILT["signature"]
    assert verify_cosignatures(signed, [c]) == (Cosignature(BUILT["name"], c.key_id, BUILT["timestamp"]),)
    ext = cosign(log_note(BUILT["extension_body"]), WITNESS, BUILT["extension_timestamp"])
    assert ext.signatures[-1].to_line() == BUILT["extension_line"]
    # the hand-built line, pasted under another log signature, verifies as is
    pasted = Note.from_text(log_note().to_text() + BUILT["line"])
    assert [s.timestamp for s in verify_cosignatures(pasted, [c])] == [BUILT["timestamp"]]


# -- the rules ----------------------------------------------------------------------------------------


def test_cosignature_keeps_log_signature_and_replaces_its_own() -> None:
    c = Cosigner.from_vkey(BUILT["vkey"])
    once = cosign(log_note().to_text(), WITNESS, 100)
    twice = cosign(once, WITNESS, 200)
    assert [s.name for s in twice.signatures] == [LOG.name, WITNESS.name]
    assert verify_cosignatures(twice.to_text(), [c])[0].timestamp == 200
    # the log's key still opens the note; the cosignature line (type 0x04 key ID) is ignored by it
    Note.open(twice.to_text(), [Verifier(LOG.name, LOG.public_key)])
    # the same key as a plain note verifier does not match the cosignature's key ID
    with pytest.raises(UnverifiedNoteError, match="not signed by any trusted key"):
        Note.open(twice.to_text(), [Verifier(WITNESS.name, WITNESS.public_key)])


@pytest.mark.parametrize("at", [0, 7, 8, 40, 71], ids=["key-id", "time-low", "sig-first", "sig-mid", "sig-last"])
def test_tampered_cosignature_rejects(at: int) -> None:
    c = Cosigner.from_vkey(BUILT["vkey"])
    text = log_note().to_text() + flip_base64(BUILT["line"], at)
    if at == 0:  # a different key ID is an unknown key: ignored, not a failure
        assert verify_cosignatures(text, [c]) == ()
        return
    with pytest.raises(UnverifiedNoteError, match="does not verify"):
        verify_cosignatures(text, [c])


def test_cosignature_covers_body_and_time_rules() -> None:
    c = Cosigner.from_vkey(BUILT["vkey"])
    other_body = BUILT["body"].replace("20852163", "20852164")
    with pytest.raises(UnverifiedNoteError, match="does not verify"):
        verify_cosignatures(log_note(other_body).to_text() + BUILT["line"], [c])
    with pytest.raises(UnverifiedNoteError, match="in the future"):
        verify_cosignatures(log_note().to_text() + BUILT["line"], [c], not_after=BUILT["timestamp"] - 1)
    with pytest.raises(NoteError, match="2\\^63"):
        cosign(log_note(), WITNESS, 2**63)
    with pytest.raises(CheckpointError):
        cosign(Note.sign("not a checkpoint\n", LOG), WITNESS, 1)
    short = log_note().to_text() + f"\u2014 {c.name} {base64.b64encode(c.key_id + bytes(10)).decode()}\n"
    with pytest.raises(UnverifiedNoteError, match="72"):
        verify_cosignatures(short, [c])


def test_compare_is_pure() -> None:
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(5)]
    ours = Checkpoint("o", 5, merkle.root(leaves))

    def root_at(n: int) -> bytes:
        return merkle.root(leaves[:n])

    for n in range(6):
        compare(ours, Checkpoint("o", n, merkle.root(leaves[:n])), root_at)
    with pytest.raises(BehindError, match="behind.*size 6.*size 5") as behind:
        compare(ours, Checkpoint("o", 6, merkle.root([*leaves, leaves[0]])), root_at)
    assert isinstance(behind.value, RollbackError)
    with pytest.raises(HistoryForkError, match="fork: at size 3") as fork:
        compare(ours, Checkpoint("o", 3, merkle.root(leaves[1:4])), root_at)
    assert isinstance(fork.value, ForkError)
    with pytest.raises(HistoryForkError, match="fork: at size 5"):
        compare(ours, Checkpoint("o", 5, merkle.root(leaves[::-1])), root_at)
    with pytest.raises(DifferentLogError):
        compare(ours, Checkpoint("p", 5, ours.root_hash), root_at)


# -- through the CLI, with real workspaces ------------------------------------------------------------

PASSPHRASE = "witness-tests"
GITIGNORE = (".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/state.db*\n.certus/lock\n"
             ".certus/running.json\nruns.log\n")


def _env(mp: pytest.MonkeyPatch, base: Path) -> None:
    (base / "userhome").mkdir(exist_ok=True)
    mp.setenv("HOME", str(base / "userhome"))
    mp.setenv("CERTUS_HOME", str(base / "home"))
    mp.setenv("CERTUS_KEY_PASSPHRASE", PASSPHRASE)
    mp.setenv("CERTUS_KDF_FAST", "1")
    mp.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    for var in ("GIT_AUTHOR", "GIT_COMMITTER"):
        mp.setenv(f"{var}_NAME", "Test")
        mp.setenv(f"{var}_EMAIL", "test@example.com")
    mp.delenv("CERTUS_KEY", raising=False)
    mp.delenv("CERTUS_LEDGER_KEY", raising=False)


def _ok(root: Path, *args: str) -> None:
    assert main(["-C", str(root), *args]) == 0, args


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/ws: 3 signed runs; base/behind: the same after 2; base/fork: 2 runs and a different 3rd.

    alice holds trainer + ledger + admin, wit the witness role, mallory is generated but never trusted.
    """
    base = tmp_path_factory.mktemp("witness")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, base)
        w = init_diamond(base / "ws", GITIGNORE)
        for name, role in (("alice", "trainer"), ("wit", "witness"), ("mallory", "ledger")):
            _ok(w.root, "keys", "generate", "--name", name, "--role", role)
        _ok(w.root, "keys", "trust", str(base / "home/keys/alice.pub"), "--role", "trainer", "--role", "ledger",
            "--role", "admin")
        _ok(w.root, "keys", "trust", str(base / "home/keys/wit.pub"), "--role", "witness")
        w.commit("diamond, trusting alice and wit")
        _ok(w.root, "repro")
        _ok(w.root, "repro", "b.y=2")
        shutil.copytree(w.root, base / "behind", symlinks=True)
        shutil.copytree(w.root, base / "fork", symlinks=True)
        _ok(w.root, "repro", "c.z=2")
        _ok(base / "fork", "repro", "c.z=3")
    return base


class Site:
    """A copy of the template: run the CLI in one of its workspaces and capture what it printed."""

    def __init__(self, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base, self.capsys = base, capsys

    def run(self, ws: str, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main(["-C", str(self.base / ws), *args])
        out = self.capsys.readouterr()
        self.stdout = out.out
        return rc, out.out + out.err

    def export(self, ws: str, *extra: str) -> Path:
        path = self.base / f"{ws}.checkpoint"
        rc, text = self.run(ws, "ledger", "checkpoint", "--export", str(path), *extra)
        assert rc == 0, text
        return path

    def witness(self, ws: str, path: Path, *extra: str) -> tuple[int, str]:
        return self.run(ws, "ledger", "checkpoint", "--witness", str(path), *extra)

    def note(self, ws: str) -> str:
        return (self.base / ws / ".certus/ledger/checkpoint").read_text()

    def checkpoint(self, ws: str) -> Checkpoint:
        return Checkpoint.from_body(Note.from_text(self.note(ws)).text)

    def size(self, ws: str) -> int:
        return self.checkpoint(ws).size

    def log_signer(self, ws: str) -> str:
        """The name the ledger key signs checkpoints under (its key name, or the log's origin)."""
        return Note.from_text(self.note(ws)).signatures[0].name

    def signer(self, name: str) -> NoteSignerAdapter:
        return NoteSignerAdapter(load_signer(self.base / "home/keys" / f"{name}.key"))


@pytest.fixture
def site(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Site:
    base = tmp_path / "site"
    shutil.copytree(template, base, symlinks=True)
    shutil.copytree(base / "ws", base / "copy", symlinks=True)  # another machine's identical copy
    _env(monkeypatch, base)
    return Site(base, capsys)


@pytest.mark.integration
def test_print_and_export_are_the_checkpoint_verbatim(site: Site) -> None:
    rc, _ = site.run("ws", "ledger", "checkpoint")
    assert rc == 0 and site.stdout == site.note("ws")
    assert site.export("ws").read_text() == site.note("ws")
    rc, _ = site.run("ws", "ledger", "checkpoint", "--json")
    out = json.loads(site.stdout)
    cp = site.checkpoint("ws")
    assert (out["origin"], out["size"], out["note"], out["cosignatures"]) == (cp.origin, cp.size, site.note("ws"), [])
    assert base64.b64decode(out["root"]) == cp.root_hash


@pytest.mark.integration
def test_export_then_witness_on_a_copy_agrees(site: Site) -> None:
    n, m = site.size("ws"), site.size("behind")
    rc, text = site.witness("copy", site.export("ws"))
    assert rc == 0, text
    signer = site.log_signer("ws")
    assert text.strip() == f"consistent: their size {n} = our size {n}, same root at {n}; signed by {signer}"
    rc, text = site.witness("ws", site.export("behind"))  # an older checkpoint of the same history
    assert rc == 0 and text.startswith(f"consistent: their size {m} ≤ our size {n}, same root at {m}"), text


@pytest.mark.integration
def test_other_copy_appended_we_are_behind(site: Site) -> None:
    rc, text = site.witness("behind", site.export("ws"))
    assert rc != 0 and "behind" in text and len(text.strip().splitlines()) == 1
    for ws in ("ws", "behind"):
        assert f"size {site.size(ws)} root {base64.b64encode(site.checkpoint(ws).root_hash).decode()}" in text


@pytest.mark.integration
def test_forked_copy_refused_with_both_checkpoints(site: Site) -> None:
    theirs, ours = site.checkpoint("fork"), site.checkpoint("ws")
    assert theirs.size == ours.size and theirs.root_hash != ours.root_hash
    rc, text = site.witness("ws", site.export("fork"))
    assert rc != 0 and "fork" in text and len(text.strip().splitlines()) == 1
    for cp in (theirs, ours):
        assert base64.b64encode(cp.root_hash).decode() in text


@pytest.mark.integration
def test_untrusted_signer_refused_origin_named_key_accepted(site: Site) -> None:
    note = Note.from_text(site.note("ws"))
    origin = Checkpoint.from_body(note.text).origin
    forged = site.base / "forged.checkpoint"
    mallory = site.signer("mallory")
    forged.write_text(Note.sign(note.text, mallory).to_text())
    rc, text = site.witness("ws", forged)
    assert rc != 0 and "refused" in text and "not signed by any trusted key" in text

    class AsOrigin:  # alice's key under the log's origin as its name (c2sp.org/tlog-checkpoint)
        name, public_key, sign = origin, site.signer("alice").public_key, site.signer("alice").sign

    forged.write_text(Note.sign(note.text, AsOrigin()).to_text())
    rc, text = site.witness("copy", forged)
    assert rc == 0 and f"signed by {origin}" in text, text


@pytest.mark.integration
def test_cosign_round_trip(site: Site) -> None:
    path = site.export("ws", "--cosign", "--key", "wit")
    note = Note.from_text(path.read_text())
    assert [s.name for s in note.signatures] == [site.log_signer("ws"), "wit"]
    rc, text = site.witness("copy", path)
    assert rc == 0 and "cosigned by wit at " in text, text
    rc, _ = site.run("copy", "ledger", "checkpoint", "--witness", str(path), "--json")
    assert [c["name"] for c in json.loads(site.stdout)["cosignatures"]] == ["wit"]
    # the copy cosigns their checkpoint in turn; the same witness key replaces its earlier line
    rc, text = site.run("copy", "ledger", "checkpoint", "--witness", str(path), "--cosign", "--key", "wit", "--json")
    assert rc == 0, text
    cosigned = Note.from_text(json.loads(site.stdout)["note"])
    assert [s.name for s in cosigned.signatures] == [site.log_signer("ws"), "wit"]


@pytest.mark.integration
def test_tampered_cosignature_refused(site: Site) -> None:
    path = site.export("ws", "--cosign", "--key", "wit")
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = flip_base64(lines[-1], 40)
    path.write_text("".join(lines))
    rc, text = site.witness("copy", path)
    assert rc != 0 and "cosignature by 'wit+" in text and "does not verify" in text


@pytest.mark.integration
def test_cosigner_needs_the_witness_role(site: Site) -> None:
    rc, text = site.run("ws", "ledger", "checkpoint", "--cosign", "--key", "alice")
    assert rc != 0 and "'witness'" in text
    rc, text = site.run("ws", "ledger", "checkpoint", "--cosign")
    assert rc != 0 and "--key" in text
    # an untrusted cosigner's line is ignored by others, not counted
    note = Note.from_text(site.note("ws"))
    path = site.base / "mallory.checkpoint"
    path.write_text(cosign(note, site.signer("mallory"), 1_700_000_000).to_text())
    rc, text = site.witness("copy", path)
    assert rc == 0 and "cosigned" not in text


@pytest.mark.integration
def test_cosign_refuses_a_rolled_back_ledger(site: Site) -> None:
    rc, text = site.run("ws", "verify")
    assert rc == 0, text  # this machine now remembers our size
    ledger = site.base / "ws/.certus/ledger"
    shutil.rmtree(ledger)
    shutil.copytree(site.base / "behind/.certus/ledger", ledger)  # rolled back to 2 runs, validly signed
    rc, text = site.run("ws", "ledger", "checkpoint", "--cosign", "--key", "wit")
    assert rc != 0 and "not cosigning" in text and f"size {site.size('ws')}" in text, text


@pytest.mark.integration
def test_cosign_refuses_a_damaged_ledger(site: Site) -> None:
    entries = site.base / "ws/.certus/ledger/entries.jsonl"
    frames = entries.read_bytes().splitlines(keepends=True)
    frame = json.loads(frames[0])
    frame["entry"] = base64.b64encode(base64.b64decode(frame["entry"]) + b" ").decode()
    frames[0] = json.dumps(frame, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    entries.write_bytes(b"".join(frames))
    rc, text = site.run("ws", "ledger", "checkpoint", "--cosign", "--key", "wit")
    assert rc != 0 and "ledger" in text and len(text.strip().splitlines()) == 1, text


@pytest.mark.integration
def test_revoked_keys(site: Site) -> None:
    path = site.export("ws", "--cosign", "--key", "wit")
    # trust changes are admin-signed ledger records in the copy (which only makes it longer)
    assert site.run("copy", "keys", "revoke", "wit", "--reason", "lost", "--at", "2000-01-01T00:00:00Z")[0] == 0
    rc, text = site.witness("copy", path)  # cosigned long after wit's revocation
    assert rc != 0 and "cosignature by 'wit'" in text and "revoked" in text, text
    assert site.run("copy", "keys", "revoke", "alice", "--reason", "left")[0] == 0
    rc, text = site.witness("copy", site.export("ws"))
    assert rc != 0 and f"signed only by ledger key(s) {site.log_signer('ws')}, not valid now" in text


@pytest.mark.integration
def test_edited_trust_file_is_not_used(site: Site) -> None:
    """Trusting mallory by editing trust.json does not make her checkpoint acceptable."""
    trust_file = site.base / "copy/trust.json"
    info = load_public_key(site.base / "home/keys/mallory.pub")
    trust_file.write_text(TrustStore.from_json(trust_file.read_text()).add_key(info, roles=["ledger"]).to_json())
    forged = site.base / "forged.checkpoint"
    forged.write_text(Note.sign(Note.from_text(site.note("ws")).text, site.signer("mallory")).to_text())
    rc, text = site.witness("copy", forged)
    assert rc != 0 and "trust.json" in text and len(text.strip().splitlines()) == 1, text
