"""Fit the configured model (model=logreg or model=gbt) on the training split's features (_common.FEATURES)."""

import os
import pickle
import sys

from _common import FEATURES, features_and_labels, params, read_csv
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

src, out = sys.argv[1], sys.argv[2]
p = params()
model_cfg, train_cfg = p["model"], p["train"]
header, rows = read_csv(src)
X, y = features_and_labels(header, rows)
if model_cfg["name"] == "logreg":
    clf = LogisticRegression(C=train_cfg["C"], max_iter=model_cfg["max_iter"], random_state=train_cfg["seed"])
elif model_cfg["name"] == "gbt":
    clf = GradientBoostingClassifier(n_estimators=model_cfg["n_estimators"], max_depth=model_cfg["max_depth"],
                                     learning_rate=model_cfg["learning_rate"], random_state=train_cfg["seed"])
else:
    sys.exit(f"train: unknown model {model_cfg['name']!r}")
model = make_pipeline(StandardScaler(), clf).fit(X, y)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "wb") as f:
    pickle.dump({"features": FEATURES, "model": model}, f, protocol=4)
print(f"trained {model_cfg['name']} on {len(rows)} rows")
