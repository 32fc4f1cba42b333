"""Three-way merge of ``certus.lock``, stage by stage: what git's merge driver runs.

Two clones that each ran ``certus repro`` with other overrides both rewrite the same stage
entries; git's line merge then conflicts in a file no person should edit by hand. The lock
is a map of independent stage entries, so it merges per stage (base O, ours A, theirs B):

* the same on both sides, or changed on one side only: that side (a removal is a change);
* changed differently on both sides: **ours**. The merged lock must describe the workspace
  it lands in, and the files there (outputs are not in git) are the ones *our* run made.
  Theirs is dropped, not lost: it stays in their commit, and ``certus repro`` with their
  overrides re-runs or restores it.

Taking their entry for a stage only they changed never makes ``status`` lie: status re-hashes
every dep and output against the entry, so an entry whose outputs this workspace does not
have reads "out modified"/"out missing", and one whose outputs it does have reads up to date.

The result is :meth:`LockFile.to_bytes` of the merged map (sorted keys, deterministic). A side
that is not a valid lock of this format (a conflict-marker mess, another ``version``) raises
a one-line :class:`~engine.errors.WorkspaceError`; nothing is written then, and git shows an
ordinary conflict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.errors import WorkspaceError
from engine.pipeline.lockfile import LOCK_VERSION, LockFile, StageLock

__all__ = ["MergeResult", "merge_locks", "parse_side"]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged lock's bytes and, per stage, which side it came from (for a one-line summary)."""

    data: bytes
    taken: tuple[tuple[str, str], ...]  # (stage, "ours" | "theirs" | "both" | "removed") where it mattered

    def summary(self) -> str:
        picked = {}
        for name, side in self.taken:
            picked.setdefault(side, []).append(name)
        parts = [f"{side}: {', '.join(names)}" for side, names in sorted(picked.items())]
        return "certus.lock merged per stage" + (f" ({'; '.join(parts)})" if parts else " (no stage differed)")


def parse_side(raw: bytes, label: str) -> LockFile:
    """One side of the merge, strictly: an empty file (no lock on that side) is an empty lock."""
    if not raw.strip():
        return LockFile(label)
    try:
        version = json.loads(raw).get("version")
    except (ValueError, AttributeError):
        version = LOCK_VERSION  # from_bytes names the problem below
    if version != LOCK_VERSION:
        raise WorkspaceError(f"{label}: lock format version {version!r}, this Certus reads {LOCK_VERSION}; "
                             "merge it with the Certus version that wrote it")
    return LockFile.from_bytes(raw, label)


def _pick(base: object, ours: object, theirs: object) -> tuple[object, str]:
    if ours == theirs:
        return ours, "both"
    if ours == base:
        return theirs, "theirs"
    return ours, "ours"  # changed on our side only, or on both: ours describes this workspace's files


def merge_locks(base: bytes, ours: bytes, theirs: bytes, *, path: str = "certus.lock") -> MergeResult:
    """Merge three versions of a lock (bytes as git hands them over); raises on an invalid side."""
    o = parse_side(base, f"{path} (merge base)")
    a = parse_side(ours, f"{path} (ours)")
    b = parse_side(theirs, f"{path} (theirs)")
    merged: dict[str, StageLock] = {}
    taken: list[tuple[str, str]] = []
    for name in sorted(a.stages.keys() | b.stages.keys() | o.stages.keys()):
        entry, side = _pick(o.get(name), a.get(name), b.get(name))
        if entry is not None:
            merged[name] = entry  # type: ignore[assignment]
        if a.get(name) != b.get(name):
            taken.append((name, side if entry is not None else "removed"))
    pipeline, _ = _pick(o.pipeline, a.pipeline, b.pipeline)
    out = LockFile(path, merged, str(pipeline))
    return MergeResult(out.to_bytes(), tuple(taken))
