"""Issue 8, written as the attacks: each test forges what someone holding one key (or write access to local
state) could, with public formats only (DSSE, canonical JSON, the ledger's own append and checkpoint), and
asserts that `certus verify` names it and that `certus repro` neither consumes nor signs it.

A signed workspace (alice: trainer + ledger + admin; runs: defaults, b.y=2, c.z=2 which restores b) and a
governed-dataset workspace (DVC; steward, approver bob, ci: trainer + ledger + admin) are built once per
module and copied per test with their own CERTUS_HOME. An `xfail(strict)` marks an attack the engine does
not catch yet; its reason says where.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, DIAMOND, DIAMOND_CONF, STEP

from engine.adapters.keys import load_public_key, load_signer
from engine.cli.main import main
from engine.core.canonical import canonical_bytes as cj
from engine.provenance.dsse import sign_envelope
from engine.provenance.ledger import Ledger
from engine.provenance.recorder import NoteSignerAdapter
from engine.provenance.trust import TrustStore

pytestmark = pytest.mark.integration

RUN_TYPE, EVENT_TYPE = "application/vnd.certus.run+json", "application/vnd.certus.event+json"
TRUST_TYPE, STMT_TYPE = "application/vnd.certus.trust+json", "application/vnd.in-toto+json"
MANIFEST_TYPE = "application/vnd.certus.dataset+json"
APPROVAL_TYPE = "application/vnd.certus.dataset-approval+json"
GITIGNORE = (".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/state.db*\n.certus/lock\n"
             ".certus/running.json\nruns.log\ntimes.log\n")


def _env(mp: pytest.MonkeyPatch, base: Path) -> None:
    (base / "userhome").mkdir(exist_ok=True)
    for var, value in (("HOME", str(base / "userhome")), ("CERTUS_HOME", str(base / "home")),
                       ("CERTUS_KEY_PASSPHRASE", "trust-holes"), ("CERTUS_KDF_FAST", "1"),
                       ("PATH", BIN + os.pathsep + os.environ.get("PATH", "")), ("GIT_AUTHOR_NAME", "T"),
                       ("GIT_AUTHOR_EMAIL", "t@example.com"), ("GIT_COMMITTER_NAME", "T"),
                       ("GIT_COMMITTER_EMAIL", "t@example.com")):
        mp.setenv(var, value)
    for var in ("CERTUS_KEY", "CERTUS_LEDGER_KEY", "STEP_SLEEP"):
        mp.delenv(var, raising=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(envelope: bytes) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def ptype(envelope: bytes) -> str:
    return json.loads(envelope)["payloadType"]


def stamp(at: datetime, fmt: str = "%Y-%m-%dT%H:%M:%S.%fZ") -> str:
    return at.astimezone(UTC).strftime(fmt)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class W:
    """A copied workspace, its CERTUS_HOME, and the attacker's tools."""

    base: Path
    capsys: pytest.CaptureFixture[str] | None = None
    mp: pytest.MonkeyPatch | None = None
    stdout: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.root, self.home = self.base / "ws", self.base / "home"
        self.ledger = self.root / ".certus/ledger"

    def certus(self, *args: str) -> tuple[int, str]:
        if self.capsys is None:
            return main(["-C", str(self.root), *args]), ""
        self.capsys.readouterr()
        rc = main(["-C", str(self.root), *args])
        out = self.capsys.readouterr()
        self.stdout = out.out
        return rc, out.out + out.err

    def ok(self, *args: str) -> str:
        rc, text = self.certus(*args)
        assert rc == 0, (args, text)
        return text

    def verify_fails(self) -> str:
        rc, text = self.certus("verify")
        assert rc != 0 and "Traceback" not in text, text
        return text

    def report(self) -> dict[str, Any]:
        rc, text = self.certus("verify", "--json")
        rep = json.loads(self.stdout)
        assert (rc == 0) == rep["ok"], text
        return rep

    def runs_log(self) -> list[str]:
        p = self.root / "runs.log"
        return p.read_text().split() if p.exists() else []

    def origin(self) -> str:
        return (self.ledger / "checkpoint").read_text().splitlines()[0]

    def entries(self) -> list[bytes]:
        return list(Ledger.open(self.ledger, origin=self.origin(), create=False).entries())

    def run_records(self) -> list[tuple[int, bytes]]:
        return [(i, e) for i, e in enumerate(self.entries()) if ptype(e) == RUN_TYPE]

    def signer(self, name: str, directory: str = "keys") -> Any:
        return load_signer(self.home / directory / f"{name}.key")

    def append(self, entry: bytes, ledger_key: str = "alice") -> int:
        """Append through the ledger itself; the checkpoint is signed by a ledger key under the log's origin."""
        led = Ledger.open(self.ledger, origin=self.origin(), create=False)
        return led.append(entry, NoteSignerAdapter(self.signer(ledger_key), name=self.origin()))[0]

    def trust(self) -> dict[str, Any]:
        return json.loads((self.root / "trust.json").read_text())

    def write_trust(self, store: dict[str, Any]) -> None:
        (self.root / "trust.json").write_text(json.dumps(store, indent=2) + "\n")

    def new_key(self, name: str, role: str, *trust_roles: str, directory: str = "keys", admin: str = "alice") -> None:
        self.ok("keys", "generate", "--name", name, "--role", role, "--dir", str(self.home / directory))
        if trust_roles:
            roles = [a for r in trust_roles for a in ("--role", r)]
            self.ok("keys", "trust", str(self.home / directory / f"{name}.pub"), *roles, "--key", admin)

    def bundle(self, run_id: str) -> Path:
        return self.root / ".certus/provenance" / f"{run_id}.dsse.jsonl"


