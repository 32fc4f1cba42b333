"""Signed provenance, happy paths: what `certus repro` signs and what `certus verify` accepts.

Every check here is made independently of the engine where the format allows it: statements
are read as plain JSON, DSSE envelopes are verified with securesystemslib, Merkle roots are
recomputed from RFC 6962 in this file, and the checkpoint note is checked with PyNaCl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import SSlibKey

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"
STATEMENT = "https://in-toto.io/Statement/v1"
SLSA = "https://slsa.dev/provenance/v1"
INTOTO = "application/vnd.in-toto+json"
RUN = "application/vnd.certus.run+json"
TRUST = "application/vnd.certus.trust+json"


# -- independent readers --------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    return sha256(path.read_bytes())


def mth(entries: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash, written out from the RFC."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:])).digest()


def ledger_entries(root: Path) -> list[bytes]:
    """The entry bytes of every frame of `.certus/ledger/entries.jsonl`, in order."""
    out = []
    for i, line in enumerate((root / ".certus/ledger/entries.jsonl").read_bytes().splitlines()):
        frame = json.loads(line)
        assert frame["index"] == i
        entry = base64.b64decode(frame["entry"])
        assert frame["leaf"] == sha256(b"\x00" + entry)
        out.append(entry)
    return out


def payload(envelope: bytes) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def run_records(root: Path) -> list[dict[str, Any]]:
    return [payload(e) for e in ledger_entries(root) if json.loads(e)["payloadType"] == RUN]


def bundle(root: Path, run_id: str) -> dict[str, bytes]:
    """Stage name -> envelope line (no newline) of a run's attestation bundle, in file order."""
    out = {}
    for line in (root / f".certus/provenance/{run_id}.dsse.jsonl").read_bytes().splitlines():
        stmt = payload(line)
        out[stmt["predicate"]["buildDefinition"]["externalParameters"]["stage"]] = line
    return out


def statement(line: bytes) -> dict[str, Any]:
    env = json.loads(line)
    assert env["payloadType"] == INTOTO
    return json.loads(base64.b64decode(env["payload"]))


def certus_home() -> Path:
    return Path(os.environ["CERTUS_HOME"])


