"""``certus monitor`` (issue 13): drift and health of a served deployment against the reference and thresholds
its bundle carries, on telemetry a real server recorded; signed drift reports that ``certus verify`` checks; an
alias held in review after a failed report until a re-evaluation passes or an approver waives it.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import lifecycle_fixture as lf
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lf.build(tmp_path_factory.mktemp("monitor"))


@pytest.fixture
def base(template: Path, tmp_path: Path) -> Path:
    return lf.copy(template, tmp_path / "c")


def _traffic(s: lf.Server, rows: list[dict[str, float]], n: int, seed: int, shift: dict[str, float] | None = None
             ) -> None:
    rng = random.Random(seed)
    for i in range(n):
        batch = [{k: v + (shift or {}).get(k, 0.0) for k, v in rng.choice(rows).items()} for _ in range(2)]
        code, _, out = s.infer(batch, client=f"client-{seed}-{i}")
        assert code == 200, out


def _wait_rows(db: Path, n: int) -> None:
    from engine.serve.telemetry import SQLiteStore

    end = time.time() + 20
    store = SQLiteStore(str(db))
    try:
        while time.time() < end:
            if store.count() >= n:
                return
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError("telemetry rows did not arrive")


def _ledger(base: Path) -> list[tuple[str, dict]]:
    from engine.provenance.ledger import Ledger

    root = base / "ws/.certus/ledger"
    origin = (root / "checkpoint").read_text().splitlines()[0]
    out = []
    for raw in Ledger.open(root, origin=origin, create=False).entries():
        env = json.loads(raw)
        out.append((env["payloadType"], json.loads(base64.b64decode(env["payload"]))))
    return out


def _reports(base: Path) -> list[dict]:
    return [p for t, p in _ledger(base) if t == "application/vnd.in-toto+json"
            and any(c["name"].startswith("certus/drift/") for c in p["predicate"].get("configuration", []))]


def _monitor(base: Path, db: Path, since: float | None, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["monitor", f"{lf.NAME}@production", "--telemetry", str(db), *extra]
    if since is not None:
        from datetime import UTC, datetime

        args += ["--since", datetime.fromtimestamp(since, UTC).isoformat()]
    return lf.certus(base, *args, check=False)


def test_drift_is_detected_signed_verified_and_holds_the_alias_in_review(base: Path) -> None:
    db = base / "telemetry.sqlite"
    rows = lf.training_rows(base)
    shifted = {"body_mass_g": 700.0, "flipper_length_mm": 12.0, "bill_length_mm": 4.0}
    deploy = ("deploy", f"dist/{lf.NAME}-1.0.0", "--alias", "production", "--key", "dep")
    s = lf.Server(base, f"{lf.NAME}@production", "--telemetry", str(db))
    try:
        # in-distribution traffic (drawn from the reference data itself): no drift, no report, exit 0
        _traffic(s, rows, 120, seed=1)
        _wait_rows(db, 120)
        p = _monitor(base, db, None, "--json")
        out = json.loads(p.stdout)
        assert p.returncode == 0 and out["result"] == "PASSED", (p.stdout, p.stderr)
        assert out["window"]["requests"] == 120 and out["window"]["rows"] == 240
        assert {f["test"] for f in out["features"].values()} == {"ks"}  # a 233-row reference: statistical tests
        assert all(not f["drifted"] and f["psi"] < 0.25 for f in out["features"].values()), out["features"]
        assert out["service"]["latency_ms"]["p99"] is not None and out["service"]["rejection_rate"] == 0
        assert not _reports(base)
        # shifted traffic: drift detected, a signed report in the ledger, exit 3 (cron / CI)
        time.sleep(1.2)
        t2 = time.time()
        _traffic(s, rows, 120, seed=2, shift=shifted)
        _wait_rows(db, 240)
        p = _monitor(base, db, t2)
        assert p.returncode == 3 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        assert "threshold(s) breached" in p.stderr and "is in review" in p.stderr
        assert "FAIL drift_share" in p.stdout and "FAIL psi:body_mass_g" in p.stdout
        (report,) = _reports(base)
        assert report["predicate"]["result"] == "FAILED"
        assert "drift_share" in report["predicate"]["failedTests"]
        show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
        subjects = {s_["name"]: s_["digest"]["sha256"] for s_ in report["subject"]}
        assert subjects[f"{lf.NAME}@1"] == show["bundle_root"] and len(subjects["telemetry-window"]) == 64
        detail = next(c["annotations"] for c in report["predicate"]["configuration"]
                      if c["name"].startswith("certus/drift/"))
        assert detail["window"]["requests"] == 120 and detail["epsilon"] == 1e-4
        assert detail["features"]["body_mass_g"]["bins"]["edges"]  # bins recorded
        from google.protobuf import json_format
        from in_toto_attestation.v1 import statement_pb2
        from in_toto_attestation.v1.statement import Statement

        Statement.copy_from_pb(json_format.Parse(json.dumps(report), statement_pb2.Statement())).validate()
        v = lf.certus(base, "verify")
        assert "drift reports" in v.stdout + v.stderr, v.stdout
        # the alias is in review: deploying the same version is refused
        p = lf.certus(base, *deploy, check=False)
        assert p.returncode != 0 and "in review" in p.stderr and "Traceback" not in p.stderr, p.stderr
        # ... and `certus registry show` names it so
        shown = lf.certus(base, "registry", "show", f"{lf.NAME}@production").stdout
        assert shown.splitlines()[0].endswith("= production (in review)"), shown
        assert "FAILED" in shown and "--waive" in shown
        show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
        assert show["in_review"] is True and show["drift"]["result"] == "FAILED"
        assert "drift_share" in " ".join(show["drift"]["failed_checks"])
        # re-evaluation: a later window of normal traffic that passes, signed (--record), lifts it
        time.sleep(1.2)
        t3 = time.time()
        _traffic(s, rows, 120, seed=3)
        _wait_rows(db, 360)
        p = _monitor(base, db, t3, "--record")
        assert p.returncode == 0 and "PASSED" in p.stdout, (p.stdout, p.stderr)
        assert [r["predicate"]["result"] for r in _reports(base)] == ["FAILED", "PASSED"]
        show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
        assert show["in_review"] is False and show["drift"]["result"] == "PASSED"
        assert "in review" not in lf.certus(base, "registry", "show", f"{lf.NAME}@production").stdout
        lf.certus(base, *deploy)
        # drift again; this time an approver waives the report
        time.sleep(1.2)
        t4 = time.time()
        _traffic(s, rows, 120, seed=4, shift=shifted)
        _wait_rows(db, 480)
        assert _monitor(base, db, t4).returncode == 3
        assert lf.certus(base, *deploy, check=False).returncode != 0
        failed = [e for e in _entries(base) if e[1].get("predicate", {}).get("result") == "FAILED"][-1]
        p = lf.certus(base, "monitor", f"{lf.NAME}@production", "--waive", failed[0][:16], "--reason",
                      "seasonal: heavier birds after a good krill year; reviewed", "--key", "demo-approver")
        assert "waived drift report" in p.stdout
        lf.certus(base, *deploy)
        v = lf.certus(base, "verify")
        assert "drift waivers" in v.stdout + v.stderr
    finally:
        s.stop()


def _entries(base: Path) -> list[tuple[str, dict]]:
    import hashlib

    from engine.provenance.ledger import Ledger

    root = base / "ws/.certus/ledger"
    origin = (root / "checkpoint").read_text().splitlines()[0]
    out = []
    for raw in Ledger.open(root, origin=origin, create=False).entries():
        env = json.loads(raw)
        out.append((hashlib.sha256(raw).hexdigest(), json.loads(base64.b64decode(env["payload"]))))
    return out


STAGE = """\
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
json.dump({"rows": len(rows), "columns": list(rows[0])}, open(sys.argv[2], "w"))
"""


def test_propose_retrain_registers_inputs_that_need_approval_before_a_run_uses_them(base: Path) -> None:
    import yaml

    db = base / "telemetry.sqlite"
    rows = lf.training_rows(base)
    s = lf.Server(base, f"{lf.NAME}@production", "--telemetry", str(db))
    try:
        for i in range(40):  # each with the optional pii column, which must never reach the data set
            code, _, out = s.infer([{**rows[(2 * i + j) % len(rows)], "individual_id": f"SECRET-{i}-{j}"}
                                    for j in range(2)], client=f"c{i}")
            assert code == 200, out
        _wait_rows(db, 40)
    finally:
        s.stop()
    p = _monitor(base, db, None, "--propose-retrain", "--key", "demo-steward")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "registered dataset penguin-classifier-inputs@" in p.stdout and "awaiting approval" in p.stdout
    data = (base / "ws/data/telemetry/penguin-classifier-inputs.csv").read_text()
    lines = data.splitlines()
    assert lines[0] == "bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,predicted" and len(lines) == 81
    assert "SECRET" not in data and "individual_id" not in data
    first = rows[0]
    assert f"{first['bill_length_mm']!r},{first['bill_depth_mm']!r}" in data
    events = [pl for t, pl in _ledger(base) if pl.get("kind") == "dataset.registered"]
    assert events[-1]["subject"].startswith("penguin-classifier-inputs@") and events[-1]["details"]["version"] == 1
    assert events[-1]["details"]["sensitivity"] == "public"  # as the reference dataset (penguins-split)
    # a stage consuming it: the run is refused until another person approves the new version
    spec_file = base / "ws/pipelines/lifecycle.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["stages"]["inputs"] = {"cmd": "python stages/count_inputs.py data/telemetry/penguin-classifier-inputs.csv "
                                       "metrics/inputs.json", "deps": ["stages/count_inputs.py"],
                                "datasets": ["penguin-classifier-inputs"], "metrics": ["metrics/inputs.json"]}
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    (base / "ws/stages/count_inputs.py").write_text(STAGE)
    p = lf.certus(base, "repro", "package.version=0.0.1", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
    assert "stage 'inputs': dataset penguin-classifier-inputs@" in p.stderr and "not approved" in p.stderr, p.stderr
    assert not (base / "ws/metrics/inputs.json").exists()
    p = lf.certus(base, "dataset", "approve", "penguin-classifier-inputs", "--key", "demo-steward", check=False)
    assert p.returncode != 0 and "lacks role 'approver'" in p.stderr  # the steward who registered it cannot
    lf.certus(base, "dataset", "approve", "penguin-classifier-inputs", "--key", "demo-approver")
    lf.certus(base, "repro", "package.version=0.0.1")
    assert json.loads((base / "ws/metrics/inputs.json").read_text())["rows"] == 80
    run = [pl for t, pl in _ledger(base) if t == "application/vnd.certus.run+json"][-1]
    (att,) = [a for a in run["attestations"] if a["stage"] == "inputs"]
    text = "".join(base64.b64decode(json.loads(line)["payload"]).decode()
                   for line in (base / "ws" / att["path"]).read_text().splitlines())
    assert ".certus/datasets/penguin-classifier-inputs/" in text  # the run's provenance cites the approved manifest
    # a reference dataset that is confidential: refused in one line, nothing registered
    from dataclasses import replace

    from engine.adapters.keys import load_signer
    from engine.datasets.registry import Registry, write_manifest

    reg = Registry.load(str(base / "ws"))
    split = reg.resolve("penguins-split").manifest
    signer = load_signer(str(base / "home/keys/demo-trainer.key"))
    write_manifest(reg, replace(split, id="sha256:" + "ab" * 32, version=split.version + 1,
                                sensitivity="confidential"), signer)
    p = _monitor(base, db, None, "--propose-retrain", "--key", "demo-steward")
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "penguins-split@abababababab is 'confidential'" in p.stderr and "nothing registered" in p.stderr
    assert len(Registry.load(str(base / "ws")).versions("penguin-classifier-inputs")) == 1


def test_status_and_repro_do_not_import_the_serving_stack(base: Path) -> None:
    code = ("import sys; from engine.cli.main import main; rc = main(['status']); rc = rc or main(['repro']);"
            "heavy = ('starlette', 'uvicorn', 'prometheus_client', 'limits', 'scipy', 'engine.serve');"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('engine.serve'));"
            "print('BAD', bad); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], cwd=base / "ws", env=lf.env_for(base), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "BAD []" in p.stdout, p.stdout + p.stderr


def _window(ref: dict, shift: float) -> object:
    """A telemetry window as the store returns it: 200 single-row requests drawn around the reference's means."""
    import numpy as np

    from engine.serve.telemetry import Window

    n = 200
    rng = np.random.default_rng(0)
    w = Window(first=1.0, last=float(n))
    w.requests = {"ts": np.arange(n, dtype=float), "status": np.full(n, 200.0), "latency_ms": np.full(n, 2.0),
                  "rows": np.ones(n), "abstained": np.zeros(n), "refusal": np.array([""] * n, dtype=object)}
    w.inputs = {"ts": np.arange(n, dtype=float), "conf": np.full(n, 0.9), "abstained": np.zeros(n),
                "pred": np.array(["Adelie"] * n, dtype=object)}
    for f, d in ref["features"].items():
        w.inputs[f] = rng.normal(d["summary"]["mean"] * (1 + shift), d["summary"]["std"], n)
    return w


