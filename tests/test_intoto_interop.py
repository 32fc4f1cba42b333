"""Certus's statements, read by the in-toto attestation library (code we did not write).

Every attestation of a real signed run — file and directory outputs, a restored stage — is parsed
strictly (unknown fields are errors) into the library's in-toto Statement v1 and SLSA Provenance
v1 protobufs and validated; the trust record parses as a DSSE envelope under securesystemslib.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

json_format = pytest.importorskip("google.protobuf.json_format", reason="protobuf (in-toto-attestation) missing")
statement_pb2 = pytest.importorskip("in_toto_attestation.v1.statement_pb2")
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2  # noqa: E402
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor  # noqa: E402
from in_toto_attestation.v1.statement import Statement  # noqa: E402

PIPELINE = """\
    stages:
      make:
        cmd: mkdir -p out/dir && echo ${p.x} > out/dir/a.txt && echo b > out/dir/b.txt && echo f > out/f.txt
        params: [p.x]
        outs: [out/dir, out/f.txt]
"""


@pytest.fixture
def signed_runs(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    home = tmp_path / "certus_home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "interop")
    ws.write("conf/config.yaml", "p: {x: 1}\n")
    ws.write("pipelines/p.yaml", PIPELINE)
    assert ws.certus("keys", "generate", "--name", "alice", "--role", "trainer") == 0
    assert ws.certus("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger",
                     "--role", "admin") == 0
    ws.commit("pipeline")
    assert ws.certus("repro") == 0
    assert ws.certus("repro", "p.x=2") == 0
    assert ws.certus("repro") == 0  # restores the p.x=1 outputs from the run cache
    return ws


def _statements(root: Path) -> list[dict[str, Any]]:
    out = []
    for bundle in sorted((root / ".certus/provenance").glob("*.dsse.jsonl")):
        for line in bundle.read_bytes().splitlines():
            out.append(json.loads(base64.b64decode(json.loads(line)["payload"])))
    return out


def test_every_statement_parses_and_validates_with_the_in_toto_library(signed_runs: Any) -> None:
    stmts = _statements(signed_runs.root)
    assert len(stmts) == 3
    kinds = set()
    for stmt in stmts:
        pb = json_format.Parse(json.dumps(stmt), statement_pb2.Statement())  # strict: unknown fields fail
        Statement.copy_from_pb(pb).validate()
        for rd in pb.subject:
            ResourceDescriptor.copy_from_pb(rd).validate()
            kinds.update(rd.digest.keys())
        for rd in pb.predicate.fields["buildDefinition"].struct_value.fields["resolvedDependencies"].list_value.values:
            assert "uri" not in rd.struct_value.fields  # workspace paths are names, not file: URIs
        prov = json_format.Parse(json.dumps(stmt["predicate"]), provenance_pb2.Provenance())
        assert prov.build_definition.build_type == "https://certus.dev/buildtypes/stage/v1"
        assert prov.run_details.metadata.invocation_id
    assert kinds == {"sha256", "dirHash"}  # a directory output uses in-toto's tree digest
    restored = [s for s in stmts if any(b["name"] == "restored-from" for b in s["predicate"]["runDetails"]
                                        ["byproducts"])]
    assert len(restored) == 1


def test_dirhash_is_the_in_toto_tree_digest(signed_runs: Any) -> None:
    """dirHash = sha256 over `sha256sum` lines of the sorted files (in-toto DigestSet spec v1.1)."""
    import hashlib

    root = signed_runs.root
    attested = {s["digest"]["dirHash"] for stmt in _statements(root) for s in stmt["subject"] if s["name"] == "out/dir"}
    assert len(attested) == 2  # p.x=1 and p.x=2
    files = sorted(p.relative_to(root / "out/dir").as_posix() for p in (root / "out/dir").rglob("*") if p.is_file())
    text = "".join(f"{hashlib.sha256((root / 'out/dir' / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    assert hashlib.sha256(text.encode()).hexdigest() in attested  # the workspace holds the restored p.x=1 tree
    lock = json.loads((root / "certus.lock").read_text())
    assert lock["stages"]["make"]["outs"]["out/dir"]["digest"] == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
