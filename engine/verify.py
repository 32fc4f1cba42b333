"""``certus verify``: re-check all provenance offline and name exactly what fails.

Checks, in order:

1. the trust file parses;
2. the ledger's structure: every frame, leaf hash, the RFC 6962 root against the signed
   checkpoint, every historical checkpoint's signature (ledger role), torn tails;
3. consistency with the last checkpoint this verifier saw (kept under ``$CERTUS_HOME/witness``,
   outside the workspace, like Go's checksum-database client), so a truncated, rewritten or
   forked history is caught even when re-signed; the remembered checkpoint then advances;
4. every entry: a known DSSE payloadType, each signature by a key the trust file grants the
   role that payload needs, valid (not expired, not revoked) at the record's time;
5. run records: the previous-record hash chain; each attestation's presence, digest, DSSE
   signature, payloadType, and that its statement is for this stage of this run with exactly
   the outputs the record lists (a replayed attestation fails here); the Merkle root over the
   attestations and each attestation's inclusion proof;
6. with ``--artifacts``: workspace outputs re-hashed (no stat cache) against ``certus.lock`` and
   the attestations, and every attested cache object re-hashed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from engine import merkle
from engine.dsse import Envelope, verify_envelope
from engine.errors import EngineError, SignatureError
from engine.records import EVENT_ROLES, EVENT_TYPE, RUN_TYPE
from engine.statement import PAYLOAD_TYPE, PROVENANCE_TYPE, STATEMENT_TYPE
from engine.trust import TrustStore
from engine.workspace import Workspace

__all__ = ["VerifyReport", "verify_workspace"]

PROGRESS_FROM = 1000  # ledger entries from which verify says what it is doing (it takes seconds)


@dataclass
class VerifyReport:
    checked: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def merge(self, other: VerifyReport) -> None:
        for k, n in other.checked.items():
            self.count(k, n)
        self.failures.extend(other.failures)
        self.notes.extend(other.notes)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": dict(sorted(self.checked.items())), "failures": self.failures,
                "notes": self.notes}


def _parse_time(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _ledger_verifiers(trust: TrustStore) -> list[Any]:
    from engine.note import Verifier

    out = []
    for entry in trust.entries:
        if "ledger" in entry.roles:
            out.append(Verifier(name=entry.name, public_key=entry.public_key.raw))
    return out


def _check_signatures(env: Envelope, trust: TrustStore, role: str, at: datetime, where: str,
                      report: VerifyReport) -> bool:
    """Check every signature; False when a signer is not trusted for ``role`` at ``at``."""
    trusted = True
    for sig in env.signatures:
        try:
            pub = trust.check(sig.keyid, role, at)
        except SignatureError as e:
            report.fail(f"{where}: signature keyid {sig.keyid[:16]}…: {e}")
            trusted = False
            continue
        one = env if len(env.signatures) == 1 else Envelope(env.payload_type, env.payload, (sig,))
        try:
            verify_envelope(one, {sig.keyid: pub}, env.payload_type)
            report.count("signatures")
        except SignatureError as e:
            report.fail(f"{where}: signature keyid {sig.keyid[:16]}…: {e}")
    return trusted


@dataclass
class _Slice:
    """What one contiguous slice of ledger entries contributes (built in a worker process)."""

    report: VerifyReport = field(default_factory=VerifyReport)
    runs: list[tuple[int, str, Any, str, str]] = field(default_factory=list)  # index, where, previous, own, id
    logged: dict[str, set[str]] = field(default_factory=dict)  # dataset event digests
    latest_outs: dict[str, tuple[str, str]] = field(default_factory=dict)
    attested: list[tuple[str, str, str]] = field(default_factory=list)
    times: dict[int, datetime] = field(default_factory=dict)  # entry index -> the time it was signed at

    @classmethod
    def concat(cls, parts: list[_Slice]) -> _Slice:
        """The slices of consecutive entries as one, in entry order."""
        out = cls()
        for part in parts:
            out.report.merge(part.report)
            out.runs.extend(part.runs)
            for k, v in part.logged.items():
                out.logged.setdefault(k, set()).update(v)
            out.latest_outs.update(part.latest_outs)
            out.attested.extend(part.attested)
            out.times.update(part.times)
        return out


@dataclass(frozen=True)
class _Context:
    prov: Any
    trust: TrustStore
    run: str | None


def _check_entries(ctx: _Context, part: Sequence[tuple[int, bytes]]) -> _Slice:
    from engine.provenance import sha256_hex

    out = _Slice()
    report = out.report
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
        if env.payload_type == RUN_TYPE:
            where += f" (run {payload.get('run_id', '?')})"
            role, at_text = "trainer", payload.get("finished") or payload.get("started", "")
        elif env.payload_type == EVENT_TYPE:
            where += f" (event {payload.get('kind', '?')} {payload.get('subject', '')})"
            role, at_text = EVENT_ROLES.get(payload.get("kind", ""), "trainer"), payload.get("time", "")
            details = payload.get("details") or {}
            for k in ("manifest_sha256", "approval_sha256"):
                if isinstance(details, dict) and details.get(k):
                    out.logged.setdefault(k, set()).add(str(details[k]))
        else:
            report.fail(f"{where}: unknown payloadType '{env.payload_type}'; expected {RUN_TYPE} or {EVENT_TYPE}")
            continue
        try:
            at = _parse_time(str(at_text))
        except ValueError:
            report.fail(f"{where}: unreadable time '{at_text}'")
            continue
        _check_signatures(env, ctx.trust, role, at, where, report)
        out.times[index] = at
        report.count("records")
        if env.payload_type != RUN_TYPE:
            continue
        run_id = str(payload.get("run_id", "?"))
        out.runs.append((index, where, payload.get("previous"), sha256_hex(raw), run_id))
        if ctx.run is not None and run_id != ctx.run:
            continue
        _verify_run(ctx.prov, payload, ctx.trust, at, where, report, out.latest_outs, out.attested)
    return out


def verify_workspace(ws: Workspace, *, run: str | None = None, artifacts: bool = False,
                     update_witness: bool = True, progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Check everything (see the module docstring); ``progress`` hears of each long phase."""
    from engine.ledger import Ledger
    from engine.parallel import background, cpu_count, fork_map

    def say(msg: str) -> None:  # only where the wait is long enough to wonder about
        if progress is not None and len(raws) >= PROGRESS_FROM:
            progress(msg)

    from engine.provenance import Provenance, ledger_dir, witness_path

    report = VerifyReport()
    prov = Provenance(ws)
    try:
        trust = prov.trust()
        report.count("trust file")
    except EngineError as e:
        report.fail(str(e))
        return report
    verifiers = _ledger_verifiers(trust)
    ldir = ledger_dir(ws)
    if not os.path.isdir(ldir):
        report.fail(f"{os.path.relpath(ldir, ws.root)}: no ledger; run 'certus repro' with a trust file first")
        return report
    try:
        ledger = Ledger.open(ldir, origin=prov._origin(), create=False)
    except EngineError as e:
        report.fail(str(e))
        return report
    rel = os.path.relpath(ldir, ws.root)
    # The structure audit (every frame and historical checkpoint) runs in a child process while
    # this one checks the entries' signatures, records and attestations.
    def audit() -> tuple[list[str], list[Any]]:
        return ledger.verify_structure(*verifiers), ledger.checkpoint_signers

    structure_job = background(audit)
    try:
        raws: list[bytes] = []
        try:
            raws.extend(ledger.entries())
        except EngineError as e:  # a damaged ledger: check what still reads, and say where reading stopped
            report.fail(f"{rel}: entries unreadable past entry {len(raws)}: {e}".replace(ldir, rel))
        say(f"checking {len(raws):,} ledger entries (signatures, run records, attestations) and every "
            f"checkpoint, on {cpu_count()} core(s)")
        ctx = _Context(prov, trust, run)
        slices = fork_map(lambda part: _check_entries(ctx, part), list(enumerate(raws)))
        structure, checkpoint_signers = structure_job.result()
    finally:
        structure_job.cancel()
    for problem in structure:
        report.fail(problem.replace(ldir, rel))
    report.count("ledger entries", ledger.size)
    report.count("checkpoints")

    current = _check_witness(ledger, witness_path(ws), verifiers, rel, report)

    entries = _Slice.concat(slices)
    report.merge(entries.report)
    previous_run: str | None = None
    proven = {len(raws) - 1} if raws else set()
    for index, where, claimed, own, run_id in entries.runs:
        if claimed != previous_run:
            report.fail(f"{where}: previous-record hash {str(claimed)[:16]}… does not match the "
                        f"preceding run record ({str(previous_run)[:16]}…): the chain of runs is broken")
        else:
            report.count("run chain links")
        previous_run = own
        if run_id == run:
            proven.add(index)
    if not structure:
        _check_inclusion(ledger, raws, sorted(proven), report)
    _check_checkpoint_keys(trust, checkpoint_signers, entries.times, report, ldir, rel)

    if run is None:
        _verify_datasets(ws, trust, entries.logged, report)
    if run is not None and run not in {r[4] for r in entries.runs}:
        report.fail(f"run '{run}': not in the ledger; see 'certus log'")
    if artifacts:
        say("re-hashing workspace outputs and attested cache objects")
        _verify_artifacts(ws, entries.latest_outs, entries.attested, report)
    if update_witness and report.ok and current is not None:
        from engine.fsutil import atomic_write

        wpath = witness_path(ws)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        seen_now = {"origin": current.origin, "size": current.size, "root": current.root_hash.hex(),
                    "workspace": os.path.realpath(ws.root)}
        atomic_write(str(wpath), json.dumps(seen_now).encode())
    return report


