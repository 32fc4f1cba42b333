"""``certus verify``, datasets: the role matrix for manifests and approvals, against the ledger.

| record                  | signed by      | also needs                                                       |
|-------------------------|----------------|------------------------------------------------------------------|
| source manifest         | data-steward   | a ``dataset.registered`` record; an approval by another key       |
| derived manifest        | trainer        | a ``dataset.derived`` record naming the producing run; that run's |
|                         |                | attestation of exactly this path and digest; approved parents     |
|                         |                | (``inherited``) or its own approval                               |
| approval                | approver       | a ``dataset.approved`` record; not the manifest's signer          |

Each signature is judged at the ledger position of the record that logged it.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError
from engine.provenance.verify_runs import Judge, Report, Slice, check_signatures, parse_time, sha256_hex

__all__ = ["verify_datasets"]


def verify_datasets(ws: Any, judge: Judge, entries: Slice, last: int, report: Report) -> None:
    from engine.datasets.policy import signer_role, structure_problem
    from engine.datasets.registry import APPROVAL_TYPE, MANIFEST_TYPE, Registry
    try:
        reg = Registry.load(ws.root)
    except EngineError as e:
        report.fail(str(e))
        return
    manifests = entries.logged.get("manifest_sha256", {})
    approvals = entries.logged.get("approval_sha256", {})
    problems: dict[str, str] = {}
    for name in reg.names():
        for e in reg.entries[name]:
            m = e.manifest
            where = f"dataset {m.ref} (v{m.version}) manifest {e.path}"
            sha = sha256_hex(e.raw)
            why = structure_problem(e, reg)
            if why:
                report.fail(f"{where}: {why}")
                problems[m.ref] = why
            logged = manifests.get(sha)
            want = "dataset.derived" if m.produced_by is not None else "dataset.registered"
            if logged is None:
                report.fail(f"{where}: no ledger registration event carries this manifest's digest "
                            f"({sha[:16]}…): it was changed or never registered")
                problems.setdefault(m.ref, "not in the ledger")
            elif logged[1] != want:
                report.fail(f"{where}: logged by a '{logged[1]}' record (ledger entry {logged[0]}); this kind of "
                            f"manifest needs '{want}'")
                problems.setdefault(m.ref, "wrong kind of ledger record")
            at_index = logged[0] if logged else last
            try:
                at = parse_time(m.registered)
            except ValueError:
                report.fail(f"{where}: unreadable registration time '{m.registered}'")
                continue
            if e.envelope.payload_type != MANIFEST_TYPE:
                report.fail(f"{where}: payloadType '{e.envelope.payload_type}', expected '{MANIFEST_TYPE}'")
            elif not check_signatures(e.envelope, judge, signer_role(m), at, at_index, where, report):
                problems.setdefault(m.ref, "signed by a key without the role")
            if m.produced_by is not None and not why:
                _check_producer(e, entries, sha, where, report, problems)
            report.count("dataset manifests")
            if e.approval_envelope is not None and e.approval_raw is not None:
                _check_approval(e, judge, approvals, sha, last, report, APPROVAL_TYPE)
            elif m.approval != "inherited" and m.ref not in problems:
                report.notes.append(f"{where}: not approved yet (no stage may consume it)")
    for name in reg.names():  # inherited approval: every parent must itself be sound
        for e in reg.entries[name]:
            m = e.manifest
            if m.approval != "inherited" or m.produced_by is None:
                continue
            for parent in m.parents:
                try:
                    p = reg.resolve(parent)
                except EngineError:
                    report.fail(f"dataset {m.ref}: parent {parent} is not a registered dataset")
                    continue
                if p.manifest.ref in problems:
                    report.fail(f"dataset {m.ref}: inherits approval from {parent}, which fails verification "
                                f"({problems[p.manifest.ref]})")
                elif p.approval is None and p.manifest.approval != "inherited":
                    report.fail(f"dataset {m.ref}: inherits approval from {parent}, which is not approved")


def _check_producer(e: Any, entries: Slice, sha: str, where: str, report: Report,
                    problems: dict[str, str]) -> None:
    """A derived manifest: the run it names is in the ledger and attests exactly these bytes."""
    m = e.manifest
    run, stage = str(m.produced_by.get("run")), str(m.produced_by.get("stage"))
    named = entries.derived_events.get(sha)
    if named is not None and named != run:
        report.fail(f"{where}: its dataset.derived record names run '{named}', the manifest names '{run}'")
    ok = any(r == run and s == stage and subj.get(m.path) == m.id for r, s, subj in entries.attestations.values())
    if not ok:
        report.fail(f"{where}: no attestation in the ledger shows stage '{stage}' of run '{run}' producing "
                    f"{m.path} with digest {m.id[:19]}…")
        problems.setdefault(m.ref, "no producing run in the ledger")


def _check_approval(e: Any, judge: Judge, approvals: dict[str, tuple[int, str]], sha: str, last: int,
                    report: Report, approval_type: str) -> None:
    m = e.manifest
    w = f"dataset {m.ref} (v{m.version}) approval"
    try:
        at = parse_time(str((e.approval or {}).get("approved_at", "")))
    except ValueError:
        report.fail(f"{w}: unreadable approval time")
        return
    logged = approvals.get(sha256_hex(e.approval_raw))
    if e.approval_envelope.payload_type != approval_type:
        report.fail(f"{w}: payloadType '{e.approval_envelope.payload_type}', expected '{approval_type}'")
    else:
        check_signatures(e.approval_envelope, judge, "approver", at, logged[0] if logged else last, w, report)
    if {s.keyid for s in e.approval_envelope.signatures} & {s.keyid for s in e.envelope.signatures}:
        report.fail(f"{w}: approved by the key that registered it (self-approval)")
    if (e.approval or {}).get("manifest_sha256") != sha:
        report.fail(f"{w}: approves a different manifest than {e.path}")
    if logged is None:
        report.fail(f"{w}: no ledger approval event carries this approval's digest")
    report.count("dataset approvals")
