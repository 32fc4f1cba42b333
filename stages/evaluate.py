"""Score the trained model on the held-out split and write metrics as JSON."""

import pickle
import sys

from _common import read_csv, write_json
from sklearn.metrics import accuracy_score, f1_score

model_path, test_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
with open(model_path, "rb") as f:
    bundle = pickle.load(f)
header, rows = read_csv(test_path)
X = [[float(v) for v in r[:-1]] for r in rows]
y = [int(r[-1]) for r in rows]
pred = bundle["model"].predict(X)
metrics = {"accuracy": round(float(accuracy_score(y, pred)), 6),
           "f1_macro": round(float(f1_score(y, pred, average="macro")), 6), "n_test": len(rows)}
write_json(out, metrics)
print(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}")
