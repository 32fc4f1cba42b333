"""The shared ledger log: a dumb, durable, append-only list of entries with compare-and-swap.

A team's machines sequence their ledger entries into one shared log so that every clone sees one
order. The store is trusted for availability only: it never verifies signatures or Merkle roots
(the ledger does, against the checkpoint stored with each append); it must only never lose,
duplicate, reorder or half-write entries. Two backends sit behind :class:`SharedLog`: a dedicated
git ref on the workspace's own git remote (``shared_log_git``) and a PostgreSQL database
(``shared_log_pg``, psycopg imported only when one is opened).

Remotes are configured in ``<workspace>/.certus/remotes.json`` (canonical JSON, committed so a
team shares them). A URL never holds a password there: libpq reads ``PGPASSWORD`` or ``~/.pgpass``.
The value types live in ``shared_log_types`` (so the backends need not import this factory) and are
re-exported here: import everything from this module.
"""

from __future__ import annotations

import json
import os

from engine.adapters.shared_log_types import REMOTE_NAME_RE, Remote, SharedLog, Snapshot, check_entries, remote_problem
from engine.core.canonical import canonical_bytes
from engine.errors import SharedLogError, Unreachable
from engine.store.fsutil import atomic_write

__all__ = ["Remote", "Snapshot", "SharedLog", "SharedLogError", "Unreachable", "open_shared_log",
           "load_remotes", "save_remote", "remove_remote", "remotes_path", "remote_problem", "check_entries",
           "REMOTE_NAME_RE"]


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