def _template(base: Path, files: dict[str, str], keys: list[tuple[str, str, list[str]]], steps: list[list[str]]
              ) -> Path:
    """Write ``files``, generate and trust ``keys`` (name, role, trusted roles), commit, run ``steps``."""
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, base)
        w = W(base)
        for rel, text in files.items():
            (w.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.root / rel).write_text(textwrap.dedent(text))
        mp.chdir(w.root)  # dataset paths are relative to where certus starts
        for name, role, _ in keys:
            w.new_key(name, role)
        for name, _, roles in keys:
            w.ok("keys", "trust", str(w.home / "keys" / f"{name}.pub"), *[a for r in roles for a in ("--role", r)])
        for cmd in (["init", "-q"], ["add", "-A", "--", ".", ":!data"], ["commit", "-qm", "setup"]):  # data: DVC
            subprocess.run(["git", *cmd], cwd=w.root, check=True)
        for step in steps:
            w.ok(*step)
    return base


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"step.py": STEP, ".gitignore": GITIGNORE, "conf/config.yaml": DIAMOND_CONF, "pipelines/p.yaml": DIAMOND,
             "in.txt": "input v1\n"}
    return _template(tmp_path_factory.mktemp("holes"), files, [("alice", "trainer", ["trainer", "ledger", "admin"])],
                     [["repro"], ["repro", "b.y=2"], ["repro", "c.z=2"]])


