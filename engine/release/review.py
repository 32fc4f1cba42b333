"""Is a bundle *in review* after a failed drift report? (the check ``certus deploy`` makes before moving an alias)

A bundle is in review when the last trainer-signed drift report on it (by OMS root digest) FAILED, no
later report on it PASSED (a re-evaluation), and no approver — someone other than the report's signer —
signed a ``drift.waiver`` event naming that report. Reports and waivers are read from the ledger, each
judged by the trust state at its own position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.provenance.drift_records import DRIFT_WAIVER, check_rows, drift_detail, is_drift_report
from engine.provenance.records import EVENT_TYPE
from engine.provenance.statement import PAYLOAD_TYPE
from engine.release.ledger_view import LedgerView, ViewEntry

__all__ = ["Review", "drift_review"]


@dataclass(frozen=True)
class Review:
    """The last drift report on a bundle and whether it holds the bundle in review."""

    report: ViewEntry | None
    result: str | None  # PASSED | FAILED | None (no report)
    in_review: bool
    waived_by: ViewEntry | None = None
    failed_checks: tuple[str, ...] = ()

    def why(self) -> str:
        if not self.in_review or self.report is None:
            return ""
        checks = "; ".join(self.failed_checks[:3]) or "see the report"
        return (f"in review: drift report at ledger entry {self.report.index} (sha256 {self.report.sha256[:16]}…) "
                f"FAILED ({checks}); re-evaluate (certus monitor --record) or have an approver waive it "
                f"(certus monitor --waive {self.report.sha256[:16]} --reason TEXT --key APPROVER)")


def drift_review(view: LedgerView, bundle_root: str) -> Review:
    last: tuple[ViewEntry, dict[str, Any]] | None = None
    for e in view.of_type(PAYLOAD_TYPE):
        if not is_drift_report(e.payload):
            continue
        detail, _ = drift_detail(e.payload)
        if detail is None or detail.get("bundle_root") != bundle_root:
            continue
        if view.signature_problem(e, "trainer", str(detail.get("time"))):
            continue
        last = (e, detail)
    if last is None:
        return Review(None, None, False)
    entry, detail = last
    result = str(detail.get("result"))
    failed = tuple(check_rows(detail.get("checks", [])))
    if result != "FAILED":
        return Review(entry, result, False)
    signers = set(view.signers(entry))
    for e in view.of_type(EVENT_TYPE):
        d = e.payload.get("details") or {}
        if e.index <= entry.index or e.payload.get("kind") != DRIFT_WAIVER or not isinstance(d, dict):
            continue
        if d.get("report_sha256") != entry.sha256 or set(view.signers(e)) & signers:
            continue
        if view.signature_problem(e, "approver", str(e.payload.get("time"))) is None:
            return Review(entry, result, False, e, failed)
    return Review(entry, result, True, None, failed)
