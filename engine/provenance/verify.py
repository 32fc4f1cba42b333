"""``certus verify``: re-check all provenance offline and name exactly what fails.

Checks, in order:

1. the trust file parses, and is the trust state the ledger records (its first entry pins a
   trust genesis; later changes are admin-signed records): a silent edit is named;
2. the ledger's structure: every frame, leaf hash, the RFC 6962 root against the signed
   checkpoint, every historical checkpoint's signature (a key that held the ledger role), torn tails;
3. consistency with the last checkpoint this machine saw (kept under ``$CERTUS_HOME/witness``,
   outside the workspace; every append and clean verify here advances it), so a truncated,
   rewritten or forked history is caught even when re-signed; with nothing remembered it says so;
4. every entry: a known payloadType, each signature by a key that the trust state *at that
   entry's position* grants the role the record's kind needs (verify_runs); claimed times that
   run backwards along the ledger;
5. run records: the previous-record hash chain; each attestation's presence, digest, signature,
   and that its statement is for this stage of this run with exactly the recorded outputs; the
   command and params re-derived from the committed spec and recorded config (rederive); the
   Merkle root and inclusion proofs; each restored-from naming a real ledger attestation;
6. datasets (verify_datasets): the role matrix for manifests and approvals; every output
   ``certus.lock`` records is attested by some run;
7. with ``--artifacts``: workspace outputs re-hashed (no stat cache) against ``certus.lock`` and
   the attestations, and every attested cache object re-hashed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from engine.errors import EngineError, SignatureError
from engine.provenance import merkle
from engine.provenance.trust import TrustStore
from engine.provenance.trust_log import CLOCK_SKEW, TRUST_TYPE, TrustHistory
from engine.provenance.verify_runs import UNLINKED, Context, Report, Slice, check_entries
from engine.store.workspace import Workspace

__all__ = ["VerifyReport", "checkpoint_verifiers", "trust_history_of", "verify_workspace"]

PROGRESS_FROM = 1000  # ledger entries from which verify says what it is doing (it takes seconds)
VerifyReport = Report


class _FileTrust:
    """Judges against trust.json alone: only for a ledger that has not pinned a trust state."""

    def __init__(self, store: TrustStore) -> None:
        self.store = store

    def check(self, keyid: str, role: str, at: datetime, index: int) -> Any:
        return self.store.check(keyid, role, at)


def trust_history_of(raws: list[bytes]) -> TrustHistory:
    """Replay the ledger's trust records (found without decoding the other entries)."""
    from engine.provenance.dsse import Envelope

    marker = TRUST_TYPE.encode()
    records = []
    for i, raw in enumerate(raws):
        if marker not in raw:
            continue
        try:
            env = Envelope.from_json_bytes(raw)
            if env.payload_type == TRUST_TYPE:
                payload = json.loads(env.payload)
                if isinstance(payload, dict):
                    records.append((i, payload))
        except (SignatureError, ValueError):
            continue  # reported by the entry checks
    return TrustHistory.from_records(records)


def checkpoint_verifiers(history: TrustHistory, trust: TrustStore, origin: str) -> list[Any]:
    """Note verifiers for every key that ever held the ledger role (by origin and by key name)."""
    from engine.provenance.note import Verifier

    keys = history.ever("ledger") if history.pinned else [e for e in trust.entries if "ledger" in e.roles]
    out = []
    for e in keys:
        out.append(Verifier(name=origin, public_key=e.public_key.raw))
        if e.name != origin:
            out.append(Verifier(name=e.name, public_key=e.public_key.raw))
    return out


