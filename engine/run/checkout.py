"""``certus checkout``: make the workspace match ``certus.lock`` from the cache.

``certus.lock`` is checked first (paths and digests; a bad entry is a one-line error), and
every restored byte is hashed against the digest the lock names: a damaged cache object is
quarantined and its output named in the error, the other outputs are still restored.
"""

from __future__ import annotations

import os

from engine.core.digest import Digest
from engine.errors import CacheError, EngineError
from engine.pipeline.lockfile import LockFile
from engine.run.load import compose as compose_config
from engine.store.cache import ObjectCache, link_types_from
from engine.store.hashing import Hasher
from engine.store.state import StatCache
from engine.store.workspace import Workspace, WorkspaceLock

__all__ = ["checkout"]


def checkout(ws: Workspace, *, targets: list[str] | None = None, force: bool = False) -> tuple[list[str], list[str]]:
    """Restore missing outputs (and modified ones with ``force``); returns (restored, left alone)."""
    lock = LockFile.load(ws.lock_path)
    wanted: dict[str, dict[str, object]] = {}
    for name, entry in sorted(lock.stages.items()):
        for path, rec in entry.outs.items():
            if not targets or name in targets or name.split("@")[0] in targets or path in targets:
                wanted[path] = rec
    state = StatCache(os.path.join(ws.dot, "state.db"))
    hasher = Hasher(ws.root, state=state)
    cache = ObjectCache(os.path.join(ws.dot, "cache"), link_types=link_types_from(compose_config(ws, [])), state=state)
    restored, kept, failed = [], [], []
    with WorkspaceLock(ws).held(command="checkout"):
        have = hasher.hash_many(list(wanted))
        for path, rec in sorted(wanted.items()):
            e = have[path]
            if e is not None and str(e.digest) == rec["digest"]:
                continue
            if e is not None and not force:
                kept.append(path)
                continue
            try:
                cache.checkout(ws.root, path, Digest.parse(str(rec["digest"])), str(rec.get("kind", "file")))
            except EngineError as e:
                failed.append(str(e))
                continue
            restored.append(path)
    state.flush()
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        done = f"; restored {len(restored)} other output(s)" if restored else ""
        raise CacheError(f"{failed[0]}{more}{done}")
    return restored, kept
