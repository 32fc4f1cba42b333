"""``certus status``: what is stale and why, read-only and fast.

Reads the lock file and hashes deps and outputs through the stat cache, so on an
up-to-date workspace no file is read and neither DVC nor the subprocess machinery is
imported. Safe to run while a ``repro`` holds the workspace lock: the lock file is
replaced atomically, and the stat cache is SQLite in WAL mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.pipeline.lockfile import LockFile
from engine.pipeline.plan import StageStatus, stage_key, stale_reasons
from engine.pipeline.spec import StageSpec
from engine.store.hashing import Entry, Hasher

__all__ = ["Evaluation", "evaluate", "workspace_status"]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A stage as the workspace has it now."""

    deps: dict[str, Entry | None]
    outs: dict[str, Entry | None]
    key: str
    reasons: tuple[str, ...]


def evaluate(stage: StageSpec, hasher: Hasher, lock: LockFile,
             prefetched: dict[str, Entry | None] | None = None) -> Evaluation:
    paths = [*stage.deps, *stage.all_outs]
    if prefetched is not None and all(p in prefetched for p in paths):
        hashed = prefetched
    else:
        hashed = hasher.hash_many(paths)
    deps = {p: hashed[p] for p in stage.deps}
    outs = {p: hashed[p] for p in stage.all_outs}
    key = stage_key(stage, deps)
    reasons = stale_reasons(stage, lock.get(stage.name), deps, outs)
    return Evaluation(deps=deps, outs=outs, key=str(key), reasons=tuple(reasons))


def workspace_status(stages: Iterable[StageSpec], hasher: Hasher, lock: LockFile) -> list[StageStatus]:
    stages = list(stages)
    every = [p for st in stages for p in (*st.deps, *st.all_outs)]
    prefetched = hasher.hash_many(every)  # one concurrent pass over all paths
    out = []
    for st in stages:
        ev = evaluate(st, hasher, lock, prefetched)
        out.append(StageStatus(name=st.name, reasons=ev.reasons, key=ev.key))
    return out
