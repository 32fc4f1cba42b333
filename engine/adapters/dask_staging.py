"""``staged`` mode of the Dask executor: bytes move through a content-addressed store, never trusted.

The store is a Certus object cache directory (``<hex[:2]>/<hex[2:]>``, e.g. an exported
``.certus/cache``) that the coordinator and every worker reach. Before a stage is submitted
the coordinator puts each of its deps there (hashed while copied). A worker fetches them by
digest (hashed again on the way out), runs the command in a scratch directory, and uploads
its outputs under ``incoming/<run>/<task>/``, never into the store itself. Here the
coordinator checks that the worker returned only declared outputs and copies each one into
the workspace while hashing it: an object that does not hash to the digest the worker
claimed is refused, named, and nothing of the stage is kept. Only verified outputs are then
added to the store for downstream stages (and the workspace's own cache, as after any run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from typing import Any

from engine.core.digest import Digest
from engine.errors import EngineError, ExecutorError, HashMismatchError
from engine.run.executor import StageJob
from engine.store.cache import ObjectCache, remove_path
from engine.store.hashing import Entry, Hasher

__all__ = ["Staging"]


class Staging:
    """The coordinator's side of the store: export deps, verify and ingest uploads."""

    def __init__(self, store: str, workspace: str, run_id: str) -> None:
        self.root = os.path.abspath(os.path.join(workspace, os.path.expanduser(store)))
        self.workspace = workspace
        self.run_id = run_id
        self.store = ObjectCache(self.root)
        self.incoming = os.path.join(self.root, "incoming")
        self._inbox_links: set[str] = set()  # link types that fail from the inbox: learned once, not per stage
        self._lock = threading.Lock()  # ObjectCache names its temp files by pid: one writer thread at a time
        try:
            os.makedirs(self.incoming, exist_ok=True)
        except OSError as e:
            raise ExecutorError(f"certus.executor.store '{store}': cannot use {self.root}: {e.strerror}") from None

    def inbox(self, key: str) -> str:
        return os.path.join(self.incoming, self.run_id, key)

    def prepare(self, job: StageJob, key: str) -> dict[str, Any]:
        """Put the stage's deps in the store; what the runner needs to fetch them."""
        with self._lock:
            for rel, entry in job.deps:
                if not self.store.complete(entry.digest, entry.kind):
                    self.store.add(self.workspace, rel, entry)  # refuses bytes that changed since they were hashed
        params = job.env.get("CERTUS_PARAMS", "")
        data = b""
        if params:
            with open(params, "rb") as f:
                data = f.read()
        return {"store": self.root, "inbox": self.inbox(key), "params": data}

    def ingest(self, job: StageJob, key: str, outs: dict[str, Any], claim: dict[str, Any]) -> str:
        """Verify and place a worker's outputs in the workspace; '' or why they were refused."""
        declared = {os.path.relpath(p, self.workspace) for p, _ in job.outs}
        worker = claim.get("worker") or claim.get("host") or "?"
        extra = sorted(set(outs) - declared)
        if extra:
            return f"worker {worker} returned outputs the stage does not declare: {', '.join(extra[:5])}; refused"
        box = ObjectCache(os.path.abspath(self.inbox(key)), failed_links=self._inbox_links)
        placed: list[str] = []
        try:
            for rel, rec in sorted(outs.items()):
                try:
                    digest = Digest.parse(str(rec.get("digest")))
                    kind = rec.get("kind", "file")
                    if kind not in ("file", "dir"):
                        raise ValueError(f"kind {kind!r}")
                except (ValueError, AttributeError) as e:
                    raise _Refused(f"worker {worker} sent a malformed manifest entry for '{rel}' ({e}); "
                                   "refused") from None
                try:
                    box.checkout(self.workspace, rel, digest, kind)  # every byte hashed while copied in
                except EngineError as e:
                    raise _Refused(f"the upload of output '{rel}' by worker {worker} does not match the digest it "
                                   f"claimed ({digest}): {e}; refused, nothing of this stage was kept") from None
                placed.append(rel)
            # a directory's entry needs its file list; a file's is its verified digest, and the store
            # re-hashes every byte it copies, so a file changed since it was placed is caught there
            dirs = [rel for rel in placed if outs[rel].get("kind") == "dir"]
            hashed = Hasher(self.workspace).hash_many(dirs) if dirs else {}
            with self._lock:  # downstream stages fetch them from the store
                for rel in placed:
                    digest = Digest.parse(str(outs[rel]["digest"]))
                    entry = hashed.get(rel) if rel in dirs else Entry(
                        digest, os.path.getsize(os.path.join(self.workspace, rel)))
                    if entry is None or entry.digest != digest:
                        raise _Refused(f"output '{rel}' changed after it was verified; refused")
                    try:
                        self.store.add(self.workspace, rel, entry)
                    except HashMismatchError:
                        raise _Refused(f"output '{rel}' changed after it was verified; refused") from None
        except _Refused as e:
            for rel in placed:
                remove_path(os.path.join(self.workspace, rel))
            return str(e)
        return ""

    def discard(self, key: str) -> None:
        """The upload area of one task goes once its outputs are ingested or refused."""
        shutil.rmtree(self.inbox(key), ignore_errors=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(self.incoming, self.run_id))  # only when empty: a quarantine is kept


class _Refused(Exception):
    pass
