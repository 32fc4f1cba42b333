"""Pipeline specs: ``pipelines/*.yaml`` validated into frozen dataclasses.

A spec is parsed once, checked completely (every offender reported, sorted, each naming
file, line, stage and field), expanded (``foreach``/``do`` and ``matrix`` generate stage
families the way DVC does: ``name@item``), and its ``${...}`` interpolations resolved
against the composed Hydra configuration. Once a :class:`PipelineSpec` exists it is valid;
nothing later re-checks it.

Paths in a spec are relative to the workspace root (stages run there), normalised to POSIX
form; absolute paths and paths that climb out with ``..`` are refused here, symlink escapes
by :mod:`engine.store.workspace`, which is allowed to look at the disk.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.paths import path_problem
from engine.errors import SpecError
from engine.pipeline.foreach import STAGE_KEYS, _expand
from engine.pipeline.interpolate import InterpolationFailure, resolve_strings
from engine.pipeline.resources import parse_scheduling
from engine.pipeline.spec_problems import (  # noqa: F401  (parse_yaml re-exported)
    _as_str_list,
    _nul_field,
    _Problems,
    _short,
    _suggest,
    parse_yaml,
)

__all__ = ["StageSpec", "PipelineSpec", "load_spec_text", "STAGE_KEYS"]

_GENERATOR_KEYS = ("foreach", "do", "matrix")
_TOP_KEYS = ("stages", "vars", "gates", "packages")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ITEM_REF = re.compile(r"\$\{\s*(item|key)((?:\.[A-Za-z0-9_\-]+)*)\s*\}")
_RAW_ITEM_REF = re.compile(r"\$\{\s*raw\s*:\s*\$\{\s*(item|key)((?:\.[A-Za-z0-9_\-]+)*)\s*\}\s*\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage, fully resolved: what the planner hashes and the executor runs."""

    name: str
    cmd: str
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    desc: str = ""
    always_changed: bool = False
    datasets: tuple[str, ...] = ()
    register: tuple[tuple[str, Any], ...] = ()  # derived datasets: (name, {path, schema?, ...})
    writable: tuple[str, ...] = ()  # extra paths the sandbox lets the stage write (~ kept, expanded at run time)
    timeout: float | None = None  # seconds; the stage's whole process tree is killed on expiry
    line: int = field(default=0, compare=False)
    requires_gate: str | None = None  # a gate (spec ``gates:``) that must pass or be waived first
    # scheduling only, never in the key: what a distributed executor's worker must offer, and how many
    # re-runs a failure or a lost worker allows (engine.pipeline.resources)
    resources: tuple[tuple[str, float], ...] = ()
    retries: int = 0

    @property
    def all_outs(self) -> tuple[str, ...]:
        """Outputs and metrics files: everything the stage must produce."""
        return self.outs + self.metrics

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A validated pipeline: stages by name in file order."""

    path: str
    stages: Mapping[str, StageSpec]
    gates: Mapping[str, Any] = field(default_factory=dict)  # name -> engine.pipeline.gates_spec.GateSpec
    packages: Mapping[str, Any] = field(default_factory=dict)  # name -> engine.pipeline.package_spec.PackageSpec

    def __getitem__(self, name: str) -> StageSpec:
        return self.stages[name]


def _norm_path(p: Any, probs: _Problems, kp: tuple[Any, ...], stage: str, fld: str) -> str | None:
    norm, why = path_problem(p)  # the same rules as for paths in certus.lock and run-cache records
    if why:
        probs.add(kp, stage, fld, why)
    return norm


def _norm_writable(p: Any, probs: _Problems, kp: tuple[Any, ...], stage: str) -> str | None:
    """A ``writable:`` path: absolute, ``~/...`` or workspace-relative; never Certus's or git's own."""
    if not isinstance(p, str) or not p.strip():
        probs.add(kp, stage, "writable", f"path {p!r} is not a non-empty string")
        return None
    if p.startswith("/") or p == "~" or p.startswith("~/"):
        norm = posixpath.normpath(p)
        if norm in ("/", "~"):
            probs.add(kp, stage, "writable", f"path '{p}' is a whole file system or home; name a directory in it")
            return None
        return norm
    if p.startswith("~"):
        probs.add(kp, stage, "writable", f"path '{p}': only '~/' (the current user's home) is expanded")
        return None
    norm = _norm_path(p, probs, kp, stage, "writable")
    if norm in ("trust.json", "certus.lock"):
        probs.add(kp, stage, "writable", f"path '{p}' is Certus's own file; stages may not write it")
        return None
    return norm


def lookup_dotted(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) at a dotted key path; digits index into lists."""
    cur: Any = cfg
    for part in dotted.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def _all_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, Mapping):
            keys.extend(_all_keys(v, full + "."))
    return keys


