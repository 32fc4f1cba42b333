"""Sequencing throughput and append latency of the shared ledger log, 1 and 8 concurrent writers.

Each writer is its own process (and, for git, its own clone) running the loop a ledger client runs:
read from the size it knows, append one entry with ``expected_size`` = that size, and on False
(another writer got there first) read again and retry. Git: a bare repo on local disk as the remote.
PostgreSQL: a throwaway local server started as tests/pg_server.py does. Latency is per entry, from
its first read to the append that landed (retries included). The writers start together at a
time the parent sets, after their imports.

    .venv/bin/python benchmarks/bench_sequencing.py [--backends git,pg] [--writers 1,8]
        [--git-entries 120] [--pg-entries 2000]

``--git-entries`` / ``--pg-entries``: entries appended per configuration, split among the writers.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def worker(spec: dict) -> dict:
    from engine.adapters.shared_log import Remote

    if spec["kind"] == "git":
        from engine.adapters.shared_log_git import GitSharedLog

        log = GitSharedLog(Remote("origin", "git"), spec["workspace"])
    else:
        from engine.adapters.shared_log_pg import PgSharedLog

        log = PgSharedLog(Remote("team", spec["url"]))
        log.read()  # connect before the start
    time.sleep(max(0.0, spec["start"] - time.time()))
    latencies, attempts, known = [], 0, 0
    for k in range(spec["k"]):
        # ~2 KB of base64, like a DSSE envelope of a run record (1.9-2.9 KB in real ledgers)
        entry = json.dumps({"w": spec["writer"], "k": k, "payload": base64.b64encode(os.urandom(1500)).decode()})
        entry = entry.encode()
        t0 = time.perf_counter()
        while True:
            snap = log.read(known)
            known = snap.size
            attempts += 1
            if log.append(snap.size, [entry], b"checkpoint at %d\n" % (snap.size + 1)):
                known += 1
                break
            time.sleep(random.uniform(0, 0.005))
        latencies.append(time.perf_counter() - t0)
    return {"latencies": latencies, "attempts": attempts, "end": time.time()}


def run(kind: str, writers: int, entries: int, target: dict, tmp: str) -> dict:
    per = max(1, entries // writers)
    start = time.time() + 3.0 + 0.3 * writers  # after every writer's imports
    procs = []
    for w in range(writers):
        spec = {"kind": kind, "writer": w, "k": per, "start": start, **target}
        if kind == "git":
            ws = os.path.join(tmp, f"clone-{writers}-{w}")
            subprocess.run(["git", "init", "-q", ws], check=True)
            subprocess.run(["git", "-C", ws, "remote", "add", "origin", target["bare"]], check=True)
            spec["workspace"] = ws
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                      stdout=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a {kind} writer failed (exit {p.returncode})")
        results.append(json.loads(out))
    wall = max(r["end"] for r in results) - start
    lat = sorted(x for r in results for x in r["latencies"])
    total = len(lat)
    return {"backend": kind, "writers": writers, "entries": total, "wall_s": wall,
            "entries_per_s": total / wall, "attempts_per_s": sum(r["attempts"] for r in results) / wall,
            "conflicts": sum(r["attempts"] for r in results) - total,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[min(total - 1, int(0.95 * total))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--backends", default="git,pg")
    ap.add_argument("--writers", default="1,8")
    ap.add_argument("--git-entries", type=int, default=120)
    ap.add_argument("--pg-entries", type=int, default=2000)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    tmp = tempfile.mkdtemp(prefix="certus-bench-seq-")
    rows, server = [], None
    try:
        for kind in args.backends.split(","):
            if kind == "pg":
                import pg_server

                try:
                    server = pg_server.start()
                except pg_server.PgUnavailable as e:
                    print(f"pg skipped: {e}")
                    continue
            for writers in (int(w) for w in args.writers.split(",")):
                if kind == "git":
                    bare = os.path.join(tmp, f"remote-{writers}.git")
                    subprocess.run(["git", "init", "-q", "--bare", bare], check=True)
                    target = {"bare": bare}
                    entries = args.git_entries
                else:
                    target = {"url": f"{server.url}?log=bench_{writers}"}
                    entries = args.pg_entries
                rows.append(run(kind, writers, entries, target, tmp))
                r = rows[-1]
                print(f"  {kind} x{writers}: {r['entries']} entries in {r['wall_s']:.1f} s", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs (a shared VM: other sessions' work runs beside this)\n")
    print(f"{'backend':8} {'writers':>7} {'entries':>7} {'entries/s':>10} {'attempts/s':>10} {'conflicts':>9} "
          f"{'p50 ms':>8} {'p95 ms':>8}")
    for r in rows:
        print(f"{r['backend']:8} {r['writers']:>7} {r['entries']:>7} {r['entries_per_s']:>10.1f} "
              f"{r['attempts_per_s']:>10.1f} {r['conflicts']:>9} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}")


if __name__ == "__main__":
    main()
