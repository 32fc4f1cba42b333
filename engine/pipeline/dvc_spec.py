"""A DVC project's ``dvc.yaml`` files resolved the way DVC resolves them: the stages ``dvc stage list`` shows.

Every ``dvc.yaml`` in the repository joins one project; a stage is addressed as DVC does
(``train`` in the root file, ``sub/dvc.yaml:train`` elsewhere, ``name@key`` for generated
ones). Per file the context is ``params.yaml`` beside it plus top-level ``vars``; per stage,
its own ``vars`` relative to its ``wdir``. ``foreach`` (list, mapping or ``${ref}``) and
``matrix`` generate stages named as DVC names them. Paths stay as written (relative to the
stage's ``wdir``) here; :mod:`engine.pipeline.dvc_pipeline` turns them into workspace paths.

Problems in every file are collected and reported together, each naming file, line, stage
and field (:class:`engine.pipeline.spec_problems._Problems`).
"""

from __future__ import annotations

import copy
import itertools
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SpecError
from engine.pipeline.dvc_interp import DvcInterpError, has_interpolation, merge_vars, resolve, to_str
from engine.pipeline.dvc_yaml import load_yaml12, read_params_file
from engine.pipeline.spec_problems import _Problems, _suggest
from engine.pipeline.spec_yaml import decode_text

__all__ = ["DvcOut", "DvcStage", "DvcFile", "parse_dvc_file", "find_dvc_files", "DEFAULT_PARAMS"]

DEFAULT_PARAMS = "params.yaml"
TOP_KEYS = ("stages", "vars", "params", "metrics", "plots", "artifacts", "datasets")
DVC_STAGE_KEYS = ("cmd", "wdir", "deps", "params", "outs", "metrics", "plots", "frozen", "desc", "meta",
                  "always_changed", "vars")
OUT_FLAGS = ("cache", "persist", "push", "desc", "type", "labels", "meta", "remote", "x", "y", "template",
             "title", "x_label", "y_label", "checkpoint")
_SKIP_DIRS = {".git", ".dvc", ".certus", "__pycache__", "node_modules"}


@dataclass(frozen=True, slots=True)
class DvcOut:
    """An output as declared: path relative to the stage's wdir, DVC's flags, and which list held it."""

    path: str
    kind: str = "outs"  # outs | metrics | plots
    cache: bool = True
    persist: bool = False
    push: bool = True


@dataclass(frozen=True, slots=True)
class DvcStage:
    """One resolved stage, in DVC's own terms (what ``dvc stage list`` and ``dvc.lock`` name)."""

    name: str  # as in its dvc.yaml / dvc.lock
    addressing: str  # as DVC addresses it: name, or dir/dvc.yaml:name
    dvcfile: str  # workspace-relative path of its dvc.yaml
    wdir: str  # workspace-relative ("" for the root)
    cmd: str | tuple[str, ...]
    deps: tuple[str, ...] = ()
    outs: tuple[DvcOut, ...] = ()
    params: tuple[tuple[str, tuple[str, ...] | None], ...] = ()  # (file rel. to wdir, keys or None: whole file)
    frozen: bool = False
    always_changed: bool = False
    desc: str = ""
    meta: Any = field(default=None, compare=False, hash=False)
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class DvcFile:
    """One ``dvc.yaml``: its stages and top-level sections."""

    path: str
    stages: tuple[DvcStage, ...]
    metrics: tuple[str, ...] = ()
    plots: tuple[Any, ...] = ()
    params: tuple[str, ...] = ()
    artifacts: Mapping[str, Any] = field(default_factory=dict)


