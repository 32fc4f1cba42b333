"""`certus verify` against tampering: one mutation per test, each must fail and name what changed.

A signed workspace with three runs (defaults; b.y=2; c.z=2, which also restores b) is built once
per module and copied for every test, together with its own CERTUS_HOME (keys and the verifier's
witness). Validly signed forgeries are made with the engine's own APIs and the workspace's keys,
as an attacker holding them would. The crash tests kill a real `certus repro` at each durable step
of its ledger append and go through `certus verify` and `certus ledger repair` (the unit-level
crash tests of the ledger itself are in test_ledger.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, init_diamond

from engine.adapters.keys import load_signer
from engine.cli.main import main
from engine.core.canonical import canonical_bytes
from engine.provenance.dsse import sign_envelope
from engine.provenance.ledger import Ledger, encode_frame
from engine.provenance.note import Note
from engine.provenance.recorder import NoteSignerAdapter, Provenance, witness_path
from engine.provenance.records import RUN_TYPE, attestation_root
from engine.store import parallel
from engine.store.workspace import Workspace as EngineWorkspace

pytestmark = pytest.mark.integration

PASSPHRASE = "tamper-tests"
REPO = Path(__file__).resolve().parents[1]
GITIGNORE = (".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/state.db*\n.certus/lock\n"
             ".certus/running.json\nruns.log\ntimes.log\n")
LEDGER = Path(".certus/ledger")
PROV = Path(".certus/provenance")


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


def _certus(root: Path, *args: str) -> None:
    assert main(["-C", str(root), *args]) == 0, args


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/ws: 3 signed runs; base/ledger2 (+ lock2): its ledger (and certus.lock) after 2 runs; base/fork: a
    different 3rd run. The ledger's entry 0 is the trust genesis, so run i is ledger entry i + 1."""
    base = tmp_path_factory.mktemp("signed3")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, base)
        w = init_diamond(base / "ws", GITIGNORE)
        _certus(w.root, "keys", "generate", "--name", "alice", "--role", "trainer")
        # admin too: trusting more keys once the ledger exists is a trust.changed record an admin key signs
        _certus(w.root, "keys", "trust", str(base / "home/keys/alice.pub"), "--role", "trainer", "--role", "ledger",
                "--role", "admin")
        w.commit("diamond, trusting alice")
        _certus(w.root, "repro")
        _certus(w.root, "repro", "b.y=2")
        shutil.copytree(w.root / LEDGER, base / "ledger2")
        shutil.copy(w.root / "certus.lock", base / "lock2")
        shutil.copytree(w.root, base / "fork", symlinks=True)
        _certus(w.root, "repro", "c.z=2")
        _certus(base / "fork", "repro", "c.z=3")
    return base


