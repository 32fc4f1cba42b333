"""Train/test split stratified on the label (the last column), seeded from the config."""

import os
import sys

from _common import params, read_csv, write_csv
from sklearn.model_selection import train_test_split

src, outdir = sys.argv[1], sys.argv[2]
cfg = params()["split"]
header, rows = read_csv(src)
labels = [r[-1] for r in rows]
train, test = train_test_split(rows, test_size=cfg["test_size"], random_state=cfg["seed"], stratify=labels)
write_csv(os.path.join(outdir, "train.csv"), header, train)
write_csv(os.path.join(outdir, "test.csv"), header, test)
print(f"split {len(rows)} rows: {len(train)} train, {len(test)} test")
