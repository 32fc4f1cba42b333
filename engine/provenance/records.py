"""Ledger records: run records and governance events, as signed DSSE payloads.

Every ledger entry is a DSSE envelope (JSON bytes) whose payload is the canonical JSON of one
record. The payload type says what kind of record it is and so which role must have signed it.

A run record carries the RFC 6962 Merkle root over its stage attestations. Leaves are the
attestation envelopes' bytes, ordered by stage name (the documented order), so
``leaf_i = SHA-256(0x00 || envelope_i)``. A record signs only what the run knows: its position in
the ledger, and so the run before it, is the sequencer's, covered by the signed checkpoint (records
written before the ledger could be shared also carry ``previous``, the hash of the run record before
them, which verify still checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.provenance import merkle
from engine.provenance.gate_records import TEST_RESULT_PREDICATE, WAIVER_TYPE
from engine.provenance.release_records import RELEASE_TYPE, VSA_PREDICATE

__all__ = ["RUN_TYPE", "EVENT_TYPE", "WAIVER_TYPE", "ROLE_FOR_TYPE", "ROLE_FOR_PREDICATE", "RunRecord", "Event",
           "attestation_root"]

RUN_TYPE = "application/vnd.certus.run+json"
EVENT_TYPE = "application/vnd.certus.event+json"
# which trust role must sign each payload type (governance events: per event kind, below)
# a gate waiver (engine.provenance.gate_records); a release record (engine.provenance.release_records)
ROLE_FOR_TYPE = {RUN_TYPE: "trainer", WAIVER_TYPE: "approver", RELEASE_TYPE: "releaser"}
# in-toto statements appended to the ledger itself (payloadType application/vnd.in-toto+json), by predicate:
# a gate result (Test Result predicate) is the run's trainer's; a deploy check's SLSA VSA the deployer's
ROLE_FOR_PREDICATE = {TEST_RESULT_PREDICATE: "trainer", VSA_PREDICATE: "deployer"}
EVENT_ROLES = {
    "dataset.registered": "data-steward",
    "dataset.approved": "approver",
    "dataset.refused": "trainer",
    "dataset.derived": "trainer",
    "gate.decision": "trainer",
    "gate.waiver": "approver",
    "deployment": "releaser",
    "registry.registered": "deployer",  # a verified bundle became version N of a registered model
    "registry.alias": "deployer",  # an alias moved to a version (a deploy, or a rollback)
    "drift.alert": "trainer",
    "dvc.adopted": "trainer",  # a dvc.lock entry adopted, not executed (engine.run.dvc_adopt)
    "drift.waiver": "approver",  # an approver accepts a FAILED drift report (engine.provenance.drift_records)
}


def attestation_root(envelopes: Sequence[bytes]) -> str:
    """Hex RFC 6962 root over attestation envelope bytes, in the given (stage-name) order."""
    return merkle.root([merkle.leaf_hash(e) for e in envelopes]).hex()


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What one ``certus repro`` did, signed by the trainer key and appended to the ledger."""

    run_id: str
    started: str
    finished: str
    status: str  # succeeded | failed | interrupted
    git: Mapping[str, Any]
    config: Mapping[str, Any]
    overrides: Sequence[str]
    pipeline: str
    spec_sha256: str
    lock_sha256: str | None
    stages: Mapping[str, Mapping[str, Any]]  # name -> {state, key, outs, attestation, error?}
    attestations: Sequence[Mapping[str, str]]  # [{stage, path, sha256}] sorted by stage
    merkle_root: str
    previous: str | None = None  # only in records from before issue 16: the order is the ledger's
    failed: Sequence[str] = field(default_factory=tuple)
    # DVC `artifacts:` (name -> {path, type, desc, labels, meta, digest}): written only when a project declares them
    artifacts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the gate results this run evaluated, [{gate, sha256 of the envelope}] by gate: the results follow the record
    # in the same append, and this signature covers their bytes (verify checks them through it: issue 11)
    gate_results: Sequence[Mapping[str, str]] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"artifacts": {k: dict(v) for k, v in sorted(self.artifacts.items())}} \
            if self.artifacts else {}
        if self.gate_results:
            extra["gate_results"] = [dict(g) for g in self.gate_results]
        if self.previous is not None:
            extra["previous"] = self.previous
        return {**extra,
            "_type": "https://certus.dev/RunRecord/v1",
            "run_id": self.run_id, "started": self.started, "finished": self.finished, "status": self.status,
            "git": dict(self.git), "config": dict(self.config), "overrides": list(self.overrides),
            "pipeline": self.pipeline, "spec_sha256": self.spec_sha256, "lock_sha256": self.lock_sha256,
            "stages": {k: dict(v) for k, v in sorted(self.stages.items())},
            "attestations": [dict(a) for a in self.attestations], "merkle_root": self.merkle_root,
            "failed": list(self.failed),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        return cls(run_id=d["run_id"], started=d["started"], finished=d["finished"], status=d["status"],
                   git=d["git"], config=d["config"], overrides=d["overrides"], pipeline=d["pipeline"],
                   spec_sha256=d["spec_sha256"], lock_sha256=d["lock_sha256"], stages=d["stages"],
                   attestations=d["attestations"], merkle_root=d["merkle_root"], previous=d.get("previous"),
                   failed=d.get("failed", ()), artifacts=d.get("artifacts") or {},
                   gate_results=d.get("gate_results") or ())


@dataclass(frozen=True, slots=True)
class Event:
    """A governance event: dataset registration/approval, gate decision, waiver, deployment, drift alert."""

    kind: str
    time: str
    subject: str
    details: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"_type": "https://certus.dev/Event/v1", "kind": self.kind, "time": self.time,
                "subject": self.subject, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(kind=d["kind"], time=d["time"], subject=d["subject"], details=d.get("details", {}))