@dataclass
class Signed:
    base: Path
    capsys: pytest.CaptureFixture[str]
    mp: pytest.MonkeyPatch

    @property
    def root(self) -> Path:
        return self.base / "ws"

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    def certus(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main(["-C", str(self.root), *args])
        out = self.capsys.readouterr()
        self.stdout = out.out  # what --json promises to keep parseable (progress goes to stderr)
        return rc, out.out + out.err

    def verify_ok(self, *args: str) -> None:
        rc, text = self.certus("verify", *args)
        assert rc == 0, text

    def verify_fails(self, *args: str) -> str:
        """Run `certus verify`; it must exit non-zero. Returns everything it printed."""
        rc, text = self.certus("verify", *args)
        assert rc != 0, text
        return text

    def report(self, *args: str) -> dict[str, Any]:
        rc, _ = self.certus("verify", "--json", *args)
        rep = json.loads(self.stdout)
        assert (rc == 0) == rep["ok"]
        return rep

    # -- reading and writing the files --------------------------------------------------------

    def frames(self) -> list[bytes]:
        return (self.ledger / "entries.jsonl").read_bytes().splitlines(keepends=True)

    def write_frames(self, frames: list[bytes]) -> None:
        (self.ledger / "entries.jsonl").write_bytes(b"".join(frames))

    def entries(self) -> list[bytes]:
        return [base64.b64decode(json.loads(f)["entry"]) for f in self.frames()]

    def runs(self) -> list[str]:
        """Run ids of the run records, in ledger order (entry 0 is the trust genesis, not a run)."""
        return [payload(e)["run_id"] for e in self.entries() if json.loads(e)["payloadType"] == RUN_TYPE]

    def bundle_path(self, run_id: str) -> Path:
        return self.root / PROV / f"{run_id}.dsse.jsonl"

    def bundle(self, run_id: str) -> list[bytes]:
        return self.bundle_path(run_id).read_bytes().splitlines(keepends=True)

    def signer(self, name: str, directory: str = "keys") -> Any:
        return load_signer(self.home / directory / f"{name}.key")

    def prov(self) -> Provenance:
        return Provenance(EngineWorkspace.discover(str(self.root)))


@pytest.fixture(params=["serial", "forked"])
def t(request: pytest.FixtureRequest, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
      capsys: pytest.CaptureFixture[str]) -> Signed:
    """Every case runs twice: verify in this process only, and spread over forked workers (one
    ledger entry or checkpoint each, three workers even on a one-core machine)."""
    if request.param == "serial":
        monkeypatch.setattr(parallel, "cpu_count", lambda: 1)
    else:
        monkeypatch.setattr(parallel, "cpu_count", lambda: 3)
        monkeypatch.setattr(parallel, "MIN_PER_WORKER", 1)
    base = tmp_path / "t"
    shutil.copytree(template, base, symlinks=True)
    _env(monkeypatch, base)
    monkeypatch.chdir(base / "ws")
    s = Signed(base, capsys, monkeypatch)
    # Every append advanced the witness of the workspace it was made in (the template's ws and fork);
    # this copy lives at another path, so its verifier starts out remembering nothing.
    seen = {json.loads(p.read_text())["workspace"] for p in (s.home / "witness").glob("*.json")}
    assert seen == {os.path.realpath(template / "ws"), os.path.realpath(template / "fork")}
    assert not witness_path(EngineWorkspace.discover(str(s.root))).exists()
    return s


def cj(obj: Any) -> bytes:
    return canonical_bytes(obj)


def payload(envelope: bytes) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def broken_signature(line: bytes, at: int) -> bytes:
    """An attestation bundle line with byte ``at`` of its first signature flipped."""
    env = json.loads(line)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[at] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return cj(env) + b"\n"


def stage_of(line: bytes) -> str:
    return payload(line)["predicate"]["buildDefinition"]["externalParameters"]["stage"]


def forged_record(t: Signed, signer: Any, run_id: str) -> bytes:
    """A run record that extends the chain correctly and claims no attestations, signed by ``signer``."""
    last = [e for e in t.entries() if json.loads(e)["payloadType"] == RUN_TYPE][-1]  # the chain links run records
    rec = dict(payload(last), run_id=run_id, previous=sha256(last), attestations=[], stages={},
               merkle_root=attestation_root([]), failed=[])
    return sign_envelope(RUN_TYPE, cj(rec), [signer]).to_json_bytes()


def append_entry(t: Signed, entry: bytes) -> None:
    """Append through the engine's ledger, with a valid checkpoint signed by the ledger key."""
    led = t.prov().open_ledger(create=False)
    led.append(entry, NoteSignerAdapter(t.signer("alice"), name=led.origin))


def cache_object(t: Signed, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return t.root / ".certus/cache" / hexd[:2] / hexd[2:]


def flip_first_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[0] ^= 0x01
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))


# -- 1. artifacts ----------------------------------------------------------------------------------


def test_workspace_output_byte_changed(t: Signed) -> None:
    t.verify_ok("--artifacts")
    flip_first_byte(t.root / "out/d.txt")
    text = t.verify_fails("--artifacts")
    assert "workspace file out/d.txt: sha256 " in text and "the file was modified after it was produced" in text


def test_cache_object_byte_changed(t: Signed) -> None:
    runs = t.runs()
    digest = payload(t.entries()[3])["stages"]["d"]["outs"]["out/d.txt"]
    obj = cache_object(t, digest)
    flip_first_byte(obj)
    text = t.verify_fails("--artifacts")
    assert f"cache object for out/d.txt (run {runs[2]}): cache object {obj} hashes to sha256:" in text
    assert f"expected {digest}" in text


def test_cache_object_of_an_older_attested_output_changed(t: Signed) -> None:
    # out/b.txt of run 1 (b.y=2) is attested by run 1 only: run 2 restored the b.y=1 version. The
    # run cache still serves it (`certus repro b.y=2` restores it), and verify's docstring promises
    # "every attested cache object re-hashed" with --artifacts.
    runs = t.runs()
    digest = payload(t.entries()[2])["stages"]["b"]["outs"]["out/b.txt"]
    assert digest != payload(t.entries()[3])["stages"]["b"]["outs"]["out/b.txt"]
    obj = cache_object(t, digest)
    flip_first_byte(obj)
    text = t.verify_fails("--artifacts")
    [line] = [ln for ln in text.splitlines() if str(obj) in ln and "FAIL" in ln]
    assert "out/b.txt" in line and f"run {runs[1]}" in line and "hashes to sha256:" in line


# -- 2. a param in a signed run record ----------------------------------------------------------------