def verify_workspace(ws: Workspace, *, run: str | None = None, artifacts: bool = False,
                     update_witness: bool = True, progress: Callable[[str], None] | None = None,
                     every_signature: bool = False, witnesses: dict[str, Any] | None = None) -> Report:
    """Check everything (see the module docstring); ``progress`` hears of each long phase."""
    from engine.provenance.recorder import Provenance, ledger_dir

    report = Report()
    prov = Provenance(ws)
    try:
        trust = prov.trust()
        report.count("trust file")
    except EngineError as e:
        report.fail(str(e))
        return report
    ldir = ledger_dir(ws)
    if not os.path.isdir(ldir):
        report.fail(f"{os.path.relpath(ldir, ws.root)}: no ledger; run 'certus repro' with a trust file first")
        return report
    with prov.ledger_lock(exclusive=False):  # a consistent snapshot: no append half seen
        _verify_ledger(ws, prov, trust, ldir, report, run=run, artifacts=artifacts,
                       update_witness=update_witness, progress=progress, every_signature=every_signature,
                       witnesses=witnesses)
    return report


def _verify_ledger(ws: Workspace, prov: Any, trust: TrustStore, ldir: str, report: Report, *, run: str | None,
                   artifacts: bool, update_witness: bool, progress: Callable[[str], None] | None,
                   every_signature: bool = False, witnesses: dict[str, Any] | None = None) -> None:
    from engine.provenance.ledger import Ledger
    from engine.provenance.recorder import remember_checkpoint, witness_path
    from engine.provenance.rederive import SpecSource
    from engine.store.parallel import background, cpu_count, fork_map

    def say(msg: str) -> None:  # only where the wait is long enough to wonder about
        if progress is not None and len(raws) >= PROGRESS_FROM:
            progress(msg)

    try:
        ledger = Ledger.open(ldir, origin=prov._origin(), create=False)
    except EngineError as e:
        report.fail(str(e))
        return
    rel = os.path.relpath(ldir, ws.root)
    raws: list[bytes] = []
    try:
        raws.extend(ledger.entries_unchecked())  # every frame is checked by the audit below
    except EngineError as e:  # a damaged ledger: check what still reads, and say where reading stopped
        report.fail(f"{rel}: entries unreadable past entry {len(raws)}: {e}".replace(ldir, rel))
    history = trust_history_of(raws)
    for problem in history.problems:
        report.fail(problem)
    if raws and not history.pinned:
        report.fail("ledger entry 0: not a trust genesis record: the ledger does not pin the trust state it "
                    "started from, so no signature in it can be judged by its position")
    judge: Any = history if history.pinned else _FileTrust(trust)
    if history.pinned and (why := history.diff_file(trust)):
        report.fail(why)
    verifiers = checkpoint_verifiers(history, trust, ledger.origin)

    # The structure audit (every frame and historical checkpoint) runs in a child process while
    # this one checks the entries' signatures, records and attestations.
    def audit() -> tuple[list[str], list[Any]]:
        return ledger.verify_structure(*verifiers), ledger.checkpoint_signers

    structure_job = background(audit)
    try:
        say(f"checking {len(raws):,} ledger entries (signatures, run records, attestations) and every "
            f"checkpoint, on {cpu_count()} core(s)")
        ctx = Context(prov, judge, run, SpecSource(ws.root), every_signature)
        slices = fork_map(lambda part: check_entries(ctx, part), list(enumerate(raws)))
        structure, checkpoint_signers = structure_job.result()
    finally:
        structure_job.cancel()
    for problem in structure:
        report.fail(problem.replace(ldir, rel))
    report.count("ledger entries", ledger.size)
    report.count("checkpoints")

    current = _check_witness(ledger, witness_path(ws), verifiers, rel, report)
    from engine.provenance.witness_policy import check_witnesses  # cosignatures and the witness policy

    check_witnesses(ledger, history.latest if history.pinned else trust, report, root=ws.root, rel=rel,
                    overrides=witnesses)

    entries = Slice.concat(slices)
    report.merge(entries.report)
    _check_chain(entries, run, report)
    _check_times(entries.times, report)
    proven = {len(raws) - 1} if raws else set()
    proven |= {index for index, _, _, _, run_id in entries.runs if run_id == run}
    if not structure:
        _check_inclusion(ledger, raws, sorted(proven), report)
    _check_checkpoint_keys(judge, history, trust, ledger.origin, checkpoint_signers, entries.times, report,
                           ldir, rel)
    _check_restores(entries, report)
    if entries.gate_entries:
        from engine.provenance.verify_gates import verify_gates

        verify_gates(entries, report)
    if entries.releases:
        import hashlib

        from engine.provenance.verify_releases import verify_releases

        verify_releases(entries, {hashlib.sha256(r).hexdigest(): i for i, r in enumerate(raws)}, report)
    if entries.drift_entries:
        from engine.provenance.verify_drift import verify_drift

        verify_drift(entries, report)
    if run is None:
        from engine.provenance.verify_datasets import verify_datasets

        verify_datasets(ws, judge, entries, max(len(raws) - 1, 0), report)
        _check_lock_attested(ws, entries, report)
    if run is not None and run not in {r[4] for r in entries.runs}:
        report.fail(f"run '{run}': not in the ledger; see 'certus log'")
    if artifacts:
        say("re-hashing workspace outputs and attested cache objects")
        _verify_artifacts(ws, entries.latest_outs, entries.attested, report)
    if update_witness and report.ok and current is not None:
        remember_checkpoint(ws, current)


