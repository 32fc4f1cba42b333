"""The shared log's value types and protocol, apart from the factory so the backends can import them
without importing the module that imports them (no cycle). Import them from
:mod:`engine.adapters.shared_log`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from engine.errors import SharedLogError

__all__ = ["Remote", "Snapshot", "SharedLog", "remote_problem", "check_entries", "REMOTE_NAME_RE"]

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
