"""``certus verify``, releases: each release record, deploy verification summary and registry event, linked.

Signatures and roles are already judged per entry (a release record is the releaser's, a VSA and a
registry event the deployer's). Here, the links between entries: a release record cites a run record,
gate results and dataset records that are earlier entries with those digests; a VSA names a released
bundle root; a registry version names an earlier release record and VSA; an alias names a registered
version. What the bundle files themselves hold is ``certus deploy``'s and ``bundle verify``'s to check.
"""

from __future__ import annotations

from typing import Any

from engine.provenance.records import EVENT_TYPE
from engine.provenance.release_records import RELEASE_TYPE, ReleaseRecord, is_vsa
from engine.provenance.verify_runs import Report, Slice

__all__ = ["verify_releases"]


def verify_releases(entries: Slice, by_sha: dict[str, int], report: Report) -> None:
    """``by_sha``: envelope sha256 -> ledger index of every entry."""
    roots: dict[str, int] = {}
    vsas: dict[str, int] = {}
    versions: set[tuple[str, str, int]] = set()
    for index, where, sha, ptype, payload, trusted in sorted(entries.releases, key=lambda r: r[0]):
        if not trusted:
            continue  # its signer was already named as a failure
        if ptype == RELEASE_TYPE:
            _release(index, where, payload, by_sha, report, roots)
        elif is_vsa(payload):
            root = str(((payload.get("subject") or [{}])[0].get("digest") or {}).get("sha256"))
            if roots.get(root, index) >= index:
                report.fail(f"{where}: verifies bundle root {root[:16]}…, which no earlier release record names")
                continue
            vsas[sha] = index
            report.count("deploy verification summaries")
        elif ptype == EVENT_TYPE:
            _registry_event(index, where, payload, by_sha, vsas, versions, report)


def _cites(by_sha: dict[str, int], sha: Any, at: Any, index: int) -> bool:
    """The digest binds the cited entry; it must come before the citing one. ``at`` is where it was
    when cited: a sequencer may since have moved both (issue 16), so it is not compared."""
    found = by_sha.get(str(sha))
    return found is not None and found < index


def _release(index: int, where: str, payload: dict[str, Any], by_sha: dict[str, int], report: Report,
             roots: dict[str, int]) -> None:
    try:
        rec = ReleaseRecord.from_dict(payload)
    except ValueError as e:
        report.fail(f"{where}: {e}")
        return
    problems = []
    if not _cites(by_sha, rec.run.get("record_sha256"), rec.run.get("ledger_index"), index):
        problems.append(f"its run record ({str(rec.run.get('record_sha256'))[:16]}…) is not an earlier entry")
    for g in rec.gates:
        if not _cites(by_sha, g.get("sha256"), g.get("ledger_index"), index):
            problems.append(f"gate '{g.get('gate')}' result {str(g.get('sha256'))[:16]}… is not an earlier entry")
        for w in g.get("waivers") or ():
            if not _cites(by_sha, w.get("sha256"), w.get("ledger_index"), index):
                problems.append(f"waiver {str(w.get('sha256'))[:16]}… is not an earlier entry")
    for d in rec.datasets:
        if not _cites(by_sha, d.get("event_sha256"), d.get("ledger_index"), index):
            problems.append(f"dataset {d.get('dataset')} record is not an earlier entry")
        app = d.get("approval")
        if isinstance(app, dict) and not _cites(by_sha, app.get("event_sha256"), app.get("ledger_index"), index):
            problems.append(f"dataset {d.get('dataset')} approval is not an earlier entry")
    if problems:
        report.fail(f"{where}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return
    roots.setdefault(rec.bundle_root, index)
    report.count("release records")


def _registry_event(index: int, where: str, payload: dict[str, Any], by_sha: dict[str, int], vsas: dict[str, int],
                    versions: set[tuple[str, str, int]], report: Report) -> None:
    d = payload.get("details") or {}
    kind = payload.get("kind")
    if not isinstance(d, dict):
        report.fail(f"{where}: no details")
        return
    if str(d.get("vsa_sha256")) not in vsas:
        report.fail(f"{where}: names verification summary {str(d.get('vsa_sha256'))[:16]}…, which is not an earlier "
                    "deploy verification summary in the ledger")
        return
    key = (str(d.get("registry")), str(d.get("name")), d.get("version"))
    if kind == "registry.registered":
        if not _cites(by_sha, d.get("release_sha256"), d.get("release_index"), index):
            report.fail(f"{where}: its release record is not an earlier entry")
            return
        if key in versions:
            report.fail(f"{where}: version {d.get('version')} of '{d.get('name')}' registered a second time")
            return
        versions.add(key)
    elif key not in versions:
        report.fail(f"{where}: alias '{d.get('alias')}' names version {d.get('version')} of '{d.get('name')}', "
                    "which is not registered before it")
        return
    report.count("registry events")
