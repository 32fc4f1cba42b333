"""What this machine remembers about a workspace's ledger, and holding signals across a commit.

The remembered checkpoint (``$CERTUS_HOME/witness/``, outside the workspace) is the rollback
protection: every append and every clean ``verify`` here advances it, and an append refuses a
ledger that does not extend it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.store.fsutil import atomic_write
from engine.store.localseal import certus_home
from engine.store.workspace import Workspace

__all__ = ["witness_path", "remembered_checkpoint", "remember_checkpoint", "held_signals"]


def witness_path(ws: Workspace) -> Path:
    """Where this verifier remembers the last checkpoint it saw for this workspace's ledger."""
    tag = hashlib.sha256(os.path.realpath(ws.root).encode()).hexdigest()[:24]
    return Path(certus_home()) / "witness" / f"{tag}.json"


def remembered_checkpoint(ws: Workspace) -> Any:
    """The checkpoint this machine last saw (verified or appended) for the workspace, or None."""
    from engine.provenance.note import Checkpoint

    try:
        w = json.loads(witness_path(ws).read_text())
        return Checkpoint(origin=w["origin"], size=int(w["size"]), root_hash=bytes.fromhex(w["root"]))
    except (OSError, ValueError, KeyError, TypeError, EngineError):
        return None


def remember_checkpoint(ws: Workspace, cp: Any) -> None:
    """Advance the remembered checkpoint: every append and every clean verify on this machine does."""
    path = witness_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seen = {"origin": cp.origin, "size": cp.size, "root": cp.root_hash.hex(), "workspace": os.path.realpath(ws.root)}
    atomic_write(str(path), json.dumps(seen).encode())


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT and SIGTERM to the end of the block, so a commit and its bookkeeping stay together.

    Blocking the signal in this thread is not enough: the kernel hands it to any thread that does
    not block it (a stage's), and CPython then runs the handler here anyway. So the handlers
    themselves are swapped for one that only notes the signal, and it is re-raised afterwards.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)
