"""Gate policy as Hydra config, and its evaluation (pure: no I/O).

``policy.<gate>`` in the composed config maps rule names to rules::

    release:
      accuracy:      {min: 0.90, hard_limit: 0.80}                 # comparator min: value >= 0.90
      dp_difference: {metric: fairness.dp_difference, max: 0.10, hard_limit: 0.25}
      f1_macro:      {min: 0.85, min_abs_change: -0.02, stage: evaluate, file: metrics/eval.json}

The comparator is the key ``min`` or ``max`` (so ``certus repro policy.release.accuracy.min=0.99``
overrides a threshold); ``metric`` is a dotted path into the metrics JSON (default: the rule name);
``stage`` / ``file`` say which metrics file holds it (default: the gate's stage, the first of its
metrics files that has the path). Beyond ``hard_limit`` no waiver is accepted. ``min_abs_change`` /
``min_rel_change`` compare with a baseline (the value in the last passed gate result on the same
pipeline, for a different model) the way MLflow's ``MetricThreshold`` does: the change in the good
direction must be at least that much.

Values are compared as decimals from their text (a metric file's ``0.1`` is exactly 0.1; a threshold
float by its shortest repr); thresholds are recorded as the composed config gave them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import ConfigError

__all__ = ["Rule", "Outcome", "parse_policy", "evaluate_rule", "lookup_metric", "to_decimal", "RULE_KEYS"]

RULE_KEYS = ("min", "max", "hard_limit", "min_abs_change", "min_rel_change", "metric", "stage", "file", "desc")
MISSING = object()


def to_decimal(value: Any) -> Decimal | None:
    """A number as a Decimal from its text (floats by shortest repr); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    comparator: str  # min | max
    threshold: Any  # as the composed config gave it
    hard_limit: Any = None
    min_abs_change: Any = None
    min_rel_change: Any = None
    stage: str | None = None
    file: str | None = None

    @property
    def uses_baseline(self) -> bool:
        return self.min_abs_change is not None or self.min_rel_change is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    rule: Rule
    outcome: str  # pass | needs-review | fail
    reason: str
    value: Any = None  # JSON number (None when missing / not finite)
    value_text: str | None = None  # exactly as the metrics file wrote it
    file: str | None = None
    baseline: str | None = None

    def to_dict(self) -> dict[str, Any]:
        r = self.rule
        return {"name": r.name, "metric": r.metric, "file": self.file, "value": self.value,
                "value_text": self.value_text, "comparator": r.comparator, "threshold": r.threshold,
                "hard_limit": r.hard_limit, "min_abs_change": r.min_abs_change, "min_rel_change": r.min_rel_change,
                "baseline": self.baseline, "outcome": self.outcome, "reason": self.reason}


def parse_policy(name: str, raw: Any) -> list[Rule]:
    """``policy.<name>`` -> rules, or a one-line :class:`ConfigError` naming the config key."""
    where = f"policy.{name}"
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: expected a mapping of rule name -> {{min|max: threshold, ...}}")
    rules = []
    for rname, body in raw.items():
        w = f"{where}.{rname}"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{w}: expected a mapping with 'min' or 'max'")
        unknown = sorted(str(k) for k in body if k not in RULE_KEYS)
        if unknown:
            raise ConfigError(f"{w}: unknown key '{unknown[0]}'; expected one of {', '.join(RULE_KEYS)}")
        comps = [c for c in ("min", "max") if c in body]
        if len(comps) != 1:
            raise ConfigError(f"{w}: give exactly one comparator, 'min' or 'max'")
        comp = comps[0]
        for k in ("min", "max", "hard_limit", "min_abs_change", "min_rel_change"):
            dec = to_decimal(body[k]) if k in body and body[k] is not None else Decimal(0)
            if dec is None or not dec.is_finite():
                raise ConfigError(f"{w}.{k}: {body[k]!r} is not a finite number")
        thr, hard = to_decimal(body[comp]), to_decimal(body.get("hard_limit"))
        if hard is not None and thr is not None and ((comp == "min" and hard > thr) or (comp == "max" and hard < thr)):
            raise ConfigError(f"{w}.hard_limit: {body['hard_limit']!r} is stricter than the threshold "
                              f"{body[comp]!r}; for '{comp}' it must be {'below' if comp == 'min' else 'above'} it")
        metric = body.get("metric", rname)
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"{w}.metric: expected a dotted path into the metrics JSON")
        rules.append(Rule(name=str(rname), metric=metric, comparator=comp, threshold=body[comp],
                          hard_limit=body.get("hard_limit"), min_abs_change=body.get("min_abs_change"),
                          min_rel_change=body.get("min_rel_change"),
                          stage=body.get("stage"), file=body.get("file")))
    return rules


