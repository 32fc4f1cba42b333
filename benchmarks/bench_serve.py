"""Serving throughput and latency, and a monitor pass over 1,000,000 telemetry rows (issue 13).

Builds the reference lifecycle (Palmer Penguins, deployed as penguin-classifier@production) in a temporary
directory, then for 1 and 2 workers, with guardrails + telemetry on and off, runs ``certus serve`` and a small
bounded asyncio load generator (raw HTTP/1.1 keep-alive sockets on uvloop, CONNS connections, each its own
client id, each sending one single-row OIP infer request at a time) for SECONDS; prints requests/s and the
client-side p50/p99 latency. The generator shares the machine's cores with the server: the figures are what
this machine does with both on it.

    python benchmarks/bench_serve.py [--seconds 10] [--conns 32] [--rows 1000000]
    python benchmarks/bench_serve.py --ab telemetry|ratelimit [--rounds 3]   # interleaved A/B, 2 workers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import lifecycle_fixture as lf  # noqa: E402

ROW = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0, "body_mass_g": 3750.0}


def _request(client: str) -> bytes:
    body = json.dumps({"inputs": [{"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                                  for k, v in ROW.items()]}).encode()
    head = (f"POST /v2/models/{lf.NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"x-client-id: {client}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _conn(port: int, client: str, until: float, lat: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = _request(client)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(port: int, seconds: float, conns: int) -> tuple[float, float, float, int, int]:
    lat: list[float] = []
    errors: list[int] = []
    await asyncio.gather(*(_conn(port, f"warm{i}", time.perf_counter() + 1.0, [], []) for i in range(conns)))
    t0 = time.perf_counter()
    await asyncio.gather(*(_conn(port, f"bench{i}", t0 + seconds, lat, errors) for i in range(conns)))
    wall = time.perf_counter() - t0
    lat.sort()
    return len(lat) / wall, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, len(lat), len(errors)


def bench_serving(base: Path, seconds: float, conns: int) -> dict[tuple[int, bool], float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = {}
    for workers in (1, 2):
        for on in (True, False):
            extra = ["--workers", str(workers)]
            extra += ["--telemetry", str(base / f"t{workers}.sqlite")] if on else ["--no-telemetry", "--no-guardrails"]
            s = lf.Server(base, f"{lf.NAME}@production", *extra)
            try:
                rps, p50, p99, n, errs = asyncio.run(_load(s.port, seconds, conns))
            finally:
                s.stop()
            out[(workers, on)] = rps
            print(f"workers={workers} guardrails+telemetry={'on ' if on else 'off'}: {rps:7.0f} req/s, p50 "
                  f"{p50:6.2f} ms, p99 {p99:6.2f} ms ({n} requests, {errs} non-200, {conns} connections)", flush=True)
    for workers in (1, 2):
        on, off = out[(workers, True)], out[(workers, False)]
        print(f"workers={workers}: guardrails+telemetry cost {100 * (1 - on / off):.1f}% of throughput")
    return out


def _cpu_s(root: int) -> float:
    """User + system CPU seconds of process ``root`` and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)  # ppid, utime + stime
    tree, total, grew = {root}, 0.0, True
    while grew:
        more = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        grew = bool(more)
        tree |= more
    for pid in tree:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def bench_ab(base: Path, what: str, seconds: float, conns: int, rounds: int, workers: int = 2) -> None:
    """A/B with everything else on, interleaved (on, off, on, off, ...) so a shared machine's drift hits both
    alike; best-of-``rounds`` of each and their ratio. ``what``: telemetry (on / --no-telemetry) or
    ratelimit (the serving config's limit / none; the lifecycle is built with a limit no client reaches)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    got: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for on in (True, False):
            extra = ["--workers", str(workers), "--telemetry", str(base / f"ab{r}.sqlite")]
            if what == "telemetry" and not on:
                extra = ["--workers", str(workers), "--no-telemetry"]
            env = {"CERTUS_SERVE_NO_RATE_LIMIT": "1"} if what == "ratelimit" and not on else {}
            os.environ.update(env)
            try:
                s = lf.Server(base, f"{lf.NAME}@production", *extra)
            finally:
                for k in env:
                    os.environ.pop(k)
            try:
                cpu0 = _cpu_s(s.proc.pid)
                rps, p50, p99, n, errs = asyncio.run(_load(s.port, seconds, conns))
                cpu = (_cpu_s(s.proc.pid) - cpu0) / n * 1e6  # server CPU µs per request (warm-up included)
            finally:
                s.stop()
            got[on].append((rps, p50, p99))
            cpus[on].append(cpu)
            print(f"round {r + 1}: workers={workers} {what} {'on ' if on else 'off'}: {rps:7.0f} req/s, p50 "
                  f"{p50:6.2f} ms, p99 {p99:6.2f} ms ({errs} non-200); server CPU {cpu:.0f} µs/request", flush=True)
    best = {k: max(v) for k, v in got.items()}
    low = {k: min(v) for k, v in cpus.items()}
    print(f"server CPU per request, best of {rounds}: on {low[True]:.0f} µs, off {low[False]:.0f} µs ({what} "
          f"{100 * (low[True] / low[False] - 1):+.1f}%)")
    print(f"best of {rounds}: {what} on {best[True][0]:.0f} req/s (p99 {best[True][2]:.2f} ms), off "
          f"{best[False][0]:.0f} req/s (p99 {best[False][2]:.2f} ms); {what} costs "
          f"{100 * (1 - best[True][0] / best[False][0]):.1f}% of throughput "
          f"(on/off = {best[True][0] / best[False][0]:.3f})")


def bench_monitor(base: Path, rows: int) -> None:
    import json as _json
    import random

    from engine.serve.monitor import evaluate, window_digest
    from engine.serve.telemetry import Record, SQLiteStore

    ref = _json.loads((base / "ws/registry" / lf.NAME / "1/reference.json").read_text())
    train = lf.training_rows(base)
    db = base / "million.sqlite"
    store = SQLiteStore(str(db))
    rng = random.Random(0)
    now = time.time()
    t0 = time.perf_counter()
    batch = []
    for i in range(rows):
        r = rng.choice(train)
        batch.append(Record(now - rows + i, 200, rng.uniform(0.5, 3), "", "v", 1, 0,
                            {k: [v] for k, v in r.items()}, ["Adelie"], [0.9], [False]))
        if len(batch) == 10000:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)
    print(f"wrote {rows:,} telemetry rows in {time.perf_counter() - t0:.1f} s "
          f"({rows / (time.perf_counter() - t0):,.0f} rows/s through SQLiteStore.write)")
    t0 = time.perf_counter()
    w = store.window("v", None, None)
    t1 = time.perf_counter()
    res = evaluate(w, ref)
    t2 = time.perf_counter()
    window_digest(w)
    t3 = time.perf_counter()
    store.close()
    print(f"monitor pass over {rows:,} rows: {t3 - t0:.2f} s (read {t1 - t0:.2f} s, statistics {t2 - t1:.2f} s, "
          f"window digest {t3 - t2:.2f} s); result {res.status}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--ab", choices=("telemetry", "ratelimit"), help="only an interleaved A/B of this, 2 workers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-monitor", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        base = Path(d)
        t0 = time.perf_counter()
        lf.build(base, rate_limit="100000/second")
        print(f"lifecycle built and deployed in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs", flush=True)
        if args.ab:
            bench_ab(base, args.ab, args.seconds, args.conns, args.rounds)
        elif not args.skip_serving:
            bench_serving(base, args.seconds, args.conns)
        if not args.skip_monitor and not args.ab:
            bench_monitor(base, args.rows)


if __name__ == "__main__":
    main()
