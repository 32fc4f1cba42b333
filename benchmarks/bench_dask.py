"""The Dask executor beside the local one: dispatch overhead, many stages, fan-out speed-up.

    .venv/bin/python benchmarks/bench_dask.py [--chain 40] [--many 1000] [--fanout 8] [--skip-many]

A LocalCluster (loopback, worker processes, one thread each) is started before any timing, in
a child process, as an existing cluster would be, and repro is pointed at it with ``--scheduler``.

1. Dispatch overhead: a chain of ``--chain`` stages running ``echo`` (each waits for the
   previous one, so nothing overlaps); wall time per stage, local ``-j 1`` vs Dask (shared
   and staged mode, 2 workers), after one warm-up run. Per stage = (T(all) - T(first half)) /
   half, so once-per-run costs (connecting) drop out. ``--rounds`` rounds interleave the three
   with Dask's own no-op round trip and the stage's command with nothing of Certus, as a plain
   subprocess and as a Dask task (the machine may be shared: the best of each is taken); the
   overhead beyond local is split into Dask's own (the command as a Dask task less the plain
   subprocess) and ours (the rest).
2. ``--many`` independent trivial stages end to end (first run): local ``-j 2`` vs Dask shared
   (2 workers, -j 2 and -j 8: Dask queues more without hurting).
3. Fan-out: ``--fanout`` independent stages of ``sleep 0.5``: local -j 1 / -j 2 vs Dask with
   1 worker / 2 workers; the speed-up from the second worker.

Everything lives in a temp dir that is removed at the end. Each workspace has no trust.json,
so nothing is signed: these are executor figures, not provenance figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # the clusters' INFO lines would drown the figures

from engine.cli.main import main  # noqa: E402


def workspace(root: str, stages: dict[str, tuple[str, list[str]]], executor: str = "") -> str:
    """A git workspace whose spec has ``stages`` (name -> (cmd, deps)); each writes out/NAME.txt."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "conf"))
    os.makedirs(os.path.join(root, "pipelines"))
    with open(os.path.join(root, "conf/config.yaml"), "w") as f:
        f.write("certus:\n  pipeline: p\n" + (f"  executor: {executor}\n" if executor else ""))
    lines = ["stages:"]
    for name, (cmd, deps) in stages.items():
        lines += [f"  {name}:", f"    cmd: {cmd}", f"    outs: [out/{name}.txt]"]
        if deps:
            lines.append(f"    deps: [{', '.join(deps)}]")
    with open(os.path.join(root, "pipelines/p.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, ".gitignore"), "w") as f:
        f.write(".certus/\n/out/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    return root


def repro(root: str, *args: str) -> float:
    """Seconds for one ``certus repro`` (in this process, output swallowed); fails loudly."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(["-C", root, "repro", *args])
    took = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"repro {' '.join(args)} failed:\n{err.getvalue()[-2000:]}")
    return took


def chain(n: int) -> dict[str, tuple[str, list[str]]]:
    st = {}
    for i in range(n):
        dep = [f"out/s{i - 1:04d}.txt"] if i else []
        st[f"s{i:04d}"] = (f"echo s{i} > out/s{i:04d}.txt" + (f" && cat {dep[0]} >> out/s{i:04d}.txt" if dep else ""),
                           dep)
    return st


def flat(n: int, cmd: str) -> dict[str, tuple[str, list[str]]]:
    return {f"s{i:04d}": (cmd.format(name=f"s{i:04d}"), []) for i in range(n)}


def cluster(workers: int) -> tuple[subprocess.Popen[str], str]:
    """A LocalCluster in a child process (its scheduler off this process's GIL, as a real one is)."""
    code = ("import os, sys, distributed; c = distributed.LocalCluster(n_workers=int(sys.argv[1]), "
            "threads_per_worker=1, processes=True, host='127.0.0.1', dashboard_address=':0'); "
            "print(c.scheduler_address, flush=True); sys.stdin.read(); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(workers)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def noop_roundtrip(addr: str, n: int = 40, as_executor: bool = False) -> float:
    """Seconds for one no-op task, one at a time: submit, then its result (a plain client), or, as
    the executor's client does it, sending at once and waiting only for Dask's "finished"."""
    import threading
    import uuid

    import distributed

    tag = uuid.uuid4().hex[:8]
    with distributed.Client(addr, set_as_default=False) as c:
        c.submit(int, 0, key=f"warm-{tag}", pure=False).result()
        if as_executor:
            c.scheduler_comm.interval = 0.001
        t0 = time.perf_counter()
        for i in range(n):
            fut = c.submit(int, i, key=f"noop-{tag}-{i}", pure=False)
            if as_executor:
                done = threading.Event()
                fut.add_done_callback(lambda _, done=done: done.set())
                done.wait()
            else:
                fut.result()
        return (time.perf_counter() - t0) / n


def _sh(cmd: str) -> int:
    return subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL).returncode


def bare_command(addr: str, scratch: str, n: int = 20) -> tuple[float, float]:
    """Seconds per stage-like command with nothing of Certus: a plain subprocess here, and the same
    as a Dask task (its client sending at once; submit to 'finished'), one at a time."""
    import threading
    import uuid

    import distributed

    os.makedirs(scratch, exist_ok=True)
    cmd = f"echo x > {scratch}/a.txt && cat {scratch}/a.txt >> {scratch}/b.txt"
    t0 = time.perf_counter()
    for _ in range(n):
        _sh(cmd)
    local = (time.perf_counter() - t0) / n
    tag = uuid.uuid4().hex[:8]
    with distributed.Client(addr, set_as_default=False) as c:
        c.submit(_sh, "true", key=f"warm-{tag}", pure=False).result()
        c.scheduler_comm.interval = 0.001
        t0 = time.perf_counter()
        for i in range(n):
            done = threading.Event()
            c.submit(_sh, cmd, key=f"sh-{tag}-{i}", pure=False).add_done_callback(lambda _, d=done: d.set())
            done.wait()
        return local, (time.perf_counter() - t0) / n


def row(label: str, secs: float, n: int) -> None:
    print(f"  {label:<34} {secs:8.2f} s   {1000 * secs / n:8.1f} ms/stage")


def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="certus-bench-dask-")
    store = os.path.join(tmp, "store")
    two, addr2 = cluster(2)
    one, addr1 = cluster(1)
    try:
        print(f"cores: {os.cpu_count()}; clusters: 2 workers at {addr2}, 1 worker at {addr1} (1 thread each)")

        print(f"\n1. dispatch: a chain of {args.chain} trivial stages (no overlap); per stage = (T(all) - T(first "
              f"half)) / {args.chain // 2}, so the once-per-run costs (connecting to the scheduler) drop out")
        half = f"s{args.chain // 2 - 1:04d}"
        ws = workspace(os.path.join(tmp, "chain"), chain(args.chain))
        ws_st = workspace(os.path.join(tmp, "chain-st"), chain(args.chain),
                          executor=f"{{kind: dask, mode: staged, store: {store}}}")
        repro(ws, "-j", "1")  # warm: config composed, spec parsed and cached, as in a user's workspace
        repro(ws_st, "--scheduler", addr2, "-j", "1")  # likewise, and the store holds the deps
        print(f"  {args.rounds} rounds, the three executors and Dask's bare round trip interleaved in each (the "
              "machine may be shared: the best time of each)")
        per: dict[str, list[float]] = {}
        runs: dict[str, tuple[list[float], list[float]]] = {}
        for _ in range(args.rounds):
            for label, root, extra in (("local -j 1", ws, ["--executor", "local"]),
                                       ("dask shared, 2 workers", ws, ["--scheduler", addr2]),
                                       ("dask staged, 2 workers", ws_st, ["--scheduler", addr2])):
                full = repro(root, "-f", "--no-run-cache", "-j", "1", *extra)
                part = repro(root, "-f", "--no-run-cache", "-j", "1", *extra, half)
                runs.setdefault(label, ([], []))[0].append(full)
                runs[label][1].append(part)
            per.setdefault("bare", []).append(noop_roundtrip(addr2))
            per.setdefault("floor", []).append(noop_roundtrip(addr2, as_executor=True))
            here, there = bare_command(addr2, os.path.join(tmp, "bare"))
            per.setdefault("cmd here", []).append(here)
            per.setdefault("cmd on dask", []).append(there)
        best = {label: min(v) for label, v in per.items()}
        for label, (full, part) in runs.items():  # the best whole chain less the best half chain
            best[label] = (min(full) - min(part)) / (args.chain // 2)
            print(f"  {label:<34} {1000 * best[label]:6.1f} ms/stage   (all: best {min(full):.2f} s of "
                  f"{', '.join(f'{x:.2f}' for x in full)}; half: best {min(part):.2f} s)")
        base, rt, floor = best["local -j 1"], best["bare"], best["floor"]
        print(f"  Dask's own round trip for a no-op task, one at a time, best of the rounds: submit + result "
              f"{1000 * rt:.1f} ms ({', '.join(f'{1000 * x:.1f}' for x in per['bare'])}); submit + 'finished' "
              f"only, the client sending at once, as the executor uses Dask: {1000 * floor:.1f} ms "
              f"({', '.join(f'{1000 * x:.1f}' for x in per['floor'])})")
        own = best["cmd on dask"] - best["cmd here"]
        print(f"  the stage's command with nothing of Certus: a subprocess here {1000 * best['cmd here']:.1f} ms, "
              f"the same as a Dask task (submit to 'finished') {1000 * best['cmd on dask']:.1f} ms: Dask's own "
              f"cost per task, idle gaps included as in a chain, {1000 * own:+.1f} ms")
        for mode in ("shared", "staged"):
            over = best[f"dask {mode}, 2 workers"] - base
            print(f"  overhead per stage beyond local, {mode}: {1000 * over:+.1f} ms = Dask's own {1000 * own:+.1f} "
                  f"ms + ours {1000 * (over - own):+.1f} ms")

        if not args.skip_many:
            n = args.many
            print(f"\n2. {n} independent trivial stages, first run end to end")
            ws = workspace(os.path.join(tmp, "many"), flat(n, "echo {name} > out/{name}.txt"))
            row("local -j 2", repro(ws, "-j", "2", "--no-run-cache"), n)
            row("dask shared, 2 workers, -j 2", repro(ws, "-f", "--no-run-cache", "--scheduler", addr2, "-j", "2"), n)
            row("dask shared, 2 workers, -j 8", repro(ws, "-f", "--no-run-cache", "--scheduler", addr2, "-j", "8"), n)
            row("no-op repro (all up to date)", repro(ws, "--scheduler", addr2), n)

        n = args.fanout
        print(f"\n3. fan-out: {n} independent stages of sleep 0.5 (ideal: {n * 0.5:.1f} s serial)")
        ws = workspace(os.path.join(tmp, "fan"), flat(n, "sleep 0.5 && echo {name} > out/{name}.txt"))
        figures = {
            "local -j 1": repro(ws, "-j", "1", "--no-run-cache"),
            "local -j 2": repro(ws, "-f", "--no-run-cache", "-j", "2"),
            "dask, 1 worker (-j 2)": repro(ws, "-f", "--no-run-cache", "--scheduler", addr1, "-j", "2"),
            "dask, 2 workers (-j 2)": repro(ws, "-f", "--no-run-cache", "--scheduler", addr2, "-j", "2"),
        }
        for label, secs in figures.items():
            row(label, secs, n)
        dask_up = figures["dask, 1 worker (-j 2)"] / figures["dask, 2 workers (-j 2)"]
        print(f"  speed-up 1 -> 2 workers: dask {dask_up:.2f}x, "
              f"local -j 1 -> -j 2 {figures['local -j 1'] / figures['local -j 2']:.2f}x")
    finally:
        for c in (two, one):
            with contextlib.suppress(Exception):
                c.communicate("", timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chain", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5, help="section 1: interleaved rounds, best taken")
    p.add_argument("--many", type=int, default=1000)
    p.add_argument("--fanout", type=int, default=8)
    p.add_argument("--skip-many", action="store_true")
    run(p.parse_args())
