"""``certus lineage PATH``: walk from an output back to the raw inputs that produced it.

The walk follows ``certus.lock`` (what produced the current bytes: stage, deps with digests,
params) and joins the ledger: for each output digest, the run whose signed attestation
first lists it, so every step names a run that ``certus verify`` can check.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from engine.errors import WorkspaceError
from engine.pipeline.lockfile import LockFile
from engine.store.workspace import Workspace

__all__ = ["lineage", "lineage_graph"]


def _producers(lock: LockFile) -> dict[str, tuple[str, dict[str, Any]]]:
    out = {}
    for name, entry in lock.stages.items():
        for path, rec in entry.outs.items():
            out[path] = (name, rec)
    return out


def _owner(path: str, producers: dict[str, tuple[str, dict[str, Any]]]) -> str | None:
    p = path
    while p:
        if p in producers:
            return p
        p = posixpath.dirname(p)
    return None


def _run_payloads(ws: Workspace) -> list[dict[str, Any]]:
    """Every run record's payload in the ledger, in order ([] without provenance or a readable ledger)."""
    from engine.provenance.recorder import Provenance
    from engine.provenance.records import RUN_TYPE

    prov = Provenance(ws)
    if not prov.enabled:
        return []
    try:
        items = list(prov.items())
    except Exception:  # noqa: BLE001 - lineage still works from the lock alone
        return []
    return [i.payload for i in items if i.envelope is not None and i.envelope.payload_type == RUN_TYPE and i.payload]


def _artifacts(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Path -> the newest run record's DVC artifact entry naming it (name, type, desc, labels, run)."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        for name, a in (run.get("artifacts") or {}).items():
            if isinstance(a, dict) and a.get("path"):
                found[str(a["path"])] = {**a, "name": name, "run": run.get("run_id")}
    return found


def _runs_by_digest(runs: list[dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for run in runs:
        for stage, s in run.get("stages", {}).items():
            if s.get("state") in ("ran", "restored"):
                for path, digest in s.get("outs", {}).items():
                    found.setdefault(f"{stage}|{path}|{digest}", run["run_id"])
    return found


def lineage_graph(ws: Workspace, path: str) -> dict[str, Any]:
    lock = LockFile.load(ws.lock_path)
    producers = _producers(lock)
    norm = posixpath.normpath(path)
    if _owner(norm, producers) is None:
        raise WorkspaceError(f"{path}: no stage in certus.lock produced it; see 'certus status' or 'certus dag'")
    payloads = _run_payloads(ws)
    runs = _runs_by_digest(payloads)
    from engine.datasets.registry import Registry

    try:
        reg: Registry | None = Registry.load(ws.root)
    except Exception:  # noqa: BLE001 - lineage still works from the lock alone
        reg = None
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[tuple[str, str]] = []
    todo = [norm]
    while todo:
        p = todo.pop()
        if p in nodes:
            continue
        owner = _owner(p, producers)
        if owner is None:
            nodes[p] = {"path": p, "kind": "source"}
            continue
        stage, rec = producers[owner]
        entry = lock.stages[stage]
        node = {"path": p, "kind": "output", "stage": stage, "digest": rec["digest"], "params": entry.params,
                "cmd": entry.cmd, "deps": entry.deps,
                "run": runs.get(f"{stage}|{owner}|{rec['digest']}")}
        nodes[p] = node
        for dep, digest in entry.deps.items():
            edges.append((dep, p))
            todo.append(dep)
            if _owner(dep, producers) is None:
                nodes.setdefault(dep, {"path": dep, "kind": "source", "digest": digest})
    if reg is not None:
        for n in nodes.values():
            digest = n.get("digest")
            hit = reg.by_path_digest(n["path"], digest) if digest else None
            if hit is not None:
                m = hit.manifest
                n["dataset"] = {"ref": m.ref, "version": m.version, "id": m.id, "manifest": hit.path,
                                "source": m.source, "sensitivity": m.sensitivity, "parents": list(m.parents),
                                "approved_by": (hit.approval or {}).get("approver"),
                                "approval": m.approval, "produced_by": dict(m.produced_by or {}) or None}
    for p, a in _artifacts(payloads).items():
        if p in nodes and a.get("digest") in (None, nodes[p].get("digest")):
            nodes[p]["artifact"] = a
    return {"target": norm, "nodes": nodes, "edges": sorted(set(edges))}


def lineage(ws: Workspace, path: str, *, mermaid: bool = False, as_json: bool = False) -> str:
    g = lineage_graph(ws, path)
    if as_json:
        return json.dumps(g, indent=2, sort_keys=True) + "\n"
    if mermaid:
        ids = {p: f"n{i}" for i, p in enumerate(sorted(g["nodes"]))}
        lines = ["flowchart LR"]
        for p, n in sorted(g["nodes"].items()):
            label = p if n["kind"] == "source" else f"{p}<br/>stage {n['stage']}" + (
                f"<br/>run {n['run']}" if n.get("run") else "")
            if n.get("dataset"):
                label += f"<br/>dataset {n['dataset']['ref']}"
            lines.append(f'    {ids[p]}["{label}"]')
        for a, b in g["edges"]:
            lines.append(f"    {ids[a]} --> {ids[b]}")
        return "\n".join(lines) + "\n"
    out: list[str] = []

    def ds(n: dict[str, Any]) -> str:
        d = n.get("dataset")
        if not d:
            return ""
        appr = f", approved by {d['approved_by']}" if d.get("approved_by") else (
            ", approval inherited" if d.get("approval") == "inherited" else ", NOT approved")
        par = f", parents {', '.join(d['parents'])}" if d.get("parents") else ""
        return (f"  dataset {d['ref']} v{d['version']} ({d['sensitivity']}{appr}{par}; "
                f"manifest {d['manifest']}; source: {d['source']})")

    def walk(p: str, depth: int, seen: set[str]) -> None:
        n = g["nodes"][p]
        pad = "  " * depth
        if n["kind"] == "source":
            out.append(f"{pad}{p}  [source {n.get('digest', '')[:19]}]{ds(n)}")
            return
        run = f", run {n['run']}" if n.get("run") else ""
        params = ", ".join(f"{k}={v}" for k, v in sorted(n["params"].items()))
        art = n.get("artifact")
        tag = f"  artifact {art['name']} ({art.get('type') or 'untyped'})" if art else ""
        out.append(f"{pad}{p}  [{n['digest'][:19]}…] <- stage '{n['stage']}'{run}" + (f" ({params})" if params else "")
                   + ds(n) + tag)
        if p in seen:
            return
        for dep in sorted(n["deps"]):
            walk(dep, depth + 1, seen | {p})

    walk(g["target"], 0, set())
    return "\n".join(out) + "\n"
