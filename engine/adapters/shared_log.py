"""The shared ledger log: a dumb, durable, append-only list of entries with compare-and-swap.

A team's machines sequence their ledger entries into one shared log so that every clone sees one
order. The store is trusted for availability only: it never verifies signatures or Merkle roots
(the ledger does, against the checkpoint stored with each append); it must only never lose,
duplicate, reorder or half-write entries. Two backends sit behind :class:`SharedLog`: a dedicated
git ref on the workspace's own git remote (``shared_log_git``) and a PostgreSQL database
(``shared_log_pg``, psycopg imported only when one is opened).

Remotes are configured in ``<workspace>/.certus/remotes.json`` (canonical JSON, committed so a
team shares them). A URL never holds a password there: libpq reads ``PGPASSWORD`` or ``~/.pgpass``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from engine.core.canonical import canonical_bytes
from engine.errors import SharedLogError, Unreachable
from engine.store.fsutil import atomic_write

__all__ = ["Remote", "Snapshot", "SharedLog", "SharedLogError", "Unreachable", "open_shared_log",
           "load_remotes", "save_remote", "remove_remote", "remotes_path", "remote_problem", "check_entries",
           "REMOTE_NAME_RE"]

REMOTE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PG_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class Remote:
    """One configured shared log.

    ``url`` is ``"git"`` (the workspace repo's git remote of the same name), ``"git:OTHER"`` (its
    git remote OTHER) or a libpq URL ``postgresql://...`` / ``postgres://...`` (an optional
    ``log=NAME`` query parameter picks one of several logs in one database; default ``certus``).
    """

    name: str
    url: str

    @property
    def kind(self) -> str:
        return "postgres" if self.url.startswith(_PG_SCHEMES) else "git"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a read saw: ``entries`` are ``log[start:size]``; ``checkpoint`` is the note stored with
    the last append (None when the log is empty)."""

    size: int
    start: int
    entries: tuple[bytes, ...]
    checkpoint: bytes | None


class SharedLog(Protocol):
    remote: Remote

    def read(self, start: int = 0) -> Snapshot:
        """Entries from index ``start`` (clamped to the size) and the latest checkpoint."""
        ...

    def append(self, expected_size: int, entries: Sequence[bytes], checkpoint: bytes) -> bool:
        """Atomically append iff the log's size is still ``expected_size``: True if appended, False if
        another writer got there first (the caller re-reads, re-sequences and retries). Raises
        SharedLogError (Unreachable when it cannot connect)."""
        ...


def remote_problem(name: object, url: object) -> str | None:
    """Why ``(name, url)`` is not a usable remote, or None."""
    if not isinstance(name, str) or not REMOTE_NAME_RE.fullmatch(name):
        return (f"remote name {str(name)[:80]!r} is not 1-64 letters, digits, '_', '.' or '-' "
                f"(starting with a letter or digit)")
    if not isinstance(url, str) or not url:
        return f"remote '{name}': url {str(url)[:80]!r} is not a non-empty string"
    if url == "git":
        return None
    if url.startswith("git:"):
        if not REMOTE_NAME_RE.fullmatch(url[4:]):
            return f"remote '{name}': url '{url}' does not name a git remote (git:NAME)"
        return None
    if url.startswith(_PG_SCHEMES):
        try:
            password = urlsplit(url).password
        except ValueError as e:
            return f"remote '{name}': url is not a valid PostgreSQL URL ({e})"
        if password:
            return (f"remote '{name}': the PostgreSQL URL holds a password, and .certus/remotes.json is "
                    f"committed: remove it from the URL and set PGPASSWORD or ~/.pgpass instead")
        return None
    return (f"remote '{name}': url '{url[:80]}' is not 'git', 'git:REMOTE', 'postgresql://...' "
            f"or 'postgres://...'")


def check_entries(remote: Remote, entries: Sequence[bytes], checkpoint: bytes) -> None:
    """Entries are non-empty bytes without a newline (one per line in storage); the checkpoint is bytes."""
    for i, e in enumerate(entries):
        if not isinstance(e, bytes) or not e or b"\n" in e:
            raise SharedLogError(f"remote '{remote.name}': entry {i} of the append is not non-empty bytes "
                                 f"without a newline; nothing was appended")
    if not isinstance(checkpoint, bytes) or not checkpoint:
        raise SharedLogError(f"remote '{remote.name}': the checkpoint is not non-empty bytes; nothing was appended")


def open_shared_log(remote: Remote, workspace: str) -> SharedLog:
    """The backend for ``remote.url``; psycopg is imported only for a PostgreSQL remote."""
    problem = remote_problem(remote.name, remote.url)
    if problem:
        raise SharedLogError(problem)
    if remote.kind == "postgres":
        from engine.adapters.shared_log_pg import PgSharedLog

        return PgSharedLog(remote)
    from engine.adapters.shared_log_git import GitSharedLog

    return GitSharedLog(remote, workspace)


# --- .certus/remotes.json ------------------------------------------------------------------------


def remotes_path(workspace: str) -> str:
    return os.path.join(workspace, ".certus", "remotes.json")


def load_remotes(workspace: str) -> dict[str, Remote]:
    """The configured remotes by name ({} when the file is absent)."""
    path = remotes_path(workspace)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SharedLogError(f"{path}: cannot be read ({e.strerror}); check its permissions") from e
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SharedLogError(f"{path}: not valid JSON ({e}); fix it or remove it and re-add the remotes "
                             f"with `certus ledger remote add`") from e
    if not isinstance(obj, dict) or set(obj) != {"remotes"} or not isinstance(obj["remotes"], dict):
        raise SharedLogError(f"{path}: expected {{\"remotes\": {{NAME: {{\"url\": URL}}}}}}; fix it or remove it")
    out: dict[str, Remote] = {}
    for name, body in obj["remotes"].items():
        if not isinstance(body, dict) or set(body) != {"url"}:
            raise SharedLogError(f"{path}: remote '{name}': expected {{\"url\": URL}}; fix it or remove it")
        problem = remote_problem(name, body["url"])
        if problem:
            raise SharedLogError(f"{path}: {problem}")
        out[name] = Remote(name, body["url"])
    return out


def _write(workspace: str, remotes: dict[str, Remote]) -> None:
    body = {"remotes": {r.name: {"url": r.url} for r in remotes.values()}}
    atomic_write(remotes_path(workspace), canonical_bytes(body) + b"\n")


def save_remote(workspace: str, remote: Remote) -> None:
    """Add or replace ``remote`` (validated) in ``.certus/remotes.json``."""
    problem = remote_problem(remote.name, remote.url)
    if problem:
        raise SharedLogError(problem)
    remotes = load_remotes(workspace)
    remotes[remote.name] = remote
    _write(workspace, remotes)


def remove_remote(workspace: str, name: str) -> None:
    """Remove the remote ``name``; an unknown name is an error naming the configured ones."""
    remotes = load_remotes(workspace)
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise SharedLogError(f"no ledger remote '{name}' in {remotes_path(workspace)} (configured: {known})")
    del remotes[name]
    _write(workspace, remotes)
