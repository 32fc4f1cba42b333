"""Curate the raw table: normalise column names, drop incomplete and duplicate rows."""

import re
import sys

from _common import params, read_csv, write_csv, write_json

src, dst = sys.argv[1], sys.argv[2]
cfg = params().get("curate", {})
header, rows = read_csv(src)
header = [re.sub(r"[^a-z0-9]+", "_", h.lower()).strip("_") for h in header]
complete = [r for r in rows if len(r) == len(header) and all(c.strip() for c in r)]
seen, kept = set(), []
for r in complete:
    t = tuple(r)
    if cfg.get("drop_duplicates", True) and t in seen:
        continue
    seen.add(t)
    kept.append(r)
write_csv(dst, header, kept)
write_json("metrics/curate.json", {"rows_in": len(rows), "rows_out": len(kept), "columns": len(header)})
print(f"curated {len(rows)} -> {len(kept)} rows")
