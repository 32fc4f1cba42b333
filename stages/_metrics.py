"""Calibration and group-fairness metrics for the evaluate stage (numpy; fairlearn for the fairness figures).

Definitions (they are what metrics/eval.json means; the names there are stable):

* ``brier``: the multiclass Brier score in Brier's (1950) original form, the mean over samples of the *sum* over
  classes of ``(p_ik - 1[y_i = k])^2``; 0 is perfect, 2 the worst. It equals scikit-learn's
  ``brier_score_loss(y, proba, labels=classes)`` for more than two classes, and K times the mean of the K
  one-vs-rest Brier scores.
* ``ece``: expected calibration error of the top-label confidence: each sample's confidence is its largest
  predicted probability and it is correct when that class is the true one; the confidences go into ``n_bins``
  equal-width bins over [0, 1] (bin b holds ``(b/n, (b+1)/n]``, the first also 0), and
  ``ece = sum_b (n_b / n) * |accuracy_b - mean confidence_b|`` over non-empty bins.
* fairness over a group attribute, for a multiclass prediction, by one-vs-rest reduction: for each class k the
  task "is it k?" is binary (``y == k`` against ``pred == k``), and the reported figure is the *largest* over
  classes, so a gate on it bounds every class:

  - ``dp_difference``: max over k of fairlearn's ``demographic_parity_difference`` (the spread between groups of
    the rate at which k is predicted);
  - ``eo_difference``: max over k of the equalized-odds difference, ``max(TPR spread, FPR spread)`` between groups
    (as fairlearn's ``equalized_odds_difference``), computed with fairlearn's ``MetricFrame`` over rates that are
    undefined (NaN, left out of the spread) for a group with no positives (TPR) or no negatives (FPR) of k --
    fairlearn's own rate functions count those as 0, which would report a species absent from an island as a
    disparity of 1;
  - ``per_group_accuracy`` (``MetricFrame.by_group``) and ``worst_group_gap``, the largest minus the smallest
    group accuracy (``MetricFrame.difference()``).

The bootstrap intervals resample the test rows with replacement *within each group* (group sizes fixed, so every
resample has every group), recompute the three figures with a vectorised numpy version of the same definitions
(checked against fairlearn's values on the unresampled data) and take percentile intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_label(proba: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, its probability) per row: the argmax of the probabilities (first one on a tie)."""
    proba = np.asarray(proba, dtype=float)
    top = np.argmax(proba, axis=1)
    return np.asarray(classes)[top], proba[np.arange(len(proba)), top]


def brier_multiclass(y: Sequence[int], proba: np.ndarray, classes: Sequence[int]) -> float:
    proba = np.asarray(proba, dtype=float)
    onehot = (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(float)
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def ece_top_label(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=float)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if conf.size == 0:
        raise ValueError("no samples")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner, conf, side="left")  # right-closed bins: (e_b, e_b+1]
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        n_b = int(sel.sum())
        if n_b:
            total += n_b / conf.size * abs(float(ok[sel].mean()) - float(conf[sel].mean()))
    return float(total)


def _rate(y_true: np.ndarray, y_pred: np.ndarray, truth: bool) -> float:
    """P(pred | true == truth) within one group; NaN where the group has no such rows."""
    yt, yp = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    sel = yt == truth
    return float(yp[sel].mean()) if sel.any() else float("nan")


def tpr_or_nan(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return _rate(y_true, y_pred, True)


def fpr_or_nan(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return _rate(y_true, y_pred, False)


def fairness_fairlearn(y: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                       classes: Sequence[int]) -> dict[str, object]:
    """Point estimates with fairlearn: dp/eo differences (one-vs-rest, max over classes), per-group accuracy."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference
    from sklearn.metrics import accuracy_score

    acc = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=groups)
    dp, eo = 0.0, 0.0
    for k in classes:
        yt, yp = y == k, pred == k
        dp = max(dp, float(demographic_parity_difference(yt, yp, sensitive_features=groups)))
        mf = MetricFrame(metrics={"tpr": tpr_or_nan, "fpr": fpr_or_nan}, y_true=yt, y_pred=yp,
                         sensitive_features=groups)
        spread = mf.difference(method="between_groups")
        eo = max(eo, float(np.nanmax([spread["tpr"], spread["fpr"], 0.0])))
    by_group = {str(g): float(v) for g, v in acc.by_group.items()}
    return {"dp_difference": dp, "eo_difference": eo, "per_group_accuracy": by_group,
            "worst_group_gap": float(acc.difference(method="between_groups"))}


def _spread(values: np.ndarray) -> np.ndarray:
    """max - min over the last axis, ignoring NaN; 0 where fewer than one value is defined."""
    finite = ~np.isnan(values)
    hi = np.where(finite, values, -np.inf).max(axis=-1)
    lo = np.where(finite, values, np.inf).min(axis=-1)
    return np.where(finite.any(axis=-1), hi - lo, 0.0)


def fairness_numpy(y: np.ndarray, pred: np.ndarray, gidx: np.ndarray, n_groups: int,
                   classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dp, eo and worst-group gap for R resamples at once: y, pred, gidx are (R, n) arrays (gidx: group index)."""
    y, pred, gidx = np.atleast_2d(y), np.atleast_2d(pred), np.atleast_2d(gidx)
    member = gidx[..., None] == np.arange(n_groups)  # (R, n, G)

    def mean_in(mask_rows: np.ndarray, of: np.ndarray) -> np.ndarray:
        """Per group: mean of `of` over the rows where mask_rows holds; NaN where there are none."""
        m = member & mask_rows[..., None]
        n = m.sum(axis=1).astype(float)
        s = (m & of[..., None]).sum(axis=1).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)

    everything = np.ones_like(y, dtype=bool)
    acc = mean_in(everything, y == pred)
    dp = np.zeros(len(y))
    eo = np.zeros(len(y))
    for k in classes:
        yt, yp = y == k, pred == k
        dp = np.maximum(dp, _spread(mean_in(everything, yp)))
        eo = np.maximum(eo, np.maximum(_spread(mean_in(yt, yp)), _spread(mean_in(~yt, yp))))
    return dp, eo, _spread(acc)


def bootstrap_fairness(y: np.ndarray, pred: np.ndarray, gidx: np.ndarray, n_groups: int, classes: Sequence[int],
                       *, resamples: int, seed: int, level: float) -> dict[str, list[float]]:
    """Percentile intervals of (dp, eo, worst-group gap) over `resamples` within-group bootstrap resamples."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(gidx == g) for g in range(n_groups)]
    idx = np.concatenate([rng.choice(m, size=(resamples, m.size), replace=True) for m in members if m.size],
                         axis=1)
    dp, eo, gap = fairness_numpy(y[idx], pred[idx], gidx[idx], n_groups, classes)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {name: [float(v) for v in np.percentile(vals, q)]
            for name, vals in (("dp_difference", dp), ("eo_difference", eo), ("worst_group_gap", gap))}
