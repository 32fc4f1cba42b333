"""Adopting ``dvc.lock``: what DVC already ran is not run again, and is never called a Certus execution.

A ``dvc.lock`` entry is adopted when everything it records still holds in the workspace: the
same ``cmd``, the same deps and outs (md5 as DVC computes it: raw bytes for DVC 3's ``hash: md5``,
CRLF-normalised text for DVC 2's ``md5-dos2unix`` locks, ``<md5>.dir`` over the sorted
``{md5, relpath}`` listing for directories), and the same param values. Anything else is stale,
as ``dvc status`` would say. An adopted stage gets a ``certus.lock`` entry hashed the Certus way
and its outputs go to the cache; with provenance on, each is a ledger event ``dvc.adopted``
("adopted from dvc.lock, not executed"), never a signed run record or attestation.

``status`` asks :func:`adoptable` read-only; ``repro`` (and ``import-dvc``) call :func:`adopt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

from engine.errors import SpecError
from engine.pipeline.dvc_pipeline import DvcPipelineSpec, adopted_sha256, param_values
from engine.pipeline.dvc_spec import DvcStage
from engine.pipeline.dvc_yaml import load_yaml12
from engine.pipeline.lockfile import LockFile, StageLock
from engine.pipeline.plan import lock_entry, stage_key
from engine.store.hashing import Hasher

__all__ = ["adoptable", "adopt", "md5_of", "ADOPTED_NOTE", "adopted_sha256"]

ADOPTED_NOTE = "adopted from dvc.lock, not executed"
_TEXT = bytes(range(32, 127)) + b"\n\r\t\f\b"


def _is_text(block: bytes) -> bool:
    if not block:
        return True
    if b"\x00" in block:
        return False
    return len(block.translate(None, _TEXT)) / len(block) <= 0.30


def _file_md5(path: str, dos2unix: bool) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        first = f.read(512)
        text = dos2unix and _is_text(first)
        data = first
        while data:
            h.update(data.replace(b"\r\n", b"\n") if text else data)
            data = f.read(1 << 20)
    return h.hexdigest()


def md5_of(full: str, dos2unix: bool = False) -> str | None:
    """DVC's md5 of a file or directory (``<hex>.dir``), or None when it is missing."""
    if os.path.isfile(full):
        return _file_md5(full, dos2unix)
    if not os.path.isdir(full):
        return None
    listing = []
    for cur, dirs, files in os.walk(full):
        dirs.sort()
        for f in files:
            p = os.path.join(cur, f)
            rel = os.path.relpath(p, full).replace(os.sep, "/")
            listing.append({"md5": _file_md5(p, dos2unix), "relpath": rel})
    listing.sort(key=lambda e: tuple(e["relpath"].split("/")))
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode(), usedforsecurity=False).hexdigest() + ".dir"


def _lock_file(root: str, dvcfile: str, cache: dict[str, Any]) -> Mapping[str, Any]:
    rel = posixpath.join(posixpath.dirname(dvcfile), "dvc.lock")
    if rel not in cache:
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                data = load_yaml12(f.read(), rel) or {}
        except FileNotFoundError:
            data = {}
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"{rel}: cannot read: {e}") from None
        cache[rel] = data.get("stages") if isinstance(data, dict) and isinstance(data.get("stages"), dict) else {}
    return cache[rel]


