"""Telemetry: what each request did, stored off the request path.

The request path only calls :meth:`TelemetryWriter.submit`: one tuple appended to a bounded deque (no
lock, no wake-up, no encoding); a full buffer drops the record and counts it (a slow disk never blocks a
request). One writer thread per process wakes every ``flush_s``, takes what accumulated and writes it in
batches, one transaction each (``executemany``), into a :class:`TelemetryStore`. Waking on a timer rather
than per record is what keeps the cost low: a writer woken per put paid a thread switch and a transaction
per request (22–26 % of a loaded server's throughput; see benchmarks/bench_serve.py --ab telemetry). The
store is an interface (``write`` / ``window``) so a time-series or event store can replace
:class:`SQLiteStore`, the embedded one (WAL, so readers — the monitor — never block writers, and
several server processes can append to one file).

Rows: one per request (time, status, latency, refusal kind, rows, abstentions, bundle digest) and one
per input row of a served request (time, bundle digest, prediction, confidence, abstained, and each
logged input column). Columns the serving config marks ``pii_columns`` are never given to the store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = ["TelemetryStore", "SQLiteStore", "TelemetryWriter", "Record", "Window"]


class Record(NamedTuple):
    """One request: ``inputs`` maps logged column -> values (one per row); ``preds``/``conf`` per row.
    A tuple: the cheapest thing to build on the request path."""

    ts: float
    status: int
    latency_ms: float
    refusal: str  # "" when served
    version: str  # bundle root digest
    rows: int = 0
    abstained: int = 0
    inputs: dict[str, list[Any]] | None = None
    preds: Sequence[str] = ()
    conf: Sequence[float] = ()
    abstain_flags: Sequence[bool] = ()


@dataclass
class Window:
    """What the monitor reads: column arrays of the requests and input rows in a time window."""

    requests: dict[str, Any] = field(default_factory=dict)  # ts, status, latency_ms, refusal, rows, abstained
    inputs: dict[str, Any] = field(default_factory=dict)  # ts, pred, conf, abstained, and one key per column
    first: float | None = None
    last: float | None = None


class TelemetryStore(Protocol):
    def write(self, records: Sequence[Record]) -> None: ...

    def window(self, version: str | None, since: float | None, until: float | None) -> Window: ...

    def close(self) -> None: ...


def _q(name: str) -> str:
    return '"c:' + name.replace('"', '""') + '"'


class SQLiteStore:
    """The embedded store: one SQLite file in WAL mode."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS requests (ts REAL NOT NULL, status INTEGER, latency_ms REAL, "
                        "refusal TEXT, version TEXT, rows INTEGER, abstained INTEGER)")
        self.db.execute("CREATE TABLE IF NOT EXISTS inputs (ts REAL NOT NULL, version TEXT, pred TEXT, conf REAL, "
                        "abstained INTEGER)")
        self.db.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts)")
        self.db.execute("CREATE INDEX IF NOT EXISTS inputs_ts ON inputs(ts)")
        self._cols = self._columns()

    def _columns(self) -> list[str]:
        return [r[1][2:] for r in self.db.execute("PRAGMA table_info(inputs)") if str(r[1]).startswith("c:")]

    def _ensure(self, names: Sequence[str]) -> None:
        new = [n for n in names if n not in self._cols]
        if not new:
            return
        self._cols = self._columns()  # another process may have added them
        for n in new:
            if n not in self._cols:
                try:
                    self.db.execute(f"ALTER TABLE inputs ADD COLUMN {_q(n)}")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):
                        raise
        self._cols = self._columns()

    def write(self, records: Sequence[Record]) -> None:
        keys: set[str] = set()
        for r in records:
            if r.inputs:
                keys.update(r.inputs)
        names = sorted(keys)
        self._ensure(names)
        req = [r[:7] for r in records]  # ts, status, latency_ms, refusal, version, rows, abstained
        rows: list[tuple[Any, ...]] = []
        add = rows.append
        for r in records:
            preds = r.preds
            if not preds:
                continue
            inp = r.inputs or {}
            cols = [inp.get(n) for n in names]
            flags = r.abstain_flags
            for i in range(len(preds)):
                add((r.ts, r.version, preds[i], r.conf[i], 1 if flags and flags[i] else 0,
                     *[None if c is None else c[i] for c in cols]))
        placeholders = ",".join("?" * (5 + len(names)))
        col_sql = "".join(f", {_q(n)}" for n in names)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?)", req)
            if rows:
                self.db.executemany(f"INSERT INTO inputs (ts, version, pred, conf, abstained{col_sql}) "
                                    f"VALUES ({placeholders})", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def window(self, version: str | None, since: float | None, until: float | None) -> Window:
        import numpy as np

        where, args = ["1=1"], []
        if version:
            where.append("version = ?")
            args.append(version)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts <= ?")
            args.append(until)
        cond = " AND ".join(where)
        w = Window()
        self._cols = self._columns()
        # numbers in one query each, converted by numpy in C; text columns on their own
        num = ("ts", "status", "latency_ms", "rows", "abstained")
        w.requests.update(self._numeric(f"SELECT {', '.join(num)} FROM requests WHERE {cond}", args, num))
        w.requests["refusal"] = np.asarray([r[0] for r in self.db.execute(
            f"SELECT refusal FROM requests WHERE {cond}", args)], dtype=object)
        names = ("ts", "conf", "abstained", *self._cols)
        sql = ", ".join(("ts", "conf", "abstained", *(_q(n) for n in self._cols)))
        try:
            w.inputs.update(self._numeric(f"SELECT {sql} FROM inputs WHERE {cond}", args, names))
        except (TypeError, ValueError):  # a text input column: column by column
            for n, q in zip(names, ("ts", "conf", "abstained", *(_q(n) for n in self._cols))):
                vals = [r[0] for r in self.db.execute(f"SELECT {q} FROM inputs WHERE {cond}", args)]
                try:
                    w.inputs[n] = np.asarray(vals, dtype=float)
                except (TypeError, ValueError):
                    w.inputs[n] = np.asarray(vals, dtype=object)
        w.inputs["pred"] = np.asarray([r[0] for r in self.db.execute(f"SELECT pred FROM inputs WHERE {cond}", args)],
                                      dtype=object)
        if len(w.requests["ts"]):
            w.first, w.last = float(w.requests["ts"].min()), float(w.requests["ts"].max())
        return w

    def _numeric(self, sql: str, args: list[Any], names: Sequence[str]) -> dict[str, Any]:
        import numpy as np

        rows = self.db.execute(sql, args).fetchall()
        a = np.array(rows, dtype=float).reshape(len(rows), len(names))  # None -> nan
        return {n: a[:, i].copy() for i, n in enumerate(names)}

    def close(self) -> None:
        self.db.close()


class TelemetryWriter:
    """A bounded buffer and one writer thread in front of a store; ``exclude`` names columns (pii) that are
    never given to the store."""

    def __init__(self, store: TelemetryStore, *, max_queue: int = 10000, batch: int = 2048,
                 flush_s: float = 0.2, exclude: Sequence[str] = ()) -> None:
        self.store, self.batch, self.flush_s, self.max_queue = store, batch, flush_s, max_queue
        self.exclude = frozenset(exclude)
        self.buf: deque[Record] = deque()
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self.on_drop: Any = None  # e.g. a metrics counter's inc
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="certus-telemetry", daemon=True)
        self.thread.start()

    def submit(self, record: Record) -> None:
        """Never blocks: a full buffer drops the record and counts it."""
        if len(self.buf) >= self.max_queue:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self.buf.append(record)  # deque.append is atomic: no lock on the request path

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        buf = self.buf
        while buf:
            n = min(len(buf), self.batch)
            items = [buf.popleft() for _ in range(n)]
            if self.exclude:
                items = [r._replace(inputs={k: v for k, v in r.inputs.items() if k not in self.exclude})
                         if r.inputs else r for r in items]
            try:
                self.store.write(items)
                self.written += n
            except Exception:  # noqa: BLE001 - telemetry must never take the server down; counted
                self.errors += n

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered, then stop the thread and close the store."""
        self._stop.set()
        self.thread.join(timeout)
        self.store.close()
