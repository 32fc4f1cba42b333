"""Verified deployment (issue 12): release records, the chain check before deploy, the SLSA VSA, the registry
(versions, aliases, rollback), serialized and crash-safe deploys — on the real reference lifecycle (Palmer
Penguins: DVC-tracked raw data, a data steward, an approver, derived datasets, the release gate), with real
ECDSA releaser and Ed25519 deployer keys and real subprocesses for the concurrency and kill -9 cases.

The lifecycle is built once per module (bootstrap, repro, package 1.0.0); each test works on its own copy.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.cli.main import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BUNDLE = "dist/penguin-classifier-1.0.0"
BIN = os.path.dirname(sys.executable)


class W:
    """A copy of the packaged lifecycle: its workspace and its CERTUS_HOME."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.home, self.capsys = root / "ws", root / "home", capsys

    def run(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main(["-C", str(self.root), *args])
        out = self.capsys.readouterr()
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

    def proc(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "engine", "-C", str(self.root), *args], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})

    def ledger_payloads(self) -> list[tuple[str, dict[str, Any]]]:
        from engine.provenance.ledger import Ledger

        origin = (self.root / ".certus/ledger/checkpoint").read_text().splitlines()[0]
        out = []
        for raw in Ledger.open(self.root / ".certus/ledger", origin=origin, create=False).entries():
            env = json.loads(raw)
            out.append((env["payloadType"], json.loads(base64.b64decode(env["payload"]))))
        return out

    def show(self, ref: str) -> dict[str, Any]:
        self.capsys.readouterr()
        assert main(["-C", str(self.root), "registry", "show", ref, "--json"]) == 0
        return json.loads(self.capsys.readouterr().out)


def _env(home: Path) -> dict[str, str]:
    return {"CERTUS_HOME": str(home), "CERTUS_KDF_FAST": "1"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("lifecycle")
    ws, home = base / "ws", base / "home"
    ws.mkdir()
    for d in ("conf", "pipelines", "stages"):
        shutil.copytree(REPO / d, ws / d, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, **_env(home), "HOME": str(base), "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@e", "PATH": BIN + os.pathsep + os.environ["PATH"]}

    def sh(*cmd: str) -> str:
        p = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        return p.stdout

    certus = [sys.executable, "-m", "engine"]
    sh("git", "init", "-q")
    (ws / ".gitignore").write_text(".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/lock\n"
                                   "registry/\ndist/\n")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "lifecycle")
    sh(sys.executable, "stages/bootstrap.py")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "governance")
    sh(*certus, "repro")
    sh(*certus, "keys", "generate", "--name", "rel", "--role", "releaser", "--type", "ecdsa-p256", "--unencrypted")
    sh(*certus, "keys", "trust", str(home / "keys/rel.pub"), "--role", "releaser")
    sh(*certus, "keys", "generate", "--name", "dep", "--role", "deployer", "--unencrypted")
    sh(*certus, "keys", "trust", str(home / "keys/dep.pub"), "--role", "deployer")
    assert (ws / BUNDLE / "model.sig").is_file()  # the pipeline's `packages:` step released 1.0.0 after the gate
    return base