def _check_witness(ledger: Any, wpath: Any, verifiers: list[Any], rel: str, report: VerifyReport) -> Any:
    """The ledger must extend the last checkpoint this verifier saw; returns the checkpoint to remember."""
    from engine.note import Checkpoint

    seen = None
    if wpath.exists():
        try:
            w = json.loads(wpath.read_text())
            seen = Checkpoint(origin=w["origin"], size=int(w["size"]), root_hash=bytes.fromhex(w["root"]))
        except (ValueError, KeyError, EngineError) as e:
            report.notes.append(f"{wpath}: unreadable remembered checkpoint ({e}); starting afresh")
    if seen is None:
        return ledger.checkpoint()
    try:
        current = ledger.witness(seen, *verifiers)
        report.count("consistency with last seen checkpoint")
        return current
    except EngineError as e:
        report.fail(f"{rel}: not consistent with the checkpoint this verifier saw before "
                    f"(size {seen.size}, root {seen.root_hash.hex()[:16]}…): {e}")
        return None


def _check_checkpoint_keys(trust: TrustStore, signers: list[Any], times: dict[int, datetime],
                           report: VerifyReport, ldir: str, rel: str) -> None:
    """Each checkpoint's ledger key must be valid (window, revocation) when the checkpoint was made.

    A checkpoint carries no time of its own; it is made as its last entry is appended, so it is
    judged at that entry's signed time (a checkpoint over an unreadable entry is already a failure).
    """
    from engine.note import key_id

    bounded = {(e.name, key_id(e.name, e.public_key.raw)): e for e in trust.entries
               if "ledger" in e.roles and (e.revoked or e.not_before or e.not_after)}
    if not bounded:
        return
    for where, size, sigs in signers:
        at = times.get(size - 1)
        if at is None:
            continue
        for name, kid in sigs:
            entry = bounded.get((name, kid))
            if entry is None:
                continue
            try:
                trust.check(entry.keyid, "ledger", at)
            except SignatureError as e:
                report.fail(f"{where.replace(ldir, rel)}: checkpoint of size {size} signed by '{name}': {e}")