@pytest.mark.parametrize("leaf", ["stale leaf", "leaf recomputed"])
def test_run_record_param_changed(t: Signed, leaf: str) -> None:
    t.verify_ok()
    runs = t.runs()
    frames = t.frames()
    frame = json.loads(frames[2])  # run 1 (entry 0 is the trust genesis)
    env = json.loads(base64.b64decode(frame["entry"]))
    rec = json.loads(base64.b64decode(env["payload"]))
    assert rec["config"]["b"] == {"y": 2} and rec["overrides"] == ["b.y=2"]
    rec["config"]["b"]["y"] = 3
    rec["overrides"] = ["b.y=3"]
    env["payload"] = base64.b64encode(cj(rec)).decode()
    entry = cj(env)
    if leaf == "leaf recomputed":
        frames[2] = encode_frame(2, entry)
    else:
        frames[2] = cj({**frame, "entry": base64.b64encode(entry).decode()}) + b"\n"
    t.write_frames(frames)
    text = t.verify_fails()
    if leaf == "leaf recomputed":
        assert f"ledger entry 2 (run {runs[1]}): signature keyid " in text
        assert "signature does not verify" in text
        assert "checkpoint: root " in text and "is not the root of entries 0..3" in text
        assert "checkpoints.jsonl: line 2: root of size 3 does not match entries 0..2" in text
        assert "line 1: root" not in text
    else:
        assert "entries.jsonl: entry 2: leaf hash mismatch" in text


def test_verify_json_reports_a_corrupt_frame_instead_of_aborting(t: Signed) -> None:
    # `certus verify --json` promises a report; a frame whose leaf does not match its entry makes
    # Provenance.items() raise out of verify_workspace, so there is no JSON and only one problem.
    frames = t.frames()
    frame = json.loads(frames[1])
    frames[1] = cj({**frame, "entry": base64.b64encode(b'{"not":"the signed entry"}').decode()}) + b"\n"
    t.write_frames(frames)
    rc, text = t.certus("verify", "--json")
    assert rc != 0
    assert t.stdout.lstrip().startswith("{"), f"no JSON report, only: {text}"
    report = json.loads(t.stdout)
    assert report["ok"] is False
    assert any("entries.jsonl: entry 1: leaf hash mismatch" in f for f in report["failures"])


# -- 3-5. attestations ----------------------------------------------------------------------------


def test_attestation_signature_byte_changed(t: Signed) -> None:
    run0 = t.runs()[0]
    lines = t.bundle(run0)
    assert stage_of(lines[1]) == "b"
    lines[1] = broken_signature(lines[1], 10)
    t.bundle_path(run0).write_bytes(b"".join(lines))
    text = t.verify_fails()
    where = f"ledger entry 1 (run {run0}): attestation for stage 'b'"
    assert f"{where}: signature keyid " in text and "signature does not verify" in text
    assert f"{where}: envelope digest " in text


def test_an_attestation_the_signed_record_lists_is_covered_by_its_signature(t: Signed) -> None:
    """Verify authenticates a stage attestation through the run record that lists its exact bytes (the record's
    signature verified, the same key): its own signature is checked again only with --every-signature. Shown with
    a record the trainer key itself re-signed over an attestation whose own signature is broken."""
    run = t.runs()[-1]
    lines = t.bundle(run)
    lines[0] = broken_signature(lines[0], 5)
    t.bundle_path(run).write_bytes(b"".join(lines))
    entries = t.entries()
    rec = payload(entries[-1])
    assert rec["run_id"] == run
    envelopes = [ln.rstrip(b"\n") for ln in lines]
    by_stage = {stage_of(e): e for e in envelopes}
    for a in rec["attestations"]:
        a["sha256"] = sha256(by_stage[a["stage"]])
    rec["merkle_root"] = attestation_root([by_stage[a["stage"]] for a in rec["attestations"]])
    alice = t.signer("alice")
    forged = sign_envelope(RUN_TYPE, cj(rec), [alice]).to_json_bytes()
    origin = t.prov().open_ledger(create=False).origin
    shutil.rmtree(t.ledger)
    Ledger.open(t.ledger, origin=origin).append_many([*entries[:-1], forged], NoteSignerAdapter(alice, name=origin))
    witness_path(EngineWorkspace.discover(str(t.root))).unlink(missing_ok=True)
    rep = t.report()
    assert rep["ok"], rep["failures"]
    records = [payload(e) for e in [*entries[:-1], forged] if json.loads(e)["payloadType"] == RUN_TYPE]
    listed = sum(len(r["attestations"]) for r in records)
    assert rep["checked"]["signatures covered by their run record's"] == listed >= len(rec["attestations"])
    text = t.verify_fails("--every-signature")
    assert f"ledger entry {len(entries) - 1} (run {run}): attestation for stage '{stage_of(envelopes[0])}': " \
           "signature keyid" in text, text


def test_attestation_payload_type_changed(t: Signed) -> None:
    run0 = t.runs()[0]
    lines = t.bundle(run0)
    env = json.loads(lines[2])
    env["payloadType"] = "application/vnd.certus.run+json"
    lines[2] = cj(env) + b"\n"
    t.bundle_path(run0).write_bytes(b"".join(lines))
    text = t.verify_fails()
    assert (f"ledger entry 1 (run {run0}): attestation for stage 'c': payloadType "
            "'application/vnd.certus.run+json', expected 'application/vnd.in-toto+json'") in text


