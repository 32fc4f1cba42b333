"""Curate the raw penguins table into the columns the model and its evaluation use.

* column names are normalised (``Culmen Length (mm)`` -> ``bill_length_mm``, the names the palmerpenguins
  package uses for its cleaned table);
* ``species`` (``Adelie Penguin (Pygoscelis adeliae)`` -> ``Adelie``) is encoded as an integer ``label`` in
  sorted name order; the map is recorded in metrics/curate.json;
* ``island`` and ``sex`` (lowercased) are kept as group attributes, not model features (see _common.GROUPS);
* missing values (the raw table's empty cells) are handled as ``curate.missing`` says: ``drop`` removes every
  row missing a feature or a group attribute; what was dropped, per column and in all, is recorded;
* with ``curate.drop_duplicates``, a raw record seen twice (every column equal) is kept once.
"""

import re
import sys

from _common import FEATURES, GROUPS, LABEL, params, read_csv, write_csv, write_json

RENAME = {"culmen_length_mm": "bill_length_mm", "culmen_depth_mm": "bill_depth_mm"}
STRATEGIES = ("drop",)

src, dst = sys.argv[1], sys.argv[2]
cfg = params().get("curate", {})
strategy = cfg.get("missing", "drop")
if strategy not in STRATEGIES:
    sys.exit(f"curate: curate.missing is {strategy!r}; expected one of {', '.join(STRATEGIES)}")
raw_header, rows = read_csv(src)
header = [re.sub(r"[^a-z0-9]+", "_", h.lower()).strip("_") for h in raw_header]
header = [RENAME.get(h, h) for h in header]
need = ["species", *GROUPS, *FEATURES]
absent = [c for c in need if c not in header]
if absent:
    sys.exit(f"curate: {src}: missing column(s) {', '.join(absent)}")
idx = {c: header.index(c) for c in need}

seen: set[tuple[str, ...]] = set()
duplicates = 0
missing_by_column = {c: 0 for c in [*GROUPS, *FEATURES]}
dropped_missing = 0
kept: list[dict[str, str]] = []
for r in rows:
    if len(r) != len(header):
        sys.exit(f"curate: {src}: a row has {len(r)} fields; the header has {len(header)}")
    if cfg.get("drop_duplicates", True):
        t = tuple(r)
        if t in seen:
            duplicates += 1
            continue
        seen.add(t)
    rec = {c: r[idx[c]].strip() for c in need}
    gaps = [c for c in missing_by_column if rec[c] == ""]
    for c in gaps:
        missing_by_column[c] += 1
    if gaps:
        dropped_missing += 1
        continue
    rec["species"] = rec["species"].split()[0]
    rec["sex"] = rec["sex"].lower()
    kept.append(rec)

species = sorted({rec["species"] for rec in kept})
label_map = {s: i for i, s in enumerate(species)}
out_header = [*GROUPS, *FEATURES, LABEL]
write_csv(dst, out_header, [[*(rec[c] for c in GROUPS + FEATURES), label_map[rec["species"]]] for rec in kept])
write_json("metrics/curate.json", {
    "rows_in": len(rows), "rows_out": len(kept), "columns": len(out_header),
    "features": FEATURES, "group_attributes": GROUPS, "label": LABEL, "label_map": label_map,
    "duplicates_dropped": duplicates,
    "missing": {"strategy": strategy, "rows_dropped": dropped_missing, "by_column": missing_by_column},
})
print(f"curated {len(rows)} -> {len(kept)} rows ({dropped_missing} dropped for missing values, "
      f"{duplicates} duplicates)")
