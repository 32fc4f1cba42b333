"""The rules a dataset lives under: who may sign which kind of manifest (the role matrix), what the
ledger must hold for it, its approval, and the usage policy a consuming stage is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from engine.datasets.registry import (
    APPROVAL_TYPE,
    MANIFEST_TYPE,
    DatasetManifest,
    DatasetUse,
    Entry,
    Registry,
    _sha,
)
from engine.errors import DatasetError, SignatureError
from engine.provenance.dsse import verify_envelope

__all__ = ["allowed_sensitivity", "approval_problem", "check_use", "ledger_problem", "signer_role",
           "structure_problem"]


def allowed_sensitivity(config: Mapping[str, Any], stage: str) -> tuple[str, ...]:
    """``certus.policy.allowed_sensitivity`` (default public, internal) plus the stage's extras."""
    certus_cfg = config.get("certus") if isinstance(config.get("certus"), Mapping) else {}
    policy = certus_cfg.get("policy") if isinstance(certus_cfg, Mapping) else None
    policy = policy if isinstance(policy, Mapping) else {}
    base = list(policy.get("allowed_sensitivity", ["public", "internal"]))
    per_stage = policy.get("stages") if isinstance(policy.get("stages"), Mapping) else {}
    for key in (stage, stage.split("@", 1)[0]):
        extra = per_stage.get(key) if per_stage else None
        if extra:
            base += list(extra)
    return tuple(dict.fromkeys(base))


def signer_role(manifest: DatasetManifest) -> str:
    """The role a manifest's signer needs: the kind of record decides, not a field the signer chose.

    A source dataset (no producing run) is published by a data steward; a derived one by the
    trainer key that signed the run producing it.
    """
    return "trainer" if manifest.produced_by is not None else "data-steward"


def structure_problem(entry: Entry, reg: Registry) -> str | None:
    """The role-matrix rules a manifest must meet before any signature or ledger record is looked at."""
    m = entry.manifest
    kinds = {e.manifest.produced_by is not None for e in reg.entries.get(m.name, [entry])}
    if len(kinds) > 1:
        return (f"dataset '{m.name}' mixes source and derived versions; a derived dataset is registered under "
                "its own name (a stage's 'register:'), a source one by a data steward")
    if m.produced_by is None:
        if m.approval != "required":
            return ("a source dataset needs an approver's approval; 'approval: inherited' is only for derived "
                    "datasets whose parents are approved")
        return None
    produced = m.produced_by
    if not isinstance(produced, Mapping) or not produced.get("run") or not produced.get("stage"):
        return "a derived dataset must name the run and stage that produced it (produced_by)"
    if m.approval == "inherited" and not m.parents:
        return "it inherits approval but names no parents"
    if m.approval not in ("inherited", "required"):
        return f"approval '{m.approval}': expected 'required' or 'inherited'"
    return None


def ledger_problem(entry: Entry, index: Any) -> str | None:
    """What the ledger must hold for a manifest (the local ledger index answers; verify re-checks)."""
    m = entry.manifest
    if _sha(entry.raw) not in index.logged.get("manifest_sha256", {}):
        return "no ledger record registers this manifest (it was changed or never registered)"
    if m.produced_by is not None:
        producer = [m.produced_by.get("run"), m.produced_by.get("stage")]
        if not any(hit[:2] == producer for hit in index.attestations_of(m.path, m.id)):
            return (f"no attestation in the ledger shows stage '{m.produced_by.get('stage')}' of run "
                    f"'{m.produced_by.get('run')}' producing {m.path} with digest {m.id[:19]}…")
    return None


def _key_for(trust: Any, ledger_index: Any, keyid: str, role: str, at: datetime, kind: str, sha: str) -> Any:
    """The public key to check a dataset record's signature with.

    With a ledger, the record must be logged there and its signer is judged by the trust state at
    that position (a key revoked before it signs nothing valid, whatever time it claims);
    without one, by ``trust.json`` at the claimed time.
    """
    if ledger_index is not None and ledger_index.trust_sha256 is not None:
        pos = ledger_index.logged.get(kind, {}).get(sha)
        if pos is None:
            raise SignatureError("no ledger record logs it")
        return ledger_index.trust_history().check(keyid, role, at, pos)
    return trust.check(keyid, role, at)


