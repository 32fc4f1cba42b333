"""Running a DVC project as it is: loading it, params overrides (``-S``), Hydra's ``conf/`` and adoption.

Stages of a DVC project read their params files themselves, so a value only reaches the code
through the file. An override is therefore written into that file (atomically, comments kept)
before the run, and the file's values are part of each stage's key; an override no stage
lists is refused, since it would be recorded while re-running nothing. With a ``conf/``,
Hydra is the source of truth: the composed config is written to ``params.yaml`` before a run,
as DVC's own Hydra integration does, and ``-S`` is refused (override Hydra instead).
"""

from __future__ import annotations

import difflib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

from engine.errors import ConfigError
from engine.pipeline.dvc_pipeline import DvcPipelineSpec, load_dvc_project, ws_path
from engine.pipeline.dvc_spec import DEFAULT_PARAMS
from engine.store.fsutil import atomic_write
from engine.store.workspace import CONF_DIR, Workspace

__all__ = ["set_params", "hydra_to_params", "prepare_repro"]


def _has_conf(ws: Workspace) -> bool:
    return os.path.exists(ws.p(CONF_DIR, "config.yaml"))


def _tracked_keys(spec: DvcPipelineSpec) -> dict[str, list[str | None]]:
    """Workspace-relative params file -> keys stages list (None: the whole file)."""
    out: dict[str, list[str | None]] = {}
    for st in spec.dvc_stages.values():
        for file, keys in st.params:
            rel = ws_path(st.wdir, file)[0]
            if rel is not None:
                out.setdefault(rel, []).extend(keys if keys is not None else [None])
    return out


def _parse_value(text: str) -> Any:
    from engine.pipeline.dvc_yaml import load_yaml12

    try:
        return load_yaml12(text, "-S") if text.strip() else ""
    except Exception:  # noqa: BLE001 - not YAML: keep it as the string it is
        return text


def _assign(data: Any, key: str, value: Any, add: bool) -> bool:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        if p not in cur or not hasattr(cur[p], "keys"):
            if not add:
                return False
            cur[p] = {}
        cur = cur[p]
    if parts[-1] not in cur and not add:
        return False
    cur[parts[-1]] = value
    return True


def _dump(rel: str, data: Any, rt: Any) -> bytes:
    if rel.endswith(".json"):
        return (json.dumps(data, indent=2) + "\n").encode()
    if rel.endswith(".toml"):
        import tomlkit

        return tomlkit.dumps(data).encode()
    buf = io.StringIO()
    rt.dump(data, buf)
    return buf.getvalue().encode()


def _load_rt(full: str, rel: str) -> tuple[Any, Any]:
    with open(full, encoding="utf-8") as f:
        text = f.read()
    if rel.endswith(".json"):
        return json.loads(text or "{}"), None
    if rel.endswith(".toml"):
        import tomlkit

        return tomlkit.parse(text), None
    from ruamel.yaml import YAML

    rt = YAML()  # round trip: comments and order kept, as `dvc exp run -S` keeps them
    return rt.load(text) or {}, rt


def set_params(ws: Workspace, spec: DvcPipelineSpec, assignments: Sequence[str]) -> list[str]:
    """Apply ``[file:]key=value`` (``+key=value`` adds a key) to the params files; one line per change."""
    if not assignments:
        return []
    if _has_conf(ws):
        raise ConfigError(f"-S {assignments[0]}: this DVC project has {CONF_DIR}/, so Hydra composes params.yaml; "
                          f"pass it as a Hydra override instead (certus repro {assignments[0].lstrip('+')})")
    tracked = _tracked_keys(spec)
    plan: dict[str, list[tuple[str, Any, bool, str]]] = {}
    for a in assignments:
        if "=" not in a:
            raise ConfigError(f"-S {a}: expected [file:]key=value, e.g. -S train.lr=0.01")
        target, _, text = a.partition("=")
        add = target.startswith("+")
        target = target.lstrip("+")
        file, sep, key = target.rpartition(":")
        file = file if sep else DEFAULT_PARAMS
        if file not in tracked:
            raise ConfigError(f"-S {a}: no stage lists params from '{file}', so the change would re-run nothing; "
                              "add it to a stage's params")
        keys = tracked[file]
        if None not in keys and not any(key == k or key.startswith(f"{k}.") for k in keys if k):
            close = difflib.get_close_matches(key, [k for k in keys if k], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"-S {a}: no stage lists '{key}' from {file} in its params, so changing it would "
                              f"re-run nothing{hint}")
        plan.setdefault(file, []).append((key, _parse_value(text), add, a))
    lines = []
    for file, changes in plan.items():
        full = ws.p(file)
        data, rt = _load_rt(full, file)
        for key, value, add, a in changes:
            if not _assign(data, key, value, add):
                raise ConfigError(f"-S {a}: '{key}' is not in {file}; use -S +{key}=... to add it")
            lines.append(f"{file}: {key} = {value!r}")
        atomic_write(full, _dump(file, data, rt))
    return lines


def hydra_to_params(ws: Workspace, overrides: Sequence[str]) -> bool:
    """With ``conf/``: the composed config written to ``params.yaml`` (what the stages read). True if changed."""
    if not _has_conf(ws):
        return False
    import yaml

    from engine.run.load import compose

    config = compose(ws, overrides)
    data = yaml.safe_dump(config, sort_keys=False).encode()
    full = ws.p(DEFAULT_PARAMS)
    try:
        with open(full, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    atomic_write(full, data)
    return True


def prepare_repro(ws: Workspace, overrides: Sequence[str], assignments: Sequence[str], *, adopt: bool = True,
                  err: Any = None, key: str | None = None) -> list[str]:
    """Before a repro of a DVC project: Hydra or ``-S`` into the params files, then dvc.lock adoption."""
    from engine.store.workspace import WorkspaceLock

    lines: list[str] = []
    with WorkspaceLock(ws).held(command="repro"):
        if hydra_to_params(ws, overrides):
            lines.append(f"{DEFAULT_PARAMS}: written from the composed {CONF_DIR}/ config")
        if assignments:
            lines.extend(set_params(ws, load_dvc_project(ws.root), assignments))
        if adopt:
            lines.extend(f"adopted from dvc.lock, not executed: {n}" for n in _adopt(ws, err, key))
    return lines


def _adopt(ws: Workspace, err: Any, key: str | None) -> list[str]:
    from engine.provenance.recorder import Provenance
    from engine.run.dvc_adopt import adopt
    from engine.store.cache import ObjectCache
    from engine.store.hashing import Hasher
    from engine.store.state import StatCache

    spec = load_dvc_project(ws.root)
    state = StatCache(os.path.join(ws.dot, "state.db"))
    prov = Provenance(ws, key=key)
    try:
        names = adopt(ws, spec, Hasher(ws.root, state=state), ObjectCache(os.path.join(ws.dot, "cache"),
                      state=state), prov if prov.enabled else None, err)
    finally:
        state.flush()
    return names
