"""Parse caches under ``.certus/tmp``: composing 1,000 config keys with Hydra, and resolving a
1,000-stage spec, cost more than everything else ``status`` does; both are pure functions of file
contents, so their results are kept keyed by a hash of those contents. A cache must never outlive
the values it was computed from, so nothing that may contain a resolver (oc.env, now, ...) is
cached, and entries are sealed (:mod:`engine.store.localseal`): an edited entry is ignored, never run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence

from engine.store.fsutil import atomic_write
from engine.store.workspace import Workspace

__all__ = ["CACHE_FORMAT", "cache_get", "cache_put", "conf_key", "may_resolve"]

CACHE_FORMAT = "2"  # bump when what a parse cache holds changes meaning (2: sealed, cmd values quoted)
_RESOLVER = re.compile(rb"\$\{(?!\s*raw\s*:)[^}]*:")


def may_resolve(data: bytes) -> bool:
    """Whether text may hold a resolver interpolation (``${oc.env:X}``, ``${now:...}``), whose value can
    change between runs with no file changing. Conservative: a ``$`` together with any backslash also
    counts, since YAML and Hydra escapes (``"$\\x7Boc.env:X}"``, a line continuation) can spell one."""
    if b"$" not in data:
        return False
    return bool(_RESOLVER.search(data)) or b"\\" in data




def conf_key(conf: str, overrides: Sequence[str]) -> tuple[str, bool]:
    import hashlib
    import sys

    from engine import __version__

    h = hashlib.sha256(f"{CACHE_FORMAT}\0{__version__}\0{sys.version}\0{json.dumps(list(overrides))}\0".encode())
    # an override with '$' may name a resolver; with '(' a grammar function (shuffle() is random)
    cacheable = not any("$" in o or "(" in o for o in overrides)
    for dirpath, dirnames, files in os.walk(conf):
        dirnames.sort()
        if any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
            cacheable = False  # Hydra follows a linked directory that this walk does not hash
        for fn in sorted(files):
            path = os.path.join(dirpath, fn)
            with open(path, "rb") as f:
                data = f.read()
            if may_resolve(data) or b"searchpath" in data:  # values or files from outside conf/
                cacheable = False
            h.update(os.path.relpath(path, conf).encode() + b"\0" + data + b"\0")
    return h.hexdigest(), cacheable


def cache_get(ws: Workspace, kind: str, key: str) -> bytes | None:
    from engine.store.localseal import unseal

    path = os.path.join(ws.dot, "tmp", kind, key + ".json")
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    data = unseal(kind, key, blob, where=os.path.relpath(path, ws.root))
    if data is None:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return data


def cache_put(ws: Workspace, kind: str, key: str, data: bytes) -> None:
    from engine.store.localseal import seal

    blob = seal(kind, key, data)
    if blob is None:
        return
    with contextlib.suppress(OSError):
        d = os.path.join(ws.dot, "tmp", kind)
        if os.path.isdir(d) and len(os.listdir(d)) > 64:  # keep the cache small
            for old in os.listdir(d):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, old))
        atomic_write(os.path.join(d, key + ".json"), blob, sync=False)
