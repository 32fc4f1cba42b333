"""``certus gc``: drop cache objects nothing references any more."""

from __future__ import annotations

import os

from engine.core.digest import Digest
from engine.core.paths import out_record_problem
from engine.errors import CacheError
from engine.pipeline.lockfile import LockFile
from engine.store.cache import ObjectCache, RunCache
from engine.store.workspace import Workspace, WorkspaceLock

__all__ = ["gc"]


def gc(ws: Workspace, *, workspace_only: bool = False, dry: bool = False) -> tuple[int, int, int]:
    """Returns (objects removed, bytes freed, objects kept)."""
    cache = ObjectCache(os.path.join(ws.dot, "cache"))
    runs = RunCache(os.path.join(ws.dot, "runs"))
    with WorkspaceLock(ws).held(command="gc"):
        lock = LockFile.load(ws.lock_path)
        roots: list[tuple[str, str]] = []
        lock_keys = set()
        for entry in lock.stages.values():
            lock_keys.add(entry.key)
            roots += [(str(r["digest"]), str(r.get("kind", "file"))) for r in entry.outs.values()]
        for key, rec in list(runs.items()):
            if workspace_only and str(key) not in lock_keys:
                if not dry:
                    runs.remove(key)
                continue
            outs = rec.get("outs") if isinstance(rec, dict) else None
            # a malformed record protects nothing (it would never be restored from)
            roots += [(str(r["digest"]), str(r.get("kind", "file"))) for p, r in
                      (outs.items() if isinstance(outs, dict) else ()) if out_record_problem(p, r) is None]
        keep: set[str] = set()
        for digest, kind in roots:
            try:
                keep.update(d.hex for d in cache.objects_of(Digest.parse(digest), kind))
            except CacheError:
                keep.add(Digest.parse(digest).hex)
        removed = freed = kept = 0
        for digest, path in list(cache.iter_objects()):
            if digest is not None and digest.hex in keep:
                kept += 1
                continue
            removed += 1
            freed += os.path.getsize(path)
            if not dry:
                os.unlink(path)
    return removed, freed, kept
