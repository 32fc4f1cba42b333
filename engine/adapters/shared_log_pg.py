"""The shared log in PostgreSQL (psycopg 3): a transaction assigns the index.

Two tables, created on first use (idempotently: concurrent creators serialise on an advisory lock):
``certus_ledger_head(log, size, checkpoint)`` and ``certus_ledger_entries(log, idx, data)``. ``log``
comes from a ``log=`` query parameter of the URL (stripped before connecting; default ``certus``), so
one database holds several logs. An append locks its head row (``FOR UPDATE``), compares the size,
inserts the entries at ``size..`` and moves the head in one transaction: a writer killed mid-way
leaves nothing behind, and the primary key refuses a duplicate index whatever happens. The database
is trusted for availability only; the ledger verifies the checkpoint stored with each append.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.adapters.shared_log_types import Remote, Snapshot, check_entries
from engine.errors import SharedLogError, Unreachable

__all__ = ["PgSharedLog", "split_log", "DEFAULT_LOG"]

DEFAULT_LOG = "certus"
IDLE_TIMEOUT_S = 30.0  # see _connect
_LOG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_SCHEMA_LOCK = 0x63657274  # "cert": serialises concurrent CREATE TABLE IF NOT EXISTS
_SCHEMA = """
CREATE TABLE IF NOT EXISTS certus_ledger_head (
  log text PRIMARY KEY, size bigint NOT NULL CHECK (size >= 0), checkpoint bytea);
CREATE TABLE IF NOT EXISTS certus_ledger_entries (
  log text NOT NULL, idx bigint NOT NULL CHECK (idx >= 0), data bytea NOT NULL, PRIMARY KEY (log, idx));
"""


def split_log(remote: Remote) -> tuple[str, str]:
    """(URL to connect with, log name): the ``log=`` parameter is Certus's, not libpq's."""
    parts = urlsplit(remote.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    logs = [v for k, v in query if k == "log"]
    log = logs[-1] if logs else DEFAULT_LOG
    if not _LOG_RE.fullmatch(log):
        raise SharedLogError(f"remote '{remote.name}': log={log!r} in its URL is not 1-128 letters, digits, "
                             f"'_', '.', ':' or '-'")
    rest = urlencode([(k, v) for k, v in query if k != "log"])
    return urlunsplit(parts._replace(query=rest)), log


def _reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class PgSharedLog:
    """A :class:`~engine.adapters.shared_log.SharedLog` in a PostgreSQL database."""

    def __init__(self, remote: Remote, *, connect_timeout: int = 10, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.remote = remote
        self.dsn, self.log = split_log(remote)
        self.connect_timeout = connect_timeout
        self.idle_timeout_s = idle_timeout_s
        self._conn: Any = None

    def _connect(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            import psycopg
        except ImportError as e:
            raise SharedLogError(f"remote '{self.remote.name}': a PostgreSQL remote needs psycopg: "
                                 f"pip install 'certus[postgres]'") from e
        kwargs: dict[str, Any] = {"application_name": "certus"}
        if "connect_timeout" not in self.dsn:
            kwargs["connect_timeout"] = self.connect_timeout
        try:
            conn = psycopg.connect(self.dsn, **kwargs)
        except psycopg.Error as e:
            raise Unreachable(f"remote '{self.remote.name}': cannot connect to PostgreSQL ({_reason(e)}); check "
                              f"the URL, the server and PGPASSWORD / ~/.pgpass, then sync again") from e
        try:
            # a client that vanishes inside an append without closing its connection (a frozen or
            # unplugged machine) would hold the head row's lock until TCP gives up (hours): the server
            # ends such a session after this long, rolling its append back
            with conn.transaction():
                conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                             (f"{int(self.idle_timeout_s * 1000)}",))
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(stmt)
        except psycopg.Error as e:
            conn.close()
            raise self._error(e, "create its tables") from e
        self._conn = conn
        return conn

    def _error(self, e: BaseException, doing: str) -> SharedLogError:
        import psycopg

        if isinstance(e, psycopg.OperationalError):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return Unreachable(f"remote '{self.remote.name}': lost the PostgreSQL connection while trying to "
                               f"{doing} ({_reason(e)}); sync again (an append may or may not have landed: "
                               f"the next read shows it)")
        return SharedLogError(f"remote '{self.remote.name}': PostgreSQL refused to {doing} ({_reason(e)}); "
                              f"check the role's privileges on certus_ledger_head / certus_ledger_entries")

    def read(self, start: int = 0) -> Snapshot:
        conn = self._connect()  # first: it names a missing psycopg in one line
        import psycopg

        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # head and entries from one snapshot
            with conn.transaction():
                row = conn.execute("SELECT size, checkpoint FROM certus_ledger_head WHERE log = %s",
                                   (self.log,)).fetchone()
                size, checkpoint = (int(row[0]), row[1]) if row else (0, None)
                start = max(0, min(start, size))
                rows = conn.execute("SELECT idx, data FROM certus_ledger_entries WHERE log = %s AND idx >= %s "
                                    "AND idx < %s ORDER BY idx", (self.log, start, size)).fetchall()
        except psycopg.Error as e:
            raise self._error(e, "read the log") from e
        finally:
            if self._conn is not None and not self._conn.closed:
                self._conn.isolation_level = None
        if [int(i) for i, _ in rows] != list(range(start, size)):
            raise SharedLogError(f"remote '{self.remote.name}': log '{self.log}' is malformed (entries "
                                 f"{start}..{size - 1} are not all there); it was not written by Certus: restore "
                                 f"the database from a backup")
        entries = tuple(bytes(d) for _, d in rows)
        return Snapshot(size, start, entries, None if checkpoint is None else bytes(checkpoint))

    def append(self, expected_size: int, entries: Sequence[bytes], checkpoint: bytes) -> bool:
        check_entries(self.remote, entries, checkpoint)
        if not entries:
            raise SharedLogError(f"remote '{self.remote.name}': an append needs at least one entry")
        conn = self._connect()  # first: it names a missing psycopg in one line
        import psycopg

        try:
            with conn.transaction():
                conn.execute("INSERT INTO certus_ledger_head (log, size) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                             (self.log,))
                size = int(conn.execute("SELECT size FROM certus_ledger_head WHERE log = %s FOR UPDATE",
                                        (self.log,)).fetchone()[0])
                if size != expected_size:
                    return False
                with conn.cursor() as cur:
                    with cur.copy("COPY certus_ledger_entries (log, idx, data) FROM STDIN") as copy:
                        for i, e in enumerate(entries):
                            copy.write_row((self.log, size + i, e))
                conn.execute("UPDATE certus_ledger_head SET size = %s, checkpoint = %s WHERE log = %s",
                             (size + len(entries), checkpoint, self.log))
        except psycopg.Error as e:
            raise self._error(e, "append") from e
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
