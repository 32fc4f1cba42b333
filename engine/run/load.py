"""Loading a workspace's pipeline: compose the Hydra config, resolve the spec, add dataset deps, build
the DAG — what ``repro``, ``status`` and the CLI need before anything runs.

Kept out of :mod:`engine.store.workspace` so the workspace is no hub: only the code that needs a
composed config (Hydra) or the dataset registry loads them, here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import ConfigError, SpecError
from engine.store.parse_cache import CACHE_FORMAT, cache_get, cache_put, conf_key, may_resolve
from engine.store.workspace import CONF_DIR, SPEC_DIR, Workspace

__all__ = ["compose", "load", "load_dvc", "load_spec", "pipeline_path", "check_paths", "dag"]


def compose(ws: Workspace, overrides: Sequence[str]) -> dict[str, Any]:
    conf = ws.p(CONF_DIR)
    if not os.path.exists(os.path.join(conf, "config.yaml")):
        if overrides:
            raise ConfigError(f"{CONF_DIR}/config.yaml: missing, so overrides {list(overrides)} have nothing "
                              "to apply to; create conf/config.yaml")
        return {}
    key, cacheable = conf_key(conf, overrides)
    cached = cache_get(ws, "compose", key) if cacheable else None
    if cached is not None:
        return json.loads(cached)
    from engine.adapters.hydra import compose

    config = compose(conf, overrides)
    if cacheable:
        cache_put(ws, "compose", key, json.dumps(config).encode())
    return config


def pipeline_path(ws: Workspace, config: Mapping[str, Any], name: str | None = None) -> str:
    if name is None:
        certus_cfg = config.get("certus") if isinstance(config.get("certus"), Mapping) else {}
        name = certus_cfg.get("pipeline") if certus_cfg else None
    spec_dir = ws.p(SPEC_DIR)
    if name is None:
        found = sorted(f for f in os.listdir(spec_dir) if f.endswith((".yaml", ".yml")))
        if len(found) != 1:
            raise SpecError(f"{SPEC_DIR}/: {len(found)} pipeline files; name one with certus.pipeline in "
                            "conf/config.yaml or --pipeline NAME")
        return os.path.join(SPEC_DIR, found[0])
    for ext in (".yaml", ".yml", ""):
        rel = os.path.join(SPEC_DIR, name + ext) if not name.startswith(SPEC_DIR + "/") else name
        if os.path.isfile(ws.p(rel)):
            return rel
    raise SpecError(f"{SPEC_DIR}/{name}.yaml: no such pipeline; see the files in {SPEC_DIR}/")


def load_spec(ws: Workspace, config: Mapping[str, Any], name: str | None = None) -> Any:
    from engine.pipeline.spec import load_spec_text
    from engine.pipeline.spec_yaml import decode_text

    rel = pipeline_path(ws, config, name)
    try:
        with open(ws.p(rel), "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SpecError(f"{rel}: cannot read: {e.strerror}") from e
    text = decode_text(raw, rel)
    import hashlib

    from engine import __version__
    from engine.pipeline.spec import spec_from_json, spec_to_json

    key = hashlib.sha256(f"{CACHE_FORMAT}\0{__version__}\0{rel}\0{text}\0"
                         f"{json.dumps(config, sort_keys=True)}".encode())
    cacheable = not may_resolve(raw)  # resolvers (oc.env, ...) are re-evaluated each time
    cached = cache_get(ws, "spec", key.hexdigest()) if cacheable else None
    spec = None
    if cached is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            spec = spec_from_json(cached)
    if spec is None:
        spec = load_spec_text(text, path=rel, config=config)
        if cacheable:
            cache_put(ws, "spec", key.hexdigest(), spec_to_json(spec))
    if any(st.datasets for st in spec.stages.values()):
        from engine.datasets.registry import Registry, with_dataset_deps

        spec = with_dataset_deps(spec, Registry.load(ws.root))
    check_paths(ws, spec)
    return spec


def check_paths(ws: Workspace, spec: Any) -> None:
    """Refuse paths that leave the workspace through a symlink."""
    real_root = os.path.realpath(ws.root)
    problems = []
    for st in spec.stages.values():
        for fld, paths in (("deps", st.deps), ("outs", st.outs), ("metrics", st.metrics)):
            for p in paths:
                full = ws.p(p)
                # only walk the symlink check when some component is a link
                probe = full
                has_link = False
                while probe != ws.root and len(probe) > len(ws.root):
                    if os.path.islink(probe):
                        has_link = True
                        break
                    probe = os.path.dirname(probe)
                if has_link:
                    real = os.path.realpath(full)
                    if real != real_root and not real.startswith(real_root + os.sep):
                        problems.append(f"{spec.path}:{st.line}: stage '{st.name}': field '{fld}': path '{p}' "
                                        f"escapes the workspace through a symlink (to {real}); "
                                        "keep data inside the workspace")
    if problems:
        raise SpecError("\n".join(sorted(problems)))


def dag(ws: Workspace, spec: Any) -> Any:
    from engine.pipeline.dag import Dag

    return Dag(spec, exists=lambda p: os.path.lexists(ws.p(p)))


def load(ws: Workspace, overrides: Sequence[str] = (), pipeline: str | None = None) -> tuple[dict[str, Any], Any, Any]:
    if pipeline is None and not os.path.isdir(ws.p(SPEC_DIR)):  # a DVC project
        return load_dvc(ws, overrides)
    config = compose(ws, overrides)
    spec = load_spec(ws, config, pipeline)
    return config, spec, dag(ws, spec)


def load_dvc(ws: Workspace, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Any, Any]:
    """A DVC project's dvc.yaml files (engine.pipeline.dvc_pipeline). Its stages read their params files, so
    Hydra overrides apply only with a conf/ (engine.run.dvc_front writes the composed config to params.yaml)."""
    from engine.pipeline.dvc_pipeline import load_dvc_project

    has_conf = os.path.exists(ws.p(CONF_DIR, "config.yaml"))
    if overrides and not has_conf:
        raise ConfigError(f"overrides {list(overrides)}: this DVC project's stages read their params files, so a "
                          "Hydra override would never reach the code; use -S key=value (written into params.yaml)")
    config = compose(ws, overrides) if has_conf else {}
    spec = load_dvc_project(ws.root)
    check_paths(ws, spec)
    return config, spec, dag(ws, spec)
