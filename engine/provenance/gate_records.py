"""Gate results and waivers as signed records (formats and the checks both ``repro`` and ``verify`` apply).

A **gate result** is an in-toto Statement v1 with the Test Result predicate
(``https://in-toto.io/attestation/test-result/v0.1``) in a DSSE envelope (payloadType
``application/vnd.in-toto+json``) signed by a ``trainer`` key and appended to the ledger itself:

- ``subject``: the metrics files the gate read and the model artifacts it speaks for (workspace path
  as ``name``; ``sha256``, or ``dirHash`` for a directory);
- ``predicate.result``: ``PASSED`` / ``WARNED`` (a threshold missed, no hard limit) / ``FAILED``;
  ``passedTests`` / ``warnedTests`` / ``failedTests``: the policy's rule names;
- ``predicate.configuration``: two resource descriptors: ``policy/<gate>`` (the policy's rules inline,
  as the composed config gave them, and the SHA-256 of their canonical JSON) and ``certus/gate/<gate>``,
  the Certus field: run id, pipeline, content key, time, baseline and per rule the value, comparator,
  threshold, hard limit and outcome (the predicate's schema has no other place for it; the in-toto
  library parses it strictly).

A **waiver** (payloadType ``application/vnd.certus.waiver+json``) is signed by an ``approver`` key
that signed neither the run record nor the gate result; it is bound to the gate result's envelope
digest, the gate, the rule, the observed value, a rationale and an expiry. Only a rule whose outcome
is ``needs-review`` can be waived: a pass needs nothing, a fail (hard limit, missing or NaN) no waiver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.core.canonical import canonical_bytes

__all__ = ["TEST_RESULT_PREDICATE", "WAIVER_TYPE", "WAIVER_SCHEMA", "DETAIL_PREFIX", "POLICY_PREFIX",
           "gate_statement", "gate_detail", "gate_result_detail", "waiver_payload", "waiver_problem",
           "is_gate_result", "RESULTS"]

TEST_RESULT_PREDICATE = "https://in-toto.io/attestation/test-result/v0.1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
WAIVER_TYPE = "application/vnd.certus.waiver+json"
WAIVER_SCHEMA = "https://certus.dev/GateWaiver/v1"
DETAIL_PREFIX = "certus/gate/"
DRIFT_PREFIX = "certus/drift/"  # a drift report (engine.provenance.drift_records) shares the predicate
POLICY_PREFIX = "policy/"
RESULTS = ("PASSED", "WARNED", "FAILED")
OUTCOMES = ("pass", "needs-review", "fail")


_RULES_SHA: dict[str, str] = {}  # verify meets the same policy in every run's result: its digest once


def _rules_sha(rules: Mapping[str, Any]) -> str:
    """``_sha(rules)``, memoised by the rules' (C-encoded) JSON: canonical encoding is the slow part."""
    import json

    try:
        key = json.dumps(rules, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return _sha(rules)
    hit = _RULES_SHA.get(key)
    if hit is None:
        hit = _RULES_SHA[key] = _sha(rules)
        if len(_RULES_SHA) > 1024:
            _RULES_SHA.clear()
    return hit


def _sha(obj: Any) -> str:
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def gate_statement(*, gate: str, policy_name: str, policy: Mapping[str, Any], subjects: Mapping[str, Mapping[str, str]],
                   detail: Mapping[str, Any]) -> dict[str, Any]:
    """The Statement: ``subjects`` is ``{path: {algorithm: hex}}``; ``detail`` the Certus field (with
    ``metrics``: one entry per rule, each with ``name`` and ``outcome``)."""
    metrics = list(detail["metrics"])
    by = {o: sorted(m["name"] for m in metrics if m["outcome"] == o) for o in OUTCOMES}
    result = "FAILED" if by["fail"] else "WARNED" if by["needs-review"] else "PASSED"
    detail = {**detail, "gate": gate, "policy": policy_name, "result": result}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": p, "digest": dict(d)} for p, d in sorted(subjects.items())],
        "predicateType": TEST_RESULT_PREDICATE,
        "predicate": {
            "result": result,
            "configuration": [
                {"name": POLICY_PREFIX + gate, "digest": {"sha256": _sha(dict(policy))},
                 "mediaType": "application/json", "annotations": {"policy": policy_name, "rules": dict(policy)}},
                {"name": DETAIL_PREFIX + gate, "digest": {"sha256": _sha(detail)}, "mediaType": "application/json",
                 "annotations": detail},
            ],
            "passedTests": by["pass"],
            "warnedTests": by["needs-review"],
            "failedTests": by["fail"],
        },
    }


def claimed_time(statement: Any) -> str:
    """The time a gate result claims (read without judging the rest of it)."""
    try:
        conf = statement["predicate"]["configuration"]
        return str(next(c["annotations"]["time"] for c in conf if str(c.get("name", "")).startswith(DETAIL_PREFIX)))
    except (KeyError, TypeError, StopIteration):
        return ""


def is_gate_result(statement: Any) -> bool:
    if not isinstance(statement, Mapping) or statement.get("predicateType") != TEST_RESULT_PREDICATE:
        return False
    try:  # a drift report (same predicate, a certus/drift configuration) is not a gate result
        return not any(str(c.get("name", "")).startswith(DRIFT_PREFIX)
                       for c in statement["predicate"]["configuration"])
    except (KeyError, TypeError, AttributeError):
        return True


