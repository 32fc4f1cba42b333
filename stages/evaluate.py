"""Score the trained model on the held-out split: task, calibration and group-fairness metrics as JSON.

metrics/eval.json (names are stable: policy gates read them by dotted path)::

    {"accuracy", "f1_macro", "n_test",
     "calibration": {"brier", "ece", "ece_bins", "ece_strategy": "uniform"},
     "fairness": {"attribute", "dp_difference", "eo_difference", "per_group_accuracy": {group: acc},
                  "worst_group_gap", "ci": {"dp_difference": [lo, hi], "eo_difference": [lo, hi],
                  "worst_group_gap": [lo, hi], "level", "resamples", "seed"}, "group_sizes": {group: n}}}

* predictions are the argmax of ``predict_proba`` (the class ``predict`` returns for these models);
* ``brier`` is the multiclass Brier score as Brier (1950) defined it: per sample the *sum* over classes of the
  squared difference between predicted probability and the one-hot truth, averaged over samples (range [0, 2];
  scikit-learn's ``brier_score_loss`` for multiclass). ``ece`` is the expected calibration error of the top-label
  confidence over ``evaluate.ece_bins`` equal-width bins (``ece_strategy: uniform``);
* fairness is measured across ``evaluate.fairness_attribute`` (``sex`` or ``island``, a column the model never
  sees) with fairlearn's ``MetricFrame``. Multiclass demographic parity and equalized odds use a one-vs-rest
  reduction: per class k, the binary task "predicted k" against "is k"; the reported difference is the maximum
  over classes. Equalized odds leaves out of the TPR (FPR) spread a group with no positives (negatives) of k;
* intervals: percentile bootstrap, resampling rows with replacement within each group
  (``evaluate.bootstrap.resamples``, ``.seed``, ``.level``), since a gap measured on a few dozen rows is noisy.

All floats are rounded to 6 digits; the same model and data give the same bytes. Definitions in _metrics.py.
"""

import pickle
import sys

import numpy as np
from _common import GROUPS, columns, features_and_labels, params, read_csv, write_json
from _metrics import bootstrap_fairness, brier_multiclass, ece_top_label, fairness_fairlearn, fairness_numpy, top_label
from sklearn.metrics import f1_score


def r6(x: float) -> float:
    return round(float(x), 6)


def main(model_path: str, test_path: str, out: str) -> None:
    cfg = params().get("evaluate", {})
    attribute = cfg.get("fairness_attribute", "sex")
    if attribute not in GROUPS:
        sys.exit(f"evaluate: evaluate.fairness_attribute is {attribute!r}; expected one of {', '.join(GROUPS)}")
    n_bins = int(cfg.get("ece_bins", 10))
    boot = cfg.get("bootstrap", {})
    resamples, seed, level = int(boot.get("resamples", 500)), int(boot.get("seed", 0)), float(boot.get("level", 0.95))
    if n_bins < 1 or resamples < 1 or not 0 < level < 1:
        sys.exit("evaluate: need evaluate.ece_bins >= 1, evaluate.bootstrap.resamples >= 1 and 0 < level < 1")

    with open(model_path, "rb") as f:
        bundle = pickle.load(f)
    model = bundle["model"]
    header, rows = read_csv(test_path)
    X, y_list = features_and_labels(header, rows, bundle["features"])
    y = np.asarray(y_list)
    groups = np.asarray([r[0] for r in columns(header, rows, [attribute])])
    classes = [int(c) for c in model.classes_]
    proba = model.predict_proba(X)
    pred, confidence = top_label(proba, classes)

    fair = fairness_fairlearn(y, pred, groups, classes)
    names = sorted(fair["per_group_accuracy"])
    gidx = np.asarray([names.index(g) for g in groups])
    # the bootstrap's vectorised numpy figures must be fairlearn's on the unresampled data
    check = [float(v[0]) for v in fairness_numpy(y, pred, gidx, len(names), classes)]
    expected = [fair["dp_difference"], fair["eo_difference"], fair["worst_group_gap"]]
    if not np.allclose(check, expected, rtol=0, atol=1e-12):
        sys.exit(f"evaluate: internal check failed: numpy fairness {check} != fairlearn {expected}")
    ci = bootstrap_fairness(y, pred, gidx, len(names), classes, resamples=resamples, seed=seed, level=level)

    metrics = {
        "accuracy": r6(np.mean(pred == y)),
        "f1_macro": r6(f1_score(y, pred, average="macro", labels=classes)),
        "n_test": len(rows),
        "calibration": {"brier": r6(brier_multiclass(y, proba, classes)),
                        "ece": r6(ece_top_label(confidence, pred == y, n_bins)),
                        "ece_bins": n_bins, "ece_strategy": "uniform"},
        "fairness": {
            "attribute": attribute,
            "dp_difference": r6(fair["dp_difference"]),
            "eo_difference": r6(fair["eo_difference"]),
            "per_group_accuracy": {g: r6(fair["per_group_accuracy"][g]) for g in names},
            "worst_group_gap": r6(fair["worst_group_gap"]),
            "ci": {**{k: [r6(lo), r6(hi)] for k, (lo, hi) in ci.items()},
                   "level": level, "resamples": resamples, "seed": seed},
            "group_sizes": {g: int(np.sum(groups == g)) for g in names},
        },
    }
    write_json(out, metrics)
    print(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
          f"ECE {metrics['calibration']['ece']:.4f}, worst-group gap ({attribute}) "
          f"{metrics['fairness']['worst_group_gap']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
