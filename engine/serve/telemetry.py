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
logged input column), stored in columnar chunks (:class:`SQLiteStore`). Columns the serving config marks
``pii_columns`` are never given to the store.
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


REQUEST_NUMERIC = ("ts", "status", "latency_ms", "rows", "abstained")
INPUT_NUMERIC = ("ts", "conf", "abstained")


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


class SQLiteStore:
    """The embedded store: one SQLite file in WAL mode, written in columnar chunks.

    Each writer batch becomes one row per (table, version): the batch's time range, its row count, the
    numeric columns as one little-endian float64 block (column after column; a missing value is NaN) and
    the other columns as a JSON object of lists. A monitor pass over a million rows then reads a few
    hundred blobs into numpy instead of materialising every value as a Python object (a row per request
    cost seconds per million rows, in SQLite's stepping and Python's objects), and a batch is one
    insert, not two per request. JSON and raw floats only: nothing in the file is ever unpickled.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA page_size=65536")  # a new file only: chunks are large blobs, short overflow chains
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS chunks (tbl TEXT NOT NULL, version TEXT NOT NULL, "
                        "ts_min REAL NOT NULL, ts_max REAL NOT NULL, n INTEGER NOT NULL, numeric TEXT NOT NULL, "
                        "data BLOB NOT NULL, text TEXT NOT NULL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS chunks_ts ON chunks(tbl, ts_max)")

    def write(self, records: Sequence[Record]) -> None:
        by_version: dict[str, list[Record]] = {}
        for r in records:
            by_version.setdefault(r.version, []).append(r)
        out = []
        for version, recs in by_version.items():
            req = {name: [r[i] for r in recs] for i, name in enumerate(("ts", "status", "latency_ms", "refusal",
                                                                          "version", "rows", "abstained"))}
            del req["version"]
            out.append(_chunk("requests", version, req, REQUEST_NUMERIC))
            rows = _input_columns(recs)
            if rows["ts"]:
                out.append(_chunk("inputs", version, rows, INPUT_NUMERIC))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?)", out)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def count(self, table: str = "requests") -> int:
        """Rows of ``table`` (requests or inputs) stored so far."""
        return int(self.db.execute("SELECT coalesce(sum(n), 0) FROM chunks WHERE tbl = ?", (table,)).fetchone()[0])

    def window(self, version: str | None, since: float | None, until: float | None) -> Window:
        w = Window()
        w.requests = self._read("requests", version, since, until)
        w.inputs = self._read("inputs", version, since, until)
        w.requests.setdefault("refusal", _empty_text())
        w.inputs.setdefault("pred", _empty_text())
        if len(w.requests["ts"]):
            w.first, w.last = float(w.requests["ts"].min()), float(w.requests["ts"].max())
        return w

    def _read(self, table: str, version: str | None, since: float | None, until: float | None) -> dict[str, Any]:
        import json

        import numpy as np

        where, args = ["tbl = ?"], [table]
        if version:
            where.append("version = ?")
            args.append(version)
        if since is not None:
            where.append("ts_max >= ?")
            args.append(since)
        if until is not None:
            where.append("ts_min <= ?")
            args.append(until)
        parts: list[tuple[int, dict[str, Any]]] = []
        for n, numeric, data, text in self.db.execute(
                f"SELECT n, numeric, data, text FROM chunks WHERE {' AND '.join(where)} ORDER BY rowid", args):
            names = json.loads(numeric)
            block = np.frombuffer(data, dtype="<f8").reshape(len(names), n)
            cols: dict[str, Any] = dict(zip(names, block))
            for k, values in json.loads(text).items():
                cols[k] = (values, cols[k])  # distinct values, codes
            parts.append((n, cols))
        numeric_names = REQUEST_NUMERIC if table == "requests" else INPUT_NUMERIC
        names = list(dict.fromkeys([*numeric_names, *(k for _, c in parts for k in c)]))
        out: dict[str, Any] = {}
        for name in names:
            out[name] = _concat([(n, c.get(name)) for n, c in parts])
        if since is not None or until is not None:
            ts = out["ts"]
            keep = np.ones(len(ts), dtype=bool)
            if since is not None:
                keep &= ts >= since
            if until is not None:
                keep &= ts <= until
            if not keep.all():
                out = {k: v[keep] for k, v in out.items()}
        return out

    def close(self) -> None:
        self.db.close()


def _empty_text() -> Any:
    import numpy as np

    return np.asarray([], dtype=object)


def _input_columns(recs: Sequence[Record]) -> dict[str, list[Any]]:
    """One entry per input row of the served records: time, confidence, abstained, prediction, inputs."""
    names = sorted({k for r in recs if r.inputs for k in r.inputs})
    cols: dict[str, list[Any]] = {k: [] for k in ("ts", "conf", "abstained", "pred", *names)}
    ts, conf, ab, pred = cols["ts"], cols["conf"], cols["abstained"], cols["pred"]
    values = [cols[k] for k in names]
    for r in recs:
        k = len(r.preds)
        if not k:
            continue
        ts.extend([r.ts] * k)
        conf.extend(r.conf)
        ab.extend([1 if f else 0 for f in r.abstain_flags] if r.abstain_flags else [0] * k)
        pred.extend(r.preds)
        inp = r.inputs or {}
        for name, dest in zip(names, values):
            v = inp.get(name)
            dest.extend(v if v is not None else [None] * k)
    return cols


def _chunk(table: str, version: str, cols: dict[str, list[Any]], numeric: Sequence[str]) -> tuple[Any, ...]:
    import json

    import numpy as np

    num = [k for k in cols if k in numeric or all(_is_number(v) for v in cols[k])]
    text: dict[str, list[Any]] = {}  # other columns dictionary-encoded: distinct values here, codes in the block
    data = [cols[k] for k in num]
    for k, values in cols.items():
        if k not in num:
            index: dict[Any, int] = {}
            data.append([index.setdefault(v, len(index)) for v in values])
            text[k] = list(index)
    block = np.array(data, dtype="<f8")  # None -> NaN
    ts = block[0]
    return (table, version, float(ts.min()), float(ts.max()), len(ts), json.dumps([*num, *text]), block.tobytes(),
            json.dumps(text, separators=(",", ":")))


def _concat(parts: Sequence[tuple[int, Any]]) -> Any:
    """One column across chunks: float when every chunk holds numbers (NaN where a chunk lacks it), else an
    object array (None where missing)."""
    import numpy as np

    if all(isinstance(v, np.ndarray) for _, v in parts):
        return np.concatenate([v for _, v in parts]) if parts else np.asarray([], dtype=float)
    if all(isinstance(v, np.ndarray) or v is None for _, v in parts):
        return np.concatenate([v if v is not None else np.full(n, np.nan) for n, v in parts])
    if all(isinstance(v, tuple) or v is None for _, v in parts):  # dictionary-encoded: remap codes, then look up
        index: dict[Any, int] = {}
        codes = []
        for n, v in parts:
            values, local = v if v is not None else ([None], np.zeros(n))
            remap = np.asarray([index.setdefault(x, len(index)) for x in values], dtype=np.intp)
            codes.append(remap[local.astype(np.intp)])
        table = np.empty(len(index), dtype=object)
        table[:] = list(index)
        if all(_is_number(x) for x in index):
            table = table.astype(float)
        return table[np.concatenate(codes)]
    vals: list[Any] = []
    for n, v in parts:
        if isinstance(v, tuple):
            vals.extend(np.asarray(v[0], dtype=object)[v[1].astype(np.intp)].tolist())
        else:
            vals.extend(v.tolist() if v is not None else [None] * n)
    if all(_is_number(x) for x in vals):
        return np.asarray(vals, dtype=float)
    out = np.empty(len(vals), dtype=object)
    out[:] = vals
    return out


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
        """Write what was buffered when the writer woke; what arrives meanwhile waits for the next wake (looping
        until empty would write a transaction per request under load, the cost this design avoids)."""
        buf = self.buf
        left = len(buf)
        while left:
            n = min(left, self.batch)
            left -= n
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
