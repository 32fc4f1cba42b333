"""Export one of scikit-learn's bundled data sets to CSV (the raw data of the lifecycle)."""

import sys

from _common import write_csv
from sklearn import datasets

name, out = sys.argv[1], sys.argv[2]
loader = {"wine": datasets.load_wine, "iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer}
if name not in loader:
    sys.exit(f"ingest: unknown data set {name!r}; expected one of {sorted(loader)}")
bunch = loader[name]()
header = list(bunch.feature_names) + ["target"]
rows = [[repr(float(v)) for v in x] + [int(y)] for x, y in zip(bunch.data, bunch.target)]
write_csv(out, header, rows)
print(f"ingested {len(rows)} rows x {len(header)} columns from scikit-learn's {name}")