def _check_chain(entries: Slice, run: str | None, report: Report) -> None:
    previous_run: str | None = None
    first: dict[str, str] = {}
    for _, where, claimed, own, run_id in entries.runs:
        if run_id in first:
            report.fail(f"{where}: run '{run_id}' is recorded a second time (first in {first[run_id]}): a run is "
                        "recorded exactly once; a replayed or duplicated record")
        first.setdefault(run_id, where.split(" (")[0])
        if claimed == UNLINKED:  # no link: the ledger's (sequenced, checkpointed) order is the order
            report.count("run records ordered by the ledger")
        elif claimed != previous_run:
            report.fail(f"{where}: previous-record hash {str(claimed)[:16]}… does not match the "
                        f"preceding run record ({str(previous_run)[:16]}…): the chain of runs is broken")
        else:
            report.count("run chain links")
        previous_run = own


def _check_times(times: dict[int, datetime], report: Report) -> None:
    """The ledger's order is the clock: claimed times may not run backwards along it (beyond the skew)."""
    latest: tuple[int, datetime] | None = None
    for index in sorted(times):
        at = times[index]
        if latest is not None and at < latest[1] - CLOCK_SKEW:
            report.fail(f"ledger entry {index}: claims time {at.isoformat()}, before ledger entry {latest[0]}'s "
                        f"{latest[1].isoformat()} by more than {int(CLOCK_SKEW.total_seconds())} s: times must "
                        "not go backwards along the ledger (a backdated record?)")
        if latest is None or at > latest[1]:
            latest = (index, at)
    if times:
        report.count("time order")


def _check_restores(entries: Slice, report: Report) -> None:
    """Each restored-from must name a ledger attestation, by that run, of the same outputs."""
    for where, _stage, subjects, ref_run, ref_sha in entries.restores:
        hit = entries.attestations.get(ref_sha)
        if hit is None or hit[0] != ref_run:
            report.fail(f"{where}: restored-from names run '{ref_run}' attestation {ref_sha[:16]}…, which no "
                        "run record in the ledger lists")
        elif any(hit[2].get(p) != d for p, d in subjects.items()):
            report.fail(f"{where}: restored-from attestation {ref_sha[:16]}… (run '{ref_run}') does not attest "
                        "the restored outputs")
        else:
            report.count("restores traced")