def gate_detail(statement: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The Certus field of a gate result, checked against the predicate; (None, why) when it is not sound."""
    try:
        pred = statement["predicate"]
        conf = pred["configuration"]
        detail = next(c["annotations"] for c in conf if str(c.get("name", "")).startswith(DETAIL_PREFIX))
        policy = next(c for c in conf if str(c.get("name", "")).startswith(POLICY_PREFIX))
    except (KeyError, TypeError, StopIteration):
        return None, "not a Certus gate result (no certus/gate configuration)"
    if statement.get("_type") != STATEMENT_TYPE:
        return None, "not an in-toto Statement v1"
    if not isinstance(detail, dict) or not isinstance(detail.get("metrics"), list):
        return None, "gate detail unreadable"
    if pred.get("result") not in RESULTS or pred.get("result") != detail.get("result"):
        return None, f"result {pred.get('result')!r} is not the detail's {detail.get('result')!r}"
    metrics = detail["metrics"]
    if not all(isinstance(m, dict) and m.get("outcome") in OUTCOMES for m in metrics):
        return None, "a rule has no known outcome"
    by = {o: sorted(str(m.get("name")) for m in metrics if m["outcome"] == o) for o in OUTCOMES}
    want = "FAILED" if by["fail"] else "WARNED" if by["needs-review"] else "PASSED"
    if (pred.get("passedTests", []), pred.get("warnedTests", []), pred.get("failedTests", [])) != \
            (by["pass"], by["needs-review"], by["fail"]) or want != pred["result"]:
        return None, "passed/warned/failed tests or the result disagree with the per-rule outcomes"
    rules = (policy.get("annotations") or {}).get("rules")
    if not isinstance(rules, dict) or (policy.get("digest") or {}).get("sha256") != _rules_sha(rules):
        return None, "the policy descriptor's digest is not that of its rules"
    if any(not isinstance(detail.get(k), str) for k in ("gate", "run_id", "key", "time")):
        return None, "gate detail lacks gate, run_id, key or time"
    return detail, ""


def gate_result_detail(statement: Mapping[str, Any]) -> dict[str, Any] | str:
    """What ``certus verify`` keeps of a gate result: its checked detail, or why it is unsound.

    Everything that needs only the statement itself is checked here (in verify's forked workers);
    what links it to other entries is left to :mod:`engine.provenance.verify_gates`.
    """
    detail, why = gate_detail(statement)
    if detail is None:
        return why
    files = detail.get("metric_files") or {}
    if not isinstance(files, dict):
        return "its metric_files is not an object"
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement.get("subject", [])
                if isinstance(s, dict)}
    if any(subjects.get(p) != str(d).split(":", 1)[-1] for p, d in files.items()):
        return "its subjects are not the metrics files it records"
    return {k: detail.get(k) for k in ("gate", "run_id", "metrics", "metric_files")}


def waiver_payload(*, time: str, run_id: str, gate: str, rule: Mapping[str, Any], result_sha256: str, key: str,
                   reason: str, expires: str, approver: str) -> dict[str, Any]:
    return {"_type": WAIVER_SCHEMA, "time": time, "run_id": run_id, "gate": gate, "metric": rule["name"],
            "metric_path": rule.get("metric", rule["name"]), "observed": rule.get("value_text"),
            "gate_result_sha256": result_sha256, "gate_key": key, "reason": reason, "expires": expires,
            "approver": approver}


def parse_expiry(text: str) -> datetime:
    """``2027-01-31`` (the end of that day, UTC) or an RFC 3339 time."""
    from datetime import timedelta

    if len(text) == 10:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        return day + timedelta(days=1) - timedelta(microseconds=1)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def waiver_problem(waiver: Mapping[str, Any], result_sha256: str, detail: Mapping[str, Any], at: datetime,
                   waiver_signers: Sequence[str], own_signers: Sequence[str]) -> str | None:
    """Why ``waiver`` does not cover its rule of the gate result ``detail`` (envelope digest ``result_sha256``)
    at time ``at``; None when it does. ``own_signers``: keyids that signed the run record or the gate result."""
    if waiver.get("_type") != WAIVER_SCHEMA:
        return "not a Certus gate waiver"
    if waiver.get("gate_result_sha256") != result_sha256:
        return "bound to another gate result"
    if waiver.get("run_id") != detail.get("run_id") or waiver.get("gate") != detail.get("gate"):
        return f"names run '{waiver.get('run_id')}' gate '{waiver.get('gate')}', not the result's " \
               f"run '{detail.get('run_id')}' gate '{detail.get('gate')}'"
    rule = next((m for m in detail.get("metrics", ()) if m.get("name") == waiver.get("metric")), None)
    if rule is None:
        return f"gate '{detail.get('gate')}' has no metric '{waiver.get('metric')}'"
    if rule.get("outcome") == "pass":
        return f"metric '{rule['name']}' passed; there is nothing to waive"
    if rule.get("outcome") == "fail":
        return f"metric '{rule['name']}' failed ({rule.get('reason')}); no waiver is accepted"
    if waiver.get("observed") != rule.get("value_text"):
        return f"observed value {waiver.get('observed')!r} is not the result's {rule.get('value_text')!r}"
    if not str(waiver.get("reason") or "").strip():
        return "no rationale"
    try:
        expires = parse_expiry(str(waiver.get("expires")))
    except ValueError:
        return f"unreadable expiry {waiver.get('expires')!r}"
    if at > expires:
        return f"expired {waiver.get('expires')}"
    overlap = set(waiver_signers) & set(own_signers)
    if overlap:
        return f"signed by key {sorted(overlap)[0][:16]}…, which signed the run or its gate result; a waiver " \
               "needs another person's approver key"
    return None
