"""``certus verify``, per entry: signatures judged at their ledger position, run records and attestations.

Runs in forked workers over contiguous slices of the ledger (:mod:`engine.store.parallel`); each slice
returns a :class:`Slice` that the parent merges in entry order. Every signature is judged by
:class:`engine.provenance.trust_log.TrustHistory` at the position of the ledger entry that vouches for it:
a run record's attestations at the record's index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.errors import SignatureError
from engine.provenance import merkle
from engine.provenance.drift_records import drift_detail, drift_time, is_drift_report
from engine.provenance.dsse import Envelope, verify_envelope
from engine.provenance.gate_records import WAIVER_TYPE, claimed_time, gate_result_detail, is_gate_result
from engine.provenance.records import EVENT_ROLES, EVENT_TYPE, ROLE_FOR_PREDICATE, ROLE_FOR_TYPE, RUN_TYPE
from engine.provenance.release_records import RELEASE_TYPE, VSA_PREDICATE, is_vsa
from engine.provenance.statement import PAYLOAD_TYPE, PROVENANCE_TYPE, STATEMENT_TYPE, subject_digests
from engine.provenance.trust_log import GENESIS, TRUST_TYPE


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["Judge", "Report", "Slice", "check_entries", "check_signatures", "parse_time"]


class Judge(Protocol):
    def check(self, keyid: str, role: str, at: datetime, index: int) -> Any: ...


@dataclass
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    witnessed: dict[str, Any] | None = None  # engine.provenance.witness_policy: what cosignatures vouch for

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def merge(self, other: Report) -> None:
        for k, n in other.checked.items():
            self.count(k, n)
        self.failures.extend(other.failures)
        self.notes.extend(other.notes)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        out = {"ok": self.ok, "checked": dict(sorted(self.checked.items())), "failures": self.failures,
               "notes": self.notes}
        return out | ({"witnessed": self.witnessed} if self.witnessed is not None else {})


def parse_time(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def check_signatures(env: Envelope, judge: Judge, role: str, at: datetime, index: int, where: str,
                     report: Report, *, covered: bool = False) -> bool:
    """Check every signature; False when a signer is not trusted for ``role`` at entry ``index``.

    ``covered``: the envelope's exact bytes are listed in a record this signer's verified signature
    covers, so only the signer's trust is judged here, not the signature itself again.
    """
    trusted = True
    for sig in env.signatures:
        try:
            pub = judge.check(sig.keyid, role, at, index)
        except SignatureError as e:
            report.fail(f"{where}: signature keyid {sig.keyid[:16]}…: {e}")
            trusted = False
            continue
        if covered:
            report.count("signatures covered by their run record's")
            continue
        one = env if len(env.signatures) == 1 else Envelope(env.payload_type, env.payload, (sig,))
        try:
            verify_envelope(one, {sig.keyid: pub}, env.payload_type)
            report.count("signatures")
        except SignatureError as e:
            report.fail(f"{where}: signature keyid {sig.keyid[:16]}…: {e}")
    return trusted


@dataclass
class Slice:
    """What one contiguous slice of ledger entries contributes."""

    report: Report = field(default_factory=Report)
    runs: list[tuple[int, str, Any, str, str]] = field(default_factory=list)  # index, where, previous, own, id
    logged: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)  # sha -> (index, event kind)
    derived_events: dict[str, str] = field(default_factory=dict)  # manifest sha -> run id the event names
    latest_outs: dict[str, tuple[str, str]] = field(default_factory=dict)
    attested: list[tuple[str, str, str]] = field(default_factory=list)  # path, digest, run id
    attestations: dict[str, tuple[str, str, dict[str, str]]] = field(default_factory=dict)  # sha -> run, stage, subj
    restores: list[tuple[str, str, dict[str, str], str, str]] = field(default_factory=list)
    times: dict[int, datetime] = field(default_factory=dict)
    # gate results and waivers (engine.provenance.verify_gates): index, where, sha256, what (a result's checked
    # detail, a waiver's payload, or why a result is unsound), signer keyids, trusted, whether it is a waiver
    gate_entries: list[tuple[int, str, str, dict[str, Any] | str, tuple[str, ...], bool, bool]] = field(
        default_factory=list)
    run_signers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run id -> keyids of its record
    listed_gates: list[tuple[int, str, str, str, str]] = field(default_factory=list)  # a run record's gate_results:
    # index, where, run id, gate, envelope sha256
    # release records, deploy VSAs and registry events (engine.provenance.verify_releases): few, kept whole
    releases: list[tuple[int, str, str, str, dict[str, Any], bool]] = field(default_factory=list)
    # drift reports and their waivers (engine.provenance.verify_drift): index, where, sha256, checked detail or
    # why unsound (a waiver: its event details), signer keyids, trusted, whether it is a waiver
    drift_entries: list[tuple[int, str, str, dict[str, Any] | str, tuple[str, ...], bool, bool]] = field(
        default_factory=list)
    registered: dict[str, int] = field(default_factory=dict)  # bundle root -> first registry.registered index

    @classmethod
    def concat(cls, parts: list[Slice]) -> Slice:
        out = cls()
        for part in parts:
            out.report.merge(part.report)
            out.runs.extend(part.runs)
            for k, v in part.logged.items():
                for sha, at in v.items():
                    out.logged.setdefault(k, {}).setdefault(sha, at)
            out.derived_events.update(part.derived_events)
            out.latest_outs.update(part.latest_outs)
            out.attested.extend(part.attested)
            out.attestations.update(part.attestations)
            out.restores.extend(part.restores)
            out.times.update(part.times)
            out.gate_entries.extend(part.gate_entries)
            out.run_signers.update(part.run_signers)
            out.listed_gates.extend(part.listed_gates)
            out.releases.extend(part.releases)
            out.drift_entries.extend(part.drift_entries)
            for root, index in part.registered.items():
                out.registered.setdefault(root, index)
        return out


@dataclass(frozen=True)
class Context:
    prov: Any
    judge: Judge
    run: str | None
    specs: Any  # engine.provenance.rederive.SpecSource
    every_signature: bool = False  # also re-check signatures a verified run record already covers


def role_and_time(ptype: str, payload: dict[str, Any], drift: bool | None = None) -> tuple[str, Any] | None:
    """The role a record's kind requires and the time it claims (None: unknown kind).

    ``drift``: whether the statement is a drift report, when the caller has already looked."""
    if ptype == RUN_TYPE:
        return "trainer", payload.get("finished") or payload.get("started", "")
    if ptype == EVENT_TYPE:
        return EVENT_ROLES.get(payload.get("kind", ""), "trainer"), payload.get("time", "")
    if ptype == TRUST_TYPE:
        return ("ledger" if payload.get("kind") == GENESIS else "admin"), payload.get("time", "")
    if ptype in ROLE_FOR_TYPE:  # a gate waiver, a release record
        return ROLE_FOR_TYPE[ptype], payload.get("time", "")
    if ptype == PAYLOAD_TYPE and payload.get("predicateType") == VSA_PREDICATE:
        return ROLE_FOR_PREDICATE[VSA_PREDICATE], (payload.get("predicate") or {}).get("timeVerified", "")
    if ptype == PAYLOAD_TYPE and (is_drift_report(payload) if drift is None else drift):  # answers for the model
        return "trainer", drift_time(payload)
    if ptype == PAYLOAD_TYPE and payload.get("predicateType") in ROLE_FOR_PREDICATE:
        return ROLE_FOR_PREDICATE[payload["predicateType"]], claimed_time(payload)
    return None


UNLINKED = "-"  # a run record without ``previous``: ordered by the ledger alone (its sequencer's position)


def check_entries(ctx: Context, part: Sequence[tuple[int, bytes]]) -> Slice:
    out = Slice()
    report = out.report
    # envelope sha256 -> signer keyids, from run records whose signatures verified in this slice: a gate result
    # a run record lists by digest is authenticated by that signature (its own is checked with every_signature)
    covers: dict[str, tuple[str, ...]] = {}
    for index, raw in part:
        where = f"ledger entry {index}"
        try:
            env = Envelope.from_json_bytes(raw)
            payload = json.loads(env.payload)
            if not isinstance(payload, dict):
                raise ValueError("payload is not a JSON object")
        except (SignatureError, ValueError) as e:
            report.fail(f"{where}: not a DSSE envelope: {e}")
            continue
        own = sha256_hex(raw)
        drift = env.payload_type == PAYLOAD_TYPE and is_drift_report(payload)
        kind = role_and_time(env.payload_type, payload, drift)
        if kind is None:
            report.fail(f"{where}: unknown payloadType '{env.payload_type}'; expected {RUN_TYPE}, {EVENT_TYPE}, "
                        f"{TRUST_TYPE}, {WAIVER_TYPE}, {RELEASE_TYPE} or a gate result or deploy VSA ({PAYLOAD_TYPE})")
            continue
        role, at_text = kind
        gate_kind = env.payload_type == WAIVER_TYPE or (not drift and is_gate_result(payload))
        if env.payload_type == RUN_TYPE:
            where += f" (run {payload.get('run_id', '?')})"
        elif gate_kind:
            where += " (gate waiver)" if env.payload_type == WAIVER_TYPE else " (gate result)"
        elif env.payload_type == RELEASE_TYPE:
            where += f" (release {payload.get('name', '?')}-{payload.get('version', '?')})"
        elif drift:
            where += " (drift report)"
        elif env.payload_type == PAYLOAD_TYPE:
            where += " (deploy verification summary)"
        else:
            where += f" ({'event ' if env.payload_type == EVENT_TYPE else ''}{payload.get('kind', '?')} " \
                     f"{payload.get('subject', '')})"
            details = payload.get("details") or {}
            adopted = ("adopted_sha256",) if payload.get("kind") == "dvc.adopted" else ()  # engine.run.dvc_adopt
            for k in ("manifest_sha256", "approval_sha256", *adopted):
                if isinstance(details, dict) and details.get(k):
                    out.logged.setdefault(k, {}).setdefault(str(details[k]), (index, str(payload.get("kind"))))
            if payload.get("kind") == "registry.registered" and isinstance(details, dict):
                out.registered.setdefault(str(details.get("bundle_root")), index)
            if payload.get("kind") == "dataset.derived" and isinstance(details, dict):
                out.derived_events[str(details.get("manifest_sha256"))] = str(details.get("run_id"))
        try:
            at = parse_time(str(at_text))
        except ValueError:
            report.fail(f"{where}: unreadable time '{at_text}'")
            continue
        signers = tuple(s.keyid for s in env.signatures)
        covered = (not ctx.every_signature and gate_kind and env.payload_type != WAIVER_TYPE
                   and bool(signers) and covers.get(own) == signers)
        failed = len(report.failures)
        trusted = check_signatures(env, ctx.judge, role, at, index, where, report, covered=covered)
        out.times[index] = at
        report.count("records")
        if gate_kind:
            waiver = env.payload_type == WAIVER_TYPE
            out.gate_entries.append((index, where, own, payload if waiver else gate_result_detail(payload),
                                     signers, trusted, waiver))
        if drift:
            detail, why = drift_detail(payload)
            out.drift_entries.append((index, where, own, detail if detail is not None else why, signers,
                                      trusted, False))
        elif env.payload_type == EVENT_TYPE and payload.get("kind") == "drift.waiver":
            details = payload.get("details")
            out.drift_entries.append((index, where, own, details if isinstance(details, dict) else
                                      "its details are not an object", signers, trusted, True))
        if env.payload_type == RELEASE_TYPE or (env.payload_type == PAYLOAD_TYPE and is_vsa(payload)) or (
                env.payload_type == EVENT_TYPE and str(payload.get("kind", "")).startswith("registry.")):
            out.releases.append((index, where, own, env.payload_type, payload, trusted))
        if env.payload_type != RUN_TYPE:
            continue
        run_id = str(payload.get("run_id", "?"))
        out.run_signers[run_id] = signers
        record_ok = trusted and len(report.failures) == failed  # its own signatures verified
        listed = payload.get("gate_results")
        if listed is not None and not (isinstance(listed, list) and all(isinstance(g, dict) for g in listed)):
            report.fail(f"{where}: gate_results is not a list of {{gate, sha256}}")
            listed = []
        for g in listed or ():
            out.listed_gates.append((index, where, run_id, str(g.get("gate")), str(g.get("sha256"))))
            if record_ok:
                covers[str(g.get("sha256"))] = signers
        out.runs.append((index, where, payload.get("previous", UNLINKED), own, run_id))
        _verify_run(ctx, payload, at, index, where, out, signers if record_ok else None)
    return out


def _verify_run(ctx: Context, rec: dict[str, Any], at: datetime, index: int, where: str, out: Slice,
                record_signers: tuple[str, ...] | None = None) -> None:
    """``record_signers``: the keyids whose signatures on the record verified (None: not all did). An
    attestation whose exact bytes the record lists (by digest) and that those same keys signed is
    authenticated by the record's signature; its own is checked again only with ``every_signature``."""
    report, prov = out.report, ctx.prov
    cover = record_signers if record_signers and not ctx.every_signature else None
    run_id = rec.get("run_id", "?")
    listed = rec.get("attestations", [])
    if ctx.run is not None and run_id != ctx.run:  # another run's: only what restored-from may point at
        for a in listed if isinstance(listed, list) else ():
            stage = str(a.get("stage"))
            out.attestations[str(a.get("sha256"))] = (run_id, stage,
                                                      dict(rec.get("stages", {}).get(stage, {}).get("outs", {})))
        return
    try:
        with open(prov.attestation_path(run_id), "rb") as f:
            lines = [ln for ln in f.read().split(b"\n") if ln]
    except FileNotFoundError:
        lines = []
    by_digest = {sha256_hex(ln): ln for ln in lines}
    bundle: dict[str, bytes] | None = None  # parsed by stage only when something does not match
    envelopes: list[bytes] = []
    resolved = None
    for a in listed:
        stage = a.get("stage", "?")
        w = f"{where}: attestation for stage '{stage}'"
        raw = by_digest.get(str(a.get("sha256")))
        listed_bytes = raw is not None
        if raw is None:
            if bundle is None:
                bundle = prov.read_attestations(run_id)
            raw = bundle.get(stage)
            if raw is None:
                report.fail(f"{w}: missing from .certus/provenance/{run_id}.dsse.jsonl")
                continue
            report.fail(f"{w}: envelope digest {sha256_hex(raw)[:16]}… differs from the signed record's "
                        f"{str(a.get('sha256'))[:16]}…")
        envelopes.append(raw)
        try:
            env = Envelope.from_json_bytes(raw)
        except SignatureError as e:
            report.fail(f"{w}: {e}")
            continue
        if env.payload_type != PAYLOAD_TYPE:
            report.fail(f"{w}: payloadType '{env.payload_type}', expected '{PAYLOAD_TYPE}'")
            continue
        covered = listed_bytes and cover is not None and tuple(s.keyid for s in env.signatures) == cover
        if not check_signatures(env, ctx.judge, "trainer", at, index, w, report, covered=covered):
            continue
        try:
            stmt = json.loads(env.payload)
            ext = stmt["predicate"]["buildDefinition"]["externalParameters"]
            inv = stmt["predicate"]["runDetails"]["metadata"]["invocationId"]
        except (ValueError, KeyError, TypeError) as e:
            report.fail(f"{w}: statement unreadable ({e})")
            continue
        if stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PROVENANCE_TYPE:
            report.fail(f"{w}: not an in-toto Statement v1 with SLSA Provenance v1")
        subjects = subject_digests(stmt)
        expected = dict(rec.get("stages", {}).get(stage, {}).get("outs", {}))
        if ext.get("stage") != stage or inv != run_id or subjects != expected:
            report.fail(f"{w}: statement is for stage '{ext.get('stage')}' of run '{inv}' with outputs "
                        f"{sorted(subjects)}; the record lists outputs {sorted(expected)} "
                        "(an attestation replayed from another artifact?)")
            continue
        if resolved is None:
            resolved = ctx.specs.stages(rec)
        _compare_resolved(resolved, stage, ext, w, report)
        for b in stmt["predicate"].get("runDetails", {}).get("byproducts") or ():
            if isinstance(b, dict) and b.get("name") == "restored-from":
                ref_run = str(b.get("uri", "")).removeprefix("certus:run/").rsplit("/", 1)[0]
                out.restores.append((w, stage, subjects, ref_run, str((b.get("digest") or {}).get("sha256"))))
        out.attestations[sha256_hex(raw)] = (run_id, stage, subjects)
        for path, digest in subjects.items():
            out.latest_outs[path] = (digest, run_id)
            out.attested.append((path, digest, run_id))
        report.count("attestations")
    extra_lines = set(by_digest) - {str(a.get("sha256")) for a in listed}
    if bundle is None and extra_lines:
        bundle = prov.read_attestations(run_id)
    for stage in sorted(set(bundle or {}) - {a.get("stage") for a in listed}):
        report.fail(f"{where}: attestation bundle holds stage '{stage}', which the signed record does not list")
    leaves = [merkle.leaf_hash(e) for e in envelopes]
    root = merkle.root(leaves).hex()
    if len(envelopes) == len(listed):
        if root != rec.get("merkle_root"):
            report.fail(f"{where}: Merkle root over attestations {root[:16]}… differs from the record's "
                        f"{str(rec.get('merkle_root'))[:16]}…")
        else:
            report.count("attestation merkle roots")
            for i, proof in enumerate(merkle.inclusion_proofs(leaves)):
                merkle.verify_inclusion(leaves[i], i, len(leaves), proof.hashes, bytes.fromhex(root))
            report.count("attestation inclusion proofs", len(leaves))


def _compare_resolved(resolved: Any, stage: str, ext: dict[str, Any], where: str, report: Report) -> None:
    """The attested cmd and params must be what the committed spec and recorded config resolve to."""
    if isinstance(resolved, str):
        report.notes.append(f"{where}: command not re-derived: {resolved}")
        return
    if stage not in resolved:
        report.fail(f"{where}: the run's spec has no stage '{stage}' (the attestation names a stage the "
                    "committed spec does not define)")
        return
    cmd, params = resolved[stage]
    if ext.get("cmd") != cmd:
        report.fail(f"{where}: attested cmd {str(ext.get('cmd'))[:80]!r} is not what the committed spec and "
                    f"recorded config resolve to ({cmd[:80]!r}): a parse cache or the command was tampered with")
    elif ext.get("params") != params:
        report.fail(f"{where}: attested params differ from what the committed spec and recorded config resolve "
                    "to: a parse cache or the params file was tampered with")
    else:
        report.count("commands re-derived")