def _copy(template: Path, tmp_path: Path, mp: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> W:
    base = tmp_path / "t"
    shutil.copytree(template, base, symlinks=True)
    _env(mp, base)
    shutil.rmtree(base / "home/witness", ignore_errors=True)
    (base / "ws/runs.log").unlink(missing_ok=True)
    mp.chdir(base / "ws")
    return W(base, capsys, mp)


@pytest.fixture
def t(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> W:
    return _copy(template, tmp_path, monkeypatch, capsys)


def forged_run(t: W, signer: Any, run_id: str, at: datetime | None = None, **fields: Any) -> bytes:
    """A run record extending the chain of runs, with no attestations unless ``fields`` say otherwise."""
    _, last = t.run_records()[-1]
    rec = dict(payload(last), run_id=run_id, previous=sha256(last), attestations=[], stages={}, failed=[],
               merkle_root=sha256(b""))
    if at is not None:
        rec["started"] = rec["finished"] = stamp(at)
    rec.update(fields)
    return sign_envelope(RUN_TYPE, cj(rec), [signer]).to_json_bytes()


def trust_change(store: dict[str, Any], signer: Any, at: datetime, summary: str) -> bytes:
    """A ``trust.changed`` record carrying the whole new trust state (the documented format)."""
    rec = {"_type": "https://certus.dev/TrustRecord/v1", "kind": "trust.changed", "time": stamp(at),
           "subject": "trust.json", "details": {"summary": summary, "trust": store, "trust_sha256": sha256(cj(store))}}
    return sign_envelope(TRUST_TYPE, cj(rec), [signer]).to_json_bytes()


def with_key(store: dict[str, Any], pub: Path, roles: list[str]) -> dict[str, Any]:
    return TrustStore.from_json(json.dumps(store)).add_key(load_public_key(str(pub)), roles=roles).to_dict()


def failures_all_about(rep: dict[str, Any], needle: str) -> str:
    assert not rep["ok"] and rep["failures"] and all(needle in f for f in rep["failures"]), rep["failures"]
    return "\n".join(rep["failures"])


# -- 2. claimed times ------------------------------------------------------------------------------


def test_revoked_key_backdates_a_run_record(t: W) -> None:
    t.new_key("bob", "trainer", "trainer")
    t.ok("keys", "revoke", "bob", "--reason", "laptop lost", "--admin-key", "alice")
    revocation = payload(t.entries()[-1])
    assert revocation["kind"] == "trust.changed" and "revoked" in revocation["details"]["summary"]
    before = parse(revocation["time"]) - timedelta(seconds=30)  # before the revocation, within the clock skew
    index = t.append(forged_run(t, t.signer("bob"), "backdated-by-bob", at=before))
    text = failures_all_about(t.report(), f"ledger entry {index} (run backdated-by-bob): signature keyid ")
    assert "key 'bob'" in text and "comes after the revocation" in text
    rc, text = t.certus("repro", "--key", "bob", "c.z=6")
    assert rc != 0 and "bob" in text and "revoked" in text and t.runs_log() == []


def test_time_running_backwards_along_the_ledger(t: W) -> None:
    earlier = parse(payload(t.run_records()[-1][1])["finished"]) - timedelta(minutes=10)
    index = t.append(forged_run(t, t.signer("alice"), "from-the-past", at=earlier))
    text = failures_all_about(t.report(), f"ledger entry {index}: claims time ")
    assert "by more than 300 s: times must not go backwards along the ledger" in text


# -- 3. trust.json edited silently; trust changes the ledger must not accept ----------------------------


def test_trust_json_edited_silently(t: W) -> None:
    t.new_key("eve", "trainer", directory="other")
    t.write_trust(with_key(t.trust(), t.home / "other/eve.pub", ["trainer", "ledger"]))
    text = t.verify_fails()
    assert "FAIL: trust.json differs from the trust state the ledger records (ledger entry 0): added key 'eve' " \
           "(ledger, trainer)" in text
    before = t.entries()
    t.mp.setenv("CERTUS_KEY", str(t.home / "other/eve.key"))
    t.mp.setenv("CERTUS_LEDGER_KEY", str(t.home / "other/eve.key"))
    rc, text = t.certus("repro", "c.z=5")
    assert rc != 0 and "trust.json differs from the trust state the ledger records" in text
    assert "nothing was run" in text and t.runs_log() == [] and t.entries() == before
    t.mp.delenv("CERTUS_KEY")
    t.mp.delenv("CERTUS_LEDGER_KEY")
    assert "rewritten from ledger entry" in t.ok("keys", "sync")
    assert "eve" not in (t.root / "trust.json").read_text()
    t.ok("verify")


def forge_trust_change(t: W, forgery: str) -> tuple[int, str, str]:
    """Append a trust change verify must reject, and make trust.json agree with it.

    Returns its ledger index, the failure verify must give, and the key it lets an attacker run with.
    """
    t.new_key("eve", "trainer", directory="other")
    attacker, at = str(t.home / "other/eve.key"), datetime.now(UTC)
    if forgery == "signed-by-trainer":
        t.new_key("bob", "trainer", "trainer")
        key, why = t.signer("bob"), "lacks role 'admin'"
    elif forgery == "signed-by-revoked-admin":
        t.new_key("carol", "admin", "admin")
        t.ok("keys", "revoke", "carol", "--reason", "left the team", "--admin-key", "alice")
        at = parse(payload(t.entries()[-1])["time"]) - timedelta(seconds=30)  # claims to precede its revocation
        key, why = t.signer("carol"), "comes after the revocation"
    else:  # an admin un-revokes a key
        t.new_key("bob", "trainer", "trainer")
        t.ok("keys", "revoke", "bob", "--reason", "laptop lost", "--admin-key", "alice")
        key, why, attacker = t.signer("alice"), "its revocation was removed or moved (revocations are permanent)", "bob"
    store = with_key(t.trust(), t.home / "other/eve.pub", ["trainer", "ledger", "admin"])
    for k in store["keys"] if forgery == "unrevokes" else ():
        k.pop("revoked_at", None)
        k.pop("revoked_reason", None)
    index = t.append(trust_change(store, key, at, "forged"))
    t.write_trust(store)
    return index, why, attacker


FORGERIES = ["signed-by-trainer", "signed-by-revoked-admin", "unrevokes"]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_trust_change_verify_rejects(t: W, forgery: str) -> None:
    index, why, _ = forge_trust_change(t, forgery)
    text = t.verify_fails()
    assert f"FAIL: ledger entry {index} (trust.changed" in text and why in text


@pytest.mark.parametrize("forgery", FORGERIES)
def test_repro_refuses_a_ledger_whose_trust_change_verify_rejects(t: W, forgery: str) -> None:
    _, _, attacker = forge_trust_change(t, forgery)
    before = len(t.entries())
    rc, text = t.certus("repro", "--key", attacker, "c.z=5")
    assert rc != 0 and t.runs_log() == [] and len(t.entries()) == before, text


# -- 4. rollback ------------------------------------------------------------------------------------


def test_rollback_of_runs_appended_since_the_last_verify(t: W) -> None:
    t.ok("verify")
    shutil.copytree(t.ledger, t.base / "ledger-before")
    size = len(t.entries())
    t.ok("repro", "c.z=5")  # an append: the remembered checkpoint moves with it, no verify needed
    shutil.rmtree(t.ledger)
    shutil.copytree(t.base / "ledger-before", t.ledger)  # entries, checkpoints, checkpoint and state of before
    text = t.verify_fails()
    assert f".certus/ledger: not consistent with the checkpoint this verifier saw before (size {size + 1}, " in text
    assert "entries were removed" in text
    (t.root / "runs.log").unlink()
    rc, text = t.certus("repro", "c.z=6")
    assert rc != 0 and "not consistent with the checkpoint this machine saw" in text and "nothing was run" in text
    assert t.runs_log() == [] and len(t.entries()) == size


def test_first_verify_says_rollback_was_not_checked(t: W) -> None:
    note = "this machine remembers no earlier checkpoint of this ledger, so a rollback or rewritten history " \
           "could NOT be checked"
    text = t.ok("verify")
    assert f"note: .certus/ledger: {note}" in text and "verification OK" in text
    assert note not in t.ok("verify")  # remembered from now on
    shutil.rmtree(t.home / "witness")
    rep = t.report()
    assert rep["ok"] and any(note in n for n in rep["notes"]), rep


# -- 5. local caches must not become signed claims ------------------------------------------------------


def statement(t: W, run_id: str, stage: str) -> dict[str, Any]:
    for line in t.bundle(run_id).read_bytes().splitlines():
        stmt = payload(line)
        if stmt["predicate"]["buildDefinition"]["externalParameters"]["stage"] == stage:
            return stmt
    raise AssertionError(f"no attestation for stage {stage} in run {run_id}")


def test_hand_edited_run_cache_is_not_signed(t: W) -> None:
    recs = [payload(e) for _, e in t.run_records()]
    b2, c1 = recs[1]["stages"]["b"]["outs"]["out/b.txt"], recs[0]["stages"]["c"]["outs"]["out/c.txt"]
    edited = 0
    for p in (t.root / ".certus/runs").rglob("*.json"):
        rec = json.loads(p.read_text())
        if rec.get("stage") == "b":
            if rec["outs"]["out/b.txt"]["digest"] == b2:  # b.y=2: another valid object, from a run that never was
                rec["outs"]["out/b.txt"]["digest"] = c1
            rec["run_id"] = "no-such-run"  # b.y=1: the true object, from a run that never was
            os.chmod(p, 0o644)
            p.write_text(json.dumps(rec))
            edited += 1
    assert edited == 2
    t.ok("repro", "b.y=2")
    new = payload(t.run_records()[-1][1])
    assert new["stages"]["b"]["state"] == "ran" and "b" in t.runs_log()  # not restored from the lie
    assert new["stages"]["b"]["outs"]["out/b.txt"] == b2 and "stage=b" in (t.root / "out/b.txt").read_text()
    t.ok("repro")
    new = payload(t.run_records()[-1][1])
    if new["stages"]["b"]["state"] == "restored":  # restored-from names the ledger's attestation, not the cache's
        [src] = [b for b in statement(t, new["run_id"], "b")["predicate"]["runDetails"]["byproducts"]
                 if b["name"] == "restored-from"]
        assert src["uri"] == f"certus:run/{recs[0]['run_id']}/b", src
    assert "no-such-run" not in t.bundle(new["run_id"]).read_text()
    t.ok("verify")


def forge_attested_run(t: W, run_id: str, source: dict[str, Any], stage: str, edit: Any) -> int:
    """A new run whose one attestation is ``source``'s for ``stage``, edited, re-signed by the trainer key."""
    stmt = statement(t, source["run_id"], stage)
    stmt["predicate"]["runDetails"]["metadata"]["invocationId"] = run_id
    edit(stmt)
    env = sign_envelope(STMT_TYPE, cj(stmt), [t.signer("alice")]).to_json_bytes()
    t.bundle(run_id).write_bytes(env + b"\n")
    return t.append(forged_run(
        t, t.signer("alice"), run_id, stages={stage: dict(source["stages"][stage], attestation=sha256(env))},
        attestations=[{"stage": stage, "sha256": sha256(env), "path": f".certus/provenance/{run_id}.dsse.jsonl"}],
        merkle_root=sha256(b"\x00" + env), config=source["config"], overrides=source["overrides"]))


@pytest.mark.parametrize("target", ["no-such-attestation", "another-stages-attestation"])
def test_forged_restored_from_is_named(t: W, target: str) -> None:
    run0, _, rec2 = (payload(e) for _, e in t.run_records())
    assert rec2["stages"]["b"]["state"] == "restored"
    if target == "no-such-attestation":
        ref_run, ref_sha = "ghost-run", "ab" * 32
    else:  # a real attestation in the ledger, of stage c: it does not attest out/b.txt
        ref_run, ref_sha = run0["run_id"], next(a["sha256"] for a in run0["attestations"] if a["stage"] == "c")
    by = [{"name": "restored-from", "uri": f"certus:run/{ref_run}/b", "digest": {"sha256": ref_sha}}]
    index = forge_attested_run(t, "forged-restore", rec2, "b",
                               lambda stmt: stmt["predicate"]["runDetails"].update(byproducts=by))
    text = failures_all_about(t.report(), f"ledger entry {index} (run forged-restore): attestation for stage 'b': "
                                          "restored-from")
    if target == "no-such-attestation":
        assert f"restored-from names run 'ghost-run' attestation {ref_sha[:16]}…, which no run record" in text
    else:
        assert "does not attest the restored outputs" in text


INJECTED = "python step.py e out/e.txt in.txt"
REDERIVE = f"attestation for stage 'e': attested cmd '{INJECTED}' is not what the committed spec and recorded " \
           "config resolve to"


def test_parse_cache_injection_is_never_signed_as_the_spec(t: W) -> None:
    shutil.rmtree(t.root / ".certus/tmp/spec", ignore_errors=True)
    t.ok("status")
    [cache] = (t.root / ".certus/tmp/spec").glob("*.json")
    blob = cache.read_bytes()
    head, _, body = blob.partition(b"\n") if blob[:1] != b"{" else (b"", b"", blob)  # keep any seal: no key
    doc = json.loads(body)
    [e] = [st for st in doc["stages"] if st["name"] == "e"]
    e["cmd"] = INJECTED
    cache.write_bytes(head + b"\n" * bool(head) + json.dumps(doc).encode())
    t.certus("repro")  # it may refuse, ignore the cache or run it; verify must never pass the injected command
    run_id = payload(t.run_records()[-1][1])["run_id"]
    lines = t.bundle(run_id).read_bytes().splitlines() if t.bundle(run_id).exists() else []
    if any(payload(ln)["predicate"]["buildDefinition"]["externalParameters"]["cmd"] == INJECTED for ln in lines):
        assert REDERIVE in t.verify_fails()
    else:
        t.ok("verify")


def test_attested_cmd_that_the_spec_does_not_derive(t: W) -> None:
    # what an injected parse cache (or a trainer key signing whatever it ran) puts in the record
    rec0 = payload(t.run_records()[0][1])
    index = forge_attested_run(t, "forged-cmd", rec0, "e", lambda stmt: stmt["predicate"]["buildDefinition"][
        "externalParameters"].update(cmd=INJECTED))
    text = failures_all_about(t.report(), f"ledger entry {index} (run forged-cmd): ")
    assert REDERIVE in text


# -- 6. unattested outputs; a run recorded exactly once ---------------------------------------------------


def _lock_out(t: W, stage: str, path: str) -> str | None:
    try:
        return json.loads((t.root / "certus.lock").read_text())["stages"][stage]["outs"][path]["digest"]
    except (OSError, ValueError, KeyError):
        return None


def _popen_repro(t: W, *args: str, sleep: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine", "-C", str(t.root), "repro", *args],
                            env=dict(os.environ, STEP_SLEEP=sleep), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _reap(p: subprocess.Popen[str]) -> None:
    """End the process group this test started (stages outlive a SIGKILLed coordinator)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.communicate(timeout=30)


def test_killed_coordinator_leaves_no_unattested_output(t: W) -> None:
    size, before = len(t.entries()), _lock_out(t, "a", "out/a.txt")
    p = _popen_repro(t, "-j", "1", "a.x=7", sleep="1")
    try:
        deadline = time.monotonic() + 60
        while _lock_out(t, "a", "out/a.txt") == before:
            assert p.poll() is None and time.monotonic() < deadline, "repro ended before stage a was locked"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)  # the coordinator only, as the OOM killer would
    finally:
        _reap(p)
    assert len(t.entries()) == size  # killed before its record reached the ledger
    digest = _lock_out(t, "a", "out/a.txt")
    text = t.verify_fails()  # no --artifacts: the lock alone says what must be attested
    assert f"FAIL: certus.lock: stage 'a': output out/a.txt ({digest[:23]}…) is not attested by any run in the " \
           "ledger" in text
    t.ok("repro", "a.x=7")
    new = payload(t.run_records()[-1][1])
    assert new["stages"]["a"]["state"] in ("ran", "restored") and new["stages"]["a"]["outs"]["out/a.txt"] == digest
    t.ok("verify")


CTRL_C_AFTER = textwrap.dedent("""
    import os, signal, sys
    import engine.provenance.ledger as ledger

    step, pressed = sys.argv[1], []
    real_open = ledger.Ledger.open.__func__

    def open_with_ctrl_c(cls, path, *, origin, create=True, _hook=None):
        def hook(name):
            if name == step and not pressed:
                pressed.append(name)
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C (once), right after the commit
        return real_open(cls, path, origin=origin, create=create, _hook=hook)

    ledger.Ledger.open = classmethod(open_with_ctrl_c)
    from engine.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("step", ["checkpoint", "state"])
def test_ctrl_c_after_the_append_records_the_run_once(t: W, step: str) -> None:
    before = [payload(e)["run_id"] for _, e in t.run_records()]
    p = subprocess.run([sys.executable, "-c", CTRL_C_AFTER, step, "-C", str(t.root), "repro", "c.z=7"],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    after = [payload(e)["run_id"] for _, e in t.run_records()]
    assert after[:len(before)] == before and len(after) == len(before) + 1, (after, p.stderr)
    t.ok("verify")


def test_run_recorded_twice_is_named(t: W) -> None:
    rec = payload(t.run_records()[-1][1])
    index = t.append(forged_run(t, t.signer("alice"), rec["run_id"], stages=rec["stages"],
                                attestations=rec["attestations"], merkle_root=rec["merkle_root"]))
    failures_all_about(t.report(), f"ledger entry {index}")


def test_verify_during_a_repro_never_sees_a_torn_tail(t: W) -> None:
    p = _popen_repro(t, "a.x=9", sleep="0.3")
    reports = []
    try:
        deadline = time.monotonic() + 10  # verify in a loop for at most ~10 s, then let the repro finish
        while time.monotonic() < deadline and (p.poll() is None or not reports):
            reports.append(t.certus("verify", "--json")[1])
        _, err = p.communicate(timeout=180)
    finally:
        if p.returncode is None:
            _reap(p)
    assert p.returncode == 0 and len(reports) >= 2, err
    for text in reports:  # unattested lock outputs mid-run are fair to report; a torn tail or a crash is not
        assert "torn tail" not in text and "Traceback" not in text, text
    t.ok("verify")


# -- 1. dataset roles follow the kind of record ------------------------------------------------------------

DS_PIPELINE = """\
    stages:
      curate:
        cmd: python step.py curate data/cur.csv data/raw/p.csv
        deps: [step.py]
        datasets: [praw]
        outs: [data/cur.csv]
        writable: [runs.log]
        register:
          pcur: data/cur.csv
      train:
        cmd: python step.py train model.txt data/cur.csv
        deps: [step.py, data/cur.csv]
        outs: [model.txt]
        writable: [runs.log]
"""
USE_EXTRA = """\
  use:
    cmd: python step.py use out/use.txt data/extra.csv
    deps: [step.py]
    datasets: [pextra]
    outs: [out/use.txt]
    writable: [runs.log]
"""
ROWS = "id,mass,species\n" + "".join(f"{i},{3000 + i},{'adelie' if i % 2 else 'gentoo'}\n" for i in range(20))
ADD = ["--sensitivity", "internal", "--retention", "365d", "--license", "CC0-1.0"]


@pytest.fixture(scope="module")
def ds_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """steward (data-steward) registers praw, bob (approver) approves it, ci (trainer, ledger, admin) runs."""
    files = {"step.py": STEP, ".gitignore": GITIGNORE + "/data/cur.csv\n/model.txt\n/out/\n",
             "conf/config.yaml": "certus:\n  pipeline: p\n", "pipelines/p.yaml": DS_PIPELINE,
             "data/raw/p.csv": ROWS}
    keys = [("steward", "data-steward", ["data-steward"]), ("bob", "approver", ["approver"]),
            ("ci", "trainer", ["trainer", "ledger", "admin"])]
    return _template(tmp_path_factory.mktemp("holes-ds"), files, keys, [
        ["dataset", "add", "data/raw/p.csv", "--name", "praw", "--source", "field survey", *ADD, "--init"],
        ["dataset", "approve", "praw", "--key", "bob"], ["repro"]])


@pytest.fixture
def d(ds_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> W:
    return _copy(ds_template, tmp_path, monkeypatch, capsys)


def manifest_of(d: W, name: str, version: int = 1) -> tuple[Path, dict[str, Any]]:
    [(p, man)] = [(p, payload(p.read_bytes())) for p in (d.root / ".certus/datasets" / name).glob("*.manifest.json")
                  if payload(p.read_bytes())["version"] == version]
    return p, man


def forge_dataset(d: W, name: str, path: str, data: str, kind: str, **fields: Any) -> str:
    """A manifest for ``data`` at ``path`` signed by the CI (trainer) key, logged by a ``kind`` event it signs."""
    (d.root / path).parent.mkdir(parents=True, exist_ok=True)
    (d.root / path).write_text(data)
    digest = "sha256:" + sha256(data.encode())
    man = dict(manifest_of(d, "praw")[1], id=digest, name=name, path=path, dvc=None,
               registered=stamp(datetime.now(UTC), "%Y-%m-%dT%H:%M:%SZ"), **fields)
    raw = sign_envelope(MANIFEST_TYPE, cj(man), [d.signer("ci")]).to_json_bytes()
    rel = f".certus/datasets/{name}/{digest[7:19]}.manifest.json"
    (d.root / rel).parent.mkdir(parents=True, exist_ok=True)
    (d.root / rel).write_bytes(raw)
    event = {"_type": "https://certus.dev/Event/v1", "kind": kind, "time": man["registered"],
             "subject": f"{name}@{digest[7:19]}", "details": {"id": digest, "name": name, "version": man["version"],
                                                             "path": path, "manifest_sha256": sha256(raw)}}
    d.append(sign_envelope(EVENT_TYPE, cj(event), [d.signer("ci")]).to_json_bytes(), ledger_key="ci")
    return rel


def refused(d: W, rel: str, rule: str, *targets: str) -> None:
    before = len(d.entries())
    rc, text = d.certus("repro", *targets)
    [line] = [ln for ln in text.splitlines() if ln.startswith("certus: error:")]
    assert rc != 0 and f"manifest {rel}" in line and rule in line, text
    assert d.runs_log() == [] and all(ptype(e) != RUN_TYPE for e in d.entries()[before:])
    rep = d.report()
    assert any(rel in f and rule in f for f in rep["failures"]), rep["failures"]


@pytest.mark.parametrize("variant", ["derived-kind", "inherited-source", "trainer-signed-source"])
def test_trainer_key_publishes_a_new_source_version(d: W, variant: str) -> None:
    run_id = payload(d.run_records()[-1][1])["run_id"]
    fields, kind, rule = {
        "derived-kind": ({"produced_by": {"run": run_id, "stage": "curate"}, "approval": "inherited"},
                         "dataset.derived", "mixes source and derived versions"),
        "inherited-source": ({"approval": "inherited"}, "dataset.registered",
                             "a source dataset needs an approver's approval"),
        "trainer-signed-source": ({}, "dataset.registered", "lacks role 'data-steward'"),
    }[variant]
    rel = forge_dataset(d, "praw", "data/raw/p.csv", ROWS + "99,1,adelie\n", kind, version=2, parents=[], **fields)
    refused(d, rel, rule)


def test_derived_dataset_whose_producing_run_is_not_in_the_ledger(d: W) -> None:
    parent = manifest_of(d, "praw")[1]["id"][7:19]
    rel = forge_dataset(d, "pextra", "data/extra.csv", ROWS, "dataset.derived", version=1, approval="inherited",
                        parents=[f"praw@{parent}"], produced_by={"run": "ghost-run", "stage": "curate"})
    with open(d.root / "pipelines/p.yaml", "a") as f:
        f.write(USE_EXTRA)
    refused(d, rel, "no attestation in the ledger shows stage 'curate' of run 'ghost-run' producing data/extra.csv",
            "use")


def test_revoked_approver_backdates_an_approval(d: W) -> None:
    (d.root / "data/raw/p.csv").write_text(ROWS + "98,2,gentoo\n")
    d.ok("dataset", "add", "data/raw/p.csv", "--name", "praw", "--source", "field survey, second batch", *ADD)
    d.ok("keys", "revoke", "bob", "--reason", "laptop lost", "--admin-key", "ci")
    revoked = parse(payload(d.entries()[-1])["time"])
    path, man = manifest_of(d, "praw", 2)
    approval = {"_type": "https://certus.dev/DatasetApproval/v1", "dataset": man["id"], "name": "praw", "version": 2,
                "manifest_sha256": sha256(path.read_bytes()), "approver": "bob", "policy_refs": [],
                "approved_at": stamp(revoked - timedelta(minutes=1), "%Y-%m-%dT%H:%M:%SZ")}
    Path(str(path).replace(".manifest.json", ".approval.json")).write_bytes(
        sign_envelope(APPROVAL_TYPE, cj(approval), [d.signer("bob")]).to_json_bytes())
    rep = d.report()
    assert any("approval" in f and ("no ledger approval event" in f or "revoked" in f) for f in rep["failures"])
    rc, text = d.certus("repro")
    assert rc != 0 and "praw" in text and d.runs_log() == [], text
