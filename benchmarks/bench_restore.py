#!/usr/bin/env python3
"""What verifying restores costs: ``ObjectCache.checkout`` with and without hashing.

Every restore hashes each object while copying it out (first use in a process, or when its
stat moved). This times the same restores with verification on (the module's per-process
memo cleared before each round, so every object counts as a first use) and off
(``cache.verify = False``, which only this benchmark sets), on a warm page cache:

    files   --mib files of 1 MiB, restored one by one (default 64)
    small   one directory output of --small files of 1 KiB (default 1,000)

and prints the wall time of each, the cost per restored MiB and the verification overhead.
``--store`` times storing instead (``ObjectCache.add`` of the same files into a fresh cache,
which now hashes what it writes); it uses only the API the base commit had too, so the same
script measures the before figure on a worktree of the base:

    PYTHONPATH=/path/to/base-worktree .venv/bin/python benchmarks/bench_restore.py --store

The full-repro cost of hashing while storing is measured with compare_dvc.py (see
benchmarks/README.md), on this branch and on its base.

    .venv/bin/python benchmarks/bench_restore.py [--mib 64] [--small 1000] [--repeat 5] [--store]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import engine.store.cache as cache_mod  # noqa: E402
from engine.store.cache import ObjectCache  # noqa: E402
from engine.store.hashing import Hasher  # noqa: E402


def _restore_round(cache: ObjectCache, ws: str, items: list[tuple[str, object, str]], verify: bool) -> float:
    shutil.rmtree(os.path.join(ws, "restored"), ignore_errors=True)
    cache_mod._VERIFIED.clear()  # every object is a first use, as in a new process
    cache.verify = verify
    t0 = time.perf_counter()
    for rel, digest, kind in items:
        cache.checkout(ws, "restored/" + rel, digest, kind)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def measure(name: str, cache: ObjectCache, ws: str, items: list[tuple[str, object, str]], mib: float,
            repeat: int) -> dict[str, float]:
    _restore_round(cache, ws, items, True)  # warm the page cache and the code paths
    on, off = [], []
    for _ in range(repeat):  # interleaved, so drift on a shared machine hits both alike
        off.append(_restore_round(cache, ws, items, False))
        on.append(_restore_round(cache, ws, items, True))
    t_on, t_off = statistics.median(on), statistics.median(off)
    print(f"{name:<28} verified {t_on * 1e3:8.1f} ms   unverified {t_off * 1e3:8.1f} ms   "
          f"per MiB: {t_on / mib * 1e3:6.2f} vs {t_off / mib * 1e3:6.2f} ms   "
          f"verification +{(t_on - t_off) / mib * 1e3:5.2f} ms/MiB ({(t_on / t_off - 1) * 100:+.0f} %)")
    return {"verified_s": t_on, "unverified_s": t_off, "mib": mib}


def bench_store(ws: str, entries: dict, big: list[str], args: argparse.Namespace) -> int:
    """Median time to store each set into a fresh cache (fsync per object, as repro does)."""
    print(f"store ({cache_mod.__file__}), {os.cpu_count()} CPUs; median of {args.repeat}")
    for label, rels, mib in ((f"{args.mib} x 1 MiB files", big, float(args.mib)),
                             (f"dir of {args.small} x 1 KiB", ["small"], args.small / 1024)):
        times = []
        for i in range(args.repeat + 1):
            cache = ObjectCache(os.path.join(ws, ".certus", f"cache{i}"))
            t0 = time.perf_counter()
            for rel in rels:
                cache.add(ws, rel, entries[rel])
            times.append(time.perf_counter() - t0)
            shutil.rmtree(cache.root)
        t = statistics.median(times[1:])  # the first round warms up
        print(f"{label:<28} store {t * 1e3:8.1f} ms   per MiB {t / mib * 1e3:7.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--store", action="store_true", help="time storing (hash while copying) instead")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="certus-bench-restore-", dir=args.tmp)
    try:
        ws = os.path.join(root, "ws")
        os.makedirs(os.path.join(ws, "big"))
        os.makedirs(os.path.join(ws, "small"))
        for i in range(args.mib):
            with open(os.path.join(ws, "big", f"f{i:04d}.bin"), "wb") as f:
                f.write(os.urandom(1 << 20))
        for i in range(args.small):
            with open(os.path.join(ws, "small", f"s{i:05d}.txt"), "wb") as f:
                f.write(os.urandom(1024))
        cache = ObjectCache(os.path.join(ws, ".certus", "cache"))
        hasher = Hasher(ws)
        big = [f"big/f{i:04d}.bin" for i in range(args.mib)]
        entries = hasher.hash_many([*big, "small"])
        if args.store:
            return bench_store(ws, entries, big, args)
        t0 = time.perf_counter()
        for rel, e in entries.items():
            assert e is not None
            cache.add(ws, rel, e)
        store_s = time.perf_counter() - t0
        kinds = f"link types {cache.link_types}, used: {sorted(set(cache.link_types) - cache._broken)[:1]}"
        print(f"restore verification, {os.cpu_count()} CPUs, {kinds}; median of {args.repeat}")
        print(f"(stored {args.mib} MiB + {args.small} small files, hashing while storing, in {store_s:.2f} s)")
        big_items = [(rel, entries[rel].digest, "file") for rel in big]  # type: ignore[union-attr]
        measure(f"{args.mib} x 1 MiB files", cache, ws, big_items, float(args.mib), args.repeat)
        small = entries["small"]
        assert small is not None
        measure(f"dir of {args.small} x 1 KiB", cache, ws, [("small", small.digest, "dir")],
                args.small / 1024, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
