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
