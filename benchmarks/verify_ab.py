"""Interleaved A/B of `certus verify` over kept ledgers, each verified by its own checkout of the code.

    .venv/bin/python benchmarks/verify_ab.py --rounds 6 \\
        old=/work/wt-old:/tmp/ab11/old plain=.:/tmp/ab11/plain gates=.:/tmp/ab11/gates

Each ``NAME=CODE:DIR`` is a checkout of Certus (``CODE``: a git worktree at any commit) and a
ledger kept by ``bench_provenance.py --keep DIR`` (built by that same code). Every round runs each
pair once, in a fresh process with ``CODE`` first on ``sys.path``: ``verify_workspace`` twice, the
better time counted. Rounds interleave the pairs, so a machine shared with other work slows all
of them alike; the best of the rounds is printed, and each pair's ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_ONE = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from engine.store.workspace import Workspace
from engine.provenance.verify import verify_workspace
os.environ["CERTUS_HOME"] = os.path.join(sys.argv[2], "home")
best = 1e9
for _ in range(2):
    t = time.perf_counter()
    r = verify_workspace(Workspace(os.path.join(sys.argv[2], "ws")), update_witness=False)
    best = min(best, time.perf_counter() - t)
    assert r.ok, r.failures[:3]
print(f"{best:.3f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="NAME=CODE:DIR")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    pairs = []
    for spec in a.pairs:
        name, _, rest = spec.partition("=")
        code, _, ledger = rest.partition(":")
        if not (name and code and ledger):
            ap.error(f"{spec!r}: expected NAME=CODE:DIR")
        pairs.append((name, os.path.abspath(code), os.path.abspath(ledger)))
    times: dict[str, list[float]] = {name: [] for name, _, _ in pairs}
    for r in range(a.rounds):
        row = []
        for name, code, ledger in pairs:
            env = {**os.environ, "PYTHONPATH": code}
            out = subprocess.run([sys.executable, "-c", _ONE, code, ledger], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{name}: verify failed:\n{out.stderr[-2000:]}")
            times[name].append(float(out.stdout.strip()))
            row.append(f"{name} {times[name][-1]:.3f} s")
        print(f"round {r + 1}: " + ", ".join(row), f"(load {os.getloadavg()[0]:.2f})", flush=True)
    first = min(times[pairs[0][0]])
    for name, _, _ in pairs:
        best = min(times[name])
        print(f"{name:>12}: best {best:.3f} s ({min(times[name]):.2f}-{max(times[name]):.2f}), "
              f"{best / first:.3f}x {pairs[0][0]}")


if __name__ == "__main__":
    main()
