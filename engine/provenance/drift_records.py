"""Drift reports: a monitor pass over a deployment's telemetry window, as a signed in-toto Test Result.

An in-toto Statement v1 with the Test Result predicate (``https://in-toto.io/attestation/test-result/v0.1``),
signed by a ``trainer`` key (the role that answers for a model in production, as for its gate results) and
appended to the ledger:

- ``subject``: the deployed bundle (``NAME@VERSION``, digest: its OMS root) and the telemetry window
  (``telemetry-window``, digest: SHA-256 of the rows the pass read);
- ``predicate.result``: ``PASSED`` or ``FAILED``; ``passedTests`` / ``failedTests``: the checks by name;
- ``predicate.configuration``: ``policy/monitor`` (the thresholds inline, and the SHA-256 of their
  canonical JSON) and ``certus/drift/<model>``, the Certus field: model, registry version, bundle root,
  time, the window, every check (metric, value, comparator, threshold, outcome) and per-feature figures.

A FAILED report puts that bundle *in review*: ``certus deploy`` refuses it until a later report on the
same bundle PASSED (a re-evaluation) or an ``approver`` signed a ``drift.waiver`` event naming the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.provenance.gate_records import DRIFT_PREFIX, STATEMENT_TYPE, TEST_RESULT_PREDICATE

__all__ = ["DRIFT_PREFIX", "DRIFT_WAIVER", "WINDOW_SUBJECT", "drift_statement", "drift_detail", "is_drift_report",
           "drift_time"]

DRIFT_WAIVER = "drift.waiver"
WINDOW_SUBJECT = "telemetry-window"
POLICY_NAME = "policy/monitor"
OUTCOMES = ("pass", "fail")


def _sha(obj: Any) -> str:
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def drift_statement(*, model: str, version: int, bundle_root: str, window_digest: str, thresholds: Mapping[str, Any],
                    detail: Mapping[str, Any]) -> dict[str, Any]:
    """``detail`` carries ``time``, ``window``, ``checks`` ([{name, outcome, ...}]) and ``features``."""
    checks = list(detail["checks"])
    failed = sorted(c["name"] for c in checks if c["outcome"] == "fail")
    result = "FAILED" if failed else "PASSED"
    detail = {**detail, "model": model, "version": version, "bundle_root": bundle_root,
              "window_sha256": window_digest, "result": result}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{model}@{version}", "digest": {"sha256": bundle_root}},
                    {"name": WINDOW_SUBJECT, "digest": {"sha256": window_digest}}],
        "predicateType": TEST_RESULT_PREDICATE,
        "predicate": {
            "result": result,
            "configuration": [
                {"name": POLICY_NAME, "digest": {"sha256": _sha(dict(thresholds))}, "mediaType": "application/json",
                 "annotations": {"rules": dict(thresholds)}},
                {"name": DRIFT_PREFIX + model, "digest": {"sha256": _sha(detail)}, "mediaType": "application/json",
                 "annotations": detail},
            ],
            "passedTests": sorted(c["name"] for c in checks if c["outcome"] == "pass"),
            "warnedTests": [],
            "failedTests": failed,
        },
    }


def is_drift_report(statement: Any) -> bool:
    if not isinstance(statement, Mapping) or statement.get("predicateType") != TEST_RESULT_PREDICATE:
        return False
    conf = (statement.get("predicate") or {}).get("configuration") if isinstance(statement.get("predicate"),
                                                                                   Mapping) else None
    return isinstance(conf, list) and any(isinstance(c, Mapping) and str(c.get("name", "")).startswith(DRIFT_PREFIX)
                                          for c in conf)


def drift_time(statement: Any) -> str:
    detail, _ = drift_detail(statement)
    return str(detail.get("time", "")) if detail else ""


def drift_detail(statement: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The report's Certus field, checked against the rest of the statement; (None, why) when unsound."""
    try:
        pred = statement["predicate"]
        conf = pred["configuration"]
        entry = next(c for c in conf if str(c.get("name", "")).startswith(DRIFT_PREFIX))
        policy = next(c for c in conf if c.get("name") == POLICY_NAME)
        detail = entry["annotations"]
        subjects = {s["name"]: (s.get("digest") or {}).get("sha256") for s in statement["subject"]}
    except (KeyError, TypeError, StopIteration, AttributeError):
        return None, "not a Certus drift report (no certus/drift and policy/monitor configuration)"
    if statement.get("_type") != STATEMENT_TYPE:
        return None, "not an in-toto Statement v1"
    if not isinstance(detail, dict) or not isinstance(detail.get("checks"), list):
        return None, "drift detail unreadable"
    if (entry.get("digest") or {}).get("sha256") != _sha(detail):
        return None, "the drift descriptor's digest is not that of its detail"
    rules = (policy.get("annotations") or {}).get("rules")
    if not isinstance(rules, dict) or (policy.get("digest") or {}).get("sha256") != _sha(rules):
        return None, "the policy descriptor's digest is not that of its thresholds"
    checks = detail["checks"]
    if not all(isinstance(c, dict) and c.get("outcome") in OUTCOMES for c in checks):
        return None, "a check has no known outcome"
    failed = sorted(str(c.get("name")) for c in checks if c["outcome"] == "fail")
    passed = sorted(str(c.get("name")) for c in checks if c["outcome"] == "pass")
    want = "FAILED" if failed else "PASSED"
    if (pred.get("passedTests"), pred.get("failedTests"), pred.get("result"), detail.get("result")) != \
            (passed, failed, want, want):
        return None, "passed/failed tests or the result disagree with the per-check outcomes"
    for c in checks:
        th = rules.get(str(c.get("threshold_key")))
        if c.get("threshold_key") is not None and th != c.get("threshold"):
            return None, f"check '{c.get('name')}' cites threshold {c.get('threshold')!r}, not the policy's {th!r}"
    name = f"{detail.get('model')}@{detail.get('version')}"
    if subjects.get(name) != detail.get("bundle_root") or subjects.get(WINDOW_SUBJECT) != detail.get("window_sha256"):
        return None, "its subjects are not the bundle and telemetry window its detail names"
    if any(not isinstance(detail.get(k), str) for k in ("model", "bundle_root", "time")):
        return None, "drift detail lacks model, bundle_root or time"
    return detail, ""


def check_rows(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per failed check, for messages."""
    return [f"{c['name']}: {c.get('value')} {c.get('comparator', '>')} {c.get('threshold')}" for c in checks
            if c.get("outcome") == "fail"]