def load_spec_text(text: str, *, path: str, config: Mapping[str, Any]) -> PipelineSpec:
    """Parse, expand, interpolate and validate a spec. Raises :class:`SpecError`."""
    data = parse_yaml(text, path)
    probs = _Problems(path, text)
    if not isinstance(data, dict) or "stages" not in data:
        raise SpecError(f"{path}:1: expected a mapping with a top-level 'stages' key")
    for k in data:
        if k not in _TOP_KEYS:
            probs.add((k,), None, None, f"unknown top-level key '{k}'{_suggest(str(k), _TOP_KEYS)}")
    raw_stages = data["stages"]
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise SpecError(f"{path}:{probs.line_of(('stages',))}: 'stages' must be a non-empty mapping")

    expanded = _expand(raw_stages, probs)
    seen: set[str] = set()
    bodies: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
    for name, body, kp in expanded:
        if name in seen:
            probs.add(kp, name, None, "stage name generated twice; make foreach items unique")
            continue
        seen.add(name)
        before = len(probs.items)
        for k in body:
            if k not in STAGE_KEYS:
                probs.add(kp + (k,), name, str(k), f"unknown key{_suggest(str(k), STAGE_KEYS)}")
        if "cmd" not in body or body["cmd"] in (None, "", []):
            probs.add(kp, name, "cmd", "missing; every stage needs a command")
        if len(probs.items) == before:  # a stage with a structural problem is reported, not interpolated
            bodies.append((name, body, kp))

    # Interpolate every ${...} against the composed config in one pass; when something does not resolve,
    # stage by stage, so every stage's problem is reported with the structural ones, all at once.
    vars_ = data.get("vars") or {}
    if not isinstance(vars_, dict):
        probs.add(("vars",), None, "vars", "expected a mapping")
        probs.raise_if_any()
    context = {**config, **vars_}

    def shell(loc: tuple[Any, ...]) -> bool:
        return loc[1:2] == ("cmd",)

    try:
        resolved = resolve_strings({n: b for n, b, _ in bodies}, context, shell=shell)
    except InterpolationFailure:
        resolved = {}
        for n, b, kp in bodies:
            try:
                resolved.update(resolve_strings({n: b}, context, shell=shell))
            except InterpolationFailure as e:
                fld = e.location[1] if len(e.location) > 1 else None
                probs.add(kp + tuple(e.location[1:2]), n, fld, f"interpolation '{e.expr}' does not resolve: {e.reason}")
    probs.raise_if_any()

    stages: dict[str, StageSpec] = {}
    config_keys: list[str] | None = None
    for name, _, kp in bodies:
        body = resolved[name]
        nul = _nul_field(body)
        if nul is not None:
            probs.add(kp + (nul,), name, nul, "contains a NUL byte, which no path, command or variable can hold; "
                      "remove it")
            continue
        cmd = body.get("cmd")
        if isinstance(cmd, list):
            if not all(isinstance(c, (str, int, float)) for c in cmd):
                probs.add(kp + ("cmd",), name, "cmd", "list entries must be strings")
                continue
            cmd = " && ".join(str(c) for c in cmd)
        elif not isinstance(cmd, (str, int, float)):
            probs.add(kp + ("cmd",), name, "cmd", f"is a {type(cmd).__name__}; expected a string")
            continue
        paths: dict[str, list[str]] = {}
        for fld in ("deps", "outs", "metrics"):
            items = []
            for i, p in enumerate(_as_str_list(body.get(fld), probs, kp + (fld,), name, fld)):
                if isinstance(p, list):  # a ${...} that resolved to a list of paths
                    cand = p
                else:
                    cand = [p]
                for q in cand:
                    n = _norm_path(q, probs, kp + (fld, i), name, fld)
                    if n is not None:
                        items.append(n)
            paths[fld] = items
        params: list[tuple[str, Any]] = []
        for i, key in enumerate(_as_str_list(body.get("params"), probs, kp + ("params",), name, "params")):
            if not isinstance(key, str):
                probs.add(kp + ("params", i), name, "params", f"param key {key!r} is not a string")
                continue
            ok, value = lookup_dotted(config, key)
            if not ok:
                if config_keys is None:
                    config_keys = _all_keys(config)
                probs.add(
                    kp + ("params", i), name, "params",
                    f"unknown param key '{key}' (not in the composed config){_suggest(key, config_keys)}",
                )
                continue
            params.append((key, value))
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME.match(k) for k in env):
            probs.add(kp + ("env",), name, "env", "expected a mapping of NAME: value (NAME: letters, digits, '_')")
            env = {}
        always = body.get("always_changed", False)
        if not isinstance(always, bool):
            probs.add(kp + ("always_changed",), name, "always_changed", "expected true or false")
            always = False
        desc = body.get("desc") or ""
        datasets = [str(d) for d in _as_str_list(body.get("datasets"), probs, kp + ("datasets",), name, "datasets")]
        register: list[tuple[str, Any]] = []
        raw_reg = body.get("register") or {}
        if not isinstance(raw_reg, dict):
            probs.add(kp + ("register",), name, "register", "expected a mapping of dataset name -> output path")
            raw_reg = {}
        for ds_name, ds in raw_reg.items():
            if isinstance(ds_name, str) and "${" in ds_name:  # mapping keys are interpolated too
                try:
                    ds_name = resolve_strings({"k": ds_name}, context)["k"]
                except InterpolationFailure as e:
                    probs.add(kp + ("register",), name, "register", f"interpolation '{e.expr}' does not resolve")
                    continue
            ds = {"path": ds} if isinstance(ds, str) else ds
            if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
                probs.add(kp + ("register", ds_name), name, "register", f"dataset '{ds_name}': expected a path "
                          "or a mapping with 'path'")
                continue
            ds_path = posixpath.normpath(ds["path"])
            if ds_path not in paths["outs"]:
                probs.add(kp + ("register", ds_name), name, "register",
                          f"dataset '{ds_name}': '{ds_path}' is not one of the stage's outs")
                continue
            register.append((str(ds_name), {**ds, "path": ds_path}))
        writable = []
        for i, w in enumerate(_as_str_list(body.get("writable"), probs, kp + ("writable",), name, "writable")):
            n = _norm_writable(w, probs, kp + ("writable", i), name)
            if n is not None:
                writable.append(n)
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < float("inf")):
            probs.add(kp + ("timeout",), name, "timeout", f"{timeout!r} is not a positive number of seconds")
            timeout = None
        resources, retries = parse_scheduling(body, probs, kp, name)
        stages[name] = StageSpec(
            name=name,
            cmd=str(cmd),
            deps=tuple(dict.fromkeys(paths["deps"])),
            outs=tuple(dict.fromkeys(paths["outs"])),
            metrics=tuple(dict.fromkeys(paths["metrics"])),
            params=tuple(sorted(dict(params).items())),
            env=tuple(sorted((k, str(v)) for k, v in env.items())),
            desc=str(desc),
            always_changed=always,
            datasets=tuple(datasets),
            register=tuple(register),
            writable=tuple(dict.fromkeys(writable)),
            timeout=float(timeout) if timeout is not None else None,
            line=probs.line_of(kp),
            resources=resources,
            retries=retries,
        )

    # An output declared by two stages (or nested inside another stage's output).
    owner: dict[str, str] = {}
    for st in stages.values():
        for o in st.all_outs:
            if o in owner and owner[o] != st.name:
                probs.add(("stages", st.name.split("@")[0]), st.name, "outs",
                          f"output '{o}' is also declared by stage '{owner[o]}'; each output needs one producer")
            owner.setdefault(o, st.name)
    for o, st_name in owner.items():
        parent = posixpath.dirname(o)
        while parent:
            if parent in owner and owner[parent] != st_name:
                probs.add(("stages", st_name.split("@")[0]), st_name, "outs",
                          f"output '{o}' lies inside output '{parent}' of stage '{owner[parent]}'")
            parent = posixpath.dirname(parent)
    probs.raise_if_any()
    spec = PipelineSpec(path=path, stages=stages)
    if "gates" in data or any("requires_gate" in resolved[n] for n, _, _ in bodies):
        spec = _with_gates(spec, data.get("gates"), resolved, bodies, config, probs)
    if data.get("packages") is not None:
        spec = _with_packages(spec, data["packages"], context, probs)
    return spec


