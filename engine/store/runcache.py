"""The run cache (``.certus/runs``): stage key -> the outputs that key produced.

A record is input like any other file: :meth:`RunCache.lookup` checks its shape (stage name,
outputs exactly the stage's declared outputs, workspace paths valid, digests well formed,
run id safe to use in a path) and a record that fails is a cache miss with a note saying why,
never a traceback and never a restore of something else. Whether the objects it names are
intact is the object cache's job, at restore time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from engine.core.digest import Digest
from engine.core.paths import RUN_ID_RE, out_record_problem
from engine.errors import CacheError
from engine.store.fsutil import atomic_write

__all__ = ["RunCache", "record_problem"]


def record_problem(rec: Any, stage: str, outs: Sequence[str]) -> str | None:
    """Why a run-cache record cannot be used for ``stage`` (declared ``outs``), or None."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("stage") != stage:
        return f"it records stage {str(rec.get('stage'))[:80]!r}, not '{stage}'"
    got = rec.get("outs")
    if not isinstance(got, dict):
        return "it has no 'outs' mapping"
    if set(got) != set(outs):
        return f"its outputs {sorted(map(str, got))[:8]} are not the stage's declared outputs {sorted(outs)[:8]}"
    for p, r in got.items():
        why = out_record_problem(p, r)
        if why:
            return why
    run_id = rec.get("run_id", "")
    if run_id != "" and (not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id)):
        return f"run_id {str(run_id)[:80]!r} is malformed"
    return None


class RunCache:
    """Stage key -> recorded outputs (and which run first produced them)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, key: Digest) -> str:
        return os.path.join(self.root, key.hex[:2], key.hex[2:] + ".json")

    def get(self, key: Digest) -> dict[str, Any] | None:
        """The raw record (unchecked: use :meth:`lookup` before restoring anything from it)."""
        try:
            with open(self._path(key), "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def lookup(self, key: Digest, stage: str, outs: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` for a usable record; ``(None, note)`` for one that is there but
        malformed or not this stage's (a cache miss, with a line saying why); ``(None, None)``."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                rec = json.loads(f.read())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            why: str | None = f"unreadable ({str(e)[:80]})"
        else:
            why = record_problem(rec, stage, outs)
            if why is None:
                return rec, None
        rel = os.path.join(os.path.basename(os.path.dirname(self.root)), "runs", key.hex[:2], key.hex[2:] + ".json")
        return None, f"run-cache record {rel} ignored for stage '{stage}': {why}"

    def put(self, key: Digest, record: dict[str, Any]) -> None:
        if os.path.exists(self._path(key)):
            return  # first producer wins: later identical runs point back at it
        try:
            atomic_write(self._path(key), json.dumps(record, sort_keys=True, indent=1).encode())
        except OSError as e:
            raise CacheError(f"cannot write the run-cache record {self._path(key)}: {e.strerror}; free space "
                             "there (or make .certus/runs writable) and run 'certus repro' again") from None

    def items(self) -> Iterator[tuple[Digest, dict[str, Any]]]:
        if not os.path.isdir(self.root):
            return
        for a in sorted(os.listdir(self.root)):
            sub = os.path.join(self.root, a)
            if not os.path.isdir(sub):
                continue
            for b in sorted(os.listdir(sub)):
                if b.endswith(".json"):
                    try:
                        key = Digest(a + b[:-5])
                    except ValueError:
                        continue  # not a record: a stray file
                    rec = self.get(key)
                    if rec is not None:
                        yield key, rec

    def remove(self, key: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
