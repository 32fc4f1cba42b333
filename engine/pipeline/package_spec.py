"""The spec's ``packages:`` section: the pipeline's last step, packaging and releasing a gated model.

```yaml
packages:
  penguin-classifier:            # the bundle's name
    model: models/model.pkl      # an output of a stage
    version: ${package.version}  # interpolated from the composed config, like every stage field
    key: ${package.key}          # the releaser key (ECDSA P-256) in $CERTUS_HOME/keys
    requires_gate: release       # packaged only when this gate passed or was validly waived
    serving: conf/serving.yaml   # optional: serving / guardrail config; license, intended_use likewise
```

It is not a stage command: stage commands are untrusted and never reach the keys or the ledger. The
coordinator packages after the run's record and gate results are in the ledger, because the release
record cites them. Parsing only; what it does lives in :mod:`engine.release.package`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.core.paths import path_problem

__all__ = ["PackageSpec", "PACKAGE_KEYS", "parse_packages"]

PACKAGE_KEYS = ("model", "version", "key", "requires_gate", "serving", "license", "intended_use", "out", "desc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class PackageSpec:
    name: str
    model: str
    version: str
    key: str
    requires_gate: str | None = None
    serving: str | None = None
    license: str | None = None
    intended_use: str | None = None
    out: str = "dist"
    desc: str = ""
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "model", "version", "key", "requires_gate", "serving",
                                                "license", "intended_use", "out", "desc", "line")}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PackageSpec:
        return cls(**{k: d[k] for k in d})


def parse_packages(raw: Any, producers: Mapping[str, str], gates: Mapping[str, Any], probs: Any) -> dict[str,
                                                                                                        PackageSpec]:
    """Validate the (interpolated) ``packages:`` mapping; ``producers``: output path -> stage."""
    out: dict[str, PackageSpec] = {}

    def add(kp: tuple[Any, ...], where: str | None, fld: str | None, msg: str) -> None:
        line = probs.line_of(kp)
        parts = [f"{probs.path}:{line}"] + ([where] if where else []) + ([f"field '{fld}'"] if fld else []) + [msg]
        probs.items.append((line, ": ".join(parts)))

    if raw is None:
        return out
    if not isinstance(raw, dict):
        add(("packages",), None, None, "'packages' must be a mapping of bundle name -> {model, version, key}")
        return out
    for name, body in raw.items():
        kp = ("packages", name)
        where = f"package '{name}'"
        if not isinstance(name, str) or not _NAME.match(name):
            add(kp, where, None, "invalid bundle name; use 1-128 of [A-Za-z0-9._+-]")
            continue
        if not isinstance(body, dict):
            add(kp, where, None, f"is a {type(body).__name__}; expected a mapping with model, version, key")
            continue
        for k in body:
            if k not in PACKAGE_KEYS:
                add(kp + (k,), where, str(k), f"unknown key; expected one of {', '.join(PACKAGE_KEYS)}")
        fields: dict[str, Any] = {}
        for k in ("model", "version", "key"):
            v = body.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            if not isinstance(v, str) or not v:
                add(kp + (k,), where, k, "missing; expected a string")
            else:
                fields[k] = v
        if len(fields) < 3:
            continue
        norm, why = path_problem(fields["model"])
        if why or norm is None:
            add(kp + ("model",), where, "model", why or "not a path")
            continue
        if norm not in producers:
            add(kp + ("model",), where, "model", f"'{norm}' is not an output of any stage; package what a "
                      "stage produces, so a run attests it")
            continue
        if not _NAME.match(fields["version"]):
            add(kp + ("version",), where, "version", "expected 1-128 of [A-Za-z0-9._+-]")
            continue
        gate = body.get("requires_gate")
        if gate is not None and gate not in gates:
            add(kp + ("requires_gate",), where, "requires_gate",
                      f"{gate!r} is not a gate in this pipeline's 'gates:' ({', '.join(sorted(gates)) or 'none'})")
            continue
        opt = {k: (str(body[k]) if body.get(k) is not None else None)
               for k in ("serving", "license", "intended_use")}
        out[name] = PackageSpec(name=name, model=norm, version=fields["version"], key=fields["key"],
                                requires_gate=gate, out=str(body.get("out") or "dist"),
                                desc=str(body.get("desc") or ""), line=probs.line_of(kp), **opt)
    return out
