"""Provenance benchmarks (issue 3): prints figures, asserts nothing.

1. Provenance overhead of a 1,000-stage run: attest + sign (DSSE, Ed25519) + Merkle root + run record +
   ledger append, timed around ``Provenance.record_run`` on a synthetic 1,000-stage result (the stage
   commands themselves are not part of provenance).
2. ``certus verify`` of a ledger of 10,000 run records (each with its attestation bundle), built through
   the same code paths (batched appends, so building is quick; verify still checks every entry,
   signature, attestation, Merkle root and checkpoint).
3. Proof sizes against ledger size (log2 growth).

    python benchmarks/bench_provenance.py [--stages 1000] [--runs 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.adapters.keys import generate_key, save_key  # noqa: E402
from engine.core.canonical import canonical_bytes  # noqa: E402
from engine.pipeline.spec import StageSpec  # noqa: E402
from engine.provenance.dsse import sign_envelope  # noqa: E402
from engine.provenance.gate_records import gate_statement  # noqa: E402
from engine.provenance.recorder import NoteSignerAdapter, Provenance  # noqa: E402
from engine.provenance.records import RUN_TYPE, RunRecord, attestation_root  # noqa: E402
from engine.provenance.statement import PAYLOAD_TYPE, rfc3339, stage_statement  # noqa: E402
from engine.provenance.trust import TrustStore  # noqa: E402
from engine.run.repro import ReproResult, StageOutcome  # noqa: E402
from engine.store.workspace import Workspace  # noqa: E402

# the spec the synthetic verify runs name, so verify re-derives their commands from it
SPEC = "stages:\n  train:\n    cmd: python train.py\n    params: [C]\n"


def setup(tmp: str) -> tuple[Workspace, Provenance]:
    os.environ["CERTUS_HOME"] = os.path.join(tmp, "home")
    keys = os.path.join(tmp, "home", "keys")
    os.makedirs(keys)
    key = generate_key("bench", "trainer")
    save_key(key, keys, unencrypted=True)
    root = os.path.join(tmp, "ws")
    os.makedirs(os.path.join(root, "pipelines"))
    with open(os.path.join(root, "pipelines", "p.yaml"), "w") as f:
        f.write(SPEC)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    ws = Workspace(root)
    prov = Provenance(ws)
    store = TrustStore().add_key(key.info, roles=["trainer", "ledger", "admin"])
    prov.save_trust(store)
    return ws, prov


def bench_record(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws, prov = setup(tmp)
        stages = {}
        outcomes = {}
        now = time.time()
        for i in range(n):
            name = f"s{i:05d}"
            stages[name] = StageSpec(name=name, cmd=f"python work.py {name}", deps=(f"in/{name}",),
                                     outs=(f"out/{name}",), params=((f"{name}.p", 1),))
            outcomes[name] = StageOutcome(name, "ran", key="sha256:" + "ab" * 32,
                                          deps={f"in/{name}": "sha256:" + "cd" * 32},
                                          outs={f"out/{name}": {"digest": "sha256:" + "ef" * 32, "size": 10}},
                                          started=now, finished=now, returncode=0)
        spec_cls = type("Spec", (), {"path": "pipelines/p.yaml", "__getitem__": lambda self, k: stages[k]})
        rep = SimpleNamespace(spec=spec_cls(), _sde_cached=lambda: "0")
        result = ReproResult(run_id="bench-run", config={"x": 1}, overrides=[], spec_path="pipelines/p.yaml",
                             outcomes=outcomes, started=now, finished=now)
        prov.signer("trainer")
        prov.signer("ledger")  # keys loaded once, as a real run does before its stages
        t0 = time.perf_counter()
        prov.record_run(rep, result, {"commit": None, "dirty": None})
        dt = time.perf_counter() - t0
        print(f"provenance of a {n}-stage run (attest+sign {n} statements, Merkle root, sign record, "
              f"ledger append): {dt * 1000:.0f} ms  ({dt / n * 1e6:.0f} µs/stage)  target < 500 ms")
        from engine.provenance.verify import verify_workspace

        t0 = time.perf_counter()
        report = verify_workspace(ws)
        print(f"certus verify of that run ({n} attestations and their inclusion proofs): "
              f"{time.perf_counter() - t0:.2f} s  ok={report.ok}")


def bench_verify(runs: int, batch_size: int = 1, keep: str | None = None, gates: bool = False) -> None:
    from engine.provenance.ledger import Ledger

    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or scratch
        if keep and os.path.isdir(os.path.join(keep, "ws", ".certus", "ledger")):
            os.environ["CERTUS_HOME"] = os.path.join(keep, "home")
            ws = Workspace(os.path.join(keep, "ws"))
            ledger = Ledger.open(os.path.join(ws.root, ".certus", "ledger"), origin="certus.dev/ledger/bench")
            print(f"reusing the ledger of {ledger.size} entries in {keep}")
            _time_verify(ws, ledger, runs)
            return
        ws, prov = setup(tmp)
        key = prov.signer("trainer")
        origin = "certus.dev/ledger/bench"
        os.makedirs(os.path.dirname(prov.attestation_path("x")), exist_ok=True)
        ledger = Ledger.open(os.path.join(ws.root, ".certus", "ledger"), origin=origin)
        prov.append_records([])  # entry 0: the trust genesis every ledger starts with
        ledger = Ledger.open(os.path.join(ws.root, ".certus", "ledger"), origin=origin)
        spec_sha = hashlib.sha256(SPEC.encode()).hexdigest()
        t_start = time.time()
        previous = None
        t0 = time.perf_counter()
        batch: list[bytes] = []

        for r in range(runs):
            run_id = f"run{r:06d}"
            stmt = stage_statement(stage="train", cmd="python train.py", params={"C": 1}, pipeline="pipelines/p.yaml",
                                   overrides=[], outs={"model.pkl": {"digest": "sha256:" + f"{r:064x}"}},
                                   deps={"train.py": "sha256:" + "11" * 32}, key="sha256:" + "22" * 32,
                                   engine_version="certus", python="3", platform="linux", env={},
                                   run_id=run_id, started=0.0, finished=0.0, exit_status=0, log_digest=None)
            env = sign_envelope(PAYLOAD_TYPE, canonical_bytes(stmt), [key]).to_json_bytes()
            with open(prov.attestation_path(run_id), "wb") as f:
                f.write(env + b"\n")
            gate_env = None
            if gates:  # a release gate result after each run record, listed in it, as a gated pipeline appends it
                model = f"{r:064x}"
                gstmt = gate_statement(gate="release", policy_name="release", policy={"accuracy": {"min": 0.9}},
                                       subjects={"model.pkl": {"sha256": model}},
                                       detail={"metrics": [{"name": "accuracy", "outcome": "pass", "value": 0.97}],
                                               "run_id": run_id, "key": "sha256:" + model, "time": rfc3339(t_start),
                                               "metric_files": {"model.pkl": "sha256:" + model}})
                gate_env = sign_envelope(PAYLOAD_TYPE, canonical_bytes(gstmt), [key]).to_json_bytes()
            rec = RunRecord(run_id=run_id, started=rfc3339(t_start), finished=rfc3339(t_start), status="succeeded",
                            git={}, config={"C": 1}, overrides=[], pipeline="pipelines/p.yaml",
                            spec_sha256=spec_sha,
                            lock_sha256=None,
                            stages={"train": {"state": "ran", "key": "k",
                                              "outs": {"model.pkl": "sha256:" + f"{r:064x}"},
                                              "attestation": hashlib.sha256(env).hexdigest()}},
                            attestations=[{"stage": "train", "sha256": hashlib.sha256(env).hexdigest(),
                                           "path": "x"}],
                            merkle_root=attestation_root([env]), previous=previous,
                            gate_results=[{"gate": "release", "sha256": hashlib.sha256(gate_env).hexdigest()}]
                            if gate_env is not None else ())
            data = sign_envelope(RUN_TYPE, canonical_bytes(rec.to_dict()), [key]).to_json_bytes()
            previous = hashlib.sha256(data).hexdigest()
            batch.append(data)
            if gate_env is not None:
                batch.append(gate_env)
            if len(batch) >= batch_size:
                ledger.append_many(batch, NoteSignerAdapter(prov.signer("ledger"), name=origin))
                batch = []
        if batch:
            ledger.append_many(batch, NoteSignerAdapter(prov.signer("ledger"), name=origin))
        build = time.perf_counter() - t0
        print(f"built a ledger of {runs} signed run records + attestations ({runs // batch_size} signed "
              f"checkpoints) in {build:.1f} s")
        _time_verify(ws, ledger, runs)


def machine_speed() -> str:
    """A yardstick printed next to the timings: this shared VM's speed drifts by up to 1.6x."""
    from engine.adapters.keys import generate_key, verify_ed25519

    key = generate_key("yardstick", "trainer")
    msg = b"x" * 1500
    sig = key.sign(msg)
    pub = key.public_key.raw
    t0 = time.perf_counter()
    for _ in range(5000):
        verify_ed25519(pub, sig, msg)
    return f"machine yardstick: one Ed25519 verify (libsodium) = {(time.perf_counter() - t0) / 5000 * 1e6:.0f} µs"


