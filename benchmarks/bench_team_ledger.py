"""A shared ledger of many entries: push it, sync it into a second clone, verify it there.

    .venv/bin/python benchmarks/bench_team_ledger.py --from DIR [--backend git|pg]
    .venv/bin/python benchmarks/bench_team_ledger.py --writers 8 --appends 10 [--backend git|pg]

``DIR`` is a workspace kept by ``benchmarks/bench_provenance.py --runs 50000 --batch 100 --skip-record
--gates --keep DIR`` (50,000 signed runs, each with a gate result: 100,001 ledger entries). Timed:

1. ``certus verify`` of that single-machine ledger (in-process, best of 2): the per-entry baseline;
2. the first ``ledger sync`` into an empty shared log (git: a bare repo on local disk; pg: a
   PostgreSQL server started in a temp dir) — one compare-and-swap append of every entry;
3. ``ledger sync`` in a second clone with an empty ledger: fetch every entry, check its signatures,
   rebuild the ledger from the shared log (its own genesis dropped);
4. ``certus verify`` in that clone (in-process, best of 2): the shared log's per-entry figure.
   Issue 16's target: within 2x of (1) per entry.

With ``--writers W``: W clones of one small signed workspace, each in its own process, each
appending ``--appends`` signed ledger events one at a time and syncing after each (the whole Certus
path: read, check consistency and signatures, re-sequence, compare-and-swap, retry): sequencing
latency per event (p50 / p95) and throughput, beside one writer alone.

The machine is small (2 cores) and may be shared: the figures are printed with a yardstick.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from engine.adapters.shared_log import Remote, open_shared_log, save_remote  # noqa: E402
from engine.provenance.ledger_sync import sync  # noqa: E402
from engine.provenance.recorder import Provenance  # noqa: E402
from engine.provenance.verify import verify_workspace  # noqa: E402
from engine.store.workspace import Workspace  # noqa: E402


def timed_verify(root: str) -> tuple[float, int]:
    best, size = 1e9, 0
    for _ in range(2):
        t0 = time.perf_counter()
        rep = verify_workspace(Workspace(root))
        best = min(best, time.perf_counter() - t0)
        assert rep.ok, rep.failures[:3]
        size = rep.checked.get("ledger entries", 0)
    return best, size


def _writer(root: str, url: str, appends: int, out: str) -> None:
    """One clone appending events and syncing after each; writes its latencies to ``out``."""
    prov = Provenance(Workspace(root))
    lat = []
    for i in range(appends):
        t0 = time.perf_counter()
        prov.append_event("dataset.refused", f"bench/{os.path.basename(root)}/{i}", {"reason": "bench"})
        sync(prov, open_shared_log(Remote("origin", url), root))
        lat.append(time.perf_counter() - t0)
    with open(out, "w") as f:
        f.write("\n".join(f"{x:.6f}" for x in lat))


def writers(n: int, appends: int, backend: str) -> None:
    import multiprocessing as mp

    from bench_provenance import setup  # noqa: E402

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        ws, prov = setup(tmp)
        prov.append_records([])  # the trust genesis
        if backend == "git":
            bare = os.path.join(tmp, "remote.git")
            subprocess.run(["git", "init", "-q", "--bare", bare], check=True)
            subprocess.run(["git", "remote", "add", "origin", bare], cwd=ws.root, check=True)
            url = "git"
        else:
            import pg_server

            server = pg_server.start()
            url = server.url + "?log=bench_writers"
        try:
            sync(prov, open_shared_log(Remote("origin", url), ws.root))
            for count in (1, n):
                roots = []
                for i in range(count):
                    root = os.path.join(tmp, f"w{count}_{i}")
                    shutil.copytree(ws.root, root, symlinks=True)
                    roots.append(root)
                ctx = mp.get_context("spawn")
                t0 = time.perf_counter()
                procs = [ctx.Process(target=_writer, args=(r, url, appends, r + ".lat")) for r in roots]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                wall = time.perf_counter() - t0
                lat = sorted(float(x) for r in roots for x in open(r + ".lat").read().split())
                p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))]
                print(f"{backend}: {count} writer(s) x {appends} events: {len(lat) / wall:.1f} events/s sequenced; "
                      f"latency per event (append + sync) p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
        finally:
            if server is not None:
                server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="src", help="a workspace kept by bench_provenance.py --keep")
    ap.add_argument("--writers", type=int, default=0)
    ap.add_argument("--appends", type=int, default=10)
    ap.add_argument("--backend", choices=("git", "pg"), default="git")
    a = ap.parse_args()
    if a.writers:
        writers(a.writers, a.appends, a.backend)
        return
    if not a.src:
        ap.error("give --from DIR or --writers N")
    os.environ["CERTUS_HOME"] = os.path.join(a.src, "home")
    src = os.path.join(a.src, "ws")
    from bench_provenance import machine_speed  # noqa: E402

    print(machine_speed())
    base, n = timed_verify(src)
    print(f"1. verify, single machine: {n:,} entries in {base:.2f} s = {base / n * 1e6:.0f} µs/entry")
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if a.backend == "git":
            bare = os.path.join(tmp, "remote.git")
            subprocess.run(["git", "init", "-q", "--bare", bare], check=True)
            url = "git"
        else:
            import pg_server

            server = pg_server.start()
            url = server.url + "?log=bench"
        try:
            one = os.path.join(tmp, "one")
            shutil.copytree(src, one, symlinks=True)
            two = os.path.join(tmp, "two")
            shutil.copytree(src, two, symlinks=True, ignore=shutil.ignore_patterns("ledger"))
            for root in (one, two):
                if a.backend == "git":
                    subprocess.run(["git", "remote", "add", "origin", bare], cwd=root, check=True)
                save_remote(root, Remote("origin", url))
            t0 = time.perf_counter()
            res = sync(Provenance(Workspace(one)), open_shared_log(Remote("origin", url), one))
            print(f"2. first sync into an empty {a.backend} shared log: {res.pushed:,} entries in "
                  f"{time.perf_counter() - t0:.2f} s")
            t0 = time.perf_counter()
            res = sync(Provenance(Workspace(two)), open_shared_log(Remote("origin", url), two))
            took = time.perf_counter() - t0
            print(f"3. sync into a second clone (fetch, check every signature, rebuild): {res.fetched:,} entries in "
                  f"{took:.2f} s = {took / max(res.fetched, 1) * 1e6:.0f} µs/entry")
            shared, n2 = timed_verify(two)
            print(f"4. verify of the shared log in that clone: {n2:,} entries in {shared:.2f} s = "
                  f"{shared / n2 * 1e6:.0f} µs/entry: {shared / n2 / (base / n):.2f}x the single-machine figure "
                  "per entry (target: within 2x)")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