def find_dvc_files(root: str) -> tuple[list[str], list[str]]:
    """(``dvc.yaml`` files, ``*.dvc`` files), workspace-relative, sorted; hidden directories skipped."""
    yamls, dots = [], []
    for cur, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        rel = os.path.relpath(cur, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        for f in files:
            if f == "dvc.yaml":
                yamls.append(posixpath.join(rel, f))
            elif f.endswith(".dvc") and not f.startswith("."):
                dots.append(posixpath.join(rel, f))
    return sorted(yamls), sorted(dots)


def parsing_config(root: str) -> dict[str, str]:
    """``.dvc/config`` (and ``config.local``) ``[parsing]`` section: how ``${dict}`` expands in cmd."""
    import configparser

    cfg: dict[str, str] = {}
    for name in ("config", "config.local"):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            cp.read(os.path.join(root, ".dvc", name), encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if cp.has_section("parsing"):
            cfg.update({k: v.strip().strip("'\"") for k, v in cp.items("parsing")})
    return cfg


class _Context:
    """Loads vars files relative to the workspace, remembering what was merged whole."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict[str, dict[str, Any]] = {}

    def read(self, rel: str) -> dict[str, Any]:
        if rel not in self.files:
            self.files[rel] = read_params_file(os.path.join(self.root, rel), rel)
        return self.files[rel]

    def load_vars(self, ctx: dict[str, Any], vars_: Any, wdir: str, imported: dict[str, Any],
                  default: bool = False) -> None:
        if default:
            rel = posixpath.normpath(posixpath.join(wdir, DEFAULT_PARAMS))
            if os.path.isfile(os.path.join(self.root, rel)):
                merge_vars(ctx, self.read(rel), rel)
                imported[rel] = None
        if not isinstance(vars_, list):
            raise DvcInterpError("'vars' must be a list of files and mappings")
        for item in vars_:
            if isinstance(item, dict):
                merge_vars(ctx, item, "vars")
                continue
            if not isinstance(item, str):
                raise DvcInterpError(f"vars entry {item!r} is neither a file nor a mapping")
            path, _, keys = item.partition(":")
            rel = posixpath.normpath(posixpath.join(wdir, path))
            select = [k for k in keys.split(",") if k] if keys else None
            if rel in imported and imported[rel] is None and not select:
                continue  # the whole file again: allowed, as in DVC
            if not os.path.exists(os.path.join(self.root, rel)):
                raise DvcInterpError(f"vars file '{rel}' does not exist")
            data = self.read(rel)
            if select:
                missing = [k for k in select if k not in data]
                if missing:
                    raise DvcInterpError(f"could not find '{missing[0]}' in '{rel}'")
                data = {k: data[k] for k in select}
            merge_vars(ctx, data, rel)
            imported[rel] = None if not select else [*(imported.get(rel) or []), *select]


def _generated(name: str, body: Mapping[str, Any], ctx: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """foreach/matrix -> [(generated name, template, {item, key})], names as DVC makes them."""
    if "foreach" in body:
        items = resolve(body["foreach"], ctx)
        if isinstance(items, Mapping):
            pairs = [(to_str(k), {"item": v, "key": to_str(k)}) for k, v in items.items()]
        elif isinstance(items, list):
            if any(isinstance(v, (dict, list)) for v in items):
                pairs = [(str(i), {"item": v}) for i, v in enumerate(items)]
            else:
                pairs = [(to_str(v), {"item": v}) for v in items]
        else:
            raise DvcInterpError(f"foreach: expected a list or mapping, got {type(items).__name__}")
        template = body.get("do")
        if not isinstance(template, dict):
            raise DvcInterpError("foreach needs a 'do' mapping")
    else:
        matrix = resolve(body["matrix"], ctx)
        if not isinstance(matrix, Mapping) or not all(isinstance(v, list) for v in matrix.values()):
            raise DvcInterpError("matrix: expected a mapping of name -> list of values")
        pairs = []
        for combo in itertools.product(*(list(enumerate(v)) for v in matrix.values())):
            item = {k: v for k, (_, v) in zip(matrix, combo)}
            key = "-".join(f"{k}{i}" if isinstance(v, (dict, list)) else to_str(v)
                           for k, (i, v) in zip(matrix, combo))
            pairs.append((key, {"item": item, "key": key}))
        template = {k: v for k, v in body.items() if k != "matrix"}
    return [(f"{name}@{key}", template, extra) for key, extra in pairs]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _outs(raw: Any, kind: str, stage: str, probs: _Problems, kp: tuple[Any, ...]) -> list[DvcOut]:
    out = []
    for i, entry in enumerate(_as_list(raw)):
        if isinstance(entry, str):
            out.append(DvcOut(entry, kind))
            continue
        if isinstance(entry, dict) and len(entry) == 1:
            (path, flags), = entry.items()
            flags = flags or {}
            if isinstance(path, str) and isinstance(flags, dict):
                bad = [k for k in flags if k not in OUT_FLAGS]
                for k in bad:
                    probs.add(kp + (i,), stage, kind, f"'{path}': unknown flag '{k}'{_suggest(str(k), OUT_FLAGS)}")
                typed = {k: flags[k] for k in ("cache", "persist", "push") if k in flags}
                if any(not isinstance(v, bool) for v in typed.values()):
                    probs.add(kp + (i,), stage, kind, f"'{path}': cache/persist/push must be true or false")
                    continue
                out.append(DvcOut(path, kind, **typed))
                continue
        probs.add(kp + (i,), stage, kind, f"entry {entry!r} is neither a path nor 'path: {{flags}}'")
    return out


def _params(raw: Any, stage: str, probs: _Problems, kp: tuple[Any, ...]) -> list[tuple[str, tuple[str, ...] | None]]:
    by_file: dict[str, list[str] | None] = {}
    for i, entry in enumerate(_as_list(raw)):
        if isinstance(entry, str):
            keys = by_file.setdefault(DEFAULT_PARAMS, [])
            if keys is not None:
                keys.append(entry)
        elif isinstance(entry, dict):
            for file, keys in entry.items():
                if keys is None or keys == []:
                    by_file[str(file)] = None
                elif isinstance(keys, list) and all(isinstance(k, str) for k in keys):
                    cur = by_file.setdefault(str(file), [])
                    if cur is not None:
                        cur.extend(keys)
                else:
                    probs.add(kp + (i,), stage, "params", f"'{file}': expected a list of keys (or nothing: the "
                              "whole file)")
        else:
            probs.add(kp + (i,), stage, "params", f"entry {entry!r} is neither a key nor 'file: [keys]'")
    return [(f, tuple(dict.fromkeys(k)) if k is not None else None) for f, k in by_file.items()]


def _stage(name: str, addressing: str, body: dict[str, Any], ctx: dict[str, Any], wdir0: str, dvcfile: str,
           loader: _Context, imported: dict[str, Any], cfg: Mapping[str, str], probs: _Problems,
           kp: tuple[Any, ...]) -> DvcStage | None:
    for k in body:
        if k not in DVC_STAGE_KEYS:
            probs.add(kp + (k,), addressing, str(k), f"unknown key{_suggest(str(k), DVC_STAGE_KEYS)}")
    try:
        wdir = wdir0
        if body.get("wdir"):
            wdir = posixpath.normpath(posixpath.join(wdir0, to_str(resolve(body["wdir"], ctx, "wdir"))))
            wdir = "" if wdir == "." else wdir
        vars_ = body.get("vars") or []
        if has_interpolation(vars_):
            raise DvcInterpError("interpolating is not allowed in 'vars'")
        if vars_:
            ctx = copy.deepcopy(ctx)
            loader.load_vars(ctx, vars_, wdir, dict(imported))
    except (DvcInterpError, SpecError) as e:
        probs.add(kp, addressing, "vars" if body.get("vars") else "wdir", str(e))
        return None
    resolved: dict[str, Any] = {}
    for k, v in body.items():
        if k in ("vars", "wdir"):
            continue
        try:
            resolved[k] = resolve(v, ctx, k, cfg)
        except DvcInterpError as e:
            probs.add(kp + (k,), addressing, k, str(e))
    if len(resolved) != len([k for k in body if k not in ("vars", "wdir")]):
        return None
    cmd = resolved.get("cmd")
    if cmd in (None, "", []):
        probs.add(kp, addressing, "cmd", "missing; every stage needs a command")
        return None
    if isinstance(cmd, list):
        if not all(isinstance(c, str) for c in cmd):
            probs.add(kp + ("cmd",), addressing, "cmd", "list entries must be strings")
            return None
        cmd = tuple(cmd)
    elif not isinstance(cmd, str):
        probs.add(kp + ("cmd",), addressing, "cmd", f"is a {type(cmd).__name__}; expected a string or a list")
        return None
    deps = []
    for i, d in enumerate(_as_list(resolved.get("deps"))):
        if isinstance(d, str):
            deps.append(d)
        else:
            probs.add(kp + ("deps", i), addressing, "deps", f"entry {d!r} is not a path")
    outs = [*_outs(resolved.get("outs"), "outs", addressing, probs, kp + ("outs",)),
            *_outs(resolved.get("metrics"), "metrics", addressing, probs, kp + ("metrics",)),
            *_outs(resolved.get("plots"), "plots", addressing, probs, kp + ("plots",))]
    flags = {}
    for f in ("frozen", "always_changed"):
        v = resolved.get(f, False)
        if not isinstance(v, bool):
            probs.add(kp + (f,), addressing, f, "expected true or false")
        flags[f] = v is True
    return DvcStage(name=name, addressing=addressing, dvcfile=dvcfile, wdir=wdir, cmd=cmd, deps=tuple(deps),
                    outs=tuple(outs), params=tuple(_params(resolved.get("params"), addressing, probs,
                                                           kp + ("params",))),
                    desc=str(resolved.get("desc") or ""), meta=resolved.get("meta"), line=probs.line_of(kp),
                    **flags)


def parse_dvc_file(root: str, rel: str, probs_out: list[_Problems],
                   cfg: Mapping[str, str] | None = None) -> DvcFile | None:
    """Resolve one ``dvc.yaml``; problems go to a :class:`_Problems` appended to ``probs_out``."""
    try:
        with open(os.path.join(root, rel), "rb") as f:
            text = decode_text(f.read(), rel)
    except OSError as e:
        raise SpecError(f"{rel}: cannot read: {e.strerror}") from None
    probs = _Problems(rel, text)
    probs_out.append(probs)
    try:
        data = load_yaml12(text, rel)
    except SpecError as e:
        probs.items.append((0, str(e)))
        return None
    data = {} if data is None else data
    if not isinstance(data, dict):
        probs.add((), None, None, "expected a mapping with 'stages'")
        return None
    for k in data:
        if k not in TOP_KEYS:
            probs.add((k,), None, None, f"unknown top-level key '{k}'{_suggest(str(k), TOP_KEYS)}")
    wdir0 = posixpath.dirname(rel)
    loader = _Context(root)
    ctx: dict[str, Any] = {}
    imported: dict[str, Any] = {}
    cfg = cfg or {}
    try:
        if has_interpolation(data.get("vars") or []):
            raise DvcInterpError("interpolating is not allowed in 'vars'")
        loader.load_vars(ctx, data.get("vars") or [], wdir0, imported, default=True)
    except (DvcInterpError, SpecError) as e:
        probs.add(("vars",), None, "vars", str(e))
        return None
    stages: list[DvcStage] = []
    raw = data.get("stages") or {}
    if not isinstance(raw, dict):
        probs.add(("stages",), None, "stages", "expected a mapping of stage name -> stage")
        raw = {}
    seen: set[str] = set()
    for name, body in raw.items():
        kp = ("stages", name)
        if not isinstance(name, str) or not name or any(c in name for c in "@:/\\"):
            probs.add(kp, str(name), None, "invalid stage name (no '@', ':', '/' allowed)")
            continue
        if not isinstance(body, dict):
            probs.add(kp, name, None, f"is a {type(body).__name__}; expected a mapping with 'cmd'")
            continue
        try:
            gen = _generated(name, body, ctx) if ("foreach" in body or "matrix" in body) else [(name, body, None)]
        except DvcInterpError as e:
            probs.add(kp + ("foreach" if "foreach" in body else "matrix",), name, None, str(e))
            continue
        for full, template, extra in gen:
            sctx = ctx if extra is None else {**ctx, **extra}
            addressing = full if rel == "dvc.yaml" else f"{rel}:{full}"
            if full in seen:
                probs.add(kp, addressing, None, "stage name generated twice; make foreach keys unique")
                continue
            seen.add(full)
            st = _stage(full, addressing, dict(template), sctx, wdir0, rel, loader, imported, cfg, probs, kp)
            if st is not None:
                stages.append(st)
    top: dict[str, Any] = {}
    for sect in ("metrics", "plots", "params"):
        try:
            top[sect] = tuple(resolve(_as_list(data.get(sect)), ctx))
        except DvcInterpError as e:
            probs.add((sect,), None, sect, str(e))
            top[sect] = ()
    try:
        artifacts = resolve(data.get("artifacts") or {}, ctx)
    except DvcInterpError as e:
        probs.add(("artifacts",), None, "artifacts", str(e))
        artifacts = {}
    return DvcFile(path=rel, stages=tuple(stages), metrics=tuple(m for m in top["metrics"] if isinstance(m, str)),
                   plots=top["plots"], params=tuple(p for p in top["params"] if isinstance(p, str)),
                   artifacts=artifacts if isinstance(artifacts, dict) else {})
