"""The stat cache: an unchanged file is never re-read.

A row maps a workspace path to the digest its content had when it had this inode, size
and mtime_ns. A hit needs all four to match, so any write (which moves mtime) or a replace
(new inode) forces a re-hash. A file whose mtime is within a clock tick of the moment it
was hashed is not recorded (git's "racily clean" problem): a same-size write in the same
tick would otherwise go unseen.

SQLite in WAL mode, so ``certus status`` can read it while a ``repro`` writes it. Rows
are loaded once per process and written back in one transaction. It is only a cache: a
damaged database (garbled bytes, a foreign schema) is deleted and rebuilt, with one note on
stderr, instead of breaking every command until someone deletes it by hand.

A second table records each cache object's (inode, size, mtime_ns, ctime_ns) when it was
stored and hashed; the object cache re-hashes an object whose stat moved since. It is loaded
only when the object cache asks, so ``status`` never reads it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from typing import Protocol

__all__ = ["StatCache", "NoopState", "StateStore", "StatKey", "ObjectKey"]

StatKey = tuple[int, int, int]  # inode, size, mtime_ns
ObjectKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
_RACY_NS = 10_000_000
_TRANSIENT = ("locked", "busy", "readonly", "read-only", "unable to open", "disk i/o", "no such table")


def _damaged(e: sqlite3.DatabaseError) -> bool:
    """Whether an error means the file itself is bad (not: busy, read-only, or simply empty)."""
    return not any(t in str(e).lower() for t in _TRANSIENT)


class StateStore(Protocol):
    def get(self, path: str, key: StatKey) -> str | None: ...
    def put(self, path: str, key: StatKey, hexdigest: str) -> None: ...
    def object_key(self, hexdigest: str) -> ObjectKey | None: ...
    def put_object(self, hexdigest: str, key: ObjectKey) -> None: ...
    def flush(self) -> None: ...


class NoopState:
    """No stat cache: every file is hashed (used by ``verify --artifacts``)."""

    def get(self, path: str, key: StatKey) -> str | None:
        return None

    def put(self, path: str, key: StatKey, hexdigest: str) -> None:
        return None

    def object_key(self, hexdigest: str) -> ObjectKey | None:
        return None

    def put_object(self, hexdigest: str, key: ObjectKey) -> None:
        return None

    def flush(self) -> None:
        return None


class StatCache:
    """SQLite-backed :class:`StateStore` under ``.certus/state.db``."""

    def __init__(self, db_path: str, *, readonly: bool = False) -> None:
        self.db_path = db_path
        self.readonly = readonly
        self._rows: dict[str, tuple[int, int, int, str]] | None = None
        self._pending: dict[str, tuple[int, int, int, str]] = {}
        self._objects: dict[str, ObjectKey] | None = None
        self._pending_objects: dict[str, ObjectKey] = {}

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def _load(self) -> dict[str, tuple[int, int, int, str]]:
        if self._rows is None:
            self._rows = {}
            if os.path.exists(self.db_path):
                try:
                    con = self._connect()
                    try:
                        for path, ino, size, mtime, hexd in con.execute(
                            "SELECT path, ino, size, mtime_ns, digest FROM files"
                        ):
                            self._rows[path] = (ino, size, mtime, hexd)
                    finally:
                        con.close()
                except sqlite3.DatabaseError as e:
                    self._rows = {}  # a damaged cache is only a slower run
                    if _damaged(e):
                        self._discard(e)
        return self._rows

    def _discard(self, e: sqlite3.DatabaseError) -> None:
        """Delete a damaged database (and its WAL) so the next write recreates it; say so once."""
        where = os.path.join(os.path.basename(os.path.dirname(self.db_path)), os.path.basename(self.db_path))
        if self.readonly:
            sys.stderr.write(f"certus: note: {where}: the stat cache is damaged ({e}); ignoring it\n")
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(self.db_path + suffix)
        sys.stderr.write(f"certus: note: {where}: the stat cache was damaged ({e}); deleted it, it is "
                         "rebuilt as files are hashed\n")

    def get(self, path: str, key: StatKey) -> str | None:
        row = self._load().get(path)
        if row is not None and row[:3] == key:
            return row[3]
        return None

    def put(self, path: str, key: StatKey, hexdigest: str) -> None:
        if time.time_ns() - key[2] < _RACY_NS:
            return
        row = (key[0], key[1], key[2], hexdigest)
        rows = self._load()
        if rows.get(path) != row:
            rows[path] = row
            self._pending[path] = row

    def object_key(self, hexdigest: str) -> ObjectKey | None:
        """The stat a cache object had when it was stored (and hashed), if recorded."""
        if self._objects is None:
            self._objects = {}
            if os.path.exists(self.db_path):
                try:
                    con = self._connect()
                    try:
                        for hexd, ino, size, mtime, ctime in con.execute(
                            "SELECT digest, ino, size, mtime_ns, ctime_ns FROM objects"
                        ):
                            self._objects[hexd] = (ino, size, mtime, ctime)
                    finally:
                        con.close()
                except sqlite3.DatabaseError:
                    pass  # no table yet, or a damaged cache: objects get re-hashed
        return self._objects.get(hexdigest)

    def put_object(self, hexdigest: str, key: ObjectKey) -> None:
        if self.object_key(hexdigest) != key:
            assert self._objects is not None
            self._objects[hexdigest] = key
            self._pending_objects[hexdigest] = key

    def flush(self) -> None:
        if (not self._pending and not self._pending_objects) or self.readonly:
            return
        for attempt in (1, 2):
            try:
                self._write()
            except sqlite3.DatabaseError as e:
                if attempt == 1 and _damaged(e):
                    self._discard(e)
                    continue
                return  # busy or read-only file system: the cache is an optimisation
            self._pending.clear()
            self._pending_objects.clear()
            return

    def _write(self) -> None:
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, ino INTEGER, size INTEGER,"
                " mtime_ns INTEGER, digest TEXT)"
            )
            con.execute(
                "CREATE TABLE IF NOT EXISTS objects (digest TEXT PRIMARY KEY, ino INTEGER, size INTEGER,"
                " mtime_ns INTEGER, ctime_ns INTEGER)"
            )
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                [(p, *r) for p, r in self._pending.items()],
            )
            con.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                [(h, *k) for h, k in self._pending_objects.items()],
            )
            con.execute("COMMIT")
        finally:
            con.close()