def test_attestation_replayed_from_another_stage(t: Signed) -> None:
    run0 = t.runs()[0]
    lines = t.bundle(run0)
    assert [stage_of(line) for line in lines] == ["a", "b", "c", "d", "e"]
    lines[1] = lines[2]  # c's valid attestation where b's was
    t.bundle_path(run0).write_bytes(b"".join(lines))
    text = t.verify_fails()
    assert f"ledger entry 1 (run {run0}): attestation for stage 'b': missing from" in text


def test_attestation_replayed_from_another_run(t: Signed) -> None:
    run0, run1, _ = t.runs()
    lines = t.bundle(run1)
    assert [stage_of(line) for line in lines] == ["b", "d"]
    lines[0] = t.bundle(run0)[1]  # run 0's valid attestation of stage b (same outputs path)
    t.bundle_path(run1).write_bytes(b"".join(lines))
    text = t.verify_fails()
    where = f"ledger entry 2 (run {run1}): attestation for stage 'b'"
    assert f"{where}: statement is for stage 'b' of run '{run0}'" in text
    assert "replayed" in text
    assert f"{where}: envelope digest " in text


# -- 6, 9. the ledger's entries -------------------------------------------------------------------


def test_entry_in_the_middle_replaced_by_a_validly_signed_one(t: Signed) -> None:
    entries = t.entries()
    rec = payload(entries[2])  # run 1
    rec["config"]["b"]["y"] = 3
    rec["overrides"] = ["b.y=3"]
    forged = sign_envelope(RUN_TYPE, cj(rec), [t.signer("alice")]).to_json_bytes()  # the trainer key itself
    frames = t.frames()
    frames[2] = encode_frame(2, forged)
    t.write_frames(frames)
    text = t.verify_fails()
    assert "checkpoints.jsonl: line 2: root of size 3 does not match entries 0..2" in text
    assert "line 1: root" not in text


def test_history_rewritten_from_the_middle_and_resigned(t: Signed) -> None:
    # An attacker holding every key rewrites run 1 (entry 2) to claim b.y=3, re-signs its attestation
    # of stage b to match (so the params verify re-derives from the record's config agree), re-links
    # run 2 (entry 3) and re-signs every checkpoint: a self-consistent ledger. Only the verifier's
    # memory of what it saw catches it.
    t.verify_ok()
    runs = t.runs()
    old = t.entries()
    alice = t.signer("alice")
    lines = [line.rstrip(b"\n") for line in t.bundle(runs[1])]
    assert [stage_of(line) for line in lines] == ["b", "d"]
    stmts = [payload(line) for line in lines]
    for stmt in stmts:
        stmt["predicate"]["buildDefinition"]["externalParameters"]["overrides"] = ["b.y=3"]
    stmts[0]["predicate"]["buildDefinition"]["externalParameters"]["params"] = {"b.y": 3}
    lines = [sign_envelope("application/vnd.in-toto+json", cj(stmt), [alice]).to_json_bytes() for stmt in stmts]
    t.bundle_path(runs[1]).write_bytes(b"".join(line + b"\n" for line in lines))
    rec1 = payload(old[2])
    rec1["config"]["b"]["y"] = 3
    rec1["overrides"] = ["b.y=3"]
    for a, line in zip(rec1["attestations"], lines):
        a["sha256"] = rec1["stages"][a["stage"]]["attestation"] = sha256(line)
    rec1["merkle_root"] = attestation_root(lines)
    new1 = sign_envelope(RUN_TYPE, cj(rec1), [alice]).to_json_bytes()
    rec2 = dict(payload(old[3]), previous=sha256(new1))
    new2 = sign_envelope(RUN_TYPE, cj(rec2), [alice]).to_json_bytes()
    origin = (t.ledger / "checkpoint").read_text().splitlines()[0]
    shutil.rmtree(t.ledger)
    led = Ledger.open(t.ledger, origin=origin)
    for entry in (old[0], old[1], new1, new2):
        led.append(entry, NoteSignerAdapter(alice, name=origin))
    rep = t.report()
    assert not rep["ok"]
    assert len(rep["failures"]) == 1, rep["failures"]
    assert rep["failures"][0].startswith(".certus/ledger: not consistent with the checkpoint this verifier saw before")
    assert "history rewritten, reordered or forked" in rep["failures"][0]
    assert runs == t.runs()


def test_entries_reordered(t: Signed) -> None:
    frames = t.frames()
    frames[0], frames[1] = frames[1], frames[0]
    t.write_frames(frames)
    text = t.verify_fails()
    assert "entries.jsonl: entry 0: index field says 1: entries reordered, inserted or removed" in text


