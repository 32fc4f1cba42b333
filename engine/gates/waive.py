"""``certus waive``: a human's signed decision to accept a metric that missed its threshold.

Refused, in one line each: a run or gate with no such result, a ``--result`` digest that is not the
run's gate result, an expiry in the past, a key without the ``approver`` role, the key that signed the
run or its gate result, a metric that passed, a metric beyond its hard limit (or missing / NaN),
a gate that passed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.errors import LedgerError
from engine.gates.book import GateBook, GateRecord
from engine.provenance.gate_records import WAIVER_TYPE, parse_expiry, waiver_payload, waiver_problem
from engine.provenance.statement import rfc3339

__all__ = ["find_result", "waive", "WaiverRefused"]


class WaiverRefused(LedgerError):
    """A waiver was not signed; the message says why."""


def find_result(book: GateBook, run: str, gate: str) -> GateRecord:
    runs = sorted({str(r.detail.get("run_id")) for r in book.results
                   if str(r.detail.get("run_id")) == run or str(r.detail.get("run_id")).startswith(run)})
    if run == "latest" and book.results:
        runs = [str(book.results[-1].detail.get("run_id"))]
    if not runs:
        raise WaiverRefused(f"run '{run}': no gate result in the ledger (see 'certus gate show')")
    if len(runs) > 1:
        raise WaiverRefused(f"run '{run}' is ambiguous: {', '.join(runs)}")
    hits = book.for_run(runs[0], gate)
    if not hits:
        have = sorted({str(r.detail.get("gate")) for r in book.for_run(runs[0])})
        raise WaiverRefused(f"run '{runs[0]}' has no result for gate '{gate}' (it has: {', '.join(have)})")
    return hits[-1]


def waive(prov: Any, *, run: str, gate: str, metric: str, reason: str, expires: str, key: str | None,
          result_sha: str | None = None) -> tuple[int, dict[str, Any]]:
    """Check every refusal, then sign the waiver with an approver key and append it; (ledger index, payload)."""
    if not reason.strip():
        raise WaiverRefused("refused: give the rationale with --reason")
    try:
        until = parse_expiry(expires)
    except ValueError:
        raise WaiverRefused(f"refused: --expires {expires!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from None
    now = datetime.now(UTC)
    if until <= now:
        raise WaiverRefused(f"refused: expiry {expires} is in the past")
    book = GateBook.load(prov)
    rec = find_result(book, run, gate)
    if result_sha is not None and not rec.sha256.startswith(result_sha.removeprefix("sha256:")):
        raise WaiverRefused(f"refused: gate result {result_sha[:23]} is not run '{rec.detail['run_id']}''s result for "
                            f"gate '{gate}' ({rec.sha256[:16]}…)")
    if rec.result == "PASSED":
        raise WaiverRefused(f"refused: gate '{gate}' passed for run '{rec.detail['run_id']}'; nothing to waive")
    rule = rec.rule(metric)
    if rule is None:
        names = ", ".join(str(m.get("name")) for m in rec.detail.get("metrics", []))
        raise WaiverRefused(f"refused: gate '{gate}' has no metric '{metric}' (it has: {names})")
    approver = prov.signer("approver", key)  # a key without the role: one line from the key lookup
    own = rec.signers + book.run_signers(str(rec.detail["run_id"]))
    payload = waiver_payload(time=rfc3339(now.timestamp()), run_id=str(rec.detail["run_id"]), gate=gate, rule=rule,
                             result_sha256=rec.sha256, key=str(rec.detail["key"]), reason=reason, expires=expires,
                             approver=str(approver.name))
    why = waiver_problem(payload, rec.sha256, rec.detail, now, (approver.keyid,), own)
    if why:
        if rule.get("outcome") == "fail" and "hard limit" in str(rule.get("reason")):
            why = f"metric '{rule['name']}' value {rule['value_text']} is beyond the hard limit " \
                  f"{rule.get('hard_limit')}; no waiver is accepted"
        raise WaiverRefused(f"refused: {why}")
    index, _ = prov.append(WAIVER_TYPE, payload, "approver")
    return index, payload
