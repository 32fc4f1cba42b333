"""Ledger benchmark: append and verify 10,000 entries, and proof sizes for n = 2^k.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ledger.py [--entries 10000] [--entry-bytes 1024]

Appends are one at a time, each durable (two fsynced appends, two atomic replaces) and each
signing a C2SP checkpoint with Ed25519. Verification is the full :meth:`Ledger.verify_structure`:
every frame re-hashed, every root recomputed, every checkpoint's signature checked.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.provenance import merkle  # noqa: E402
from engine.provenance.ledger import Ledger  # noqa: E402
from engine.provenance.note import Verifier  # noqa: E402

ORIGIN = "certus/bench"


class Signer:
    """A NoteSigner over a fixed Ed25519 seed."""

    name = ORIGIN

    def __init__(self) -> None:
        self._key = nacl.signing.SigningKey(b"\x42" * 32)
        self.public_key = bytes(self._key.verify_key)

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg).signature


def envelope(i: int, size: int) -> bytes:
    """A DSSE-envelope-shaped JSON blob of roughly ``size`` bytes."""
    payload = base64.b64encode(f"record {i} ".encode().ljust(size * 3 // 4 - 80, b"x")).decode()
    sig = {"keyid": "ab" * 32, "sig": base64.b64encode(bytes(64)).decode()}
    env = {"payload": payload, "payloadType": "application/vnd.in-toto+json", "signatures": [sig]}
    return json.dumps(env).encode()


def bench_ledger(n: int, entry_bytes: int, root: Path) -> None:
    signer = Signer()
    led = Ledger.open(root / "ledger", origin=ORIGIN)
    times, cpu = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(n):
        t, c = time.perf_counter(), time.process_time()
        led.append(envelope(i, entry_bytes), signer)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    size = sum(p.stat().st_size for p in (root / "ledger").iterdir())
    k = max(1, n // 10)
    ms = 1e3
    print(f"append {n} entries (~{entry_bytes} B each, fsync + signed checkpoint per append): {total:.2f} s")
    print(
        f"  per append (wall): mean {statistics.mean(times) * ms:.3f} ms, "
        f"p50 {statistics.median(times) * ms:.3f} ms, max {max(times) * ms:.3f} ms; "
        f"first {k}: {statistics.mean(times[:k]) * ms:.3f} ms, last {k}: {statistics.mean(times[-k:]) * ms:.3f} ms"
    )
    print(
        f"  per append (CPU): mean {cpu_total / n * ms:.3f} ms; "
        f"first {k}: {sum(cpu[:k]) / k * ms:.3f} ms, last {k}: {sum(cpu[-k:]) / k * ms:.3f} ms"
    )
    print(f"  ledger directory: {size / 1e6:.1f} MB")

    verifier = Verifier(ORIGIN, signer.public_key)
    t = time.perf_counter()
    problems = Ledger.open(root / "ledger", origin=ORIGIN).verify_structure(verifier)
    took = time.perf_counter() - t
    assert problems == [], problems
    print(f"verify {n} entries (re-hash every entry, every root, {n} checkpoint signatures): {took:.2f} s")

    led = Ledger.open(root / "ledger", origin=ORIGIN)
    t = time.perf_counter()
    led.inclusion_proof(n // 3)
    incl = time.perf_counter() - t
    t = time.perf_counter()
    led.consistency_proof(n // 3)
    cons = time.perf_counter() - t
    print(f"proofs from the ledger at n={n}: inclusion {incl * 1e3:.1f} ms, consistency {cons * 1e3:.1f} ms")


def bench_proof_sizes(max_k: int, hash_up_to_k: int) -> None:
    print("proof sizes (hashes of 32 B) for n = 2^k and n = 2^k + 1:")
    head = ("n", "log2 n", "incl[0]", "incl[n-1]", "cons(n/2+1,n)", "cons(1,n)")
    print("  {:>14} {:>7} {:>8} {:>9} {:>14} {:>10}".format(*head))
    for n in sorted({1 << k for k in range(max_k + 1)} | {(1 << k) + 1 for k in range(1, max_k + 1)}):
        m = n // 2 + 1
        row = (
            len(merkle.inclusion_ranges(0, n)),
            len(merkle.inclusion_ranges(n - 1, n)),
            len(merkle.consistency_ranges(m, n)),
            len(merkle.consistency_ranges(1, n)),
        )
        if n <= 1 << hash_up_to_k:  # compute real proofs too, and check they verify
            leaves = [merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
            r = merkle.root(leaves)
            p = merkle.inclusion_proof(n - 1, leaves)
            p.verify(leaves[-1], r)
            c = merkle.consistency_proof(m, leaves)
            c.verify(merkle.root(leaves[:m]), r)
            assert (len(p.hashes), len(c.hashes)) == (row[1], row[2])
        print(f"  {n:>14} {math.log2(n):>7.2f} {row[0]:>8} {row[1]:>9} {row[2]:>14} {row[3]:>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--entry-bytes", type=int, default=1024)
    parser.add_argument("--max-k", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench_ledger(args.entries, args.entry_bytes, Path(tmp))
    bench_proof_sizes(args.max_k, hash_up_to_k=12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