def _check_lock_attested(ws: Workspace, entries: Slice, report: Report) -> None:
    """Every output certus.lock records must be covered by an attestation in the ledger."""
    from engine.pipeline.lockfile import LockFile

    try:
        lock = LockFile.load(ws.lock_path)
    except EngineError as e:
        report.fail(str(e))
        return
    attested = {(p, d) for p, d, _ in entries.attested}
    adopted = entries.logged.get("adopted_sha256", {})  # dvc.lock entries adopted, not executed (dvc.adopted)
    for name, entry in sorted(lock.stages.items()):
        if adopted and not all((p, r.get("digest")) in attested for p, r in entry.outs.items()):
            from engine.pipeline.dvc_pipeline import adopted_sha256

            if adopted_sha256(name, entry.outs) in adopted:
                report.count("lock outputs adopted from dvc.lock (not executed)")
                continue
        for path, rec in sorted(entry.outs.items()):
            if (path, rec.get("digest")) not in attested:
                report.fail(f"certus.lock: stage '{name}': output {path} ({str(rec.get('digest'))[:23]}…) is "
                            "not attested by any run in the ledger; run 'certus repro' to attest or re-run it")
            else:
                report.count("lock outputs attested")


def _check_witness(ledger: Any, wpath: Any, verifiers: list[Any], rel: str, report: Report) -> Any:
    """The ledger must extend the last checkpoint this machine saw; returns the checkpoint to remember."""
    from engine.provenance.note import Checkpoint

    seen = None
    if wpath.exists():
        try:
            w = json.loads(wpath.read_text())
            seen = Checkpoint(origin=w["origin"], size=int(w["size"]), root_hash=bytes.fromhex(w["root"]))
        except (ValueError, KeyError, TypeError, EngineError) as e:
            report.notes.append(f"{wpath}: unreadable remembered checkpoint ({e}); starting afresh")
    if seen is None:
        report.notes.append(
            f"{rel}: this machine remembers no earlier checkpoint of this ledger, so a rollback or rewritten "
            "history could NOT be checked this time; the current one is remembered from now on (compare it with "
            "another party's: 'certus ledger checkpoint --witness FILE')")
        return ledger.checkpoint()
    try:
        current = ledger.witness(seen, *verifiers)
        report.count("consistency with last seen checkpoint")
        return current
    except EngineError as e:
        report.fail(f"{rel}: not consistent with the checkpoint this verifier saw before "
                    f"(size {seen.size}, root {seen.root_hash.hex()[:16]}…): {e}")
        return None


def _check_checkpoint_keys(judge: Any, history: TrustHistory, trust: TrustStore, origin: str, signers: list[Any],
                           times: dict[int, datetime], report: Report, ldir: str, rel: str) -> None:
    """Each checkpoint's ledger key must be trusted for ``ledger`` when the checkpoint was made.

    A checkpoint carries no time of its own; it is made as its last entry is appended, so it is
    judged at that entry's position and signed time (a checkpoint over an unreadable entry is
    already a failure). Signature names are the origin (C2SP) or, in older checkpoints, the key's.
    """
    from engine.provenance.note import key_id

    keys = history.ever("ledger") if history.pinned else [e for e in trust.entries if "ledger" in e.roles]
    by_id = {}
    for e in keys:
        by_id[(origin, key_id(origin, e.public_key.raw))] = e
        by_id[(e.name, key_id(e.name, e.public_key.raw))] = e
    for where, size, sigs in signers:
        at = times.get(size - 1)
        if at is None:
            continue
        for name, kid in sigs:
            entry = by_id.get((name, kid))
            if entry is None:
                continue
            try:
                judge.check(entry.keyid, "ledger", at, size - 1)
            except SignatureError as e:
                report.fail(f"{where.replace(ldir, rel)}: checkpoint of size {size} signed by '{entry.name}': {e}")


def _check_inclusion(ledger: Any, raws: list[bytes], indices: list[int], report: Report) -> None:
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


def _verify_artifacts(ws: Workspace, latest_outs: dict[str, tuple[str, str]],
                      attested: list[tuple[str, str, str]], report: Report) -> None:
    from engine.core.digest import Digest
    from engine.pipeline.lockfile import LockFile
    from engine.store.cache import ObjectCache
    from engine.store.hashing import Hasher

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
