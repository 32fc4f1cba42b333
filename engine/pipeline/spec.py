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

import difflib
import itertools
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.paths import path_problem
from engine.errors import SpecError
from engine.pipeline.interpolate import InterpolationFailure, resolve_strings, shell_words

__all__ = ["StageSpec", "PipelineSpec", "load_spec_text", "STAGE_KEYS"]

STAGE_KEYS = (
    "cmd",
    "deps",
    "outs",
    "params",
    "metrics",
    "env",
    "desc",
    "always_changed",
    "datasets",
    "register",
    "writable",
    "timeout",
    "requires_gate",
)
_GENERATOR_KEYS = ("foreach", "do", "matrix")
_TOP_KEYS = ("stages", "vars", "gates")
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

    def __getitem__(self, name: str) -> StageSpec:
        return self.stages[name]


class _Problems:
    """Collects every problem so one error can list them all, sorted by line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.items: list[tuple[int, str]] = []
        self._lines: dict[tuple[Any, ...], int] | None = None

    def line_of(self, keypath: tuple[Any, ...]) -> int:
        if self._lines is None:
            self._lines = _line_index(self.text)
        while keypath:
            if keypath in self._lines:
                return self._lines[keypath]
            keypath = keypath[:-1]
        return 1

    def add(self, keypath: tuple[Any, ...], stage: str | None, fld: str | None, msg: str) -> None:
        where = f"{self.path}:{self.line_of(keypath)}"
        parts = [where]
        if stage is not None:
            parts.append(f"stage '{stage}'")
        if fld is not None:
            parts.append(f"field '{fld}'")
        parts.append(msg)
        self.items.append((self.line_of(keypath), ": ".join(parts)))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError("\n".join(m for _, m in sorted(set(self.items))))


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map key paths to 1-based line numbers; only computed when an error is reported."""
    import yaml

    index: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                kp = path + (k.value,)
                index[kp] = k.start_mark.line + 1
                walk(v, kp)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def parse_yaml(text: str, path: str) -> Any:
    """YAML -> Python: strict (no repeated keys) and bounded (depth, aliases); see engine.pipeline.spec_yaml."""
    from engine.pipeline.spec_yaml import load_yaml

    return load_yaml(text, path)


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message, bounded however long it is."""
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + "…"


def _nul_field(body: Mapping[str, Any]) -> str | None:
    """The first field holding a NUL anywhere (keys included): no path, command or variable can."""
    def has(obj: Any) -> bool:
        if isinstance(obj, str):
            return "\0" in obj
        if isinstance(obj, dict):
            return any(has(k) or has(v) for k, v in obj.items())
        if isinstance(obj, list):
            return any(has(v) for v in obj)
        return False

    return next((str(k) for k, v in body.items() if has(k) or has(v)), None)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(choices)}"


def _as_str_list(value: Any, probs: _Problems, kp: tuple[Any, ...], stage: str, fld: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, list):
        return value
    probs.add(kp, stage, fld, f"is a {type(value).__name__}; expected a list of paths")
    return []


def _item_name(value: Any, index: int) -> str:
    if isinstance(value, (str, int, float, bool)) and _NAME.match(str(value)):
        return str(value)
    return str(index)


def _substitute_item(obj: Any, ctx: Mapping[str, Any], shell: bool = False) -> Any:
    """Replace ``${item...}``/``${key}`` before config interpolation (they are local). In a ``cmd``
    (``shell``) values are pasted shell-quoted, ``${raw:${item}}`` unquoted (see engine.pipeline.interpolate)."""
    if isinstance(obj, str):
        whole = _ITEM_REF.fullmatch(obj.strip())

        def lookup(m: re.Match[str]) -> Any:
            val: Any = ctx[m.group(1)]
            for part in filter(None, m.group(2).split(".")):
                if isinstance(val, Mapping) and part in val:
                    val = val[part]
                else:
                    raise KeyError(m.group(0))
            return val

        if shell:
            obj = _RAW_ITEM_REF.sub(lambda m: shell_words(lookup(m), quote=False) if m.group(1) in ctx
                                    else m.group(0), obj)
            return _ITEM_REF.sub(lambda m: shell_words(lookup(m)) if m.group(1) in ctx else m.group(0), obj)
        if whole and whole.group(1) in ctx:
            return lookup(whole)
        return _ITEM_REF.sub(lambda m: str(lookup(m)) if m.group(1) in ctx else m.group(0), obj)
    if isinstance(obj, list):
        return [_substitute_item(v, ctx, shell) for v in obj]
    if isinstance(obj, dict):
        return {k: _substitute_item(v, ctx, shell) for k, v in obj.items()}
    return obj


def _substitute_body(body: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _substitute_item(v, ctx, shell=k == "cmd") for k, v in body.items()}


def _expand(raw_stages: Mapping[str, Any], probs: _Problems) -> list[tuple[str, dict[str, Any], tuple[Any, ...]]]:
    """foreach/matrix expansion -> (name, body, keypath of the definition)."""
    out: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
    for name, body in raw_stages.items():
        kp = ("stages", name)
        if not isinstance(name, str) or not _NAME.match(name):
            probs.add(kp, str(name), None, "invalid stage name; use letters, digits, '_', '-', '.'")
            continue
        if not isinstance(body, dict):
            probs.add(kp, name, None, f"is a {type(body).__name__}; expected a mapping with 'cmd'")
            continue
        if "foreach" in body or "matrix" in body:
            extra = sorted(set(body) - set(_GENERATOR_KEYS) - (set(STAGE_KEYS) if "matrix" in body else set()))
            for k in extra:
                probs.add(kp + (k,), name, k, f"unknown key{_suggest(k, _GENERATOR_KEYS)}")
            if "foreach" in body:
                items = body["foreach"]
                do = body.get("do")
                if not isinstance(do, dict):
                    probs.add(kp + ("do",), name, "do", "missing or not a mapping; foreach needs a 'do' body")
                    continue
                if isinstance(items, dict):
                    pairs = []
                    for k, v in items.items():  # a key becomes part of a stage name (and of paths)
                        if not _NAME.match(str(k)) or len(str(k)) > 200:
                            probs.add(kp + ("foreach", k), name, "foreach", f"key {_short(k)} cannot name a stage; "
                                      "use letters, digits, '_', '-', '.' (not starting with '.' or '-')")
                            continue
                        pairs.append((str(k), {"item": v, "key": k}))
                elif isinstance(items, list):
                    pairs = [(_item_name(v, i), {"item": v}) for i, v in enumerate(items)]
                else:
                    probs.add(kp + ("foreach",), name, "foreach", "expected a list or a mapping")
                    continue
                template = do
            else:
                matrix = body["matrix"]
                if not isinstance(matrix, dict) or not all(isinstance(v, list) for v in matrix.values()):
                    probs.add(kp + ("matrix",), name, "matrix", "expected a mapping of name -> list of values")
                    continue
                keys = list(matrix)
                pairs = []
                for combo in itertools.product(*(list(enumerate(matrix[k])) for k in keys)):
                    suffix = "-".join(_item_name(v, i) for i, v in combo)
                    pairs.append((suffix, {"item": {k: v for k, (_, v) in zip(keys, combo)}}))
                template = {k: v for k, v in body.items() if k != "matrix"}
            for suffix, ctx in pairs:
                try:
                    out.append((f"{name}@{suffix}", _substitute_body(template, ctx), kp))
                except KeyError as e:
                    probs.add(kp, f"{name}@{suffix}", None, f"interpolation {e.args[0]} does not resolve")
        else:
            if "do" in body:
                probs.add(kp + ("do",), name, "do", "'do' without 'foreach'; add foreach or remove do")
                continue
            out.append((name, body, kp))
    return out


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


def _lookup(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
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
        for k in body:
            if k not in STAGE_KEYS:
                probs.add(kp + (k,), name, str(k), f"unknown key{_suggest(str(k), STAGE_KEYS)}")
        if "cmd" not in body or body["cmd"] in (None, "", []):
            probs.add(kp, name, "cmd", "missing; every stage needs a command")
        bodies.append((name, body, kp))
    probs.raise_if_any()

    # Interpolate every ${...} against the composed config in one pass.
    vars_ = data.get("vars") or {}
    if not isinstance(vars_, dict):
        probs.add(("vars",), None, "vars", "expected a mapping")
        probs.raise_if_any()
    context = {**config, **vars_}
    try:
        resolved = resolve_strings({n: b for n, b, _ in bodies}, context, shell=lambda loc: loc[1:2] == ("cmd",))
    except InterpolationFailure as e:
        stage, fld = e.location[0], (e.location[1] if len(e.location) > 1 else None)
        kp = next((k for n, _, k in bodies if n == stage), ("stages",))
        probs.add(kp + tuple(e.location[1:2]), stage, fld, f"interpolation '{e.expr}' does not resolve: {e.reason}")
        probs.raise_if_any()
        raise  # pragma: no cover - raise_if_any always raises here

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
            ok, value = _lookup(config, key)
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
    if "gates" in data or any("requires_gate" in resolved[n] for n, _, _ in bodies):
        return _with_gates(PipelineSpec(path=path, stages=stages), data.get("gates"), resolved, bodies, config, probs)
    return PipelineSpec(path=path, stages=stages)


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
                       "timeout": st.timeout, "line": st.line, "requires_gate": st.requires_gate})
    gates = [g.to_json() for g in spec.gates.values()]
    return json.dumps({"path": spec.path, "stages": stages, "gates": gates}).encode()


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
            timeout=s.get("timeout"), line=s["line"], requires_gate=s.get("requires_gate"))
    from engine.pipeline.gates_spec import GateSpec

    gates = {g["name"]: GateSpec.from_json(g) for g in doc.get("gates", ())}
    return PipelineSpec(path=doc["path"], stages=stages, gates=gates)