def _with_packages(spec: PipelineSpec, raw: Any, context: Mapping[str, Any], probs: _Problems) -> PipelineSpec:
    """The ``packages:`` section (engine.pipeline.package_spec), interpolated like stage fields."""
    from engine.pipeline.package_spec import parse_packages

    if isinstance(raw, dict):
        try:
            raw = resolve_strings(raw, context)
        except InterpolationFailure as e:
            probs.add(("packages", *e.location[:2]), None, None,
                      f"package '{e.location[0]}': interpolation '{e.expr}' does not resolve: {e.reason}")
            probs.raise_if_any()
    producers = {o: st.name for st in spec.stages.values() for o in st.all_outs}
    packages = parse_packages(raw, producers, spec.gates, probs)
    probs.raise_if_any()
    return PipelineSpec(path=spec.path, stages=spec.stages, gates=spec.gates, packages=packages)


def _with_gates(spec: PipelineSpec, raw: Any, resolved: Mapping[str, Any], bodies: list[Any],
                config: Mapping[str, Any], probs: _Problems) -> PipelineSpec:
    """The ``gates:`` section and ``requires_gate`` fields (engine.pipeline.gates_spec)."""
    import dataclasses

    from engine.pipeline.gates_spec import check_requires, parse_gates

    gates = parse_gates(raw, spec.stages, config, probs)
    requires = check_requires(spec.stages, gates, {n: (resolved[n].get("requires_gate"), kp + ("requires_gate",))
                                                   for n, _, kp in bodies}, probs)
    probs.raise_if_any()
    stages = {n: dataclasses.replace(st, requires_gate=requires.get(n)) for n, st in spec.stages.items()}
    return PipelineSpec(path=spec.path, stages=stages, gates=gates)


