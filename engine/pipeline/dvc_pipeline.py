"""A DVC project as Certus's pipeline model: the same :class:`PipelineSpec` its own specs become.

Each resolved :class:`~engine.pipeline.dvc_spec.DvcStage` becomes a stage named by its DVC
address, with paths made workspace-relative (``wdir`` applied), its params' current values
read from the params files it lists (so a changed value re-runs exactly what DVC re-runs), and
a shell command that does what DVC does: ``cd`` into ``wdir``, ``DVC_ROOT``/``DVC_STAGE`` set,
each ``cmd`` entry (or line) in its own shell, stopping at the first failure. Frozen stages
are left out; their outputs are sources. ``persist``/``cache: false`` outputs are carried on
:class:`DvcStageSpec` so ``repro`` keeps persisted outputs in place and out of the run cache.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.core.paths import path_problem
from engine.errors import SpecError
from engine.pipeline.dvc_spec import DEFAULT_PARAMS, DvcFile, DvcStage, find_dvc_files, parse_dvc_file, parsing_config
from engine.pipeline.dvc_yaml import load_yaml12, read_params_file
from engine.pipeline.spec import PipelineSpec, StageSpec, lookup_dotted
from engine.pipeline.spec_problems import _Problems

__all__ = ["DvcStageSpec", "DvcPipelineSpec", "load_dvc_project", "is_dvc_project", "param_values", "shell_cmd",
           "param_label", "ws_path", "adopted_sha256"]


@dataclass(frozen=True, slots=True)
class DvcStageSpec(StageSpec):
    """A stage from ``dvc.yaml``: a :class:`StageSpec` plus the output flags ``repro`` honours."""

    persist: tuple[str, ...] = ()  # kept in place before the run; never restored from the run cache
    uncached: tuple[str, ...] = ()  # ``cache: false``: may be git-tracked; not restored from the run cache


@dataclass(frozen=True, slots=True)
class DvcPipelineSpec(PipelineSpec):
    """The whole project: the pipeline model, plus what the DVC files said beyond it."""

    files: tuple[DvcFile, ...] = ()
    dvc_stages: Mapping[str, DvcStage] = field(default_factory=dict)  # by address, frozen ones included
    tracked: Mapping[str, str] = field(default_factory=dict)  # path tracked by a .dvc file -> that file


def adopted_sha256(stage: str, outs: Mapping[str, Any]) -> str:
    """What a ``dvc.adopted`` ledger event is filed under (ledger index, verify): the stage and its outputs."""
    import hashlib

    from engine.core.canonical import canonical_bytes

    return hashlib.sha256(canonical_bytes({"stage": stage, "outs": dict(outs)})).hexdigest()


def is_dvc_project(root: str) -> bool:
    """A DVC repository without a Certus ``pipelines/`` directory (that one would win)."""
    return not os.path.isdir(os.path.join(root, "pipelines")) and (
        os.path.isdir(os.path.join(root, ".dvc")) or os.path.isfile(os.path.join(root, "dvc.yaml")))


def ws_path(wdir: str, p: str) -> tuple[str | None, str | None]:
    """A path as written in a stage (relative to its wdir) -> workspace-relative, or a reason it cannot be."""
    if not isinstance(p, str) or not p:
        return None, f"path {p!r} is not a non-empty string"
    if p.startswith("/") or "://" in p:
        return None, f"'{p}' is outside the repository (external and remote paths are not supported)"
    return path_problem(posixpath.normpath(posixpath.join(wdir, p)) if wdir else p)


def param_label(file: str, key: str) -> str:
    """The name a param has in Certus (status, certus.lock): ``key`` from the root params.yaml, else ``file:key``."""
    return key if file == DEFAULT_PARAMS else f"{file}:{key}"


def _get(data: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """A params key as DVC reads it: a literal dotted key first, else the path (spec's lookup)."""
    if dotted in data:
        return True, data[dotted]
    return lookup_dotted(data, dotted)


def param_values(st: DvcStage, root: str, files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{file as declared: {key: value}}`` as they are now; raises SpecError for a missing file or key."""
    out: dict[str, dict[str, Any]] = {}
    for file, keys in st.params:
        rel, why = ws_path(st.wdir, file)
        if rel is None:
            raise SpecError(f"stage '{st.addressing}': field 'params': {why}")
        if rel not in files:
            files[rel] = read_params_file(os.path.join(root, rel), rel)
        data = files[rel]
        if keys is None:
            out[file] = dict(data)
            continue
        vals = out.setdefault(file, {})
        for k in keys:
            ok, v = _get(data, k)
            if not ok:
                raise SpecError(f"stage '{st.addressing}': field 'params': '{k}' is not in {rel}; add it there or "
                                "remove it from the stage")
            vals[k] = v
    return out


def shell_cmd(st: DvcStage) -> str:
    """What ``/bin/sh -c`` runs for the stage: DVC's environment, wdir, each entry in its own shell."""
    entries = list(st.cmd) if isinstance(st.cmd, tuple) else st.cmd.splitlines()
    entries = [e for e in entries if e.strip()]
    head = f'export DVC_ROOT="${{DVC_ROOT:-$CERTUS_WORKSPACE}}" DVC_STAGE={shlex.quote(st.addressing)}'
    if st.wdir:
        head += f" && cd {shlex.quote(st.wdir)}"
    if len(entries) == 1:
        return f"{head} && {entries[0]}"
    return head + " && " + " && ".join(f"(\n{e}\n)" for e in entries)


def _tracked(root: str, dots: list[str], problems: list[str]) -> dict[str, str]:
    tracked: dict[str, str] = {}
    for rel in dots:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                data = load_yaml12(f.read(), rel)
        except (OSError, UnicodeDecodeError, SpecError) as e:
            problems.append(f"{rel}: cannot read: {e}")
            continue
        for o in (data or {}).get("outs") or [] if isinstance(data, dict) else []:
            p = o.get("path") if isinstance(o, dict) else None
            path, why = ws_path(posixpath.dirname(rel), p) if isinstance(p, str) else (None, "no path")
            if path is None:
                problems.append(f"{rel}: field 'outs': {why}")
            else:
                tracked[path] = rel
    return tracked


def _tracker(path: str, tracked: Mapping[str, str]) -> str | None:
    p = path
    while p:
        if p in tracked:
            return tracked[p]
        p = posixpath.dirname(p)
    return None


def load_dvc_project(root: str) -> DvcPipelineSpec:
    """Every ``dvc.yaml`` under ``root`` as one pipeline; every problem in one :class:`SpecError`."""
    yamls, dots = find_dvc_files(root)
    if not yamls:
        raise SpecError("dvc.yaml: this DVC repository has no dvc.yaml (no stages); add stages with "
                        "'dvc stage add' or create pipelines/<name>.yaml")
    cfg = parsing_config(root)
    all_probs: list[_Problems] = []
    files = [f for rel in yamls if (f := parse_dvc_file(root, rel, all_probs, cfg)) is not None]
    extra: list[str] = []
    tracked = _tracked(root, dots, extra)
    params_files: dict[str, dict[str, Any]] = {}
    stages: dict[str, StageSpec] = {}
    dvc_stages: dict[str, DvcStage] = {}
    owner: dict[str, str] = {}
    by_file = {p.path: p for p in all_probs}
    for df in files:
        probs = by_file[df.path]
        for st in df.stages:
            dvc_stages[st.addressing] = st
            kp = ("stages", st.name.split("@")[0])
            paths: dict[str, list[str]] = {"deps": [], "outs": [], "metrics": []}
            for fld, items in (("deps", st.deps), ("outs", [o.path for o in st.outs])):
                for p in items:
                    rel, why = ws_path(st.wdir, p)
                    if rel is None:
                        probs.add(kp + (fld,), st.addressing, fld, str(why))
                    else:
                        paths[fld].append(rel)
            outs = [(o, rel) for o, rel in zip(st.outs, paths["outs"])]
            for o, rel in outs:
                if rel in owner and owner[rel] != st.addressing:
                    probs.add(kp + ("outs",), st.addressing, o.kind, f"output '{rel}' is also declared by stage "
                              f"'{owner[rel]}'; each output needs one producer")
                owner.setdefault(rel, st.addressing)
                if rel in tracked:
                    probs.add(kp + ("outs",), st.addressing, o.kind, f"output '{rel}' is tracked by {tracked[rel]}; "
                              "a path is either a stage output or a .dvc source")
            try:
                values = param_values(st, root, params_files)
            except SpecError as e:
                probs.add(kp + ("params",), None, None, str(e))
                values = {}
            params = []
            for file, kv in values.items():
                rel_file = ws_path(st.wdir, file)[0] or file
                params.extend((param_label(rel_file, k), v) for k, v in kv.items())
            if st.frozen:
                continue  # its outputs are sources now, as in DVC
            stages[st.addressing] = DvcStageSpec(
                name=st.addressing, cmd=shell_cmd(st), deps=tuple(dict.fromkeys(paths["deps"])),
                outs=tuple(dict.fromkeys(r for o, r in outs if o.kind != "metrics")),
                metrics=tuple(dict.fromkeys(r for o, r in outs if o.kind == "metrics")),
                params=tuple(sorted(dict(params).items())), desc=st.desc, always_changed=st.always_changed,
                line=st.line, persist=tuple(r for o, r in outs if o.persist),
                uncached=tuple(r for o, r in outs if not o.cache))
    for st in stages.values():  # a .dvc source missing from the workspace: DVC would say to pull it
        for d in st.deps:
            src = _tracker(d, tracked)
            if src is not None and d not in owner and not os.path.lexists(os.path.join(root, d)):
                dst = dvc_stages[st.name]
                by_file[dst.dvcfile].add(("stages", dst.name.split("@")[0], "deps"), st.name, "deps",
                                         f"'{d}' is tracked by {src} but is not in the workspace; run `dvc pull`")
    messages = sorted({m for p in all_probs for m in (i[1] for i in p.items)}) + extra
    if messages:
        raise SpecError("\n".join(messages))
    return DvcPipelineSpec(path=yamls[0] if len(yamls) == 1 else "dvc.yaml", stages=stages, files=tuple(files),
                           dvc_stages=dvc_stages, tracked=tracked)