def _mismatch(st: DvcStage, entry: Any, root: str, params: dict[str, dict[str, Any]]) -> str | None:
    """Why the dvc.lock entry does not describe the workspace now (None: it does)."""
    if not isinstance(entry, dict):
        return "not in dvc.lock"
    cmd = entry.get("cmd")
    if (tuple(cmd) if isinstance(cmd, list) else cmd) != st.cmd:
        return "cmd changed"
    for fld, declared in (("deps", list(st.deps)), ("outs", [o.path for o in st.outs])):
        recs = entry.get(fld) or []
        by_path = {posixpath.normpath(r.get("path", "")): r for r in recs if isinstance(r, dict)}
        want = {posixpath.normpath(p) for p in declared}
        if set(by_path) != want:
            return f"{fld} differ from dvc.lock"
        for p, rec in sorted(by_path.items()):
            md5 = rec.get("md5")
            if not isinstance(md5, str):
                return f"{fld[:-1]} {p}: no md5 in dvc.lock"
            dos2unix = rec.get("hash") != "md5"  # DVC 2 locks: md5-dos2unix
            now = md5_of(os.path.join(root, st.wdir, p), dos2unix)
            if now is None:
                return f"{fld[:-1]} missing: {p}"
            if now != md5:
                return f"{fld[:-1]} modified: {p}"
    locked = entry.get("params") or {}
    if {f: dict(v) for f, v in locked.items() if isinstance(v, dict)} != params:
        return "params differ from dvc.lock"
    return None


def adoptable(spec: DvcPipelineSpec, root: str, hasher: Hasher, lock: LockFile,
              names: list[str] | None = None) -> tuple[dict[str, StageLock], dict[str, str]]:
    """Certus lock entries for stages certus.lock lacks and dvc.lock proves; and why the others are not."""
    entries: dict[str, StageLock] = {}
    refused: dict[str, str] = {}
    locks: dict[str, Any] = {}
    files: dict[str, dict[str, Any]] = {}
    for name in names if names is not None else list(spec.stages):
        st, dst = spec.stages[name], spec.dvc_stages.get(name)
        if dst is None or lock.get(name) is not None:
            continue
        if st.always_changed:
            refused[name] = "always_changed"
            continue
        entry = _lock_file(root, dst.dvcfile, locks).get(dst.name)
        why = _mismatch(dst, entry, root, param_values(dst, root, files))
        if why is not None:
            refused[name] = why
            continue
        hashed = hasher.hash_many([*st.deps, *st.all_outs])
        deps = {p: hashed[p] for p in st.deps}
        outs = {p: hashed[p] for p in st.all_outs}
        if any(e is None for e in (*deps.values(), *outs.values())):
            refused[name] = "a path went missing while hashing"
            continue
        entries[name] = lock_entry(st, stage_key(st, deps), deps, outs)  # type: ignore[arg-type]
    return entries, refused


def adopt(ws: Any, spec: DvcPipelineSpec, hasher: Hasher, cache: Any, prov: Any | None,
          err: Any = None) -> list[str]:
    """Write what :func:`adoptable` finds into certus.lock and the cache, with a ledger event each.

    The caller holds the workspace lock. Returns the adopted stage names."""
    from engine.core.digest import Digest

    lock = LockFile.load(ws.lock_path, lenient=True)
    entries, _ = adoptable(spec, ws.root, hasher, lock)
    if not entries:
        return []
    if prov is not None:
        prov.signer("trainer")  # fail before anything is written if the event cannot be signed
    for name, entry in sorted(entries.items()):
        for p, rec in entry.outs.items():
            e = hasher.hash_many([p])[p]
            if e is None or str(e.digest) != rec["digest"]:
                raise SpecError(f"stage '{name}': output '{p}' changed while it was being adopted; run again")
            cache.add(ws.root, p, e)
        _ = Digest.parse(entry.key)
        lock.set(name, entry)
    lock.pipeline = spec.path
    lock.save()
    if prov is not None:
        for name, entry in sorted(entries.items()):
            dst = spec.dvc_stages[name]
            prov.append_event("dvc.adopted", name, {
                "note": ADOPTED_NOTE, "stage": name, "dvc_lock": posixpath.join(posixpath.dirname(dst.dvcfile),
                                                                                "dvc.lock"),
                "dvc_cmd": list(dst.cmd) if isinstance(dst.cmd, tuple) else dst.cmd, "key": entry.key,
                "outs": entry.outs, "adopted_sha256": adopted_sha256(name, entry.outs)})
    if err is not None:
        err.write(f"[certus] {len(entries)} stage(s) {ADOPTED_NOTE}: {', '.join(sorted(entries))}\n")
    return sorted(entries)