def output(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    return out.out + out.err


# -- fixtures --------------------------------------------------------------------------------------


def setup_keys(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CERTUS_HOME in tmp, a passphrase, and a key 'alice' trusted as trainer and ledger (committed)."""
    home = tmp_path / "certus_home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("CERTUS_KEY", raising=False)
    monkeypatch.delenv("CERTUS_LEDGER_KEY", raising=False)
    assert ws.certus("keys", "generate", "--name", "alice", "--role", "trainer") == 0
    assert ws.certus("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger") == 0
    ws.commit("trust alice")
    return home


@pytest.fixture
def signed(diamond: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The diamond workspace with a trust file and two signed runs: defaults, then b.y=2."""
    setup_keys(diamond, tmp_path, monkeypatch)
    assert diamond.certus("repro") == 0
    assert diamond.certus("repro", "b.y=2") == 0
    return diamond


# -- runs, log, show -------------------------------------------------------------------------------


def test_two_signed_runs_verify_and_show_in_log_and_show(signed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root = signed.root
    head = signed.git("rev-parse", "HEAD").strip()
    capsys.readouterr()

    assert signed.certus("verify") == 0
    assert output(capsys).strip().endswith("verification OK")
    assert signed.certus("verify", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["failures"] == []
    checked = report["checked"]
    # the ledger starts with the trust genesis record, then the two run records
    assert (checked["records"], checked["ledger entries"], checked["run records ordered by the ledger"]) == (3, 3, 2)
    assert "run chain links" not in checked  # a record no longer names the one before it (issue 16)
    assert checked["attestations"] == 5 + 2
    assert checked["attestation merkle roots"] == 2

    assert signed.certus("log", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    genesis, rows = rows[0], rows[1:]
    assert (genesis["index"], genesis["kind"], genesis["subject"]) == (0, "trust.genesis", "trust.json")
    assert [(r["index"], r["kind"], r["status"], r["overrides"], r["commit"]) for r in rows] == [
        (1, "run", "succeeded", [], head),
        (2, "run", "succeeded", ["b.y=2"], head),
    ]
    assert rows[0]["stages"] == {"ran": 5}
    assert rows[1]["stages"] == {"ran": 2, "skipped": 3}
    first, second = rows[0]["run_id"], rows[1]["run_id"]
    assert first != second
    for run_id, stages in ((first, ["a", "b", "c", "d", "e"]), (second, ["b", "d"])):
        assert list(bundle(root, run_id)) == stages  # one envelope per executed stage, by stage name

    assert signed.certus("show", "latest") == 0
    text = capsys.readouterr().out
    assert f"run {second}  succeeded" in text
    assert f"commit {head}  pipeline pipelines/p.yaml" in text
    assert "overrides: b.y=2" in text
    assert signed.certus("show", first[:20], "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["run_id"], rec["overrides"], rec["config"]["b"], rec["git"]) == (
        first, [], {"y": 1}, {"commit": head, "dirty": False})


# -- attestation content ---------------------------------------------------------------------------


def test_attestations_name_outputs_deps_params_run_and_log(signed: Any) -> None:
    root = signed.root
    lock = signed.lock()["stages"]
    first, second = run_records(root)

    # the second run (b.y=2) re-ran b and d: check them against the files on disk
    stmts = {stage: statement(line) for stage, line in bundle(root, second["run_id"]).items()}
    assert sorted(stmts) == ["b", "d"]
    for stage, stmt in stmts.items():
        assert stmt["_type"] == STATEMENT and stmt["predicateType"] == SLSA
        outs = sorted(lock[stage]["outs"])
        assert stmt["subject"] == [{"name": p, "digest": {"sha256": file_sha256(root / p)}} for p in outs]
        build = stmt["predicate"]["buildDefinition"]
        assert build["resolvedDependencies"] == [  # workspace paths are names only (no file: URI)
            {"name": d, "digest": {"sha256": file_sha256(root / d)}}
            for d in sorted(lock[stage]["deps"])
        ]
        ext = build["externalParameters"]
        assert ext["stage"] == stage
        assert ext["cmd"] == lock[stage]["cmd"]
        assert ext["params"] == lock[stage]["params"]
        assert ext["overrides"] == ["b.y=2"] and ext["pipeline"] == "pipelines/p.yaml"
        assert build["internalParameters"]["stageKey"] == lock[stage]["key"]
        details = stmt["predicate"]["runDetails"]
        assert details["metadata"]["invocationId"] == second["run_id"]
        log = root / ".certus/logs" / second["run_id"] / f"{stage}.log"
        assert details["byproducts"] == [
            {"name": "log", "digest": {"sha256": file_sha256(log)}, "annotations": {"exitStatus": 0}}
        ]
    ext_b = stmts["b"]["predicate"]["buildDefinition"]["externalParameters"]
    assert (ext_b["cmd"], ext_b["params"]) == ("python step.py b out/b.txt out/a.txt", {"b.y": 2})
    assert [d["name"] for d in stmts["d"]["predicate"]["buildDefinition"]["resolvedDependencies"]] == [
        "out/b.txt", "out/c.txt", "step.py"]

    # the first run: every stage, subjects exactly the outputs its signed record lists
    for stage, line in bundle(root, first["run_id"]).items():
        stmt = statement(line)
        assert stmt["predicate"]["runDetails"]["metadata"]["invocationId"] == first["run_id"]
        listed = first["stages"][stage]["outs"]
        assert {s["name"]: "sha256:" + s["digest"]["sha256"] for s in stmt["subject"]} == listed
        if stage in ("a", "c", "e"):  # untouched by the second run
            assert listed == {p: "sha256:" + file_sha256(root / p) for p in lock[stage]["outs"]}
        assert stmt["predicate"]["buildDefinition"]["externalParameters"]["overrides"] == []


def test_restored_stage_points_at_the_run_that_produced_it(signed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    root = signed.root
    signed.clear_runs()
    assert signed.certus("repro") == 0  # b.y back to 1: b and d come back from the run cache
    assert signed.runs() == []
    first, _, third = run_records(root)
    assert {s: v["state"] for s, v in third["stages"].items()} == {
        "a": "skipped", "b": "restored", "c": "skipped", "d": "restored", "e": "skipped"}
    first_bundle = bundle(root, first["run_id"])
    third_bundle = bundle(root, third["run_id"])
    assert sorted(third_bundle) == ["b", "d"]
    for stage, line in third_bundle.items():
        stmt = statement(line)
        details = stmt["predicate"]["runDetails"]
        assert details["metadata"]["invocationId"] == third["run_id"]
        assert details["byproducts"] == [{
            "name": "restored-from",
            "uri": f"certus:run/{first['run_id']}/{stage}",
            "digest": {"sha256": sha256(first_bundle[stage])},
        }]
        assert stmt["subject"] == statement(first_bundle[stage])["subject"]
    capsys.readouterr()
    assert signed.certus("verify", "--artifacts") == 0, output(capsys)


# -- interoperability: DSSE, Merkle roots, the checkpoint note ------------------------------------


def test_envelopes_verify_with_securesystemslib(signed: Any) -> None:
    pub = json.loads((certus_home() / "keys/alice.pub").read_text())
    raw = base64.b64decode(pub["public_key"])
    key = SSlibKey(pub["keyid"], "ed25519", "ed25519", {"public": raw.hex()})
    envelopes = [line for r in run_records(signed.root) for line in bundle(signed.root, r["run_id"]).values()]
    envelopes += ledger_entries(signed.root)
    assert len(envelopes) == 5 + 2 + 3  # the ledger: the trust genesis and two run records
    assert json.loads(envelopes[-3])["payloadType"] == TRUST
    for line in envelopes:
        env = SslibEnvelope.from_dict(json.loads(line))
        assert env.payload_type in (INTOTO, RUN, TRUST)
        assert list(env.verify(keys=[key], threshold=1)) == [pub["keyid"]]
    # and securesystemslib rejects what the engine would reject: a changed payloadType or payload
    for change in ({"payloadType": "application/json"}, {"payload": base64.b64encode(b"{}").decode()}):
        env = SslibEnvelope.from_dict({**json.loads(envelopes[0]), **change})
        with pytest.raises(SslibVerificationError):
            env.verify(keys=[key], threshold=1)


def test_run_record_merkle_root_and_no_position(signed: Any) -> None:
    root = signed.root
    entries = ledger_entries(root)
    genesis = payload(entries[0])
    assert json.loads(entries[0])["payloadType"] == TRUST
    assert (genesis["_type"], genesis["kind"], genesis["subject"]) == (
        "https://certus.dev/TrustRecord/v1", "trust.genesis", "trust.json")
    # the genesis pins the committed trust file, and commits to it by the SHA-256 of its canonical JSON
    trust = json.loads((root / "trust.json").read_text())
    assert genesis["details"]["trust"] == trust
    assert genesis["details"]["trust_sha256"] == sha256(
        json.dumps(trust, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    entries = entries[1:]
    records = [payload(e) for e in entries]
    assert [r["_type"] for r in records] == ["https://certus.dev/RunRecord/v1"] * 2
    for rec in records:
        lines = bundle(root, rec["run_id"])
        ordered = [lines[s] for s in sorted(lines)]  # documented leaf order: stage name
        assert rec["merkle_root"] == mth(ordered).hex()
        path = f".certus/provenance/{rec['run_id']}.dsse.jsonl"
        assert rec["attestations"] == [{"stage": s, "sha256": sha256(lines[s]), "path": path} for s in sorted(lines)]
        assert {s: v["attestation"] for s, v in rec["stages"].items() if "attestation" in v} == {
            s: sha256(line) for s, line in lines.items()}
        # what a run signs is what it knows: its position (and so the run before it) is the sequencer's
        assert "previous" not in rec
    assert len(bundle(root, records[0]["run_id"])) == 5  # not a power of two: exercises the RFC 6962 split


def test_checkpoint_is_a_c2sp_signed_note(signed: Any) -> None:
    ldir = signed.root / ".certus/ledger"
    pub = base64.b64decode(json.loads((certus_home() / "keys/alice.pub").read_text())["public_key"])
    entries = ledger_entries(signed.root)
    state = json.loads((ldir / "state.json").read_text())

    def check(note: str, size: int) -> None:
        body, _, sigs = note.partition("\n\n")
        body += "\n"
        origin, size_line, root_b64 = body.splitlines()
        assert origin == state["origin"] and origin.startswith("certus.dev/ledger/")
        assert size_line == str(size)
        assert base64.b64decode(root_b64) == mth(entries[:size])
        [line] = sigs.splitlines()
        dash, name, sig_b64 = line.split(" ")
        assert (dash, name) == ("\u2014", origin)  # C2SP tlog-checkpoint: the key name is the log's origin
        raw = base64.b64decode(sig_b64, validate=True)
        assert len(raw) == 4 + 64
        assert raw[:4] == hashlib.sha256(origin.encode() + b"\n\x01" + pub).digest()[:4]
        nacl.signing.VerifyKey(pub).verify(body.encode(), raw[4:])  # raises if it does not verify

    check((ldir / "checkpoint").read_text(encoding="utf-8"), len(entries))
    history = [json.loads(line)["note"] for line in (ldir / "checkpoints.jsonl").read_bytes().splitlines()]
    # the first append writes the trust genesis and the first run record under one checkpoint
    assert len(history) == 2
    for size, note in zip((2, 3), history):
        check(note, size)
    assert history[-1] == (ldir / "checkpoint").read_text(encoding="utf-8")


# -- failures and the reference lifecycle ---------------------------------------------------------


def test_failed_run_still_gets_a_signed_record(signed: Any, capsys: pytest.CaptureFixture[str]) -> None:
    spec = (signed.root / "pipelines/p.yaml").read_text()
    bad = spec.replace("cmd: python step.py c out/c.txt out/a.txt", 'cmd: python -c "raise SystemExit(3)"')
    assert bad != spec
    (signed.root / "pipelines/p.yaml").write_text(bad)
    signed.commit("break c")
    capsys.readouterr()
    assert signed.certus("repro") != 0
    assert "stage(s) failed: c (exit status 3)" in output(capsys)
    rec = run_records(signed.root)[-1]
    assert rec["status"] == "failed" and rec["failed"] == ["c"]
    assert rec["stages"]["c"]["state"] == "failed" and rec["stages"]["c"]["error"] == "exit status 3"
    assert rec["stages"]["d"]["state"] == "blocked"
    assert "attestation" not in rec["stages"]["c"]  # nothing was produced, so nothing is attested
    assert signed.certus("log", "--json") == 0
    assert json.loads(capsys.readouterr().out)[-1]["status"] == "failed"
    assert signed.certus("verify") == 0, output(capsys)


def test_concurrent_first_runs_in_one_workspace_create_one_ledger(diamond: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Runs that start together in a workspace with no ledger yet must agree on one ledger (CI once saw
    two first runs both write its first state and one die on the other's rename)."""
    setup_keys(diamond, tmp_path, monkeypatch)
    assert not (diamond.root / ".certus/ledger").exists()
    procs = [subprocess.Popen([sys.executable, "-m", "engine", "-C", str(diamond.root), "repro", "--wait",
                               f"b.y={10 + i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert len(run_records(diamond.root)) == 4
    assert not list((diamond.root / ".certus/ledger").glob(".*.tmp"))
    capsys.readouterr()
    assert diamond.certus("verify") == 0, output(capsys)


def test_reference_lifecycle_verifies_and_has_lineage(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # as the README says: copy the lifecycle, `python stages/bootstrap.py` (raw data exported,
    # tracked with DVC, registered and approved with demo keys it creates and trusts), `certus repro`
    for d in ("conf", "pipelines", "stages"):
        shutil.copytree(REPO / d, ws.root / d)
    (ws.root / "step.py").unlink()
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "certus_home"))
    ws.commit("reference lifecycle")
    boot = subprocess.run([sys.executable, "stages/bootstrap.py"], cwd=ws.root, capture_output=True, text=True,
                          timeout=300)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert json.loads((ws.root / "trust.json").read_text())["keys"]
    ws.commit("governance: trust.json, the raw dataset's manifest and approval")
    assert ws.certus("repro") == 0
    [rec] = run_records(ws.root)
    run_id = rec["run_id"]
    assert rec["status"] == "succeeded"
    assert sorted(bundle(ws.root, run_id)) == ["curate", "evaluate", "split", "train"]
    capsys.readouterr()
    assert ws.certus("verify", "--artifacts") == 0, output(capsys)
    assert output(capsys).strip().endswith("verification OK")

    assert ws.certus("lineage", "models/model.pkl") == 0
    lines = capsys.readouterr().out.splitlines()
    for stage, path in (("train", "models/model.pkl"), ("split", "data/split"),
                        ("curate", "data/curated/penguins.csv")):
        assert any(line.strip().startswith(f"{path}  [") and f"<- stage '{stage}', run {run_id}" in line
                   for line in lines), lines
    assert any(line.strip().startswith("data/raw/penguins.csv  [source sha256:") and "dataset penguins-raw@" in line
               for line in lines), lines
    assert ws.certus("lineage", "models/model.pkl", "--json") == 0
    graph = json.loads(capsys.readouterr().out)
    edges = {tuple(e) for e in graph["edges"]}
    chain = ["data/raw/penguins.csv", "data/curated/penguins.csv", "data/split", "models/model.pkl"]
    assert all((a, b) in edges for a, b in zip(chain, chain[1:]))
    raw = graph["nodes"]["data/raw/penguins.csv"]
    assert raw["kind"] == "source" and raw["digest"] == "sha256:" + file_sha256(ws.root / "data/raw/penguins.csv")
    for path in chain[1:]:
        node = graph["nodes"][path]
        assert node["kind"] == "output" and node["run"] == run_id
        assert node["digest"] == rec["stages"][node["stage"]]["outs"][path]

    # the demo trainer key is also the workspace's admin: trusting another key now that the ledger
    # exists is a trust.changed record it signs, and the workspace still verifies
    assert ws.certus("keys", "generate", "--name", "second-deployer", "--role", "deployer", "--unencrypted") == 0
    capsys.readouterr()
    assert ws.certus("keys", "trust", str(tmp_path / "certus_home/keys/second-deployer.pub")) == 0
    assert "(signed ledger record " in capsys.readouterr().out
    changed = payload(ledger_entries(ws.root)[-1])
    assert (changed["kind"], changed["details"]["trust"]) == (
        "trust.changed", json.loads((ws.root / "trust.json").read_text()))
    assert ws.certus("verify") == 0, output(capsys)


def test_verify_without_trust_file_or_ledger_is_one_clear_line(diamond: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "certus_home"))
    p = diamond.proc("verify")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("certus: error: ")
    assert "trust.json: missing" in p.stderr

    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", PASSPHRASE)
    assert diamond.proc("keys", "generate", "--name", "alice", "--role", "trainer").returncode == 0
    pub = tmp_path / "certus_home/keys/alice.pub"
    assert diamond.proc("keys", "trust", str(pub), "--role", "trainer", "--role", "ledger").returncode == 0
    for args in (("verify",), ("verify", "--artifacts")):
        p = diamond.proc(*args)
        assert p.returncode != 0
        assert "Traceback" not in p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("certus: error: ")
        assert ".certus/ledger: no ledger; run 'certus repro' with a trust file first" in p.stderr
    p = diamond.proc("verify", "--json")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] is False and len(report["failures"]) == 1 and "no ledger" in report["failures"][0]
    assert not (diamond.root / ".certus/ledger").exists()  # verify never creates a ledger
