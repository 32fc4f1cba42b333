"""Drift statistics against a bundle's reference (pure functions over arrays; ``scipy.stats`` for the tests).

- PSI per feature over the reference's own bins (empty shares replaced by the recorded epsilon);
- the per-feature test Evidently uses by default: a reference of at most 1,000 rows gets a statistical
  test — two-sample Kolmogorov–Smirnov for numeric features, chi-square goodness of fit for categorical
  ones (drift when p < ``stattest_p``); a larger reference gets a distance — Wasserstein normalised by the
  reference's standard deviation, or Jensen–Shannon (drift when > ``distance_max``);
- the same for the predicted classes, against the model's predictions on the reference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from engine.serve.reference import SMALL_REFERENCE

__all__ = ["psi", "numeric_drift", "categorical_drift", "percentiles"]


def psi(ref_counts: Sequence[float], cur_counts: Sequence[float], eps: float) -> float:
    """Population stability index: sum over bins of (q - p) ln(q / p), shares clipped below at ``eps``."""
    rs, cs = float(sum(ref_counts)), float(sum(cur_counts))
    if rs <= 0 or cs <= 0:
        return float("nan")
    total = 0.0
    for r, c in zip(ref_counts, cur_counts):
        p, q = max(r / rs, eps), max(c / cs, eps)
        total += (q - p) * math.log(q / p)
    return total


def numeric_drift(ref: Mapping[str, Any], current: Any, th: Mapping[str, Any], eps: float) -> dict[str, Any]:
    import numpy as np
    from scipy import stats

    cur = np.asarray(current, dtype=float)
    cur = cur[np.isfinite(cur)]
    out: dict[str, Any] = {"kind": "numeric", "rows": int(cur.size)}
    if cur.size == 0:
        return {**out, "drifted": False, "note": "no values"}
    ordered = np.sort(cur)  # bins by len(edges) binary searches, not one per value; the tests sort anyway
    cum = np.searchsorted(ordered, np.asarray(ref["edges"], dtype=float), side="right")  # = bin_counts(cur, edges)
    counts = np.diff(np.concatenate(([0], cum, [ordered.size]))).astype(int).tolist()
    out["psi"] = psi(ref["counts"], counts, eps)
    out["bins"] = {"edges": ref["edges"], "reference": ref["counts"], "current": counts}
    sample = np.asarray(ref["sample"], dtype=float)
    if int(ref["n"]) <= SMALL_REFERENCE:
        res = stats.ks_2samp(sample, ordered)
        out.update(test="ks", statistic=float(res.statistic), p_value=float(res.pvalue),
                   drifted=bool(res.pvalue < th["stattest_p"]))
    else:
        std = float(ref["summary"]["std"]) or 1.0
        d = float(stats.wasserstein_distance(sample, ordered)) / std
        out.update(test="wasserstein_normed", statistic=d, drifted=bool(d > th["distance_max"]))
    out["summary"] = {"mean": float(cur.mean()), "std": float(cur.std(ddof=1)) if cur.size > 1 else 0.0,
                      "reference_mean": ref["summary"]["mean"]}
    return out


def categorical_drift(ref: Mapping[str, Any], current: Sequence[Any], th: Mapping[str, Any], eps: float
                      ) -> dict[str, Any]:
    import numpy as np
    from scipy import stats
    from scipy.spatial import distance

    cats = list(ref["categories"])
    seen: Counter[str] = Counter()
    for v, c in Counter(current).items():  # count the values in C, then name them: a million rows, a few keys
        if v is not None:
            seen[str(v)] += c
    n = sum(seen.values())
    out: dict[str, Any] = {"kind": "categorical", "rows": n}
    if n == 0:
        return {**out, "drifted": False, "note": "no values"}
    other = n - sum(seen.get(c, 0) for c in cats)
    cur = [seen.get(c, 0) for c in cats] + [other]
    refc = list(ref["counts"]) + [0]
    out["psi"] = psi(refc, cur, eps)
    out["categories"] = {"names": [*cats, "(other)"], "reference": refc, "current": cur}
    rs = float(sum(refc))
    p = np.maximum(np.asarray(refc, dtype=float) / rs, eps)
    p = p / p.sum()
    if int(ref["n"]) <= SMALL_REFERENCE:
        res = stats.chisquare(np.asarray(cur, dtype=float), p * n)
        out.update(test="chi_square", statistic=float(res.statistic), p_value=float(res.pvalue),
                   drifted=bool(res.pvalue < th["stattest_p"]))
    else:
        d = float(distance.jensenshannon(p, np.asarray(cur, dtype=float) / n))
        out.update(test="jensen_shannon", statistic=d, drifted=bool(d > th["distance_max"]))
    return out


def percentiles(values: Any, qs: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(v) for q, v in zip(qs, np.percentile(a, list(qs)))}
