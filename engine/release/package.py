"""Package a run's model: the one path behind ``certus package --run`` and a pipeline's ``packages:`` step.

Gated (a run whose gate failed, or needs review without a valid waiver, is not released), linked (the
run record, the model's attestation, each consumed dataset's manifest and approval must be in the
ledger), signed (the bundle in OMS v1.0 by an ECDSA releaser key) and logged (the release record,
signed by the same key, appended to the ledger; if that fails the bundle is removed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import EngineError, KeyError_, ReleaseError

__all__ = ["load_releaser", "training_section", "standing_gates", "package_run", "Packaged"]


def load_releaser(name: str, keys: str) -> Any:
    """The ECDSA P-256 releaser key ``name`` (in ``keys``) or at a path."""
    from engine.adapters.release_keys import is_pem_private_key, load_ecdsa_signer

    path = name if (os.sep in name or name.endswith(".key")) else os.path.join(keys, f"{name}.key")
    if not os.path.exists(path):
        raise KeyError_(f"key file {path}: not found (certus keys generate --name {name} --role releaser "
                        "--type ecdsa-p256)")
    if not is_pem_private_key(path):
        raise ReleaseError(f"key file {path}: an Ed25519 key; OMS bundles need an ECDSA P-256 releaser key "
                           "(certus keys generate --type ecdsa-p256 --role releaser)")
    return load_ecdsa_signer(path)


def training_section(prov: Any, run: str) -> dict[str, Any]:
    """The run record (from the ledger; ``run``: id, prefix or 'latest') and its statements, for the card."""
    from engine.provenance.dsse import Envelope
    from engine.provenance.records import RUN_TYPE
    from engine.release.card import run_section

    hits = [i for i in prov.items() if i.envelope is not None and i.envelope.payload_type == RUN_TYPE and i.payload
            and (run == "latest" or str(i.payload.get("run_id", "")).startswith(run))]
    if not hits:
        raise ReleaseError(f"run '{run}': not in the ledger; see 'certus log'")
    item = hits[-1]
    statements = []
    try:
        with open(prov.attestation_path(item.payload["run_id"]), "rb") as f:
            for line in f:
                if line.strip():
                    statements.append(json.loads(Envelope.from_json_bytes(line.strip()).payload))
    except (OSError, ValueError, EngineError):
        pass  # the card then says less; `certus verify` is where a broken attestation bundle is named
    return run_section(item.payload, ledger_index=item.index,
                       record_sha256=hashlib.sha256(item.envelope.to_json_bytes()).hexdigest(),
                       attestations=statements)


def standing_gates(prov: Any, run_id: str, artifact: str | None = None, digest: str | None = None,
                   before: int | None = None) -> tuple[dict[str, Any], ...]:
    """The gate results that speak for the run's model, each passed or validly waived now, cited by
    digest; refuses otherwise (see :meth:`engine.gates.book.GateBook.speaking_for`)."""
    from engine.gates.book import GateBook

    book = GateBook.load(prov)
    latest = book.speaking_for(run_id, artifact, digest, before)
    out = []
    now = datetime.now(UTC)
    for gate, rec in sorted(latest.items()):
        ok, why = book.standing(rec, now)
        if not ok:
            raise ReleaseError(f"run {run_id}: not packaged: {why}")
        covered, _ = book.coverage(rec, now)
        out.append({"gate": gate, "result": rec.result, "sha256": rec.sha256, "ledger_index": rec.index,
                    "metrics": [{k: m.get(k) for k in ("name", "metric", "value", "comparator", "threshold",
                                                       "hard_limit", "outcome")}
                                for m in rec.detail.get("metrics", [])],
                    "waivers": [{"metric": name, "sha256": w.sha256, "ledger_index": w.index,
                                 "approver": w.payload.get("approver"), "reason": w.payload.get("reason"),
                                 "expires": w.payload.get("expires")} for name, w in sorted(covered.items())]})
    return tuple(out)


class Packaged:
    def __init__(self, built: Any, record: Any, index: int | None) -> None:
        self.built, self.record, self.index = built, record, index


def package_run(prov: Any | None, signer: Any, *, model: str, name: str, version: str, run: str | None,
                out: str = "dist", license: str | None = None, serving: str | None = None,
                intended_use: str | None = None, metrics: Mapping[str, Any] | None = None,
                requires_gate: str | None = None, extra: Mapping[str, bytes] | None = None) -> Packaged:
    """Build, sign and (with a run) log a release; ``prov`` is None only when no run is named."""
    from engine.provenance.statement import rfc3339
    from engine.release.bundle import PackageRequest, build_bundle
    from engine.release.publish import gather, publish, release_record

    training = gates = evidence = None
    if run:
        assert prov is not None
        training = training_section(prov, run)
        evidence = gather(prov, training, model)  # every ledger link, checked before anything is built
        gates = standing_gates(prov, str(training["run_id"]), evidence.artifact, evidence.artifact_digest,
                               evidence.run["ledger_index"])
        if requires_gate and requires_gate not in {g["gate"] for g in gates}:
            raise ReleaseError(f"run {training['run_id']}: not packaged: gate '{requires_gate}' has no signed "
                               "result for this model")
    req = PackageRequest(model=model, name=name, version=version, out=out, license=license, serving=serving,
                         intended_use=intended_use, metrics=dict(metrics or {}), training=training,
                         gates=gates or (), approvals=tuple(evidence.datasets) if evidence else (),
                         extra=dict(extra or {}))
    built = build_bundle(req, signer)
    if evidence is None:
        return Packaged(built, None, None)
    record = release_record(evidence, built, name, version, signer.keyid, rfc3339(time.time()), gates or ())
    try:
        index = publish(prov, record, signer)
    except BaseException:
        shutil.rmtree(built.path, ignore_errors=True)  # never leave a bundle no release record vouches for
        raise
    return Packaged(built, record, index)


def released(prov: Any, name: str, version: str) -> list[dict[str, Any]]:
    """Release records already in the ledger for ``name`` ``version`` (payloads, in order)."""
    from engine.provenance.release_records import RELEASE_TYPE

    return [i.payload for i in prov.items() if i.envelope is not None and i.envelope.payload_type == RELEASE_TYPE
            and i.payload and i.payload.get("name") == name and i.payload.get("version") == version]


def model_digest(path: str) -> str:
    from engine.release.publish import artifact_digest, model_files

    src = Path(path)
    return artifact_digest(src, model_files(src))
