"""``certus.lock``: what produced what, deterministic and meant to be committed.

JSON with sorted keys and two-space indent: one entry per stage with its key, resolved
command, dep digests, param values, declared env and output digests. Nothing incidental
(times, hosts, run ids) goes in, so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine.errors import WorkspaceError
from engine.fsutil import atomic_write

__all__ = ["LockFile", "StageLock", "LOCK_VERSION"]

LOCK_VERSION = 1


@dataclass(frozen=True, slots=True)
class StageLock:
    """One stage's recorded state."""

    key: str
    cmd: str
    deps: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    outs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "cmd": self.cmd, "deps": self.deps, "params": self.params,
                "env": self.env, "outs": self.outs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageLock:
        return cls(key=d["key"], cmd=d["cmd"], deps=dict(d.get("deps", {})), params=dict(d.get("params", {})),
                   env=dict(d.get("env", {})), outs=dict(d.get("outs", {})))


class LockFile:
    """The lock file, loaded; mutate with :meth:`set`/:meth:`drop`, then :meth:`save`."""

    def __init__(self, path: str, stages: dict[str, StageLock] | None = None, pipeline: str = "") -> None:
        self.path = path
        self.stages: dict[str, StageLock] = stages or {}
        self.pipeline = pipeline
        self._texts: dict[str, tuple[StageLock, str]] = {}  # name -> (entry, its encoded text)

    @classmethod
    def load(cls, path: str) -> LockFile:
        if not os.path.exists(path):
            return cls(path)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
            stages = {n: StageLock.from_dict(s) for n, s in data.get("stages", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WorkspaceError(
                f"{path}: not a valid Certus lock file ({e}); restore it from git or delete it to re-run"
            ) from e
        return cls(path, stages, data.get("pipeline", ""))

    def get(self, name: str) -> StageLock | None:
        return self.stages.get(name)

    def set(self, name: str, entry: StageLock) -> None:
        self.stages[name] = entry

    def drop(self, name: str) -> None:
        self.stages.pop(name, None)

    def to_bytes(self) -> bytes:
        """``json.dumps(doc, sort_keys=True, indent=2)`` byte for byte, re-encoding only changed entries.

        Python's indenting encoder is pure Python (~30 ms for a 1,000-stage lock), and a run
        saves the lock many times while changing a few entries between saves. StageLock is
        frozen and replaced, never edited, so an entry's identity says whether its text holds.
        """
        parts = []
        for name, entry in sorted(self.stages.items()):
            memo = self._texts.get(name)
            if memo is None or memo[0] is not entry:
                body = json.dumps(entry.to_dict(), sort_keys=True, indent=2, ensure_ascii=False)
                memo = (entry, f"    {json.dumps(name, ensure_ascii=False)}: {body.replace(chr(10), chr(10) + '    ')}")
                self._texts[name] = memo
            parts.append(memo[1])
        for gone in self._texts.keys() - self.stages.keys():
            del self._texts[gone]
        stages = "{\n" + ",\n".join(parts) + "\n  }" if parts else "{}"
        pipeline = json.dumps(self.pipeline, ensure_ascii=False)
        return f'{{\n  "pipeline": {pipeline},\n  "stages": {stages},\n  "version": {LOCK_VERSION}\n}}\n'.encode()

    def save(self) -> None:
        data = self.to_bytes()
        try:
            with open(self.path, "rb") as f:
                if f.read() == data:
                    return
        except FileNotFoundError:
            pass
        atomic_write(self.path, data)