def lookup_metric(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return MISSING
    return cur


def _num(d: Decimal) -> Any:
    return int(d) if d == d.to_integral_value() and "." not in str(d) and "E" not in str(d).upper() else float(d)


def evaluate_rule(rule: Rule, value: Any, file: str | None, baseline: Any = None,
                  baseline_ref: str | None = None) -> Outcome:
    """One rule against one observed value (``MISSING`` when absent); ``baseline``: the value to compare
    changes with (None: no baseline yet)."""
    if value is MISSING:
        return Outcome(rule, "fail", f"metric '{rule.metric}' missing from the metrics", file=file)
    d = to_decimal(value) if not isinstance(value, str) else None
    if d is None:
        return Outcome(rule, "fail", f"metric '{rule.metric}' is not a number ({str(value)[:40]!r})",
                       value_text=str(value)[:80], file=file)
    text = str(d)
    if not d.is_finite():
        return Outcome(rule, "fail", f"metric '{rule.metric}' is {text}", value_text=text, file=file)
    num = _num(d)
    thr, hard = to_decimal(rule.threshold), to_decimal(rule.hard_limit)
    assert thr is not None
    lo = rule.comparator == "min"
    sym_bad = "<" if lo else ">"

    def beyond(limit: Decimal) -> bool:
        return d < limit if lo else d > limit

    if hard is not None and beyond(hard):
        return Outcome(rule, "fail", f"{text} {sym_bad} hard limit {rule.hard_limit}", num, text, file)
    if beyond(thr):
        return Outcome(rule, "needs-review", f"{text} {sym_bad} {rule.comparator} {rule.threshold}", num, text, file)
    if rule.uses_baseline and baseline is not None:
        b = to_decimal(baseline)
        if b is not None and b.is_finite():
            change = (d - b) if lo else (b - d)
            need_abs = to_decimal(rule.min_abs_change)
            if need_abs is not None and change < need_abs:
                return Outcome(rule, "needs-review", f"change {change} vs baseline {b} < min_abs_change "
                               f"{rule.min_abs_change}", num, text, file, baseline_ref)
            need_rel = to_decimal(rule.min_rel_change)
            if need_rel is not None and b != 0 and change / abs(b) < need_rel:
                return Outcome(rule, "needs-review", f"relative change {change / abs(b):.6g} vs baseline {b} < "
                               f"min_rel_change {rule.min_rel_change}", num, text, file, baseline_ref)
            return Outcome(rule, "pass", f"{text} meets {rule.comparator} {rule.threshold}; change {change} vs "
                           f"baseline", num, text, file, baseline_ref)
    note = "; no baseline yet" if rule.uses_baseline else ""
    return Outcome(rule, "pass", f"{text} meets {rule.comparator} {rule.threshold}{note}", num, text, file)


def evaluate(rules: list[Rule], find: Callable[[Rule], tuple[Any, str | None]],
             baselines: Mapping[str, Any] | None = None, baseline_ref: str | None = None) -> list[Outcome]:
    """Every rule; ``find(rule)`` -> (value or MISSING, file it came from)."""
    baselines = baselines or {}
    out = []
    for r in rules:
        value, file = find(r)
        out.append(evaluate_rule(r, value, file, baselines.get(r.name), baseline_ref))
    return out