@pytest.fixture
def w(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> W:
    shutil.copytree(template, tmp_path / "c", symlinks=True)
    t = W(tmp_path / "c", capsys)
    for k, v in _env(t.home).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path / "c"))
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ["PATH"])  # stages run this interpreter's `python`
    for var in ("CERTUS_KEY", "CERTUS_LEDGER_KEY", "CERTUS_CRASH_AT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(t.root)
    return t


def _show(w: W, ref: str) -> dict[str, Any]:
    return w.show(ref)


# -- the happy path ------------------------------------------------------------------------------------------------


def test_deploy_verifies_the_chain_registers_and_records_a_vsa(w: W) -> None:
    card = json.loads((w.root / BUNDLE / "model_card.json").read_text())
    # the step's serving config named reference data: the drift reference is signed into the bundle
    assert json.loads((w.root / BUNDLE / "reference.json").read_text())["features"]
    kinds = {a["event"] for a in card["dataset_approvals"]}
    assert kinds == {"dataset.registered", "dataset.derived"}  # raw data approved; curated/split inherit
    text = w.ok("deploy", BUNDLE, "--alias", "production", "--key", "dep")
    assert "deployed penguin-classifier version 1 as 'production'" in text
    v = _show(w, "penguin-classifier@production")
    assert v["number"] == 1 and v["aliases"] == ["production"] and v["bundle_version"] == "1.0.0"
    assert (Path(v["path"]) / "model/model.pkl").read_bytes() == (w.root / "models/model.pkl").read_bytes()
    payloads = w.ledger_payloads()
    release = [p for t, p in payloads if t == "application/vnd.certus.release+json"]
    assert len(release) == 1 and release[0]["bundle"]["root_sha256"] == v["bundle_root"]
    assert {d["dataset"].split("@")[0] for d in release[0]["datasets"]} == {
        "penguins-raw", "penguins-curated", "penguins-split"}
    vsas = [p for t, p in payloads if t == "application/vnd.in-toto+json"
            and p["predicateType"] == "https://slsa.dev/verification_summary/v1"]
    assert len(vsas) == 1
    vsa = vsas[0]
    assert vsa["subject"][0]["digest"]["sha256"] == v["bundle_root"]
    assert vsa["predicate"]["verificationResult"] == "PASSED"
    assert len(vsa["predicate"]["inputAttestations"]) >= 6  # release, run, attestation, gate, datasets...
    # the independent parsers accept the VSA: in-toto Statement v1 and the SLSA VSA v1 protobuf schema
    from google.protobuf import json_format
    from in_toto_attestation.predicates.vsa.v1 import vsa_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    Statement.copy_from_pb(json_format.Parse(json.dumps(vsa), statement_pb2.Statement())).validate()
    # The library's VSA v1 proto (0.9.x) disagrees with the SLSA spec, which is authoritative
    # (in-toto/attestation#425, fixed by #429): it has verifiedLevels as one string, not a list, and no
    # verifier.version. Certus follows the spec; everything else must parse strictly in the proto.
    pred = dict(vsa["predicate"])
    assert isinstance(pred.pop("verifiedLevels"), list)
    pred["verifier"] = {"id": pred["verifier"]["id"]}
    json_format.ParseDict(pred, vsa_pb2.VerificationSummary())  # unknown fields or wrong types would raise
    assert set(vsa["predicate"]) == {"verifier", "timeVerified", "resourceUri", "policy", "inputAttestations",
                                     "verificationResult", "verifiedLevels"}  # the spec's field names
    w.ok("verify")
    hist = w.ok("registry", "history", "penguin-classifier")
    assert "registered version 1" in hist and "moved 'production' -> version 1" in hist and "dep:" in hist


def test_alias_move_and_rollback(w: W) -> None:
    w.ok("deploy", BUNDLE, "--alias", "production", "--key", "dep")
    w.ok("repro", "model=gbt", "package.version=1.1.0")  # the pipeline packages and releases 1.1.0
    w.ok("deploy", "dist/penguin-classifier-1.1.0", "--alias", "staging", "--key", "dep")
    w.ok("deploy", "dist/penguin-classifier-1.1.0", "--alias", "production", "--key", "dep")
    assert _show(w, "penguin-classifier@production")["number"] == 2
    assert _show(w, "penguin-classifier@staging")["number"] == 2
    assert _show(w, "penguin-classifier@1")["bundle_version"] == "1.0.0"
    text = w.ok("deploy", "--rollback", "penguin-classifier", "--alias", "production", "--key", "dep")
    assert "rolled back penguin-classifier version 1 as 'production' (was 2)" in text
    assert _show(w, "penguin-classifier@production")["number"] == 1
    assert _show(w, "penguin-classifier@staging")["number"] == 2
    hist = w.ok("registry", "history", "penguin-classifier")
    assert "rolled back 'production' -> version 1 (was 2)" in hist
    w.ok("registry", "list")
    w.ok("verify")
    # staging named nothing before version 2: nothing to roll back to
    text = w.fails("deploy", "--rollback", "penguin-classifier", "--alias", "staging", "--key", "dep")
    assert "alias 'staging' named no version before version 2; nothing to roll back to" in text


# -- every broken link refuses the deploy, named, and installs nothing -------------------------------------------


def _forge(w: W, key: str, *, version: str, run: str = "latest", bundle: str | None = None,
           datasets: Any = None, gates: tuple[dict[str, Any], ...] | None = None) -> str:
    """Package and log a release record the way `certus package` does, but skipping its refusals (the
    releaser's trust check, the gate check, missing approvals): what a careless or hostile releaser could
    put in the ledger. Returns the bundle directory."""
    from engine.adapters.release_keys import load_ecdsa_signer
    from engine.provenance.recorder import Provenance
    from engine.release.bundle import PackageRequest, build_bundle
    from engine.release.package import standing_gates, training_section
    from engine.release.publish import gather, release_record
    from engine.store.workspace import Workspace

    signer = load_ecdsa_signer(str(w.home / "keys" / f"{key}.key"))
    prov = Provenance(Workspace(str(w.root)))
    training = training_section(prov, run)
    ev = gather(prov, training, "models/model.pkl")
    if datasets is not None:
        ev = type(ev)(ev.run, ev.artifact, ev.artifact_digest, ev.files, ev.models, datasets(ev.datasets))
    if bundle is None:
        built = build_bundle(PackageRequest(model="models/model.pkl", name="penguin-classifier", version=version,
                                            training=training), signer)
    else:
        from engine.release.bundle import BuiltBundle
        from engine.release.oms import parse_bundle, parse_statement

        st = parse_statement(parse_bundle((Path(bundle) / "model.sig").read_bytes()).envelope.payload)
        built = BuiltBundle(Path(bundle), st.subject_digest, st.resources)
    if gates is None:
        gates = standing_gates(prov, training["run_id"])
    record = release_record(ev, built, "penguin-classifier", version, signer.keyid,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), gates)
    prov._signers["releaser"] = signer  # no trust check: the deploy side must catch it
    from engine.provenance.release_records import RELEASE_TYPE

    prov.append_records([(RELEASE_TYPE, record.to_dict(), "releaser")])
    return str(built.path)