def test_entries_reordered_and_renumbered(t: Signed) -> None:
    entries = t.entries()
    entries[2], entries[3] = entries[3], entries[2]  # runs 1 and 2
    t.write_frames([encode_frame(i, e) for i, e in enumerate(entries)])
    text = t.verify_fails()
    assert "checkpoints.jsonl: line 2: root of size 3 does not match entries 0..2" in text


# -- 7, 8. truncation and forks, caught by the witness --------------------------------------------


def test_ledger_truncated_consistently_is_caught_by_the_witness(t: Signed) -> None:
    t.verify_ok()  # the witness remembers size 4 (the genesis and 3 runs)
    shutil.rmtree(t.ledger)
    shutil.copytree(t.base / "ledger2", t.ledger)  # entries, checkpoints, checkpoint and state of size 3
    shutil.copy(t.base / "lock2", t.root / "certus.lock")  # and the lock of that time: a consistent rollback
    rep = t.report()
    assert len(rep["failures"]) == 1, rep["failures"]  # self-consistent: only the witness objects
    assert rep["failures"][0].startswith(".certus/ledger: not consistent with the checkpoint this verifier saw "
                                         "before (size 4, root ")
    assert "size 3 is smaller than the last seen size 4: entries were removed" in rep["failures"][0]
    assert "entries were removed" in t.verify_fails()
    shutil.rmtree(t.home / "witness")
    rc, text = t.certus("verify")
    assert rc == 0, text  # a verifier that never saw size 4 cannot tell
    assert "a rollback or rewritten history could NOT be checked this time" in text  # and says so


def test_tail_replaced_by_a_validly_signed_fork(t: Signed) -> None:
    t.verify_ok()
    mine = t.runs()
    shutil.rmtree(t.ledger)
    shutil.copytree(t.base / "fork" / LEDGER, t.ledger)
    for p in (t.base / "fork" / PROV).glob("*.dsse.jsonl"):
        shutil.copy(p, t.root / PROV / p.name)
    shutil.copy(t.base / "fork" / "certus.lock", t.root / "certus.lock")  # the fork's whole state
    fork = t.runs()
    assert fork[:2] == mine[:2] and fork[2] != mine[2]
    rep = t.report()
    assert len(rep["failures"]) == 1, rep["failures"]
    assert "not consistent with the checkpoint this verifier saw before (size 4, root" in rep["failures"][0]
    assert "is not an append-only extension" in rep["failures"][0]
    assert "forked" in t.verify_fails()


# -- 10. keys: without the role, unknown, revoked -------------------------------------------------


def test_key_without_the_trainer_role(t: Signed) -> None:
    rc, _ = t.certus("keys", "generate", "--name", "mallory", "--role", "data-steward", "--dir", str(t.home / "other"))
    assert rc == 0
    assert t.certus("keys", "trust", str(t.home / "other/mallory.pub"), "--role", "data-steward")[0] == 0
    assert payload(t.entries()[-1])["kind"] == "trust.changed"  # entry 4, signed by alice (admin)
    before = t.entries()
    lock = (t.root / "certus.lock").read_bytes()
    t.mp.setenv("CERTUS_KEY", str(t.home / "other/mallory.key"))
    (t.root / "runs.log").unlink(missing_ok=True)
    rc, text = t.certus("repro", "c.z=5")
    assert rc != 0
    assert "no usable 'trainer' key" in text and "key 'mallory'" in text and "lacks role 'trainer'" in text
    assert not (t.root / "runs.log").exists()  # refused before any stage ran
    assert t.entries() == before and (t.root / "certus.lock").read_bytes() == lock
    t.mp.delenv("CERTUS_KEY")

    append_entry(t, forged_record(t, t.signer("mallory", "other"), "forged-by-mallory"))
    text = t.verify_fails()
    assert "ledger entry 5 (run forged-by-mallory): signature keyid " in text
    assert "key 'mallory'" in text and "lacks role 'trainer' (has data-steward)" in text


def test_key_not_in_the_trust_file(t: Signed) -> None:
    assert t.certus("keys", "generate", "--name", "eve", "--role", "trainer", "--dir", str(t.home / "other"))[0] == 0
    eve = t.signer("eve", "other")
    t.mp.setenv("CERTUS_KEY", str(t.home / "other/eve.key"))
    rc, text = t.certus("repro", "c.z=5")
    assert rc != 0 and "no usable 'trainer' key" in text and f"unknown key {eve.keyid}" in text
    t.mp.delenv("CERTUS_KEY")

    append_entry(t, forged_record(t, eve, "forged-by-eve"))
    text = t.verify_fails()
    assert f"ledger entry 4 (run forged-by-eve): signature keyid {eve.keyid[:16]}…: unknown key {eve.keyid}" in text
    assert "not in the trust file" in text


