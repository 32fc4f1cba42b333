"""``certus.lock``: what produced what, deterministic and meant to be committed.

JSON with sorted keys and two-space indent: one entry per stage with its key, resolved
command, dep digests, param values, declared env and output digests. Nothing incidental
(times, hosts, run ids) goes in, so the same inputs give the same bytes.

The lock is input too (it is committed, so anyone can edit it): every path in it goes
through the spec's path rules and every digest must be ``sha256:<64 hex>``. A bad entry is a
one-line error naming the stage and field; ``repro`` (``lenient``) instead drops it with a
note, which makes that stage run again, so ``certus repro STAGE`` is the way out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine.core.paths import digest_problem, out_record_problem, path_problem
from engine.errors import WorkspaceError
from engine.store.fsutil import atomic_write

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

    def problem(self) -> str | None:
        """The first malformed field (``field: why``), or None."""
        if digest_problem(self.key) is not None:
            return f"key: {digest_problem(self.key)}"
        if not isinstance(self.cmd, str):
            return "cmd: not a string"
        for p, d in self.deps.items():
            why = path_problem(p)[1] or digest_problem(d)
            if why:
                return f"deps '{str(p)[:120]}': {why}"
        for p, rec in self.outs.items():
            why = out_record_problem(p, rec)
            if why:
                return f"outs '{str(p)[:120]}': {why}"
        return None


class LockFile:
    """The lock file, loaded; mutate with :meth:`set`/:meth:`drop`, then :meth:`save`."""

    def __init__(self, path: str, stages: dict[str, StageLock] | None = None, pipeline: str = "") -> None:
        self.path = path
        self.stages: dict[str, StageLock] = stages or {}
        self.pipeline = pipeline
        self._texts: dict[str, tuple[StageLock, str]] = {}  # name -> (entry, its encoded text)
        self.problems: list[str] = []  # entries a lenient load dropped, one line each

    @classmethod
    def load(cls, path: str, *, lenient: bool = False) -> LockFile:
        """Read and check the lock; a malformed entry raises, or with ``lenient`` is dropped and
        described in :attr:`problems` (the stage then counts as never run)."""
        if not os.path.exists(path):
            return cls(path)
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), path, lenient=lenient)

    @classmethod
    def from_bytes(cls, raw: bytes, path: str, *, lenient: bool = False) -> LockFile:
        """Parse and check lock bytes (``path`` names them in errors); see :meth:`load`."""
        try:
            data = json.loads(raw)
            stages = {n: StageLock.from_dict(s) for n, s in data.get("stages", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise WorkspaceError(
                f"{path}: not a valid Certus lock file ({str(e)[:200]}); restore it from git or delete it to re-run"
            ) from e
        problems = []
        for name, entry in list(stages.items()):
            why = entry.problem()
            if why:
                msg = (f"{os.path.basename(path)}: stage '{str(name)[:120]}', {why}; run 'certus repro {name}' "
                       "or restore certus.lock from git")
                if not lenient:
                    raise WorkspaceError(msg)
                problems.append(msg)
                del stages[name]
        lock = cls(path, stages, data.get("pipeline", ""))
        lock.problems = problems
        return lock

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