def _check_inclusion(ledger: Any, raws: list[bytes], indices: list[int], report: VerifyReport) -> None:
    """RFC 9162 audit paths against the signed checkpoint for the newest entry and a requested run.

    The structure audit's root recomputed from every leaf already proves every entry's inclusion.
    """
    cp = ledger.checkpoint()
    if cp is None or not indices:
        return
    try:
        leaves = ledger.leaf_hashes()
    except EngineError as e:
        report.fail(str(e))
        return
    for index in indices:
        proof = merkle.inclusion_proof(index, leaves)
        try:
            merkle.verify_inclusion(merkle.leaf_hash(raws[index]), index, cp.size, proof.hashes, cp.root_hash)
            report.count("ledger inclusion proofs")
        except EngineError as e:
            report.fail(f"ledger entry {index}: inclusion proof against the checkpoint fails: {e}")


def _verify_run(prov: Any, rec: dict[str, Any], trust: TrustStore, at: datetime, where: str,
                report: VerifyReport, latest_outs: dict[str, tuple[str, str]],
                attested: list[tuple[str, str, str]]) -> None:
    from engine.provenance import sha256_hex

    run_id = rec.get("run_id", "?")
    listed = rec.get("attestations", [])
    try:
        with open(prov.attestation_path(run_id), "rb") as f:
            lines = [ln for ln in f.read().split(b"\n") if ln]
    except FileNotFoundError:
        lines = []
    by_digest = {sha256_hex(ln): ln for ln in lines}
    bundle: dict[str, bytes] | None = None  # parsed by stage only when something does not match
    envelopes: list[bytes] = []
    for a in listed:
        stage = a.get("stage", "?")
        w = f"{where}: attestation for stage '{stage}'"
        raw = by_digest.get(str(a.get("sha256")))
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
        if not _check_signatures(env, trust, "trainer", at, w, report):
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
        subjects = {s["name"]: "sha256:" + s["digest"]["sha256"] for s in stmt.get("subject", [])}
        expected = dict(rec.get("stages", {}).get(stage, {}).get("outs", {}))
        if ext.get("stage") != stage or inv != run_id or subjects != expected:
            report.fail(f"{w}: statement is for stage '{ext.get('stage')}' of run '{inv}' with outputs "
                        f"{sorted(subjects)}; the record lists outputs {sorted(expected)} "
                        "(an attestation replayed from another artifact?)")
            continue
        for path, digest in subjects.items():
            latest_outs[path] = (digest, run_id)
            attested.append((path, digest, run_id))
        report.count("attestations")
    extra_lines = set(by_digest) - {str(a.get("sha256")) for a in listed}
    if bundle is None and extra_lines:
        bundle = prov.read_attestations(run_id)
    extra = sorted(set(bundle or {}) - {a.get("stage") for a in listed})
    for stage in extra:
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