def spec_to_json(spec: PipelineSpec) -> bytes:
    """A validated spec as JSON, for the workspace's parse cache (never hashed or signed)."""
    import json

    stages = []
    for st in spec.stages.values():
        stages.append({"name": st.name, "cmd": st.cmd, "deps": st.deps, "outs": st.outs, "metrics": st.metrics,
                       "params": st.params, "env": st.env, "desc": st.desc, "always_changed": st.always_changed,
                       "datasets": st.datasets, "register": st.register, "writable": st.writable,
                       "timeout": st.timeout, "line": st.line, "requires_gate": st.requires_gate,
                       "resources": st.resources, "retries": st.retries})
    gates = [g.to_json() for g in spec.gates.values()]
    packages = [p.to_json() for p in spec.packages.values()]
    return json.dumps({"path": spec.path, "stages": stages, "gates": gates, "packages": packages}).encode()


def spec_from_json(data: bytes) -> PipelineSpec:
    import json

    doc = json.loads(data)
    stages = {}
    for s in doc["stages"]:
        stages[s["name"]] = StageSpec(
            name=s["name"], cmd=s["cmd"], deps=tuple(s["deps"]), outs=tuple(s["outs"]), metrics=tuple(s["metrics"]),
            params=tuple((k, v) for k, v in s["params"]), env=tuple((k, v) for k, v in s["env"]), desc=s["desc"],
            always_changed=s["always_changed"], datasets=tuple(s["datasets"]),
            register=tuple((k, v) for k, v in s["register"]), writable=tuple(s.get("writable", ())),
            timeout=s.get("timeout"), line=s["line"], requires_gate=s.get("requires_gate"),
            resources=tuple((k, v) for k, v in s.get("resources", ())), retries=s.get("retries", 0))
    from engine.pipeline.gates_spec import GateSpec
    from engine.pipeline.package_spec import PackageSpec

    gates = {g["name"]: GateSpec.from_json(g) for g in doc.get("gates", ())}
    packages = {p["name"]: PackageSpec.from_json(p) for p in doc.get("packages", ())}
    return PipelineSpec(path=doc["path"], stages=stages, gates=gates, packages=packages)
