"""Guardrails on the request path: payload size, the Open Inference Protocol request shape, the input
rules (the dataset schema's: type, nullable, min, max, allowed), and the output rule (abstain below a
confidence floor). The per-client rate limit is :mod:`engine.serve.ratelimit` (shared by the workers).

Every refusal is a :class:`Refusal` with an HTTP status, a kind (what the metrics count it as) and a
message naming the input and the rule, so a bad request is a 4xx that says what to fix — never a 500.
"""

from __future__ import annotations

import math
from typing import Any

from engine.datasets.schema import ColumnRule
from engine.serve.config import ServingConfig

__all__ = ["Refusal", "parse_request", "KINDS"]

KINDS = ("payload_too_large", "bad_request", "schema", "rate_limit", "not_found", "not_ready")


class Refusal(Exception):
    """A request refused by a guardrail: ``status`` (4xx), ``kind``, and the field and rule when known."""

    def __init__(self, status: int, kind: str, message: str, field: str | None = None, rule: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.field, self.rule = status, kind, field, rule
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self), "kind": self.kind}
        if self.field is not None:
            out["field"] = self.field
        if self.rule is not None:
            out["rule"] = self.rule
        return out


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [v for row in data for v in (row if isinstance(row, list) else [row])]
    return data if isinstance(data, list) else [data]


def _check(value: Any, rule: ColumnRule, name: str, row: int) -> Any:
    """The typed value, or a Refusal naming the input, the row and the rule."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if not rule.nullable:
            raise Refusal(422, "schema", f"input '{name}' row {row}: missing value (rule nullable: false)",
                          name, "nullable: false")
        return None
    typ = rule.type
    try:
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError
            v: Any = float(value)
            if not math.isfinite(v):
                raise ValueError
        elif typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            v = int(value)
        elif typ == "bool":
            if not isinstance(value, bool):
                raise ValueError
            v = value
        else:
            v = str(value)
    except (TypeError, ValueError):
        raise Refusal(422, "schema", f"input '{name}' row {row}: {str(value)[:40]!r} is not a finite {typ} "
                      f"(rule type {typ})", name, f"type {typ}") from None
    if rule.min is not None and isinstance(v, (int, float)) and v < rule.min:
        raise Refusal(422, "schema", f"input '{name}' row {row}: {v} is below the minimum (rule min {rule.min})",
                      name, f"min {rule.min}")
    if rule.max is not None and isinstance(v, (int, float)) and v > rule.max:
        raise Refusal(422, "schema", f"input '{name}' row {row}: {v} is above the maximum (rule max {rule.max})",
                      name, f"max {rule.max}")
    if rule.allowed is not None and v not in rule.allowed:
        raise Refusal(422, "schema", f"input '{name}' row {row}: {str(v)[:40]!r} is not allowed (rule allowed "
                      f"{list(rule.allowed)[:10]})", name, "allowed")
    return v


def parse_request(body: Any, cfg: ServingConfig) -> tuple[int, dict[str, list[Any]]]:
    """(rows, column -> values) of an OIP (KServe V2) infer request body, every value checked."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise Refusal(400, "bad_request", "request: expected an Open Inference Protocol body "
                      '{"inputs": [{"name", "shape", "datatype", "data"}, ...]}', "inputs", "required")
    cols: dict[str, list[Any]] = {}
    rows = -1
    for i, t in enumerate(body["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or "data" not in t:
            raise Refusal(400, "bad_request", f"inputs[{i}]: expected an object with name, shape, datatype, data",
                          f"inputs[{i}]", "tensor")
        name = t["name"]
        rule = cfg.rule(name)
        if rule is None:
            if cfg.reject_unknown_features:
                raise Refusal(422, "schema", f"input '{name}': not a known input (expected "
                              f"{', '.join(c.name for c in cfg.columns)})", name, "unknown input")
            continue
        data = _flat(t["data"])
        shape = t.get("shape")
        if isinstance(shape, list) and shape and all(isinstance(s, int) for s in shape):
            if math.prod(shape) != len(data):
                raise Refusal(400, "bad_request", f"input '{name}': shape {shape} does not hold {len(data)} values",
                              name, "shape")
        if rows >= 0 and len(data) != rows:
            raise Refusal(400, "bad_request", f"input '{name}': {len(data)} rows; other inputs have {rows}",
                          name, "shape")
        rows = len(data)
        if rows > cfg.max_batch:
            raise Refusal(413, "payload_too_large", f"input '{name}': {rows} rows; at most {cfg.max_batch} per "
                          "request (guardrails.max_batch)", name, f"max_batch {cfg.max_batch}")
        cols[name] = [_check(v, rule, name, r) for r, v in enumerate(data)]
    for c in cfg.columns:
        if c.name not in cols:
            if c.name in cfg.features or not c.nullable:
                raise Refusal(422, "schema", f"input '{c.name}': missing (rule required)", c.name, "required")
            cols[c.name] = [None] * max(rows, 0)
    if rows <= 0:
        raise Refusal(400, "bad_request", "request: no rows", "inputs", "rows")
    for f in cfg.features:
        if any(v is None for v in cols[f]):
            r = cols[f].index(None)
            raise Refusal(422, "schema", f"input '{f}' row {r}: missing value (a model feature)", f, "required")
    return rows, cols
