"""Per-stage cost of confinement: ruleset build + restrict + post-run check (target < 1 ms).

    .venv/bin/python benchmarks/bench_sandbox.py [--stages 200] [--certus-home DIR]

1. The sandbox's own steps, no process: RunSandbox.stage() (placeholders, write ruleset, temp
   dir), the confined spawn thread (no_new_privs + two landlock_restrict_self), finish()
   (placeholder check, temp dir removal, scan) — mean per stage.
2. End to end through LocalExecutor: N stages running `true`, one at a time, with
   certus.sandbox=auto vs off; the difference per stage is what confinement adds (incl. the
   token kill scan). Everything lives under a temp dir that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.adapters.local import LocalExecutor  # noqa: E402
from engine.adapters.sandbox import RunSandbox, landlock_abi  # noqa: E402
from engine.run.executor import StageJob  # noqa: E402


def steps(ws: str, n: int) -> dict[str, float]:
    rs = RunSandbox("auto", ws)
    t_stage, t_spawn, t_finish = [], [], []
    for i in range(n):
        os.makedirs(os.path.join(ws, "out"), exist_ok=True)
        outs = ((os.path.join(ws, "out", f"o{i}.txt"), "file"), (os.path.join(ws, "out", f"d{i}"), "dir"))
        t0 = time.perf_counter()
        box = rs.stage(outs, [])
        t1 = time.perf_counter()
        box.spawn(lambda: None)
        t2 = time.perf_counter()
        box.finish()
        t3 = time.perf_counter()
        t_stage.append(t1 - t0)
        t_spawn.append(t2 - t1)
        t_finish.append(t3 - t2)
    rs.close()
    return {"stage()": statistics.mean(t_stage), "spawn (restrict)": statistics.mean(t_spawn),
            "finish()": statistics.mean(t_finish)}


def end_to_end(ws: str, n: int, mode: str) -> float:
    ex = LocalExecutor(1, echo=open(os.devnull, "w"), sandbox=mode, workspace=ws, warn=lambda m: None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTUS_")}
    t0 = time.perf_counter()
    for i in range(n):
        out = os.path.join(ws, "e2e", f"o{i}.txt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        job = StageJob(f"s{i}", f"echo {i} > {out}", ws, env, os.path.join(ws, "logs", f"s{i}.log"),
                       outs=((out, "file"),))
        res = ex.submit(job).result()
        assert res.returncode == 0 and not res.error, res
    dt = (time.perf_counter() - t0) / n
    ex.shutdown()
    shutil.rmtree(os.path.join(ws, "e2e"), ignore_errors=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=200)
    ap.add_argument("--certus-home", help="a $CERTUS_HOME to deny (default: a fresh one with a keys/ dir in $HOME's "
                                          "place, so the read layer has real siblings to enumerate)")
    a = ap.parse_args()
    abi = landlock_abi()
    print(f"Landlock ABI {abi or 'none'}; {a.stages} stages; {os.cpu_count()} cores")
    if not abi:
        print("no Landlock: nothing to measure beyond the unconfined path")
    base = tempfile.mkdtemp(prefix="bench-sandbox-")
    try:
        ws = os.path.join(base, "ws")
        os.makedirs(ws)
        home = a.certus_home or os.path.join(os.path.expanduser("~"), ".certus")
        os.environ["CERTUS_HOME"] = home
        if abi:
            for k, v in steps(ws, a.stages).items():
                print(f"  {k:<18} {v * 1e6:8.1f} µs/stage")
        off = statistics.median(end_to_end(ws, a.stages, "off") for _ in range(3))
        on = statistics.median(end_to_end(ws, a.stages, "auto") for _ in range(3))
        print(f"  end to end, `echo > out` stage: off {off * 1e3:.2f} ms/stage, sandboxed {on * 1e3:.2f} ms/stage, "
              f"overhead {(on - off) * 1e3:+.2f} ms/stage (median of 3 x {a.stages})")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
