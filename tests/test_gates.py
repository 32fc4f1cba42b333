"""Evaluation gates (issue 11): policy thresholds from Hydra config, signed Test Result statements in the
ledger, approver waivers, and enforcement of ``requires_gate``, on a real signed workspace (git, Hydra,
subprocess stages, Ed25519 keys: alice trainer+ledger+admin, bob approver)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace

from engine.cli.main import main
from engine.provenance.ledger import Ledger

pytestmark = pytest.mark.integration

EVAL = '''
import json, os
p = json.load(open(os.environ["CERTUS_PARAMS"]))["m"]
model = open("out/model.txt").read()
acc = "NaN" if p["nan"] else repr(p["accuracy"])
body = '{"accuracy": %s, "n_test": 100, "model": %s, "fairness": {"dp_difference": %r}}' % (
    acc, json.dumps(model), p["dp"])
if p["drop"]:
    body = '{"fairness": {"dp_difference": %r}}' % p["dp"]
open("out/eval.json", "w").write(body)
'''
TRAIN = '''
import json, os
p = json.load(open(os.environ["CERTUS_PARAMS"]))
open("out/model.txt", "w").write("model seed %s" % p["train"]["seed"])
'''
CONF = '''\
defaults:
  - policy: default
  - _self_
certus: {pipeline: p}
train: {seed: 1}
m: {accuracy: 0.95, dp: 0.05, nan: false, drop: false}
'''
POLICY = '''\
release:
  accuracy: {min: 0.90, hard_limit: 0.80}
  dp_difference: {metric: fairness.dp_difference, max: 0.10, hard_limit: 0.30}
'''
PIPE = '''\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train]
    outs: [out/model.txt]
  evaluate:
    cmd: python evalm.py
    deps: [evalm.py, out/model.txt]
    params: [m]
    metrics: [out/eval.json]
  package:
    cmd: python step.py package out/pkg.txt out/model.txt
    deps: [step.py, out/model.txt, out/eval.json]
    outs: [out/pkg.txt]
    writable: [runs.log]
    requires_gate: release
gates:
  release: {after: evaluate, model: [out/model.txt]}
'''


class G:
    def __init__(self, ws: Workspace, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.ws, self.home, self.capsys = ws, home, capsys

    def run(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main(["-C", str(self.ws.root), *args])
        out = self.capsys.readouterr()
        self.out = out.out
        return rc, out.out + out.err

    def ok(self, *args: str) -> str:
        rc, text = self.run(*args)
        assert rc == 0, (args, text)
        return text

    def fails(self, *args: str) -> str:
        rc, text = self.run(*args)
        assert rc != 0, (args, text)
        assert "Traceback" not in text
        return text

    def ledger(self) -> Ledger:
        origin = (self.ws.root / ".certus/ledger/checkpoint").read_text().splitlines()[0]
        return Ledger.open(self.ws.root / ".certus/ledger", origin=origin, create=False)

    def entries(self) -> list[bytes]:
        return list(self.ledger().entries())

    def gate_results(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for i, raw in enumerate(self.entries()):
            env = json.loads(raw)
            if env["payloadType"] == "application/vnd.in-toto+json":
                out.append((i, json.loads(base64.b64decode(env["payload"]))))
        return out

    def last_run(self) -> str:
        return self.gate_results()[-1][1]["predicate"]["configuration"][1]["annotations"]["run_id"]

    def show(self, *args: str) -> list[dict[str, Any]]:
        self.ok("gate", "show", *args, "--json")
        return json.loads(self.out)


@pytest.fixture
def g(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> G:
    home = tmp_path / "certus_home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "gates")
    for var in ("CERTUS_KEY", "CERTUS_LEDGER_KEY"):
        monkeypatch.delenv(var, raising=False)
    ws.write("conf/config.yaml", CONF)
    ws.write("conf/policy/default.yaml", POLICY)
    ws.write("pipelines/p.yaml", PIPE)
    ws.write("evalm.py", EVAL)
    ws.write("train.py", TRAIN)
    t = G(ws, home, capsys)
    t.ok("keys", "generate", "--name", "alice", "--role", "trainer")
    t.ok("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger", "--role", "admin")
    t.ok("keys", "generate", "--name", "bob", "--role", "approver")
    t.ok("keys", "trust", str(home / "keys/bob.pub"), "--role", "approver")
    ws.commit("gated pipeline")
    return t


def test_pass_runs_the_gated_stage_and_signs_a_result(g: G) -> None:
    text = g.ok("repro")
    assert "gate 'release': PASSED" in text
    assert g.ws.runs() == ["package"]
    (_, stmt), = g.gate_results()
    assert stmt["predicate"]["result"] == "PASSED"
    assert stmt["predicate"]["passedTests"] == ["accuracy", "dp_difference"]
    assert {s["name"] for s in stmt["subject"]} == {"out/eval.json", "out/model.txt"}
    detail = stmt["predicate"]["configuration"][1]["annotations"]
    acc = next(m for m in detail["metrics"] if m["name"] == "accuracy")
    assert (acc["value_text"], acc["comparator"], acc["threshold"], acc["hard_limit"]) == ("0.95", "min", 0.9, 0.8)
    assert g.ok("gate", "check") and "OK" in g.out
    g.ok("verify")
    g.ok("show", "latest")
    assert "gate release: PASSED" in g.out


def test_needs_review_blocks_then_a_waiver_unblocks(g: G) -> None:
    text = g.fails("repro", "policy.release.accuracy.min=0.99")
    assert "gate 'release': WARNED" in text
    line = next(ln for ln in text.splitlines() if "requires gate 'release'" in ln and "certus waive" in ln)
    assert "metric 'accuracy'" in line
    assert g.ws.runs() == []
    run = g.last_run()
    assert g.run("gate", "check", run)[0] == 1
    text = g.ok("waive", run, "--gate", "release", "--metric", "accuracy", "--reason", "small test set; accepted",
                "--expires", "2099-01-31", "--key", "bob")
    assert "waiver for run" in text
    n = len(g.gate_results())
    text = g.ok("repro", "policy.release.accuracy.min=0.99")
    assert g.ws.runs() == ["package"]
    assert len(g.gate_results()) == n  # content-addressed: the same inputs are not evaluated again
    rc, text = g.run("verify")
    assert rc == 0, text
    assert "waiver by key" in text and "covers gate 'release' metric 'accuracy'" in text


def test_fail_beyond_hard_limit_is_not_waivable(g: G) -> None:
    text = g.fails("repro", "m.accuracy=0.7")
    assert "gate 'release': FAILED" in text and "no waiver is accepted" in text
    run = g.last_run()
    text = g.fails("waive", run, "--gate", "release", "--metric", "accuracy", "--reason", "x", "--expires",
                   "2099-01-01", "--key", "bob")
    assert "beyond the hard limit" in text and len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("override, why", [("m.nan=true", "is NaN"), ("m.drop=true", "missing")])
def test_missing_or_nan_metric_fails(g: G, override: str, why: str) -> None:
    text = g.fails("repro", override)
    assert "gate 'release': FAILED" in text and why in text


def test_waiver_refusals(g: G) -> None:
    g.fails("repro", "policy.release.accuracy.min=0.99")
    run = g.last_run()

    def refused(*extra: str, metric: str = "accuracy", key: str = "bob", expires: str = "2099-01-01",
                run_id: str = run) -> str:
        text = g.fails("waive", run_id, "--gate", "release", "--metric", metric, "--reason", "r", "--expires", expires,
                       "--key", key, *extra)
        assert len(text.strip().splitlines()) == 1, text
        return text

    assert "in the past" in refused(expires="2001-01-01")
    assert "approver" in refused(key="alice")  # alice has no approver role
    assert "passed" in refused(metric="dp_difference")
    assert "no result for gate" in g.fails("waive", run, "--gate", "other", "--metric", "accuracy", "--reason", "r",
                                           "--expires", "2099-01-01", "--key", "bob")
    assert "is not run" in refused("--result", "0" * 64)
    assert "no gate result" in refused(run_id="20000101T000000Z-nope")
    # the run's own signer, even when it also holds the approver role
    g.ok("keys", "trust", str(g.home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger", "--role", "admin",
         "--role", "approver")
    assert "signed the run" in refused(key="alice")
    # a gate that passed
    g.ok("repro")
    assert "nothing to waive" in refused(run_id=g.last_run())


def test_param_change_invalidates_gate_and_waiver(g: G) -> None:
    g.fails("repro", "policy.release.accuracy.min=0.99")
    g.ok("waive", g.last_run(), "--gate", "release", "--metric", "accuracy", "--reason", "ok", "--expires",
         "2099-01-01", "--key", "bob")
    g.ok("repro", "policy.release.accuracy.min=0.99")
    g.ws.clear_runs()
    text = g.fails("repro", "policy.release.accuracy.min=0.99", "train.seed=2")  # a new model: a new gate result
    assert "gate 'release': WARNED" in text and g.ws.runs() == []
    assert "after this run, waive it" in text


def test_baseline_comparison(g: G, ws: Workspace) -> None:
    ws.write("conf/policy/default.yaml", POLICY.replace("hard_limit: 0.80}", "hard_limit: 0.80, min_abs_change: 0.01}"))
    ws.commit("baseline")
    g.ok("repro")  # first: no baseline
    detail = g.gate_results()[-1][1]["predicate"]["configuration"][1]["annotations"]
    assert "no baseline yet" in detail["metrics"][0]["reason"]
    text = g.fails("repro", "m.accuracy=0.955")  # +0.005 < 0.01 against the passed 0.95
    assert "min_abs_change" in text
    text = g.ok("repro", "m.accuracy=0.97")
    assert "gate 'release': PASSED" in text


def test_tampered_gate_result_and_waiver_caught_by_verify(g: G) -> None:
    from engine.adapters.keys import load_signer
    from engine.core.canonical import canonical_bytes
    from engine.provenance.dsse import sign_envelope
    from engine.provenance.recorder import NoteSignerAdapter

    g.fails("repro", "policy.release.accuracy.min=0.99")
    run = g.last_run()
    g.ok("waive", run, "--gate", "release", "--metric", "accuracy", "--reason", "ok", "--expires", "2099-01-01",
         "--key", "bob")
    g.ok("verify")
    alice, bob = load_signer(g.home / "keys/alice.key"), load_signer(g.home / "keys/bob.key")
    led = g.ledger()
    entries = g.entries()
    waiver = json.loads(base64.b64decode(json.loads(entries[-1])["payload"]))
    # a waiver re-signed by bob with a changed observed value, and one for a forged (alice-signed, altered) result
    forged = dict(waiver, observed="0.5")
    led.append(sign_envelope("application/vnd.certus.waiver+json", canonical_bytes(forged), [bob]).to_json_bytes(),
               NoteSignerAdapter(alice, name=led.origin))
    (_, stmt), = g.gate_results()[-1:]
    stmt["predicate"]["result"] = "PASSED"
    led.append(sign_envelope("application/vnd.in-toto+json", canonical_bytes(stmt), [alice]).to_json_bytes(),
               NoteSignerAdapter(alice, name=led.origin))
    text = g.fails("verify")
    assert "observed value" in text or "observed" in text
    assert "disagree" in text or "is not the detail" in text


def test_gate_results_verify_with_securesystemslib_and_parse_with_in_toto(g: G) -> None:
    json_format = pytest.importorskip("google.protobuf.json_format")
    from in_toto_attestation.predicates.test_result.v0 import test_result_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from securesystemslib.dsse import Envelope as SEnvelope
    from securesystemslib.signer import SSlibKey

    g.fails("repro", "policy.release.accuracy.min=0.99")
    from engine.adapters.keys import load_public_key

    public = load_public_key(g.home / "keys/alice.pub").public_key
    key = SSlibKey(public.keyid, "ed25519", "ed25519", {"public": public.raw.hex()})
    (i, stmt), = g.gate_results()
    env = SEnvelope.from_dict(json.loads(g.entries()[i]))
    env.verify([key], 1)
    pb = json_format.Parse(json.dumps(stmt), statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    tr = json_format.Parse(json.dumps(stmt["predicate"]), test_result_pb2.TestResult())
    assert tr.result == "WARNED" and list(tr.warned_tests) == ["accuracy"]


def test_spec_errors_are_one_line(g: G, ws: Workspace) -> None:
    ws.write("pipelines/p.yaml", PIPE.replace("after: evaluate", "after: nope"))
    text = g.fails("repro")
    assert "pipelines/p.yaml:" in text and "gate 'release'" in text and "no stage 'nope'" in text
    ws.write("pipelines/p.yaml", PIPE.replace("requires_gate: release", "requires_gate: other"))
    assert "field 'requires_gate'" in g.fails("repro")
    ws.write("pipelines/p.yaml", PIPE)
    ws.write("conf/policy/default.yaml", "release:\n  accuracy: {min: 0.9, max: 1}\n")
    assert "policy.release.accuracy: give exactly one comparator" in g.fails("repro")


# -- packaging is gated (issue 12 item 2): the model card cites the signed gate result and any waiver ----------------


def _releaser(g: G) -> None:
    g.ok("keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256")
    g.ok("keys", "trust", str(g.home / "keys/rel.pub"), "--role", "releaser")


def test_packaging_needs_a_gate_that_passed_or_is_waived(g: G) -> None:
    _releaser(g)
    g.fails("repro", "policy.release.accuracy.min=0.99")  # needs review: the gated stage did not run
    run = g.last_run()
    text = g.fails("package", "out/model.txt", "--name", "m", "--version", "1.0.0", "--key", "rel", "--run", run,
                   "--out", "dist")
    assert f"run {run}: not packaged: gate 'release' needs review: metric 'accuracy'" in text
    assert not (g.ws.root / "dist/m-1.0.0").exists()
    g.ok("waive", run, "--gate", "release", "--metric", "accuracy", "--reason", "small test set; accepted",
         "--expires", "2099-01-31", "--key", "bob")
    g.ok("package", "out/model.txt", "--name", "m", "--version", "1.0.0", "--key", "rel", "--run", run,
         "--out", "dist")
    card = json.loads((g.ws.root / "dist/m-1.0.0/model_card.json").read_text())
    gates = card["gates"]
    assert gates["status"] == "waived" and [r["gate"] for r in gates["results"]] == ["release"]
    assert gates["results"][0]["result"] == "WARNED" and len(gates["results"][0]["sha256"]) == 64
    [w] = gates["waivers"]
    assert w["metric"] == "accuracy" and w["approver"] and len(w["sha256"]) == 64
    assert "waiver for `accuracy`" in (g.ws.root / "dist/m-1.0.0/MODEL_CARD.md").read_text()
    g.ok("bundle", "verify", "dist/m-1.0.0")


def test_packaging_refuses_a_failed_gate(g: G) -> None:
    _releaser(g)
    g.fails("repro", "policy.release.accuracy.min=0.99", "policy.release.accuracy.hard_limit=0.98")
    run = g.last_run()
    text = g.fails("package", "out/model.txt", "--name", "m", "--version", "1.0.0", "--key", "rel", "--run", run)
    assert "not packaged: gate 'release' failed: metric 'accuracy'" in text and "no waiver is accepted" in text


def test_run_record_covers_its_gate_results(g: G) -> None:
    """Issue 11's format: the run record lists each gate result's envelope digest, so verify checks the gate
    result through the record's signature; a gate result whose bytes differ from the listed ones is checked on
    its own signature (and caught), and a listed result missing from the ledger is named."""
    import hashlib
    import shutil

    from engine.adapters.keys import load_signer
    from engine.core.canonical import canonical_bytes
    from engine.provenance.dsse import sign_envelope
    from engine.provenance.recorder import NoteSignerAdapter

    g.ok("repro")
    entries = g.entries()
    (gi, _), = g.gate_results()
    run_env = json.loads(entries[gi - 1])
    record = json.loads(base64.b64decode(run_env["payload"]))
    assert record["gate_results"] == [{"gate": "release", "sha256": hashlib.sha256(entries[gi]).hexdigest()}]
    g.ok("verify", "--json")
    checked = json.loads(g.out)["checked"]
    # the gate result and each stage attestation the record lists: their bytes are what its verified signature covers
    assert checked["signatures covered by their run record's"] == 1 + len(record["attestations"]) > 1
    assert checked["gate results"] == 1
    g.ok("verify", "--json", "--every-signature")
    assert "signatures covered by their run record's" not in json.loads(g.out)["checked"]

    # the same gate result with its signature bytes damaged: no longer the bytes the record lists -> checked alone
    alice = load_signer(g.home / "keys/alice.key")
    bad = json.loads(entries[gi])
    sig = base64.b64decode(bad["signatures"][0]["sig"])
    bad["signatures"][0]["sig"] = base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    forged = [*entries[:gi], json.dumps(bad, separators=(",", ":")).encode(), *entries[gi + 1:]]
    # and a run record (alice's, so its signature is good) that lists a gate result the ledger does not hold
    ghost = dict(record, run_id="ghost", attestations=[], stages={}, gate_results=[{"gate": "release",
                                                                                  "sha256": "ab" * 32}])
    forged.append(sign_envelope(run_env["payloadType"], canonical_bytes(ghost), [alice]).to_json_bytes())
    ldir = g.ws.root / ".certus/ledger"
    origin = g.ledger().origin
    shutil.rmtree(ldir)
    Ledger.open(ldir, origin=origin).append_many(forged, NoteSignerAdapter(alice, name=origin))
    text = g.fails("verify")
    assert f"ledger entry {gi} (gate result): signature keyid" in text, text
    assert f"lists gate result {hashlib.sha256(entries[gi]).hexdigest()[:16]}… (gate 'release'), which does " \
           "not follow it" in text, text
    assert "lists gate result abababababababab… (gate 'release'), which does not follow it" in text, text
