#!/usr/bin/env python3
"""SHA-256 hashing throughput: Certus's hasher vs OpenSSL vs plain hashlib.

1. One big file (default 1 GiB, written to --tmp, page cache warmed first, best of --repeat):
     engine.store.hashing.file_digest      what Certus uses for every file
     hashlib, 1 MiB readinto loop    the textbook loop, same library underneath
     openssl dgst -sha256            the reference (one core; includes process start, ~ms)
   GB/s = 10^9 bytes per second; "vs openssl" = our GB/s / openssl's GB/s.
2. Many files through engine.store.hashing.Hasher(root, state=None, jobs=J), J = 1 and 2 (no stat
   cache, so every byte is read): 2,000 files of 256 KiB (throughput), 10,000 files of
   256 B (per-file cost; under 4 MiB in all, which the hasher hashes on one thread whatever
   jobs says) and 20,000 files of 1 KiB (per-file cost on the threaded path). jobs=2 on a
   2-core machine can at best double jobs=1.

    .venv/bin/python benchmarks/bench_hashing.py                # ~1-2 minutes
    .venv/bin/python benchmarks/bench_hashing.py --size-gib 0.25 --repeat 5

JSON goes to benchmarks/out/bench_hashing.json; the test files are deleted at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from engine.store.hashing import Hasher, file_digest  # noqa: E402


def write_file(path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left, i = size, 0
        while left > 0:
            chunk = (i.to_bytes(8, "little") + block[8:])[:left]
            f.write(chunk)
            left -= len(chunk)
            i += 1


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 22)
        while f.readinto(buf):
            pass


def hashlib_loop(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def openssl_digest(path: str) -> str:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-r", path], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def openssl_speed(seconds: int = 3) -> float | None:
    """Bytes/s of `openssl speed -evp sha256` on 1 MiB blocks: hashing in memory, no I/O, one core."""
    try:
        out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "-bytes", "1048576", "-evp", "sha256"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "sha256" and parts[1].endswith("k"):
            return float(parts[1][:-1]) * 1000
    return None


def best_of(fn, arg, repeat: int) -> tuple[float, str]:
    times, result = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
    return min(times), result


def make_tree(root: str, sub: str, n: int, size: int) -> int:
    d = os.path.join(root, sub)
    os.makedirs(d, exist_ok=True)
    block = os.urandom(max(size, 1))
    for i in range(n):
        sd = os.path.join(d, f"d{i // 500:03d}")
        if i % 500 == 0:
            os.makedirs(sd, exist_ok=True)
        with open(os.path.join(sd, f"f{i:06d}.bin"), "wb") as f:
            f.write(i.to_bytes(8, "little") + block[8:size] if size >= 8 else block[:size])
    return n * size


def hasher_run(root: str, sub: str, jobs: int, repeat: int) -> tuple[float, str, int]:
    best, digest, nread = float("inf"), "", 0
    for _ in range(repeat):
        h = Hasher(root, state=None, jobs=jobs)
        t0 = time.perf_counter()
        e = h.hash_path(sub)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        digest, nread = str(e.digest), h.bytes_read
    return best, digest, nread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="SHA-256 throughput: Certus vs OpenSSL vs hashlib")
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tree-files", type=int, default=2000)
    ap.add_argument("--tree-size", type=int, default=256 * 1024)
    ap.add_argument("--small-files", type=int, default=10000)
    ap.add_argument("--small-size", type=int, default=256)
    ap.add_argument("--mid-files", type=int, default=20000)
    ap.add_argument("--mid-size", type=int, default=1024)
    ap.add_argument("--tmp", default="/tmp/certus-bench-hashing")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "bench_hashing.json"))
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)

    os.makedirs(a.tmp, exist_ok=True)
    sys.path.insert(0, HERE)
    from compare_dvc import engine_revision

    res: dict = {"certus_commit": engine_revision(),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "openssl_python": __import__("ssl").OPENSSL_VERSION}}
    have_openssl = shutil.which("openssl") is not None
    if have_openssl:
        res["machine"]["openssl_cli"] = subprocess.run(["openssl", "version"], capture_output=True,
                                                       text=True).stdout.strip()
    big = os.path.join(a.tmp, "big.bin")
    size = int(a.size_gib * (1 << 30))
    print(f"[hashing] writing {size / 2**30:.2f} GiB to {big} ...", file=sys.stderr, flush=True)
    write_file(big, size)
    os.sync()  # writeback of fresh dirty pages would otherwise steal CPU from the first timings
    warm(big)

    rows = []
    t, d_certus = best_of(file_digest, big, a.repeat)
    rows.append(("engine.store.hashing.file_digest", t, d_certus))
    t, d_loop = best_of(hashlib_loop, big, a.repeat)
    rows.append(("hashlib 1 MiB readinto loop", t, d_loop))
    if have_openssl:
        t, d_ossl = best_of(openssl_digest, big, a.repeat)
        rows.append(("openssl dgst -sha256", t, d_ossl))
        assert d_ossl == d_certus, "digests differ"
    ref = rows[-1][1] if have_openssl else None
    speed = openssl_speed() if have_openssl else None
    res["single_file"] = {"bytes": size, "openssl_speed_Bps": speed,
                          "rows": [{"name": n, "seconds": t, "gbps": size / t / 1e9,
                                    "vs_openssl_dgst": (ref / t if ref else None),
                                    "vs_openssl_speed": (size / t / speed if speed else None)} for n, t, _ in rows]}

    print(f"\nSingle file, {size / 2**30:.2f} GiB, page cache warm, best of {a.repeat}")
    print(f"{'method':<32}{'seconds':>10}{'GB/s':>8}{'vs dgst':>10}{'vs speed':>10}")
    for n, t, _ in rows:
        vs_d = f"{ref / t:.1%}" if ref else "-"
        vs_s = f"{size / t / speed:.1%}" if speed else "-"
        print(f"{n:<32}{t:>10.3f}{size / t / 1e9:>8.3f}{vs_d:>10}{vs_s:>10}")
    if speed:
        print(f"{'openssl speed -evp sha256 (RAM)':<32}{'':>10}{speed / 1e9:>8.3f}{'':>10}{'100.0%':>10}")
    print("vs dgst: against `openssl dgst -sha256` on the same file; vs speed: against OpenSSL's in-memory "
          "single-core SHA-256 speed (1 MiB blocks, no I/O)")
    os.unlink(big)

    print(f"[hashing] writing {a.tree_files} x {a.tree_size} B, {a.small_files} x {a.small_size} B, "
          f"{a.mid_files} x {a.mid_size} B ...",
          file=sys.stderr, flush=True)
    tree_bytes = make_tree(a.tmp, "tree", a.tree_files, a.tree_size)
    small_bytes = make_tree(a.tmp, "small", a.small_files, a.small_size)
    mid_bytes = make_tree(a.tmp, "mid", a.mid_files, a.mid_size)
    os.sync()
    res["many_files"] = []
    print(f"\nMany files through Hasher(root, state=None, jobs=J), page cache warm, best of {a.repeat}")
    print(f"{'set':<26}{'jobs':>5}{'seconds':>10}{'GB/s':>8}{'files/s':>10}{'vs jobs=1':>11}{'vs speed':>12}")
    for sub, n, nbytes in (("tree", a.tree_files, tree_bytes), ("small", a.small_files, small_bytes),
                           ("mid", a.mid_files, mid_bytes)):
        hasher_run(a.tmp, sub, 1, 1)  # warm the page cache and the dentry cache
        base = None
        digests = set()
        for jobs in (1, 2):
            t, dig, nread = hasher_run(a.tmp, sub, jobs, a.repeat)
            assert nread == nbytes
            digests.add(dig)
            base = base or t
            gbps = nbytes / t / 1e9
            ossl = f"{(nbytes / t) / speed:.1%}" if speed else "-"
            label = f"{n} x {nbytes // n} B"
            print(f"{label:<26}{jobs:>5}{t:>10.3f}{gbps:>8.3f}{n / t:>10.0f}{base / t:>10.2f}x{ossl:>12}")
            res["many_files"].append({"set": label, "jobs": jobs, "seconds": t, "gbps": gbps, "files_per_s": n / t,
                                      "speedup_vs_jobs1": base / t})
        assert len(digests) == 1
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nwrote {a.out}")
    if not a.keep:
        shutil.rmtree(a.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
