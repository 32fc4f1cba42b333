"""Registering a source dataset version: DVC tracks the bytes, a data steward signs the manifest, the ledger
logs a ``dataset.registered`` event. The version then waits for another person's approval.

One path for every way data enters the registry (``certus dataset add``, ``certus monitor --propose-retrain``),
so a proposed version is governed exactly like hand-registered data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.datasets.registry import DatasetManifest, Registry, now_rfc3339, parse_retention, write_manifest

__all__ = ["Registered", "register_source"]


@dataclass(frozen=True)
class Registered:
    manifest: DatasetManifest
    manifest_file: str  # relative to the workspace ("" when the bytes were already registered)
    dvc: dict[str, Any]
    new: bool  # False: an existing version already registers these bytes


def register_source(prov: Any, rel: str, *, name: str, source: str, sensitivity: str, retention: str,
                    license: str, owner: str | None, steward: Any, schema_rel: str | None = None,
                    init: bool = False) -> Registered:
    """Track ``rel`` (relative to the workspace) with DVC and register it as the next version of ``name``,
    signed by ``steward`` (a data-steward signer); under the workspace lock."""
    from engine.adapters import dvc
    from engine.datasets.schema import load_schema_file, validate
    from engine.provenance.recorder import sha256_hex
    from engine.store.hashing import Hasher
    from engine.store.workspace import WorkspaceLock

    ws = prov.ws
    schema_ref, stats = None, None
    if schema_rel:
        schema = load_schema_file(ws.p(schema_rel), schema_rel)
        stats = validate(ws.p(rel), schema, label=rel)
        with open(ws.p(schema_rel), "rb") as f:
            schema_ref = {"path": schema_rel, "sha256": sha256_hex(f.read())}
    with WorkspaceLock(ws).held(wait=True, command="dataset add"):
        dvc_info = dvc.track(ws.root, rel, init=init)
        entry = Hasher(ws.root).hash_path(rel)
        assert entry is not None
        reg = Registry.load(ws.root)
        existing = reg.entries.get(name, [])
        for e in existing:
            if e.manifest.id == str(entry.digest):
                return Registered(e.manifest, "", dvc_info, False)
        today = datetime.now(UTC).date()
        man = DatasetManifest(
            id=str(entry.digest), name=name, version=(existing[-1].manifest.version + 1) if existing else 1,
            path=rel, source=source, sensitivity=sensitivity, expires=parse_retention(retention, today).isoformat(),
            license=license, owner=owner or steward.name, registered=now_rfc3339(),
            rows=stats.rows if stats else None, columns=stats.columns if stats else None, schema=schema_ref,
            dvc=dvc_info,
        )
        path, raw = write_manifest(reg, man, steward)
        prov.append_event("dataset.registered", man.ref, {
            "id": man.id, "name": man.name, "version": man.version, "path": man.path,
            "manifest": path, "manifest_sha256": sha256_hex(raw), "dvc_md5": dvc_info.get("md5"),
            "sensitivity": man.sensitivity, "expires": man.expires, "policy_refs": list(man.policy)})
    return Registered(man, path, dvc_info, True)