def test_verify_refuses_a_drift_report_signed_without_the_role_or_edited_after_signing(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAILED report holds the alias in review; a forged PASSED one (signed by a key that is not a trainer,
    or a FAILED one's bytes edited into a PASSED one under the original signature) neither lifts the review
    nor passes `certus verify`, which names each."""
    from dataclasses import replace

    from engine.core.canonical import canonical_bytes
    from engine.provenance.drift_records import drift_statement
    from engine.provenance.dsse import Envelope, sign_envelope
    from engine.provenance.recorder import NoteSignerAdapter, Provenance, remember_checkpoint
    from engine.provenance.statement import PAYLOAD_TYPE, rfc3339
    from engine.serve.monitor import evaluate, record, window_digest
    from engine.store.workspace import Workspace

    monkeypatch.setenv("CERTUS_HOME", str(base / "home"))
    show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
    ref = json.loads((base / "ws/registry" / lf.NAME / "1/reference.json").read_text())
    prov = Provenance(Workspace(str(base / "ws")))
    w = _window(ref, 0.25)
    res = evaluate(w, ref)
    assert res.status == "FAILED"
    index, _ = record(prov, prov.signer("trainer"), model=lf.NAME, version=1, bundle_root=show["bundle_root"],
                      reference=ref, result=res, digest=window_digest(w))
    assert lf.certus(base, "verify").returncode == 0
    assert json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)["in_review"]
    # the same window, every check passing: what a forger wants the ledger to say
    passed = [{**c, "outcome": "pass"} for c in res.checks]
    detail = {"time": rfc3339(time.time()), "window": res.window, "checks": passed, "features": {}}
    forged = drift_statement(model=lf.NAME, version=1, bundle_root=show["bundle_root"], window_digest=window_digest(w),
                             thresholds=ref["thresholds"], detail=detail)
    # 1. signed by the deployer key (trusted, but not as a trainer)
    prov2 = Provenance(Workspace(str(base / "ws")))
    prov2._signers["trainer"] = prov2.signer("deployer", "dep")
    ((wrong_role, _),) = prov2.append_records([(PAYLOAD_TYPE, forged, "trainer")])
    # 2. a FAILED report's signature over the PASSED bytes (edited after signing)
    genuine = sign_envelope(PAYLOAD_TYPE, canonical_bytes(dict(forged, predicate={**forged["predicate"],
                                                                                  "result": "FAILED"})),
                            [prov.signer("trainer")])
    edited = replace(genuine, payload=canonical_bytes(forged))
    assert isinstance(edited, Envelope)
    with prov.ledger_lock(exclusive=True):
        ledger = prov.open_ledger()
        first, cp = ledger.append_many([edited.to_json_bytes()], NoteSignerAdapter(prov.signer("ledger"),
                                                                                    name=ledger.origin))
        remember_checkpoint(prov.ws, cp)
        prov.index(ledger)
    p = lf.certus(base, "verify", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
    fails = [line for line in p.stdout.splitlines() if line.startswith("FAIL: ")]
    role_line = [f for f in fails if f.startswith(f"FAIL: ledger entry {wrong_role} (drift report): ")]
    edit_line = [f for f in fails if f.startswith(f"FAIL: ledger entry {first} (drift report): ")]
    assert role_line and "trainer" in role_line[0], fails
    assert edit_line and "signature" in edit_line[0] and "verif" in edit_line[0], fails
    assert len(fails) == 2, fails  # the genuine report at `index` stands
    assert f"ledger entry {wrong_role} (drift report)" in p.stderr  # the one-line error names the first
    # neither forged PASSED report lifts the review
    show = json.loads(lf.certus(base, "registry", "show", f"{lf.NAME}@production", "--json").stdout)
    assert show["in_review"] and show["drift"]["report_index"] == index