def _run_signed_by_new_key(t: Signed, name: str, role: str, env: str) -> dict[str, Any]:
    """Trust a new key ``name`` for ``role`` (ledger entry 4, signed by alice as admin), commit, and make
    run 3 (c.z=5, ledger entry 5) with it chosen by ``env``."""
    assert t.certus("keys", "generate", "--name", name, "--role", role)[0] == 0
    rc, text = t.certus("keys", "trust", str(t.home / f"keys/{name}.pub"), "--role", role)
    assert rc == 0 and "(signed ledger record 4)" in text, text
    subprocess.run(["git", "commit", "-qam", f"trust {name}"], cwd=t.root, check=True)
    t.mp.setenv(env, name)
    rc, text = t.certus("repro", "c.z=5")
    assert rc == 0, text
    return payload(t.entries()[-1])


def _run_with_bob(t: Signed) -> dict[str, Any]:
    """Trust a trainer key 'bob', commit, and make run 3 (c.z=5) signed by it."""
    rec = _run_signed_by_new_key(t, "bob", "trainer", "CERTUS_KEY")
    bob = t.signer("bob").keyid
    assert json.loads(t.entries()[-1])["signatures"][0]["keyid"] == bob
    return rec


def test_key_revoked_before_a_run_it_signed(t: Signed) -> None:
    rec = _run_with_bob(t)
    t.verify_ok()
    started = datetime.fromisoformat(rec["started"].replace("Z", "+00:00"))
    at = (started - timedelta(seconds=1)).isoformat()
    # a signed revocation (ledger entry 6) that says bob was compromised since before his run
    rc, text = t.certus("keys", "revoke", "bob", "--reason", "laptop lost", "--at", at)
    assert rc == 0 and "(signed ledger record 6)" in text, text
    text = t.verify_fails()
    where = f"ledger entry 5 (run {rec['run_id']})"
    assert f"{where}: signature keyid " in text
    assert "key 'bob'" in text and "revoked at " in text and "(laptop lost)" in text
    assert f"{where}: attestation for stage 'c': signature keyid " in text
    for i in range(5):  # revocation is not retroactive: alice's records (and runs) still verify
        assert f"ledger entry {i} (" not in text
    rc, text = t.certus("repro", "c.z=6")  # and bob can no longer sign
    assert rc != 0 and "key 'bob'" in text and "revoked at" in text


def test_key_revoked_at_the_instant_of_its_signature(t: Signed) -> None:
    # trust.py: "a signature made at or after T is rejected", to the microsecond. verify.py's
    # _parse_time drops the record time's fraction of a second, so a signature made up to one
    # second after the revocation still verifies.
    rec = _run_with_bob(t)
    assert rec["finished"].endswith("Z") and "." in rec["finished"]
    assert t.certus("keys", "revoke", "bob", "--reason", "laptop lost", "--at", rec["finished"])[0] == 0
    text = t.verify_fails()
    assert f"ledger entry 5 (run {rec['run_id']}): signature keyid " in text and "revoked at " in text


# -- 11. the checkpoint ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("resign", [False, True], ids=["unsigned-edit", "re-signed"])
def test_checkpoint_with_a_wrong_size(t: Signed, size: int, resign: bool) -> None:
    path = t.ledger / "checkpoint"
    note = path.read_text(encoding="utf-8")
    origin, n, root = note.split("\n\n")[0].splitlines()
    assert n == "4"
    if resign:
        note = Note.sign(f"{origin}\n{size}\n{root}\n", NoteSignerAdapter(t.signer("alice"), name=origin)).to_text()
    else:
        note = note.replace(f"\n{n}\n", f"\n{size}\n", 1)
    path.write_text(note, encoding="utf-8")
    text = t.verify_fails()
    assert ".certus/ledger/checkpoint" in text or ".certus/ledger/entries.jsonl" in text
    if size == 3:
        assert "checkpoint: root " in text and "is not the root of entries 0..2" in text
        assert ("does not verify" in text) != resign
    else:  # more entries claimed than there are
        assert "entry 4: missing (the checkpoint has 5)" in text or (
            "checkpoint: size 5, but " in text and "entries.jsonl holds 4 entries" in text)


def test_checkpoint_signed_by_a_key_without_the_ledger_role(t: Signed) -> None:
    assert t.certus("keys", "generate", "--name", "bob", "--role", "trainer")[0] == 0
    assert t.certus("keys", "trust", str(t.home / "keys/bob.pub"), "--role", "trainer")[0] == 0
    path = t.ledger / "checkpoint"
    body = path.read_text(encoding="utf-8").split("\n\n")[0] + "\n"
    path.write_text(Note.sign(body, NoteSignerAdapter(t.signer("bob"))).to_text(), encoding="utf-8")
    text = t.verify_fails()
    assert ".certus/ledger/checkpoint: note: not signed by any trusted key (trusted: alice+" in text