def _verify_artifacts(ws: Workspace, latest_outs: dict[str, tuple[str, str]],
                      attested: list[tuple[str, str, str]], report: VerifyReport) -> None:
    from engine.cache import ObjectCache
    from engine.digest import Digest
    from engine.hashing import Hasher
    from engine.lockfile import LockFile

    lock = LockFile.load(ws.lock_path)
    hasher = Hasher(ws.root)  # no stat cache: every byte is re-read
    paths = {p: rec for entry in lock.stages.values() for p, rec in entry.outs.items()}
    have = hasher.hash_many(list(paths))
    for path, rec in sorted(paths.items()):
        e = have[path]
        if e is None:
            report.notes.append(f"workspace file {path}: missing (restore it with 'certus checkout')")
            continue
        if str(e.digest) != rec["digest"]:
            report.fail(f"workspace file {path}: sha256 {e.digest.hex[:16]}… but certus.lock records "
                        f"{str(rec['digest'])[7:23]}…: the file was modified after it was produced")
        newest = latest_outs.get(path)
        if newest is not None and newest[0] != rec["digest"]:
            report.fail(f"certus.lock output {path}: {str(rec['digest'])[:23]}… is not what the latest "
                        f"attestation (run {newest[1]}) says ({newest[0][:23]}…)")
        report.count("workspace files re-hashed")
    cache = ObjectCache(os.path.join(ws.dot, "cache"))
    seen: set[str] = set()
    for path, digest, run_id in attested:  # every version any run attested, not only the newest
        if digest in seen:
            continue
        seen.add(digest)
        d = Digest.parse(digest)
        for obj in _objects(cache, d, paths.get(path, {}).get("kind", "file")):
            if not cache.has(obj):
                continue
            try:
                cache.check(obj)
                report.count("cache objects re-hashed")
            except EngineError as e:
                report.fail(f"cache object for {path} (run {run_id}): {e}")


def _objects(cache: Any, d: Any, kind: str) -> Iterator[Any]:
    try:
        yield from cache.objects_of(d, kind)
    except EngineError:
        yield d


def _verify_datasets(ws: Workspace, trust: TrustStore, logged: dict[str, set[str]], report: VerifyReport) -> None:
    """Each manifest and approval: signature, role, and a matching ledger event."""
    from engine.datasets import APPROVAL_TYPE, MANIFEST_TYPE, Registry
    from engine.provenance import sha256_hex

    try:
        reg = Registry.load(ws.root)
    except EngineError as e:
        report.fail(str(e))
        return
    for name in reg.names():
        for e in reg.entries[name]:
            m = e.manifest
            where = f"dataset {m.ref} (v{m.version}) manifest {e.path}"
            role = "trainer" if m.produced_by else "data-steward"
            try:
                at = _parse_time(m.registered)
            except ValueError:
                report.fail(f"{where}: unreadable registration time '{m.registered}'")
                continue
            if e.envelope.payload_type != MANIFEST_TYPE:
                report.fail(f"{where}: payloadType '{e.envelope.payload_type}', expected '{MANIFEST_TYPE}'")
            else:
                _check_signatures(e.envelope, trust, role, at, where, report)
            if sha256_hex(e.raw) not in logged.get("manifest_sha256", set()):
                report.fail(f"{where}: no ledger registration event carries this manifest's digest "
                            f"({sha256_hex(e.raw)[:16]}…): it was changed or never registered")
            report.count("dataset manifests")
            if e.approval_envelope is not None and e.approval_raw is not None:
                w = f"dataset {m.ref} (v{m.version}) approval"
                try:
                    at = _parse_time(str((e.approval or {}).get("approved_at", "")))
                except ValueError:
                    report.fail(f"{w}: unreadable approval time")
                    continue
                if e.approval_envelope.payload_type != APPROVAL_TYPE:
                    report.fail(f"{w}: payloadType '{e.approval_envelope.payload_type}', expected '{APPROVAL_TYPE}'")
                else:
                    _check_signatures(e.approval_envelope, trust, "approver", at, w, report)
                if (e.approval or {}).get("manifest_sha256") != sha256_hex(e.raw):
                    report.fail(f"{w}: approves a different manifest than {e.path}")
                if sha256_hex(e.approval_raw) not in logged.get("approval_sha256", set()):
                    report.fail(f"{w}: no ledger approval event carries this approval's digest")
                report.count("dataset approvals")
