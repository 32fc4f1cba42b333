"""The drift reference a bundle carries (``reference.json``), computed at packaging time.

For each feature of the training data: its kind, bin edges (quantiles of the reference, so each bin
holds about the same share of it), the reference's count per bin, summaries, and the values the
statistical tests compare against (all of them up to 1,000 rows; beyond, 1,001 quantiles, which is
what the distance measures used above that size need). For the model's predictions on the same
rows: the share of each class. The monitor thresholds from the policy are copied in, so the bundle's
signature covers what a deployment is judged against.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import ServeError

__all__ = ["REFERENCE_FILE", "REFERENCE_SCHEMA", "SMALL_REFERENCE", "EPSILON", "build_reference", "bin_counts",
           "reference_bytes", "thresholds_digest"]

REFERENCE_FILE = "reference.json"
REFERENCE_SCHEMA = "https://certus.dev/DriftReference/v1"
SMALL_REFERENCE = 1000  # Evidently: statistical tests up to this many reference rows, distances above
EPSILON = 1e-4  # replaces an empty bin's share in PSI (recorded in the reference and every report)
DEFAULT_THRESHOLDS = {"min_rows": 100, "psi_max": 0.25, "prediction_psi_max": 0.25, "stattest_p": 0.05,
                      "distance_max": 0.1, "drift_share": 0.5, "latency_p99_ms_max": 250.0,
                      "rejection_rate_max": 0.2, "abstain_rate_max": 0.3}


def thresholds_digest(thresholds: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(dict(thresholds))).hexdigest()


def bin_counts(values: Any, edges: Sequence[float]) -> list[int]:
    """Counts per bin: (-inf, e0], (e0, e1], ..., (e_k, inf)."""
    import numpy as np

    idx = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float), side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(int).tolist()


def _numeric(values: list[float], bins: int) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    edges = sorted(set(np.quantile(a, np.linspace(0, 1, bins + 1)[1:-1]).round(10).tolist()))
    small = len(a) <= SMALL_REFERENCE
    sample = np.sort(a) if small else np.quantile(a, np.linspace(0, 1, SMALL_REFERENCE + 1))
    return {"kind": "numeric", "n": len(a), "edges": edges, "counts": bin_counts(a, edges),
            "summary": {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                        "min": float(a.min()), "max": float(a.max()),
                        **{f"p{q:02d}": float(np.quantile(a, q / 100)) for q in (5, 25, 50, 75, 95)}},
            "sample_kind": "values" if small else "quantiles", "sample": [float(x) for x in sample]}


def _categorical(values: list[str]) -> dict[str, Any]:
    cats = sorted(set(values))
    return {"kind": "categorical", "n": len(values), "categories": cats,
            "counts": [sum(1 for v in values if v == c) for c in cats]}


def build_reference(data: str, features: Sequence[str], *, model: Any = None, labels: Sequence[str] = (),
                    thresholds: Mapping[str, Any] | None = None, bins: int = 10, dataset: str | None = None
                    ) -> dict[str, Any]:
    """The reference of ``data`` (a CSV with a header naming ``features``)."""
    try:
        raw = open(data, "rb").read()
    except OSError as e:
        raise ServeError(f"reference data {data}: cannot read ({e.strerror})") from None
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    if len(rows) < 2:
        raise ServeError(f"reference data {data}: no rows")
    header = rows[0]
    missing = [f for f in features if f not in header]
    if missing:
        raise ServeError(f"reference data {data}: no column(s) {', '.join(missing)}; it has {', '.join(header)}")
    cols: dict[str, list[str]] = {f: [r[header.index(f)] for r in rows[1:]] for f in features}
    out_features: dict[str, Any] = {}
    numeric_rows: list[list[float]] = []
    for f, vals in cols.items():
        try:
            nums = [float(v) for v in vals if v.strip()]
            out_features[f] = _numeric(nums, bins)
            numeric_rows.append(nums)
        except ValueError:
            out_features[f] = _categorical([v for v in vals if v.strip()])
    ref: dict[str, Any] = {"_type": REFERENCE_SCHEMA, "epsilon": EPSILON, "bins": bins,
                           "source": {"path": data, "sha256": hashlib.sha256(raw).hexdigest(), "rows": len(rows) - 1,
                                      "dataset": dataset},
                           "features": out_features}
    if model is not None and len(numeric_rows) == len(features) and len({len(c) for c in numeric_rows}) == 1:
        import numpy as np

        X = np.asarray(numeric_rows, dtype=float).T
        pred = [int(p) for p in model.predict(X)]
        names = [labels[p] if 0 <= p < len(labels) else str(p) for p in pred] if labels else [str(p) for p in pred]
        ref["prediction"] = _categorical(names)
    th = {**DEFAULT_THRESHOLDS, **dict(thresholds or {})}
    bad = [k for k, v in th.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise ServeError(f"policy.monitor.{bad[0]}: {th[bad[0]]!r} is not a number")
    ref["thresholds"] = th
    ref["thresholds_sha256"] = thresholds_digest(th)
    return ref


def reference_bytes(ref: Mapping[str, Any]) -> bytes:
    return canonical_bytes(dict(ref))
