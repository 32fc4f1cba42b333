"""Helpers shared by the reference stage scripts: params and CSV I/O, standard library only."""

from __future__ import annotations

import csv
import json
import os


def params() -> dict:
    """The stage's resolved params, handed over by Certus (no Hydra needed here)."""
    path = os.environ.get("CERTUS_PARAMS")
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_csv(path: str, header: list[str], rows: list[list[object]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# The curated table: group attributes first, then the model's features, then the label (last, so the split
# can stratify on it). `sex` and `island` are kept for fairness evaluation but are not model features: the
# model predicts species from body measurements alone, so the fairness figures measure how a model that never
# sees the attribute still treats its groups (island would also leak the label: Gentoo live only on Biscoe).
GROUPS = ["island", "sex"]
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
LABEL = "label"


def columns(header: list[str], rows: list[list[str]], names: list[str]) -> list[list[str]]:
    """The named columns of each row, in that order (one line naming what is missing if one is absent)."""
    missing = [n for n in names if n not in header]
    if missing:
        raise SystemExit(f"missing column(s) {', '.join(missing)}; the table has {', '.join(header)}")
    idx = [header.index(n) for n in names]
    return [[r[i] for i in idx] for r in rows]


def features_and_labels(header: list[str], rows: list[list[str]],
                        features: list[str] | None = None) -> tuple[list[list[float]], list[int]]:
    X = [[float(v) for v in r] for r in columns(header, rows, features or FEATURES)]
    y = [int(r[0]) for r in columns(header, rows, [LABEL])]
    return X, y
