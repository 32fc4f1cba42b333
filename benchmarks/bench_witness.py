"""Witness benchmark: verify's witness step on a large ledger, and the certus.lock merge driver.

Run from the repository root::

    .venv/bin/python benchmarks/bench_witness.py [--entries 100000] [--batch 100] [--cosigned 20]
        [--witnesses 3] [--stages 2000]

Builds a ledger of ``--entries`` small entries appended ``--batch`` at a time (one signed
checkpoint per batch), stores ``--cosigned`` evenly spaced checkpoints each cosigned by
``--witnesses`` trusted witness keys, then times what ``certus verify`` adds for the witness
policy (:func:`engine.provenance.witness_policy.cosigned_by_size`: reading the stored notes,
the leaf hashes, the roots at every cosigned size, every cosignature checked against the trust
file). Then a three-way merge of ``--stages``-stage locks changed on both sides.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.adapters.keys import generate_key  # noqa: E402
from engine.pipeline.lock_merge import merge_locks  # noqa: E402
from engine.pipeline.lockfile import LockFile, StageLock  # noqa: E402
from engine.provenance.cosignature import cosign  # noqa: E402
from engine.provenance.cosignature_store import append_cosigned, ledger_note, read_cosigned  # noqa: E402
from engine.provenance.ledger import Ledger  # noqa: E402
from engine.provenance.recorder import NoteSignerAdapter  # noqa: E402
from engine.provenance.trust import TrustStore  # noqa: E402
from engine.provenance.witness_policy import cosigned_by_size  # noqa: E402

ORIGIN = "certus/bench"


def best(fn, repeat: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def bench_witness(args: argparse.Namespace, tmp: Path) -> None:
    log_key = generate_key("bench-ledger", "ledger")
    signer = NoteSignerAdapter(log_key)
    ledger = Ledger.open(tmp / "ledger", origin=ORIGIN)
    for start in range(0, args.entries, args.batch):
        ledger.append_many([b"entry %d" % i for i in range(start, min(start + args.batch, args.entries))], signer)
    witnesses = [generate_key(f"w{i}", "witness") for i in range(args.witnesses)]
    trust = TrustStore()
    for w in witnesses:
        trust = trust.add_key(w.info, roles=["witness"])
    step = max(args.entries // args.cosigned // args.batch, 1) * args.batch
    t = time.perf_counter()
    sizes = list(range(step, args.entries + 1, step))[: args.cosigned]
    for size in sizes:
        note = ledger_note(ledger.path, size)
        for w in witnesses:
            note = cosign(note, NoteSignerAdapter(w), int(time.time())).to_text()
        append_cosigned(ledger.path, note)
    add = time.perf_counter() - t
    failures: list[str] = []

    def step_fn() -> None:
        stored = read_cosigned(ledger.path)
        got = cosigned_by_size(stored.notes, ledger.checkpoint(), ledger.leaf_hashes, trust, failures.append,
                               where="bench")
        assert len(got) == len(sizes) and all(len(v) == len(witnesses) for v in got.values())

    lo, med = best(step_fn)
    assert not failures, failures[:1]
    print(f"ledger: {args.entries:,} entries, {args.entries // args.batch:,} checkpoints; {len(sizes)} cosigned "
          f"checkpoints x {len(witnesses)} witnesses")
    print(f"  storing the cosigned checkpoints (find each in checkpoints.jsonl, append): {add * 1000:.0f} ms total")
    print(f"  verify's witness step: best {lo * 1000:.1f} ms, median {med * 1000:.1f} ms "
          f"({med / args.entries * 1e6:.2f} us/entry)")
    lo, med = best(lambda: ledger.leaf_hashes())
    print(f"  of which reading the leaf hashes alone: best {lo * 1000:.1f} ms, median {med * 1000:.1f} ms")


def bench_merge(args: argparse.Namespace) -> None:
    d = "sha256:" + "ab" * 32

    def stage(i: int, v: int) -> StageLock:
        return StageLock(key="sha256:" + f"{i * 1000 + v:064x}", cmd=f"python step.py {i}",
                         deps={f"in/{i}.txt": d, "step.py": d}, params={"train.seed": v},
                         outs={f"out/{i}.txt": {"digest": d, "kind": "file"}})

    n = args.stages
    base = LockFile("b", {f"s{i}": stage(i, 0) for i in range(n)}, "p").to_bytes()
    ours = LockFile("a", {f"s{i}": stage(i, 1 if i % 2 else 0) for i in range(n)}, "p").to_bytes()
    theirs = LockFile("t", {f"s{i}": stage(i, 2 if i % 3 else 0) for i in range(n)}, "p").to_bytes()
    lo, med = best(lambda: merge_locks(base, ours, theirs))
    print(f"lock merge: {n:,} stages ({len(ours) / 1e6:.1f} MB per side), changed on both sides: best "
          f"{lo * 1000:.1f} ms, median {med * 1000:.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--cosigned", type=int, default=20)
    p.add_argument("--witnesses", type=int, default=3)
    p.add_argument("--stages", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_witness(args, Path(tmp))
    bench_merge(args)


if __name__ == "__main__":
    main()