def _refused(w: W, bundle: str, *needles: str) -> str:
    before = sorted(p.name for p in (w.root / "registry").glob("*/*")) if (w.root / "registry").exists() else []
    text = w.fails("deploy", bundle, "--alias", "production", "--key", "dep")
    assert "refused:" in text, text
    for n in needles:
        assert n in text, (n, text)
    after = sorted(p.name for p in (w.root / "registry").glob("*/*")) if (w.root / "registry").exists() else []
    assert after == before  # nothing installed
    return text


@pytest.mark.parametrize("case", ["weight byte", "extra file", "model card", "manifest"])
def test_tampered_bundle_refused_and_named(w: W, case: str) -> None:
    b = w.root / BUNDLE
    if case == "weight byte":
        p = b / "model/model.pkl"
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 1
        p.write_bytes(bytes(data))
        _refused(w, BUNDLE, "model/model.pkl: digest mismatch")
    elif case == "extra file":
        (b / "model/extra.bin").write_bytes(b"unsigned")
        _refused(w, BUNDLE, "model/extra.bin: not signed")
    elif case == "model card":
        p = b / "model_card.json"
        p.write_text(p.read_text().replace("penguin-classifier", "other-classifier", 1))
        _refused(w, BUNDLE, "model_card.json: digest mismatch")
    else:  # the signed manifest (the OMS statement in model.sig) rewritten to list other digests
        sig = json.loads((b / "model.sig").read_text())
        payload = json.loads(base64.b64decode(sig["dsseEnvelope"]["payload"]))
        payload["predicate"]["resources"][0]["digest"] = "00" * 32
        sig["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        (b / "model.sig").write_text(json.dumps(sig))
        _refused(w, BUNDLE, "model.sig", "not the root digest of the resources")


def test_bad_signature_refused_even_with_a_release_record_naming_it(w: W) -> None:
    b = w.root / BUNDLE
    sig = json.loads((b / "model.sig").read_text())
    raw = bytearray(base64.b64decode(sig["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 1
    sig["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    (b / "model.sig").write_text(json.dumps(sig))
    _forge(w, "rel", version="1.0.0", bundle=str(b))  # a release record that names the broken signature file
    _refused(w, BUNDLE, "the signature does not verify")


def test_releaser_without_the_role_refused(w: W) -> None:
    w.ok("keys", "generate", "--name", "rogue", "--role", "releaser", "--type", "ecdsa-p256", "--unencrypted")
    bundle = _forge(w, "rogue", version="2.0.0")  # never trusted as a releaser
    _refused(w, bundle, "release record (ledger entry", "not in the trust state")


def test_releaser_revoked_before_signing_refused(w: W) -> None:
    w.ok("keys", "generate", "--name", "rel2", "--role", "releaser", "--type", "ecdsa-p256", "--unencrypted")
    w.ok("keys", "trust", str(w.home / "keys/rel2.pub"), "--role", "releaser")
    w.ok("keys", "revoke", "rel2", "--reason", "laptop lost")
    bundle = _forge(w, "rel2", version="2.0.0")
    _refused(w, bundle, "revoked")
    w.ok("deploy", BUNDLE, "--alias", "production", "--key", "dep")  # a release before the revocation still stands


def test_failed_gate_without_waiver_refused(w: W) -> None:
    w.run("repro", "policy.release.brier.max=0.0000001", "policy.release.brier.hard_limit=0.0000002")
    text = w.fails("package", "models/model.pkl", "--name", "penguin-classifier", "--version", "2.0.0", "--key", "rel",
                   "--run", "latest")
    assert "not packaged: gate 'release' failed" in text
    bundle = _forge(w, "rel", version="2.0.0", gates=())  # a release record that leaves the failed gate out
    _refused(w, bundle, "does not cite its result")
    from engine.gates.book import GateBook
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    book = GateBook.load(Provenance(Workspace(str(w.root))))
    rec = book.results[-1]
    cited = ({"gate": "release", "result": rec.result, "sha256": rec.sha256, "ledger_index": rec.index,
              "waivers": []},)
    bundle = _forge(w, "rel", version="2.0.1", gates=cited)  # ... or cites it
    _refused(w, bundle, "gate 'release' failed")


def test_expired_waiver_refused(w: W) -> None:
    w.run("repro", "policy.release.brier.max=0.0000001")  # needs review: between threshold and hard limit
    run = w.ledger_payloads()[-1][1]["predicate"]["configuration"][1]["annotations"]["run_id"]
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    w.ok("waive", run, "--gate", "release", "--metric", "brier", "--reason", "held-out set too small to tell",
         "--expires", soon, "--key", "demo-approver")
    w.ok("package", "models/model.pkl", "--name", "penguin-classifier", "--version", "2.0.0", "--key", "rel",
         "--run", run)
    time.sleep(4)
    _refused(w, "dist/penguin-classifier-2.0.0", "gate 'release'", "expired")


def test_dataset_approval_missing_from_the_ledger_refused(w: W) -> None:
    def drop(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for d in links:
            if isinstance(d.get("approval"), dict):
                d = {**d, "approval": {**d["approval"], "sha256": "ab" * 32, "event_sha256": "cd" * 32}}
            out.append(d)
        return out

    bundle = _forge(w, "rel", version="2.0.0", datasets=drop)
    _refused(w, bundle, "dataset penguins-raw", "approval: sha256 cdcdcdcd", "is not in the ledger")
    text = w.fails("verify")  # and `certus verify` names the release record's broken link too
    assert "(release penguin-classifier-2.0.0): dataset penguins-raw" in text and "is not an earlier entry" in text
    bundle = _forge(w, "rel", version="2.0.1", datasets=lambda links: [d for d in links
                                                                        if d["event"] != "dataset.registered"])
    _refused(w, bundle, "the model's lineage consumed its manifest", "does not cite")


def test_bundle_without_release_record_refused(w: W) -> None:
    w.ok("package", "models/model.pkl", "--name", "penguin-classifier", "--version", "9.0.0", "--key", "rel")
    _refused(w, "dist/penguin-classifier-9.0.0", "release record: none in the ledger")


# -- serialized and crash-safe ---------------------------------------------------------------------------------


def test_two_concurrent_deploys_are_serialized(w: W) -> None:
    w.ok("repro", "model=gbt", "package.version=1.1.0")  # the pipeline packages and releases 1.1.0
    a = w.proc("deploy", BUNDLE, "--alias", "production", "--key", "dep")
    b = w.proc("deploy", "dist/penguin-classifier-1.1.0", "--alias", "staging", "--key", "dep")
    outs = [p.communicate(timeout=120) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    versions = {_show(w, "penguin-classifier@production")["number"], _show(w, "penguin-classifier@staging")["number"]}
    assert versions == {1, 2}
    w.ok("verify")


@pytest.mark.parametrize("step", ["copying", "installed", "summarized"])
def test_deploy_killed_halfway_leaves_the_old_alias(w: W, step: str) -> None:
    w.ok("deploy", BUNDLE, "--alias", "production", "--key", "dep")
    w.ok("repro", "model=gbt", "package.version=1.1.0")  # the pipeline packages and releases 1.1.0
    p = w.proc("deploy", "dist/penguin-classifier-1.1.0", "--alias", "production", "--key", "dep",
               env={"CERTUS_CRASH_AT": step})
    p.communicate(timeout=120)
    assert p.returncode == -9  # a real SIGKILL at that step
    assert _show(w, "penguin-classifier@production")["number"] == 1
    assert (Path(_show(w, "penguin-classifier@1")["path"]) / "model.sig").is_file()
    w.ok("verify")
    w.ok("deploy", "dist/penguin-classifier-1.1.0", "--alias", "production", "--key", "dep")  # and it can finish
    assert _show(w, "penguin-classifier@production")["number"] == 2
    assert not list((w.root / "registry").glob(".tmp-*"))
    w.ok("bundle", "verify", _show(w, "penguin-classifier@2")["path"])


def test_packages_step_in_dag_and_spec_errors(w: W) -> None:
    text = w.ok("dag", "--format", "mermaid")
    assert '{{"gate: release"}}' in text and '[/"package: penguin-classifier"/]' in text and "-.->" in text
    assert '"gate release" -> "package penguin-classifier" [style=dashed];' in w.ok("dag", "--format", "dot")
    spec = w.root / "pipelines/lifecycle.yaml"
    good = spec.read_text()
    spec.write_text(good.replace("model: models/model.pkl\n    version", "model: models/other.pkl\n    version"))
    text = w.fails("status")
    assert "pipelines/lifecycle.yaml:" in text and "package 'penguin-classifier': field 'model'" in text
    assert "is not an output of any stage" in text
    assert "    requires_gate: release\n" in good
    spec.write_text(good.replace("    requires_gate: release\n", "    requires_gate: nope\n"))
    assert "field 'requires_gate': 'nope' is not a gate" in w.fails("status")
