"""One monitor pass: a deployment's telemetry window against the reference and thresholds its bundle carries.

:func:`evaluate` is pure over the window's arrays: per-feature PSI and test (:mod:`engine.serve.drift`),
the share of drifted features, prediction PSI, latency percentiles, refusal and abstention rates, each
a check against a threshold of ``policy.monitor`` as packaged into ``reference.json``. :func:`record`
signs the result as a drift report (:mod:`engine.provenance.drift_records`) and appends it to the ledger.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ServeError
from engine.serve.drift import categorical_drift, numeric_drift, percentiles
from engine.serve.telemetry import Window

__all__ = ["Result", "evaluate", "window_digest", "parse_since", "record"]


@dataclass
class Result:
    status: str  # PASSED | FAILED | INSUFFICIENT
    window: dict[str, Any]
    checks: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    prediction: dict[str, Any] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["outcome"] == "fail"]


def parse_since(text: str | None, now: float) -> float | None:
    """``30m``, ``1h``, ``2d``, ``90s`` before now, or an RFC 3339 time; None: all of it."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m:
        from datetime import UTC, datetime

        try:
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ServeError(f"--since {text!r}: expected a duration such as 90s, 30m, 1h or 2d, or an RFC 3339 "
                             "time") from None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
    return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def window_digest(w: Window) -> str:
    """SHA-256 over the rows the pass read (each column's values in order)."""
    import numpy as np

    h = hashlib.sha256()
    for part in (w.requests, w.inputs):
        for name in sorted(part):
            a = part[name]
            h.update(name.encode() + b"\0")
            if a.dtype == object:
                vals = a.tolist()
                try:
                    text = "\x1f".join(vals)  # all strings: joined in C
                except TypeError:
                    text = "\x1f".join(["" if v is None else str(v) for v in vals])
                h.update(text.encode())
            else:
                h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    return h.hexdigest()


def _check(name: str, value: float | None, key: str, th: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
    limit = th[key]
    ok = value is None or (value < limit if strict else value <= limit)
    return {"name": name, "metric": name, "value": value, "comparator": "<" if strict else "<=", "threshold": limit,
            "threshold_key": key, "outcome": "pass" if ok else "fail"}


def evaluate(w: Window, reference: Mapping[str, Any], pii: tuple[str, ...] = ()) -> Result:
    th = reference["thresholds"]
    eps = float(reference.get("epsilon", 1e-4))
    req, inp = w.requests, w.inputs
    n_req, n_rows = int(len(req["ts"])), int(len(inp["ts"]))
    info = {"requests": n_req, "rows": n_rows, "first": w.first, "last": w.last}
    res = Result("INSUFFICIENT", info)
    if n_req < th["min_rows"] or n_rows < th["min_rows"]:
        return res
    import numpy as np

    status = req["status"]
    served = status == 200
    refused = int((~served).sum())
    abstained_rows = int(np.asarray(inp["abstained"], dtype=float).sum())
    lat = percentiles(req["latency_ms"][served]) if served.any() else percentiles([])
    kinds: dict[str, int] = {}
    for k in req["refusal"][~served].tolist():
        kinds[str(k)] = kinds.get(str(k), 0) + 1
    hit_requests = refused + int((req["abstained"][served] > 0).sum())
    res.service = {"latency_ms": lat, "rejection_rate": refused / n_req, "refusals": kinds,
                   "abstain_rate": abstained_rows / n_rows, "guardrail_hit_rate": hit_requests / n_req}
    drifted = 0
    judged = 0
    for name, ref in reference["features"].items():
        if name in pii or name not in inp:
            res.features[name] = {"note": "not in telemetry (pii, or not logged)"}
            continue
        col = inp[name]
        out = (numeric_drift(ref, np.asarray(col, dtype=float), th, eps) if ref["kind"] == "numeric"
               else categorical_drift(ref, col.tolist(), th, eps))
        res.features[name] = out
        if "psi" in out:
            judged += 1
            drifted += int(out["drifted"])
            res.checks.append(_check(f"psi:{name}", round(out["psi"], 6), "psi_max", th))
    if judged:
        res.checks.append(_check("drift_share", drifted / judged, "drift_share", th, strict=True))
    if "prediction" in reference:
        pred = categorical_drift(reference["prediction"], inp["pred"].tolist(), th, eps)
        res.prediction = pred
        res.checks.append(_check("prediction_psi", round(pred.get("psi", 0.0), 6), "prediction_psi_max", th))
    res.checks.append(_check("latency_p99_ms", lat["p99"], "latency_p99_ms_max", th))
    res.checks.append(_check("rejection_rate", res.service["rejection_rate"], "rejection_rate_max", th))
    res.checks.append(_check("abstain_rate", res.service["abstain_rate"], "abstain_rate_max", th))
    res.status = "FAILED" if res.failed else "PASSED"
    return res


def record(prov: Any, signer: Any, *, model: str, version: int, bundle_root: str, reference: Mapping[str, Any],
           result: Result, digest: str) -> tuple[int, str]:
    """Sign ``result`` as a drift report with ``signer`` (trainer) and append it; (ledger index, envelope sha256)."""
    from engine.provenance.drift_records import drift_statement
    from engine.provenance.statement import PAYLOAD_TYPE, rfc3339
    from engine.release.publish import append_signed

    detail = {"time": rfc3339(time.time()), "window": result.window, "checks": result.checks,
              "epsilon": reference.get("epsilon"), "features": result.features,
              "prediction": result.prediction, "service": result.service,
              "reference_sha256": reference.get("source", {}).get("sha256"),
              "thresholds_sha256": reference.get("thresholds_sha256")}
    stmt = drift_statement(model=model, version=version, bundle_root=bundle_root, window_digest=digest,
                           thresholds=reference["thresholds"], detail=_finite(detail))
    (index,) = append_signed(prov, [(PAYLOAD_TYPE, stmt, "trainer")], {"trainer": signer})
    raw = prov.open_ledger(create=False).entry(index)
    return index, hashlib.sha256(raw).hexdigest()


def _finite(obj: Any) -> Any:
    """Canonical JSON has no NaN or infinity: such a figure is recorded as null."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj

