"""A stage's scheduling fields: ``resources:`` (what a worker must offer) and ``retries:``.

Neither is part of the stage key: where and how often a command ran does not change what it
computes. ``resources`` map to Dask worker resources (engine.adapters.dask_executor):
``cpus`` and ``gpu`` are counts, ``mem`` is bytes (``4GiB``, ``512MB`` or a number), and any
other name is a custom resource the cluster's workers advertise. ``retries`` (default 0:
commands are not idempotent) is honoured by both executors: after a failure (or, on Dask, a
lost worker) the stage's outputs go and it runs again, up to that many times.
"""

from __future__ import annotations

import re
from typing import Any

from engine.pipeline.spec_problems import _Problems

__all__ = ["parse_scheduling", "parse_size"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_size(value: Any) -> float | None:
    """``4GiB`` -> 4294967296, ``512MB`` -> 512000000, ``1024`` -> 1024; None when not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    m = _SIZE.match(str(value))
    if not m:
        return None
    number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    size = number * (1024 if binary else 1000) ** _POWERS[unit]
    return size if size > 0 else None


def parse_scheduling(body: dict[str, Any], probs: _Problems, kp: tuple[Any, ...],
                     name: str) -> tuple[tuple[tuple[str, float], ...], int]:
    """(sorted resources, retries) of one stage; problems are added to ``probs``."""
    raw = body.get("resources") or {}
    resources: dict[str, float] = {}
    if not isinstance(raw, dict):
        probs.add(kp + ("resources",), name, "resources", "expected a mapping like {cpus: 2, mem: 4GiB, gpu: 1}")
        raw = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _NAME.match(key):
            probs.add(kp + ("resources",), name, "resources", f"{key!r} is not a resource name (letters, digits, "
                      "'_', '-')")
            continue
        amount = parse_size(value) if key == "mem" else (
            float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None)
        if amount is None:
            what = "a size like 4GiB or 512MB" if key == "mem" else "a positive number"
            probs.add(kp + ("resources", key), name, "resources", f"{key}: {value!r} is not {what}")
            continue
        resources[key] = amount
    retries = body.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        probs.add(kp + ("retries",), name, "retries", f"{retries!r} is not a whole number from 0 to 100")
        retries = 0
    return tuple(sorted(resources.items())), retries
