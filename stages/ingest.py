"""Export one of scikit-learn's bundled data sets to CSV: how the raw data enters the workspace.

Run by ``stages/bootstrap.py`` before the data is registered; not a pipeline stage, because raw
data is governed (tracked with DVC, a signed manifest, an approval) rather than produced.
"""

import os
import sys

from sklearn import datasets

LOADERS = {"wine": datasets.load_wine, "iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer}


def export(name: str, out: str) -> int:
    if name not in LOADERS:
        sys.exit(f"ingest: unknown data set {name!r}; expected one of {sorted(LOADERS)}")
    bunch = LOADERS[name]()
    header = list(bunch.feature_names) + ["target"]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for x, y in zip(bunch.data, bunch.target):
            f.write(",".join([repr(float(v)) for v in x] + [str(int(y))]) + "\n")
    return len(bunch.target)


if __name__ == "__main__":
    n = export(sys.argv[1], sys.argv[2])
    print(f"exported {n} rows of scikit-learn's {sys.argv[1]} to {sys.argv[2]}")