def _time_verify(ws: Workspace, ledger, runs: int) -> None:
    from engine.provenance.verify import verify_workspace

    print(machine_speed())

    for attempt in (1, 2):  # the first pass may read the files from disk; the second from the page cache
        t0 = time.perf_counter()
        report = verify_workspace(ws)
        dt = time.perf_counter() - t0
        print(f"certus verify --all over {runs} runs (in-process, pass {attempt}): {dt:.2f} s  "
              f"ok={report.ok}  target < 5 s")
    print(f"  checked: {dict(sorted(report.checked.items()))}")
    if not report.ok:
        print("  first failures:", report.failures[:3])
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "engine", "-C", ws.root, "verify", "--json"],
                              capture_output=True, text=True, env={**os.environ})
        print(f"  `certus verify --json` (new process, incl. imports): {time.perf_counter() - t0:.2f} s "
              f"exit {proc.returncode}")
    for k in range(1, 15):
        n = 2 ** k
        if n > runs:
            break
        p = ledger.inclusion_proof(n - 1, n)
        c = ledger.consistency_proof(n // 2 + 1, n) if n >= 4 else None
        print(f"  n={n:6d}: inclusion proof {len(p.hashes):2d} hashes, consistency proof "
              f"{len(c.hashes) if c else 0:2d} hashes (log2 n = {k})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--keep", metavar="DIR", help="build the verify ledger in DIR and reuse it when already there")
    ap.add_argument("--skip-record", action="store_true", help="only the verify benchmark")
    ap.add_argument("--gates", action="store_true", help="each run also appends a signed gate result (issue 11)")
    ap.add_argument("--batch", type=int, default=1,
                    help="records per ledger append; 1 (default) = one signed checkpoint per run, as real runs do")
    a = ap.parse_args()
    if not a.skip_record:
        print(machine_speed())
        bench_record(a.stages)
    bench_verify(a.runs, a.batch, a.keep, a.gates)


if __name__ == "__main__":
    main()
