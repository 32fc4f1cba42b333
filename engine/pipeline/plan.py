"""Planning: a stage's key, and why a stage is stale.

The key is SHA-256 of the canonical JSON of ``{cmd, deps: {path: digest}, params: {key:
value}, env}``: everything that decides what the command computes. Two runs with the same
key are the same computation, which is what makes the run cache and early cutoff sound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.core.canonical import canonical_bytes
from engine.core.digest import Digest, sha256_bytes
from engine.pipeline.lockfile import StageLock
from engine.pipeline.spec import StageSpec
from engine.store.hashing import Entry

__all__ = ["stage_key", "stale_reasons", "lock_entry", "StageStatus"]


@dataclass(frozen=True, slots=True)
class StageStatus:
    """A stage's state for ``status`` and ``repro --dry``."""

    name: str
    reasons: tuple[str, ...]
    key: str | None

    @property
    def stale(self) -> bool:
        return bool(self.reasons)


def stage_key(stage: StageSpec, deps: Mapping[str, Entry | None]) -> Digest:
    body = {
        "cmd": stage.cmd,
        "deps": {p: (str(e.digest) if e else None) for p, e in sorted(deps.items())},
        "params": stage.params_dict(),
        "env": stage.env_dict(),
    }
    return sha256_bytes(canonical_bytes(body))


def lock_entry(stage: StageSpec, key: Digest, deps: Mapping[str, Entry | None],
               outs: Mapping[str, Entry]) -> StageLock:
    return StageLock(
        key=str(key),
        cmd=stage.cmd,
        deps={p: str(e.digest) for p, e in sorted(deps.items()) if e is not None},
        params=stage.params_dict(),
        env=stage.env_dict(),
        outs={p: e.to_lock() for p, e in sorted(outs.items())},
    )


def stale_reasons(stage: StageSpec, locked: StageLock | None, deps: Mapping[str, Entry | None],
                  outs: Mapping[str, Entry | None]) -> list[str]:
    """Every reason the stage must run; empty when it is up to date."""
    reasons: list[str] = []
    for p, e in sorted(deps.items()):
        if e is None:
            reasons.append(f"dep missing: {p}")
    if locked is None:
        reasons.append("never run")
        return reasons
    if stage.always_changed:
        reasons.append("always_changed")
    if locked.cmd != stage.cmd:
        reasons.append("cmd changed")
    for p, e in sorted(deps.items()):
        old = locked.deps.get(p)
        if e is not None and old != str(e.digest):
            reasons.append(f"dep {'added' if old is None else 'changed'}: {p}")
    for p in sorted(set(locked.deps) - set(deps)):
        reasons.append(f"dep removed: {p}")
    new_params = stage.params_dict()
    for k in sorted(set(new_params) | set(locked.params)):
        if k not in locked.params:
            reasons.append(f"param added: {k}")
        elif k not in new_params:
            reasons.append(f"param removed: {k}")
        elif locked.params[k] != new_params[k] or type(locked.params[k]) is not type(new_params[k]):
            reasons.append(f"param changed: {k} ({locked.params[k]!r} -> {new_params[k]!r})")
    if locked.env != stage.env_dict():
        reasons.append("env changed")
    for p in stage.all_outs:
        rec = locked.outs.get(p)
        e = outs.get(p)
        if rec is None:
            reasons.append(f"out added: {p}")
        elif e is None:
            reasons.append(f"out missing: {p}")
        elif rec.get("digest") != str(e.digest):
            reasons.append(f"out modified: {p}")
    return reasons
