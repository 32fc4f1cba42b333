"""``certus import-dvc --to-hydra``: a DVC project written out as ``pipelines/dvc.yaml`` + ``conf/``.

The resolved stages (every ``dvc.yaml``, foreach/matrix expanded, ``wdir`` folded into the
command) become one Certus spec; each params file the stages list becomes a Hydra config
group merged into ``conf/config.yaml``. What Certus's spec has no field for is listed, never
silently dropped.
"""

from __future__ import annotations

import os
import re
from typing import Any

from engine.errors import ConfigError
from engine.pipeline.dvc_pipeline import DvcStageSpec, load_dvc_project, ws_path
from engine.pipeline.dvc_spec import DEFAULT_PARAMS
from engine.pipeline.dvc_yaml import read_params_file
from engine.store.fsutil import atomic_write
from engine.store.workspace import Workspace

__all__ = ["to_hydra"]


def _name(addressing: str) -> str:
    """``sub/dvc.yaml:train@a`` -> ``sub-train-a`` (Certus names: letters, digits, ``_ - .``)."""
    base = addressing.replace("/dvc.yaml:", "-").replace("/", "-").replace("@", "-")
    return re.sub(r"[^A-Za-z0-9_.@\-]", "_", base)


def to_hydra(ws: Workspace, *, force: bool = False) -> tuple[list[str], list[str]]:
    """Write the files; return (written paths, one line per thing not carried over)."""
    import yaml

    spec = load_dvc_project(ws.root)
    targets = ["pipelines/dvc.yaml", "conf/config.yaml"]
    if not force and any(os.path.exists(ws.p(t)) for t in targets):
        raise ConfigError("pipelines/dvc.yaml or conf/config.yaml exists already; pass --force to overwrite")
    dropped: list[str] = []
    stages: dict[str, Any] = {}
    config: dict[str, Any] = {"certus": {"pipeline": "dvc"}}
    files_seen: set[str] = set()
    for addr, dst in spec.dvc_stages.items():
        if dst.frozen:
            dropped.append(f"stage '{addr}': frozen (left out; its outputs are sources)")
            continue
        st = spec.stages[addr]
        assert isinstance(st, DvcStageSpec)
        body: dict[str, Any] = {"cmd": st.cmd.split(" && ", 1)[1] if st.cmd.startswith("export DVC_ROOT") else st.cmd}
        if st.deps:
            body["deps"] = list(st.deps)
        if st.outs:
            body["outs"] = list(st.outs)
        if st.metrics:
            body["metrics"] = list(st.metrics)
        if st.desc:
            body["desc"] = st.desc
        if st.always_changed:
            body["always_changed"] = True
        params = []
        for file, keys in dst.params:
            rel = ws_path(dst.wdir, file)[0] or file
            if rel not in files_seen:
                files_seen.add(rel)
                data = read_params_file(ws.p(rel), rel)
                for k, v in data.items():
                    if k in config and config[k] != v:
                        dropped.append(f"{rel}: key '{k}' also defined by another params file; kept the first")
                        continue
                    config.setdefault(k, v)
            params.extend(keys if keys is not None else list(read_params_file(ws.p(rel), rel)))
        if params:
            body["params"] = sorted(set(params))
        for p in st.persist:
            dropped.append(f"stage '{addr}': output '{p}' persist: true (Certus deletes outputs before a run)")
        for p in st.uncached:
            dropped.append(f"stage '{addr}': output '{p}' cache: false (Certus caches every output)")
        if dst.meta is not None:
            dropped.append(f"stage '{addr}': meta (no field for it)")
        stages[_name(addr)] = body
    for f in spec.files:
        for sect in ("metrics", "plots", "params"):
            if getattr(f, sect):
                dropped.append(f"{f.path}: top-level '{sect}' (stage metrics are kept; plot definitions are not)")
        if f.artifacts:
            dropped.append(f"{f.path}: artifacts {', '.join(sorted(f.artifacts))} (register them as datasets)")
    if spec.tracked:
        dropped.append(f"{len(spec.tracked)} .dvc-tracked source(s): still fetched with `dvc pull`")
    if files_seen - {DEFAULT_PARAMS}:
        dropped.append("params from files other than params.yaml are merged into conf/config.yaml")
    dropped.append("stages that read params files themselves must read $CERTUS_PARAMS (or the composed config) "
                   "instead, or Hydra overrides will not reach the code")
    atomic_write(ws.p("pipelines/dvc.yaml"), yaml.safe_dump({"stages": stages}, sort_keys=False).encode())
    atomic_write(ws.p("conf/config.yaml"), yaml.safe_dump(config, sort_keys=False).encode())
    return targets, dropped
