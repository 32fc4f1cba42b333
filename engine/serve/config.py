"""The bundle's ``serving.yaml``: which model file, its features in order, and the guardrails.

The input rules reuse the dataset schema's language (:mod:`engine.datasets.schema`: type, nullable,
min, max, allowed), so a request is checked by the same rules as the data the model was trained on.
A bundle packaged with the default template (no ``input:`` section) still gets a type check: every
feature must be a number. ``pii_columns`` name request columns whose raw values are never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.datasets.schema import ColumnRule, load_schema
from engine.errors import DatasetError, ServeError

__all__ = ["ServingConfig", "parse_serving"]

_GUARD_KEYS = {"max_input_bytes", "max_batch", "reject_unknown_features", "min_confidence", "rate_limit",
               "client_header", "log_inputs", "pii_columns"}


@dataclass(frozen=True)
class ServingConfig:
    model_file: str  # path inside the bundle
    features: tuple[str, ...]  # the model's input columns, in order (empty: from the model file)
    labels: tuple[str, ...]  # class names by class index (empty: the model's classes)
    columns: tuple[ColumnRule, ...]  # request columns and their rules (features + optional extras)
    max_input_bytes: int = 1 << 20
    max_batch: int = 1024
    reject_unknown_features: bool = True
    min_confidence: float = 0.0
    rate_limit: str | None = None  # limits' notation, e.g. "100/second"; per client
    client_header: str | None = None  # key clients by this header (an API key a gateway sets), else by address
    log_inputs: bool = True
    pii_columns: tuple[str, ...] = ()
    reference: Mapping[str, Any] | None = None  # packaging's `reference:` section (data, dataset, bins)

    def rule(self, name: str) -> ColumnRule | None:
        return next((c for c in self.columns if c.name == name), None)

    def with_features(self, features: tuple[str, ...]) -> ServingConfig:
        """Fill in features the model file names when the config did not."""
        from dataclasses import replace

        cols = self.columns or tuple(ColumnRule(f, type="float", nullable=False) for f in features)
        return replace(self, features=features, columns=cols)


def parse_serving(text: str, where: str = "serving.yaml") -> ServingConfig:
    """Parse and check a serving config; one-line :class:`ServeError` naming the field otherwise."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ServeError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ServeError(f"{where}: expected a mapping with serving: and guardrails:")
    serving = data.get("serving") or {}
    guards = data.get("guardrails") or {}
    if not isinstance(serving, dict) or not isinstance(guards, dict):
        raise ServeError(f"{where}: 'serving' and 'guardrails' must be mappings")
    unknown = sorted(set(guards) - _GUARD_KEYS)
    if unknown:
        raise ServeError(f"{where}: guardrails.{unknown[0]}: unknown; expected one of {', '.join(sorted(_GUARD_KEYS))}")
    model = serving.get("model")
    if not isinstance(model, str) or not model.startswith("model/") or model.endswith("/") and model != "model/":
        raise ServeError(f"{where}: serving.model is {model!r}; expected the model file's path in the bundle "
                         "(model/NAME)")
    features = _names(serving.get("features", []), where, "serving.features")
    labels = tuple(str(x) for x in (serving.get("labels") or []))
    columns: tuple[ColumnRule, ...] = ()
    if data.get("input") is not None:
        try:
            columns = load_schema(f"{where}#input", yaml.safe_dump(data["input"])).columns
        except DatasetError as e:
            raise ServeError(str(e)) from None
        missing = [f for f in features if f not in {c.name for c in columns}]
        if missing:
            raise ServeError(f"{where}: input.columns lacks feature(s) {', '.join(missing)} named in serving.features")
    pii = _names(guards.get("pii_columns", []), where, "guardrails.pii_columns")
    rate = guards.get("rate_limit")
    if rate is not None:
        from limits import parse

        try:
            parse(str(rate))
        except ValueError:
            raise ServeError(f"{where}: guardrails.rate_limit is {rate!r}; expected e.g. '100/second' or "
                             "'1000 per minute'") from None
    try:
        cfg = ServingConfig(
            model_file=model, features=features, labels=labels, columns=columns,
            max_input_bytes=_int(guards, "max_input_bytes", 1 << 20, where),
            max_batch=_int(guards, "max_batch", 1024, where),
            reject_unknown_features=bool(guards.get("reject_unknown_features", True)),
            min_confidence=float(guards.get("min_confidence", 0.0) or 0.0),
            rate_limit=None if rate is None else str(rate),
            client_header=str(guards["client_header"]).lower() if guards.get("client_header") else None,
            log_inputs=bool(guards.get("log_inputs", True)), pii_columns=pii,
            reference=data.get("reference") if isinstance(data.get("reference"), dict) else None)
    except (TypeError, ValueError) as e:
        raise ServeError(f"{where}: guardrails: {e}") from None
    if not 0.0 <= cfg.min_confidence <= 1.0:
        raise ServeError(f"{where}: guardrails.min_confidence is {cfg.min_confidence}; expected 0..1")
    return cfg


def _names(value: Any, where: str, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ServeError(f"{where}: {field} must be a list of column names")
    return tuple(value)


def _int(guards: Mapping[str, Any], key: str, default: int, where: str) -> int:
    v = guards.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ServeError(f"{where}: guardrails.{key} is {v!r}; expected a positive integer")
    return v
