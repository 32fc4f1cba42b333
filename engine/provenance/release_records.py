"""Release records, deploy verification summaries and registry events: the ledger side of issue 12.

A *release record* (payloadType ``application/vnd.certus.release+json``, signed by the releaser key
that signed the bundle) links one bundle, by its OMS root digest and the digest of ``model.sig``,
to the evidence it was built from — the run record, the stage attestations that produced each model
file, the gate results and waivers, and the dataset manifests and approvals — each by the SHA-256
of its ledger envelope and its ledger index. A deploy re-checks every link.

A successful deploy check is recorded as a SLSA Verification Summary Attestation
(``https://slsa.dev/verification_summary/v1``) in an in-toto Statement signed by a ``deployer`` key;
registry changes (a version registered, an alias moved or rolled back) are governance events by the
same role (:data:`engine.provenance.records.EVENT_ROLES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.provenance.statement import STATEMENT_TYPE

__all__ = ["RELEASE_TYPE", "RELEASE_SCHEMA", "VSA_PREDICATE", "VERIFIER_ID", "ReleaseRecord", "vsa_statement",
           "is_vsa"]

RELEASE_TYPE = "application/vnd.certus.release+json"
RELEASE_SCHEMA = "https://certus.dev/Release/v1"
VSA_PREDICATE = "https://slsa.dev/verification_summary/v1"
VERIFIER_ID = "https://certus.dev/deploy-verifier/v1"
DEPLOY_POLICY_URI = "https://certus.dev/policy/deploy/v1"


@dataclass(frozen=True)
class ReleaseRecord:
    """What a releaser vouches for when a bundle is released (one canonical JSON form)."""

    time: str
    name: str
    version: str
    bundle_root: str  # OMS subject digest (hex SHA-256 over the files' digests)
    signature_sha256: str  # SHA-256 of the bundle's model.sig
    releaser: str  # keyid of the key that signed the bundle and this record
    run: Mapping[str, Any]  # {run_id, record_sha256, ledger_index}
    models: Sequence[Mapping[str, Any]]  # [{file (in bundle), artifact (attested path), sha256, stage, attestation}]
    gates: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # [{gate, result, sha256, ledger_index, waivers}]
    datasets: Sequence[Mapping[str, Any]] = field(default_factory=tuple)  # [{dataset, manifest_sha256, ...}]

    def to_dict(self) -> dict[str, Any]:
        return {"_type": RELEASE_SCHEMA, "time": self.time, "name": self.name, "version": self.version,
                "bundle": {"root_sha256": self.bundle_root, "signature_sha256": self.signature_sha256},
                "releaser": self.releaser, "run": dict(self.run), "models": [dict(m) for m in self.models],
                "gates": [dict(g) for g in self.gates], "datasets": [dict(d) for d in self.datasets]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleaseRecord:
        """Parse a ledger payload; ValueError naming the field when it is not a release record."""
        if not isinstance(d, Mapping) or d.get("_type") != RELEASE_SCHEMA:
            raise ValueError(f"not a release record (_type is not {RELEASE_SCHEMA})")
        try:
            bundle, run = d["bundle"], d["run"]
            rec = cls(time=str(d["time"]), name=str(d["name"]), version=str(d["version"]),
                      bundle_root=str(bundle["root_sha256"]), signature_sha256=str(bundle["signature_sha256"]),
                      releaser=str(d["releaser"]), run=dict(run), models=tuple(d["models"]),
                      gates=tuple(d.get("gates") or ()), datasets=tuple(d.get("datasets") or ()))
        except (KeyError, TypeError) as e:
            raise ValueError(f"release record: field {e} missing or malformed") from None
        if not all(isinstance(x, Mapping) for x in (*rec.models, *rec.gates, *rec.datasets)):
            raise ValueError("release record: models, gates and datasets must be lists of objects")
        return rec


def vsa_statement(*, bundle_name: str, bundle_root: str, resource_uri: str, time_verified: str,
                  inputs: Sequence[tuple[str, str]], verifier_version: str, level: str = "SLSA_BUILD_LEVEL_1"
                  ) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA VSA v1 predicate: this verifier checked ``bundle_root``
    against the release chain whose records (``inputs``: (uri, sha256)) it names, and it passed."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": bundle_name, "digest": {"sha256": bundle_root}}],
        "predicateType": VSA_PREDICATE,
        "predicate": {
            "verifier": {"id": VERIFIER_ID, "version": {"certus": verifier_version}},
            "timeVerified": time_verified,
            "resourceUri": resource_uri,
            "policy": {"uri": DEPLOY_POLICY_URI},
            "inputAttestations": [{"uri": uri, "digest": {"sha256": sha}} for uri, sha in inputs],
            "verificationResult": "PASSED",
            "verifiedLevels": [level],
        },
    }


def is_vsa(statement: Any) -> bool:
    return isinstance(statement, Mapping) and statement.get("predicateType") == VSA_PREDICATE