def approval_problem(entry: Entry, trust: Any, reg: Registry | None = None,
                     ledger_index: Any = None) -> str | None:
    """Why the dataset may not be used (None when its approval is valid)."""
    man = entry.manifest
    if man.approval == "inherited" and man.produced_by is not None and man.parents:
        if reg is None:
            return None
        for parent in man.parents:
            try:
                p = reg.resolve(parent)
            except DatasetError:
                return f"parent {parent} is unknown"
            why = structure_problem(p, reg) or approval_problem(p, trust, reg, ledger_index)
            if why:
                return f"parent {parent}: {why}"
        return None
    if entry.approval is None or entry.approval_envelope is None:
        return "not approved; run 'certus dataset approve " + man.ref + "' with an approver key"
    if entry.approval.get("dataset") != man.id or entry.approval.get("manifest_sha256") != _sha(entry.raw):
        return "its approval is for a different manifest (re-approve this version)"
    if trust is not None:
        try:
            at = datetime.strptime(entry.approval["approved_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            for sig in entry.approval_envelope.signatures:
                pub = _key_for(trust, ledger_index, sig.keyid, "approver", at, "approval_sha256",
                               _sha(entry.approval_raw or b""))
                verify_envelope(entry.approval_envelope, {sig.keyid: pub}, APPROVAL_TYPE)
        except (SignatureError, KeyError, ValueError) as e:
            return f"approval signature invalid: {e}"
        if {s.keyid for s in entry.approval_envelope.signatures} & {s.keyid for s in entry.envelope.signatures}:
            return "approved by the key that registered it (self-approval)"
    return None


def check_use(reg: Registry, ref: str, stage: str, config: Mapping[str, Any], digest_now: str | None,
              trust: Any, today: date | None = None, ledger_index: Any = None) -> DatasetUse:
    """Every check a consuming stage needs; raises :class:`DatasetError` naming the rule."""
    entry = reg.resolve(ref)
    man = entry.manifest
    where = f"stage '{stage}': dataset {man.ref} (v{man.version})"
    why = structure_problem(entry, reg) or (ledger_problem(entry, ledger_index) if ledger_index is not None
                                            else None)
    if why:
        raise DatasetError(f"{where}: manifest {entry.path}: {why}")
    if trust is not None:
        role = signer_role(man)
        try:
            at = datetime.strptime(man.registered, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            for sig in entry.envelope.signatures:
                pub = _key_for(trust, ledger_index, sig.keyid, role, at, "manifest_sha256", _sha(entry.raw))
                verify_envelope(entry.envelope, {sig.keyid: pub}, MANIFEST_TYPE)
        except (SignatureError, ValueError) as e:
            raise DatasetError(f"{where}: manifest {entry.path} does not verify: {e}") from e
    if digest_now is None:
        raise DatasetError(f"{where}: {man.path} is missing; run 'certus dataset checkout {man.ref}' or "
                           "'certus dataset pull'")
    if digest_now != man.id:
        raise DatasetError(f"{where}: {man.path} was modified: its bytes hash to {digest_now[:19]}…, the manifest "
                           f"says {man.id[:19]}…; restore it ('certus dataset checkout {man.ref}') or register "
                           "the new data as a new version")
    why = approval_problem(entry, trust, reg, ledger_index)
    if why:
        raise DatasetError(f"{where}: {why}")
    today = today or datetime.now(UTC).date()
    if date.fromisoformat(man.expires) < today:
        raise DatasetError(f"{where}: retention expired on {man.expires}; the data may no longer be used")
    allowed = allowed_sensitivity(config, stage)
    if man.sensitivity not in allowed:
        raise DatasetError(f"{where}: sensitivity '{man.sensitivity}' is not allowed for this stage by policy "
                           f"(allowed: {', '.join(allowed)}; set certus.policy.stages.{stage.split('@')[0]} in "
                           "conf/config.yaml to allow it)")
    return DatasetUse(ref=ref, manifest=man, manifest_sha256=_sha(entry.raw))