@pytest.mark.parametrize("since", ["after", "before"])
def test_ledger_key_revoked_before_a_checkpoint_it_signed(t: Signed, since: str) -> None:
    # notary: trusted for ledger by entry 4 (alice, admin); signs the checkpoint over run 3 (entry 5, size 6)
    rec = _run_signed_by_new_key(t, "notary", "ledger", "CERTUS_LEDGER_KEY")
    note = (t.ledger / "checkpoint").read_text(encoding="utf-8")
    origin = note.splitlines()[0]
    [sig_line] = note.split("\n\n", 1)[1].splitlines()
    dash, name, sig = sig_line.split(" ")
    assert (dash, name) == ("\u2014", origin)  # C2SP: the key name is the log's origin
    notary_pub = t.signer("notary").public_key.raw
    assert base64.b64decode(sig)[:4] == hashlib.sha256(origin.encode() + b"\n\x01" + notary_pub).digest()[:4]
    t.verify_ok()
    t.mp.delenv("CERTUS_LEDGER_KEY")  # alice signs the checkpoints from here on
    finished = datetime.fromisoformat(rec["finished"].replace("Z", "+00:00"))
    if since == "after":
        later = (finished + timedelta(seconds=60)).isoformat()
        rc, text = t.certus("keys", "revoke", "notary", "--reason", "rotated", "--at", later)
        assert rc == 0 and "(signed ledger record 6)" in text, text
        t.verify_ok()  # revoked after it signed: its checkpoints stand
        # Backdating the revocation by editing trust.json is no revocation: verify names the file's
        # difference from the trust state the ledger records, and still judges by the ledger's.
        trust = json.loads((t.root / "trust.json").read_text())
        for k in trust["keys"]:
            if k["name"] == "notary":
                k["revoked_at"] = (finished - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        (t.root / "trust.json").write_text(json.dumps(trust, indent=2) + "\n")
        [failure] = t.report()["failures"]
        assert failure.startswith("trust.json differs from the trust state the ledger records (ledger entry 6): "
                                  "key 'notary': revocation changed; "), failure
        assert "'certus keys sync' rewrites trust.json from the ledger" in failure
        rc, text = t.certus("repro", "c.z=6")  # and no append builds on the edited file
        assert rc != 0 and "trust.json differs from the trust state the ledger records (ledger entry 6)" in text
        rc, text = t.certus("keys", "sync")
        assert rc == 0 and "trust.json: rewritten from ledger entry 6" in text, text
        t.verify_ok()
    else:
        # compromised since before it signed: the honest way to say so is a signed revocation naming the time
        earlier = (finished - timedelta(seconds=1)).isoformat()
        rc, text = t.certus("keys", "revoke", "notary", "--reason", "compromised", "--at", earlier)
        assert rc == 0 and "(signed ledger record 6)" in text, text
        text = t.verify_fails()
        assert ".certus/ledger/checkpoints.jsonl: line 5: checkpoint of size 6 signed by 'notary': " in text
        assert "revoked at" in text and "(compromised)" in text
        # alice's checkpoints (lines 1-4, and 6 and the current one, over the revocation) are untouched
        assert "line 4: checkpoint" not in text and "line 6: checkpoint" not in text
        assert ".certus/ledger/checkpoint: checkpoint" not in text
        t.mp.setenv("CERTUS_LEDGER_KEY", "notary")
        rc, text = t.certus("repro", "c.z=6")  # and the revoked key can no longer sign checkpoints
        assert rc != 0 and "notary" in text and "revoked" in text


# -- crash injection through `certus verify` and `certus ledger repair` ------------------------------

CRASHER = textwrap.dedent("""
    import os, sys
    import engine.provenance.ledger as ledger

    step = sys.argv[1]
    real_open = ledger.Ledger.open.__func__

    def crashing_open(cls, path, *, origin, create=True, _hook=None):
        def hook(name):
            if name == step:
                os._exit(97)
        return real_open(cls, path, origin=origin, create=create, _hook=hook)

    ledger.Ledger.open = classmethod(crashing_open)
    from engine.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")
BEFORE_COMMIT = ["begin", "entries", "checkpoints", "checkpoint.tmp"]
AFTER_COMMIT = ["checkpoint", "state.json.tmp", "state"]


def crash_repro(t: Signed, step: str, *overrides: str) -> None:
    p = subprocess.run([sys.executable, "-c", CRASHER, step, "-C", str(t.root), "repro", *overrides],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 97, p.stderr


UNATTESTED = ("certus.lock: stage '{}': output out/{}.txt (sha256:{}…) is not attested by any run in the ledger; "
              "run 'certus repro' to attest or re-run it")


@pytest.mark.parametrize("step", BEFORE_COMMIT + AFTER_COMMIT)
def test_crash_during_ledger_append(t: Signed, step: str) -> None:
    t.verify_ok()  # the witness remembers size 4 (the genesis and 3 runs)
    runs = t.runs()
    crash_repro(t, step, "c.z=5")
    rc, text = t.certus("verify")
    # before the commit point, certus.lock already holds c and d's c.z=5 outputs, which no record attests
    lock = json.loads((t.root / "certus.lock").read_text())["stages"]
    unattested = [UNATTESTED.format(s, s, lock[s]["outs"][f"out/{s}.txt"]["digest"][7:23]) for s in "cd"]
    if step in AFTER_COMMIT:  # committed: the crashed run's record is in and verifies
        assert rc == 0, text
        assert len(t.runs()) == 4 and t.runs()[:3] == runs
    elif step == "begin":  # nothing written to the ledger
        assert rc != 0
        assert t.runs() == runs
        assert t.report()["failures"] == unattested
    else:
        assert rc != 0
        assert ".certus/ledger/entries.jsonl: entries 4..4 are past the checkpoint (size 4): torn tail" in text
        if step != "entries":
            assert ".certus/ledger/checkpoints.jsonl: lines 4..4 are past the checkpoint: torn tail" in text
        assert all(u in text for u in unattested)
    rc, text = t.certus("ledger", "repair")
    assert rc == 0, text
    if step in ("entries", "checkpoints", "checkpoint.tmp"):
        assert "entries.jsonl: cut " in text and "(torn tail)" in text
    if step in BEFORE_COMMIT:  # the ledger is sound again; the outputs the crashed run left are not attested
        assert t.report()["failures"] == unattested
        (t.root / "runs.log").unlink(missing_ok=True)
        rc, text = t.certus("repro", "c.z=5")  # runs them again (never calls them up to date) and attests them
        assert rc == 0, text
        assert sorted((t.root / "runs.log").read_text().split()) == ["c", "d"]
        assert len(t.runs()) == 4
    t.verify_ok()
    assert t.runs()[:3] == runs
    assert not [p.name for p in t.ledger.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("step", ["checkpoint", "state"])
def test_run_after_a_crash_past_the_commit_point_is_recorded_after_it(t: Signed, step: str) -> None:
    # The crashed run's record is committed; the next run's record follows it in the ledger.
    crash_repro(t, step, "c.z=5")
    assert t.certus("ledger", "repair")[0] == 0
    t.verify_ok()
    rc, text = t.certus("repro", "c.z=6")
    assert rc == 0, text
    entries = t.entries()
    assert payload(entries[5])["run_id"] != payload(entries[4])["run_id"]  # run 4 after the crashed run 3
    assert "previous" not in payload(entries[5])
    t.verify_ok()


def test_repro_on_a_torn_ledger_refuses_before_running_stages(t: Signed) -> None:
    # ProvenanceRepro.run promises to "fail before any stage runs if the run could not be signed";
    # a ledger with a torn tail cannot take the record.
    crash_repro(t, "entries", "c.z=5")
    (t.root / "runs.log").unlink(missing_ok=True)
    lock = (t.root / "certus.lock").read_bytes()
    rc, text = t.certus("repro", "c.z=6")
    assert rc != 0 and "torn tail" in text
    assert not (t.root / "runs.log").exists(), "stages ran although the run could not be recorded"
    assert (t.root / "certus.lock").read_bytes() == lock


# -- the forked verifier says exactly what the serial one says -----------------------------------------


def test_forked_and_serial_verify_report_the_same(t: Signed) -> None:
    runs = t.runs()
    lines = t.bundle(runs[1])  # a signature byte of an attestation in run 1
    lines[0] = broken_signature(lines[0], 3)
    t.bundle_path(runs[1]).write_bytes(b"".join(lines))
    cps = (t.ledger / "checkpoints.jsonl").read_bytes().splitlines(keepends=True)
    cps[1] = cps[1].replace(b"\\n\\n", b"\\n\\nx", 1)  # the 2nd historical checkpoint's signature block
    (t.ledger / "checkpoints.jsonl").write_bytes(b"".join(cps))
    flip_first_byte(t.root / "out/d.txt")

    reports = {}
    for mode, cores, least in (("serial", 1, 256), ("forked", 3, 1)):
        t.mp.setattr(parallel, "cpu_count", lambda cores=cores: cores)
        t.mp.setattr(parallel, "MIN_PER_WORKER", least)
        reports[mode] = t.report("--artifacts")
    assert reports["serial"] == reports["forked"]
    failures = "\n".join(reports["serial"]["failures"])
    stage = stage_of(lines[0])
    assert f"ledger entry 2 (run {runs[1]}): attestation for stage '{stage}': signature keyid" in failures, failures
    assert "checkpoints.jsonl: line 2:" in failures
    assert "workspace file out/d.txt" in failures


def test_verify_says_what_it_checks_on_stderr_and_keeps_json_clean(t: Signed) -> None:
    import engine.provenance.verify

    t.mp.setattr(engine.provenance.verify, "PROGRESS_FROM", 1)
    rc, text = t.certus("verify", "--json", "--artifacts")
    assert rc == 0 and json.loads(t.stdout)["ok"] is True
    assert "[certus] verify: checking 4 ledger entries" in text
    assert "[certus] verify: re-hashing workspace outputs" in text
