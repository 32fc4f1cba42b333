"""Export the raw Palmer Penguins table to CSV: how the raw data enters the workspace.

The table is the one the ``palmerpenguins`` package ships inside its wheel (``data/penguins-raw.csv``: the
Palmer Station LTER records, 344 penguins, 17 columns), so nothing is downloaded. Rows and columns are kept as
they are, missing values included; the only change is that the package's ``NA`` cells are written as empty
cells, the CSV spelling of "missing" that Certus's schema check (and the csv module) understands.

Run by ``stages/bootstrap.py`` before the data is registered; not a pipeline stage, because raw
data is governed (tracked with DVC, a signed manifest, an approval) rather than produced.
"""

import csv
import os
import sys
from importlib.resources import files

SOURCES = {"penguins": "penguins-raw.csv"}
MISSING = "NA"


def packaged_csv(name: str) -> str:
    """The path of the CSV file the palmerpenguins package ships (inside site-packages)."""
    if name not in SOURCES:
        sys.exit(f"ingest: unknown data set {name!r}; expected one of {sorted(SOURCES)}")
    return str(files("palmerpenguins").joinpath("data", SOURCES[name]))


def export(name: str, out: str) -> int:
    with open(packaged_csv(name), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(rows[0])
        w.writerows([["" if cell == MISSING else cell for cell in r] for r in rows[1:]])
    return len(rows) - 1


if __name__ == "__main__":
    n = export(sys.argv[1], sys.argv[2])
    print(f"exported {n} rows of palmerpenguins' {sys.argv[1]} table to {sys.argv[2]}")
