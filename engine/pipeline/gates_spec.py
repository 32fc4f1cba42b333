"""The spec's ``gates:`` section and the stage field ``requires_gate`` (parsing and validation only).

```yaml
gates:
  release:                  # gate name
    after: evaluate         # the stage whose metrics files the gate reads; evaluated right after it
    policy: release         # policy.<name> in the composed Hydra config (default: the gate's name)
    model: [models/model.pkl]   # optional: the artifacts the gate speaks for (default: the after-stage's
                                # deps that other stages produce)
stages:
  package:
    requires_gate: release  # runs only when the gate passed or was validly waived for the current inputs
```

What a gate *does* lives in :mod:`engine.gates`; this module only turns the section into
:class:`GateSpec` values and reports problems the spec's way (one line: file, line, gate, field).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.core.paths import path_problem

__all__ = ["GateSpec", "GATE_KEYS", "parse_gates"]

GATE_KEYS = ("after", "policy", "model", "desc")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True, slots=True)
class GateSpec:
    """One declared gate: which stage's metrics, which policy, which artifacts it speaks for."""

    name: str
    after: str
    policy: str
    model: tuple[str, ...] = ()
    desc: str = ""
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "after": self.after, "policy": self.policy, "model": list(self.model),
                "desc": self.desc, "line": self.line}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GateSpec:
        return cls(name=d["name"], after=d["after"], policy=d["policy"], model=tuple(d.get("model", ())),
                   desc=d.get("desc", ""), line=d.get("line", 0))


def parse_gates(raw: Any, stages: Mapping[str, Any], config: Mapping[str, Any], probs: Any) -> dict[str, GateSpec]:
    """Validate the ``gates:`` mapping against the stages and the composed config's ``policy`` group.

    ``probs`` is the spec's problem collector (``path``, ``line_of(keypath)``, ``items``)."""

    def add(kp: tuple[Any, ...], gate: str | None, fld: str | None, msg: str) -> None:
        line = probs.line_of(kp)
        parts = [f"{probs.path}:{line}"] + ([f"gate '{gate}'"] if gate else []) + \
            ([f"field '{fld}'"] if fld else []) + [msg]
        probs.items.append((line, ": ".join(parts)))

    out: dict[str, GateSpec] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        add(("gates",), None, None, "'gates' must be a mapping of gate name -> {after, policy}")
        return out
    policies = config.get("policy") if isinstance(config, Mapping) else None
    for name, body in raw.items():
        kp = ("gates", name)
        if not isinstance(name, str) or not _NAME.match(name):
            add(kp, str(name), None, "invalid gate name; use letters, digits, '_', '-'")
            continue
        if not isinstance(body, dict):
            add(kp, name, None, f"is a {type(body).__name__}; expected a mapping with 'after'")
            continue
        bad = [k for k in body if k not in GATE_KEYS]
        for k in bad:
            add(kp + (k,), name, str(k), f"unknown key; expected one of {', '.join(GATE_KEYS)}")
        after = body.get("after")
        if not isinstance(after, str) or not after:
            add(kp + ("after",), name, "after", "missing; name the stage whose metrics the gate reads")
            continue
        if after not in stages:
            add(kp + ("after",), name, "after", f"no stage '{after}' in this pipeline")
            continue
        if not stages[after].metrics:
            add(kp + ("after",), name, "after", f"stage '{after}' declares no metrics files")
            continue
        policy = body.get("policy", name)
        if not isinstance(policy, str) or not policy:
            add(kp + ("policy",), name, "policy", "expected the name of a policy gate (policy.<name>)")
            continue
        if not isinstance(policies, Mapping) or not isinstance(policies.get(policy), Mapping):
            add(kp + ("policy",), name, "policy", f"no 'policy.{policy}' in the composed config; add it to "
                "conf/policy/*.yaml (the 'policy' config group)")
            continue
        model_raw = body.get("model") or []
        model_raw = [model_raw] if isinstance(model_raw, str) else model_raw
        model: list[str] = []
        if not isinstance(model_raw, list):
            add(kp + ("model",), name, "model", "expected a path or a list of paths")
            model_raw = []
        for p in model_raw:
            norm, why = path_problem(p)
            if why:
                add(kp + ("model",), name, "model", why)
            elif norm is not None:
                model.append(norm)
        out[name] = GateSpec(name=name, after=after, policy=policy, model=tuple(model),
                             desc=str(body.get("desc") or ""), line=probs.line_of(kp))
    return out


def check_requires(stages: Mapping[str, Any], gates: Mapping[str, GateSpec], raw_requires: Mapping[str, Any],
                   probs: Any) -> dict[str, str]:
    """``requires_gate`` per stage -> gate name (each must name a declared gate)."""
    out: dict[str, str] = {}
    for stage, (value, kp) in raw_requires.items():
        if value is None:
            continue
        if not isinstance(value, str) or value not in gates:
            known = ", ".join(sorted(gates)) or "none declared"
            probs.add(kp, stage, "requires_gate", f"{value!r} is not a gate in this pipeline's 'gates:' ({known})")
            continue
        if gates[value].after == stage:
            probs.add(kp, stage, "requires_gate", f"gate '{value}' is evaluated after this very stage")
            continue
        out[stage] = value
    return out
