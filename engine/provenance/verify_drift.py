"""``certus verify``, drift reports and their waivers, judged at their ledger positions.

A drift report (trainer) must be sound (:func:`engine.provenance.drift_records.drift_detail`: result and
test lists agreeing with the per-check outcomes, each check citing the threshold its policy descriptor
holds, digests of detail and thresholds matching, subjects naming the bundle and window of the detail)
and speak for a bundle that an earlier ``registry.registered`` event registered. A ``drift.waiver``
(approver) must name an earlier FAILED report by envelope digest and bundle, give a reason, and be
signed by a key that did not sign the report.
"""

from __future__ import annotations

from typing import Any

from engine.provenance.verify_runs import Report, Slice

__all__ = ["verify_drift"]


def verify_drift(entries: Slice, report: Report) -> None:
    reports: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}
    for index, where, sha, what, signers, trusted, waiver in sorted(entries.drift_entries):
        if isinstance(what, str):
            report.fail(f"{where}: {what}")
            continue
        if not waiver:
            root = str(what.get("bundle_root"))
            w = f"{where} {what.get('model')}@{what.get('version')}"
            if entries.registered.get(root, index) >= index:
                report.fail(f"{w}: bundle {root[:16]}… was not registered (registry.registered) before it")
                continue
            if trusted:
                reports[sha] = (index, what, signers)
                report.count("drift reports")
            continue
        rsha = str(what.get("report_sha256"))
        hit = reports.get(rsha)
        w = f"{where} for drift report {rsha[:16]}…"
        if hit is None or hit[0] >= index:
            report.fail(f"{w}: no earlier trusted drift report in the ledger has that digest")
            continue
        r_index, detail, r_signers = hit
        if detail.get("result") != "FAILED":
            report.fail(f"{w}: the report PASSED; there is nothing to waive")
        elif what.get("bundle_root") != detail.get("bundle_root"):
            report.fail(f"{w}: names bundle {str(what.get('bundle_root'))[:16]}…, not the report's")
        elif not str(what.get("reason") or "").strip():
            report.fail(f"{w}: no rationale")
        elif set(signers) & set(r_signers):
            report.fail(f"{w}: signed by a key that signed the report; a waiver needs another person's approver key")
        elif trusted:
            report.count("drift waivers")
            ref = f"{detail.get('model')}@{detail.get('version')}"
            report.notes.append(f"ledger entry {index}: drift waiver by key {signers[0][:16]}… accepts the FAILED "
                                f"drift report at ledger entry {r_index} ({ref}): {what.get('reason')}")
