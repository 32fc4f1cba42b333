#!/usr/bin/env python3
"""Certus vs DVC on generated pipelines: wall time of the everyday commands.

For each N in --sizes the pipeline is generated twice (a Certus copy and a DVC copy, in
separate directories, each its own git repo) plus once more to time the bare stage
commands, then each engine is timed on:

    full repro            fresh workspace, every stage runs
    no-op repro           nothing changed (median of --repeat runs)
    no-op status          nothing changed (median of --repeat runs)
    param: status         after changing the middle stage's param (conf/config.yaml / params.yaml)
    param: repro          ... re-run what that change makes stale
    param revert: repro   the param back to its old value: both engines restore from their run cache
    touch: status         after os.utime() on work.py (a dep of every stage; content unchanged)
    touch: repro          ... nothing may run
    touch: 2nd status     the stat cache should serve everything again

    per-stage overhead    (full repro - bare commands) / N

Then three single scenarios: a 1 GiB input touched without a content change (bytes each
engine reads, from the kernel's per-process read counter, and Certus's own counter), a
directory of 10,000 small files (cold hash, no-op status), and Certus's parallel speedup on
a fan-out of sleeping stages (-j 1 vs -j 2; DVC's repro has no -j).

Quick default (about 5 minutes on 2 cores):

    .venv/bin/python benchmarks/compare_dvc.py

The full set (N = 10, 100, 500, 1000; DVC at 1000 is skipped if its full repro would
exceed --dvc-limit seconds, extrapolated from the smaller N):

    .venv/bin/python benchmarks/compare_dvc.py --full

Only the scaling table, or only some scenarios:

    .venv/bin/python benchmarks/compare_dvc.py --sizes 500 --scenarios table
    .venv/bin/python benchmarks/compare_dvc.py --scenarios big,many,parallel

Results: plain-text tables on stdout, JSON in benchmarks/out/compare_dvc.json.
Workspaces live under --workdir (default /tmp/certus-bench) and are deleted at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gen_pipeline import generate, set_param  # noqa: E402

BIN = os.path.dirname(os.path.abspath(sys.executable))
CERTUS = os.path.join(BIN, "certus")
DVC = os.path.join(BIN, "dvc")

# Runs an engine's CLI in-process and, at exit, appends the kernel's count of bytes this
# process read (rchar: every read() of every thread, page cache hits included) to $BENCH_IO.
_IO_WRAP = r"""
import atexit, os, sys
def _io():
    with open("/proc/self/io") as f:
        d = dict(l.split(": ") for l in f.read().splitlines())
    with open(os.environ["BENCH_IO"], "a") as f:
        f.write(d["rchar"].strip() + "\n")
atexit.register(_io)
eng = sys.argv[1]
if eng == "certus":
    from engine.cli.main import main
else:
    from dvc.cli import main
sys.exit(main(sys.argv[2:]))
"""


class Engine:
    def __init__(self, name: str, ws: str, env: dict[str, str], jobs: int | None) -> None:
        self.name, self.ws, self.env, self.jobs = name, ws, env, jobs

    def argv(self, what: str) -> list[str]:
        if self.name == "certus":
            a = [CERTUS, what]
            if what == "repro" and self.jobs:
                a += ["-j", str(self.jobs)]
            return a
        return [DVC, what]

    def run(self, what: str, *, timeout: float | None = None, io: bool = False,
            extra_env: dict[str, str] | None = None) -> dict:
        env = dict(self.env, **(extra_env or {}))
        argv = self.argv(what)
        io_path = None
        if io:
            io_path = os.path.join(os.path.dirname(self.ws), f".io-{self.name}")
            if os.path.exists(io_path):
                os.unlink(io_path)
            env["BENCH_IO"] = io_path
            argv = [sys.executable, "-c", _IO_WRAP, self.name, *argv[1:]]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, cwd=self.ws, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"wall": None, "rc": None, "timeout": timeout}
        wall = time.perf_counter() - t0
        res = {"wall": wall, "rc": p.returncode}
        out = p.stdout + p.stderr
        if p.returncode != 0:
            res["error"] = out[-2000:]
            print(f"  !! {self.name} {what} exited {p.returncode}:\n{out[-2000:]}", file=sys.stderr)
        if self.name == "certus":
            m = re.search(r"ran (\d+), restored (\d+), up to date (\d+)", out)
            if m:
                res["ran"], res["restored"], res["skipped"] = map(int, m.groups())
            m = re.search(r"bytes read: (\d+), files read: (\d+)", out)
            if m:
                res["bytes_read"], res["files_read"] = map(int, m.groups())
            if what == "status":
                res["stale"] = "Everything is up to date." not in out
        else:
            if what == "repro":
                res["ran"] = len(re.findall(r"^Running stage '", out, re.M))
                res["restored"] = len(re.findall(r"is cached - skipping run", out))
                res["skipped"] = len(re.findall(r"didn't change, skipping", out))
            if what == "status":
                res["stale"] = "up to date" not in out
        if io_path and os.path.exists(io_path):
            with open(io_path) as f:
                res["rchar"] = int(f.read().split()[-1])
        return res

    def repeat(self, what: str, n: int, **kw) -> dict:
        runs = [self.run(what, **kw) for _ in range(n)]
        walls = [r["wall"] for r in runs if r["wall"] is not None]
        res = dict(runs[-1])
        if walls:
            res["wall"] = statistics.median(walls)
            res["wall_min"] = min(walls)
            res["walls"] = walls
        return res


def engine_revision() -> str:
    """HEAD of the repository whose engine/ the certus console script imports, '+dirty' if engine/ has edits."""
    import engine

    repo = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=repo, capture_output=True,
                               text=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "engine"], cwd=repo, capture_output=True).stdout
        import hashlib

        return head + (f"+dirty:{hashlib.sha256(diff).hexdigest()[:8]}" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def base_env(workdir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # `python3` in stage commands = this venv
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = os.path.join(workdir, "dvc-site-cache")
    env.pop("CERTUS_DEBUG_READS", None)
    # Byte-code caching as on a normal install. This sandbox sets PYTHONDONTWRITEBYTECODE=1 and
    # engine/ has no __pycache__, so every certus start would recompile engine/*.py; a prefix
    # keeps the .pyc files out of the source tree (site-packages is compiled into it once, at warm-up).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(os.path.dirname(workdir.rstrip("/")) or "/tmp", "certus-bench-pycache")
    return env


def warm_up(workdir: str, env: dict[str, str]) -> None:
    """One tiny pipeline through both engines: fills the .pyc cache and the OS caches."""
    ceng, deng, info = make_pair(workdir, "warmup", env, 1, stages=3)
    for eng in (ceng, deng):
        eng.run("repro")
        eng.run("status")
        set_param(eng.ws, info["middle"], 2)
        eng.run("repro")
        eng.run("status")
    shutil.rmtree(os.path.join(workdir, "warmup"), ignore_errors=True)


def make_pair(workdir: str, tag: str, env: dict[str, str], jobs: int, **gen) -> tuple[Engine, Engine, dict]:
    cdir = os.path.join(workdir, tag, "certus")
    ddir = os.path.join(workdir, tag, "dvc")
    info = generate(cdir, formats=("certus",), git=True, **gen)
    # the DVC copy writes its own big file (a hardlink would share the inode, so the mtime too)
    src_many = os.path.join(cdir, "in", "many") if gen.get("many_files") else None
    generate(ddir, formats=("dvc",), git=True, dvc_init=True, many_source=src_many, **gen)
    denv = dict(env, DVC_SITE_CACHE_DIR=os.path.join(workdir, tag, "dvc-site-cache"))
    return Engine("certus", cdir, env, jobs), Engine("dvc", ddir, denv, None), info


def bare_command_time(workdir: str, tag: str, env: dict[str, str], **gen) -> dict:
    """Run every stage command once, in order, through /bin/sh, as the engines would."""
    d = os.path.join(workdir, tag, "bare")
    info = generate(d, formats=("dvc",), git=False, **gen)  # dvc format: work.py reads params.yaml
    t0 = time.perf_counter()
    for cmd in info["cmds"]:
        subprocess.run(["/bin/sh", "-c", cmd], cwd=d, env=env, check=True)
    total = time.perf_counter() - t0
    shutil.rmtree(d)
    return {"total": total, "per_stage": total / len(info["cmds"]), "n": len(info["cmds"])}


def touch(path: str) -> None:
    st = os.stat(path)
    t = time.time_ns()
    os.utime(path, ns=(t, max(t, st.st_mtime_ns + 1_000_000_000)))


def git_commit(ws: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "bench", "--allow-empty"], cwd=ws, check=True, capture_output=True)


# -- the scaling table ---------------------------------------------------------------------------

ROWS = [
    ("full", "full repro"),
    ("noop_repro", "no-op repro"),
    ("noop_status", "no-op status"),
    ("param_status", "param change: status"),
    ("param_repro", "param change: repro"),
    ("revert_repro", "param revert: repro"),
    ("touch_status", "touch work.py: status"),
    ("touch_repro", "touch work.py: repro"),
    ("touch_status2", "touch: next status"),
]


def scenario_table(eng: Engine, info: dict, repeat: int, timeout: float | None) -> dict:
    r: dict = {}
    ws = eng.ws
    r["full"] = eng.run("repro", timeout=timeout)
    if r["full"]["wall"] is None:
        return r
    if eng.name == "dvc":
        git_commit(ws)  # dvc.lock committed, as a user would
    r["noop_repro"] = eng.repeat("repro", repeat, timeout=timeout)
    r["noop_status"] = eng.repeat("status", repeat, timeout=timeout,
                                  extra_env={"CERTUS_DEBUG_READS": "1"} if eng.name == "certus" else None)
    set_param(ws, info["middle"], 2)
    # once: the first status after an edit is the one users wait for
    r["param_status"] = eng.run("status", timeout=timeout)
    r["param_repro"] = eng.run("repro", timeout=timeout)
    set_param(ws, info["middle"], 1)
    r["revert_repro"] = eng.run("repro", timeout=timeout)
    touch(os.path.join(ws, "work.py"))
    dbg = {"CERTUS_DEBUG_READS": "1"} if eng.name == "certus" else None
    r["touch_status"] = eng.run("status", timeout=timeout, extra_env=dbg)
    touch(os.path.join(ws, "work.py"))
    r["touch_repro"] = eng.run("repro", timeout=timeout)
    r["touch_status2"] = eng.repeat("status", repeat, timeout=timeout, extra_env=dbg)
    return r


def scenario_status_only(eng: Engine, info: dict, repeat: int, timeout: float | None) -> dict:
    """DVC without its (too slow) repro: outputs from the bare commands, dvc.lock from `dvc commit`."""
    ws = eng.ws
    t0 = time.perf_counter()
    for cmd in info["cmds"]:
        subprocess.run(["/bin/sh", "-c", cmd], cwd=ws, env=eng.env, check=True)
    p = subprocess.run([DVC, "commit", "-f", "-q"], cwd=ws, env=eng.env, capture_output=True, text=True,
                       timeout=timeout)
    r: dict = {"setup": {"wall": time.perf_counter() - t0, "rc": p.returncode, "how": "bare commands + dvc commit -f"}}
    if p.returncode != 0:
        print(f"  !! dvc commit exited {p.returncode}: {p.stdout[-1000:]}{p.stderr[-1000:]}", file=sys.stderr)
    git_commit(ws)
    r["noop_status"] = eng.repeat("status", repeat, timeout=timeout)
    set_param(ws, info["middle"], 2)
    # once: the first status after an edit is the one users wait for
    r["param_status"] = eng.run("status", timeout=timeout)
    set_param(ws, info["middle"], 1)
    touch(os.path.join(ws, "work.py"))
    r["touch_status"] = eng.run("status", timeout=timeout)
    r["touch_status2"] = eng.repeat("status", repeat, timeout=timeout)
    return r


def fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x:8.3f}" if x < 100 else f"{x:8.1f}")


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a <= 0:
        return "-"
    return f"{b / a:7.1f}x"


def counts(r: dict) -> str:
    if "ran" not in r:
        return ""
    return f"ran {r.get('ran', 0)}, restored {r.get('restored', 0)}"


def print_table(n: int, res: dict) -> None:
    bare = res["bare"]
    c, d = res["certus"], res.get("dvc")
    print(f"\nN = {n} stages ({res['shape']}, {res['files']} file(s) x {res['size']} B per output), "
          f"certus -j {res['jobs']}")
    print(f"bare stage commands: {bare['n']} x {bare['per_stage'] * 1000:.1f} ms = {bare['total']:.2f} s")
    if res.get("dvc_skipped"):
        print(f"DVC: repro skipped: {res.get('dvc_skipped')}")
    print(f"{'scenario':<24}{'certus s':>10}{'dvc s':>10}{'dvc/certus':>12}   certus / dvc stages")
    for key, label in ROWS:
        cr = c.get(key, {})
        dr = (d or {}).get(key, {})
        cw, dw = cr.get("wall"), dr.get("wall")
        note = ""
        if key in ("full", "param_repro", "revert_repro", "touch_repro", "noop_repro"):
            note = f"{counts(cr)} / {counts(dr)}" if d else counts(cr)
        if key.endswith("status") or key == "touch_status2":
            note = f"stale={cr.get('stale')}" + (f" / stale={dr.get('stale')}" if d else "")
            if "bytes_read" in cr:
                note += f"; certus read {cr['bytes_read']} B"
        print(f"{label:<24}{fmt_s(cw):>10}{fmt_s(dw):>10}{fmt_ratio(cw, dw):>12}   {note}")
    ov = res["overhead_ms"]
    dov = f"{ov['dvc']:.1f}" if ov.get("dvc") is not None else "-"
    print(f"{'per-stage overhead ms':<24}{ov['certus']:>10.1f}{dov:>10}"
          f"{fmt_ratio(ov['certus'], ov.get('dvc')):>12}   (full repro - bare commands) / N")
    dmv = f"{ov['dvc_marginal']:.1f}" if ov.get("dvc_marginal") is not None else "-"
    print(f"{'  marginal, ms':<24}{ov['certus_marginal']:>10.1f}{dmv:>10}"
          f"{fmt_ratio(ov['certus_marginal'], ov.get('dvc_marginal')):>12}   "
          "same, minus the no-op repro (start-up, config, graph)")


def run_sizes(args: argparse.Namespace, env: dict[str, str], out: dict, save) -> dict:
    dvc_rate: tuple[int, float] | None = None
    for n in args.sizes:
        gen = dict(stages=n, shape=args.shape, files=args.files, size=args.size)
        tag = f"n{n}"
        print(f"[bench] N={n}: generating ...", file=sys.stderr, flush=True)
        bare = bare_command_time(args.workdir, tag, env, **gen)
        ceng, deng, info = make_pair(args.workdir, tag, env, args.jobs, **gen)
        res: dict = {"n": n, "shape": args.shape, "files": args.files, "size": args.size, "jobs": args.jobs,
                     "bare": bare, "middle": info["middle"]}
        print(f"[bench] N={n}: certus ...", file=sys.stderr, flush=True)
        res["certus"] = scenario_table(ceng, info, args.repeat, None)
        skip = None
        if args.no_dvc:
            skip = "--no-dvc"
        elif args.dvc_limit <= 0:
            skip = "--dvc-limit 0"
        elif dvc_rate is not None:
            n0, t0 = dvc_rate
            est = t0 * (n / n0) ** 1.5  # DVC's repro grows faster than linearly with N
            if est > args.dvc_limit:
                skip = (f"estimated full repro {est:.0f} s > --dvc-limit {args.dvc_limit:.0f} s "
                        f"(from {t0:.0f} s at N={n0}, scaled by (N/{n0})^1.5)")
        if skip and not args.no_dvc:
            # Status still gets compared: run the commands bare, record them with `dvc commit`
            print(f"[bench] N={n}: dvc status only ({skip})", file=sys.stderr, flush=True)
            res["dvc"] = scenario_status_only(deng, info, args.dvc_repeat, args.dvc_timeout)
            res["dvc_skipped"] = skip + "; status rows only (outputs made by the bare commands + dvc commit)"
        elif skip:
            res["dvc"] = None
            res["dvc_skipped"] = skip
        else:
            print(f"[bench] N={n}: dvc ...", file=sys.stderr, flush=True)
            res["dvc"] = scenario_table(deng, info, args.dvc_repeat, args.dvc_timeout)
            if res["dvc"]["full"].get("wall") is None:
                res["dvc_skipped"] = f"full repro timed out after {args.dvc_timeout} s"
            else:
                dvc_rate = (n, res["dvc"]["full"]["wall"])
        ov = {"certus": (res["certus"]["full"]["wall"] - bare["total"]) / n * 1000,
              "certus_marginal": (res["certus"]["full"]["wall"] - bare["total"]
                                  - res["certus"]["noop_repro"]["wall"]) / n * 1000}
        if res.get("dvc") and res["dvc"].get("full", {}).get("wall") is not None:
            ov["dvc"] = (res["dvc"]["full"]["wall"] - bare["total"]) / n * 1000
            ov["dvc_marginal"] = (res["dvc"]["full"]["wall"] - bare["total"]
                                  - res["dvc"]["noop_repro"]["wall"]) / n * 1000
        res["overhead_ms"] = ov
        print_table(n, res)
        out[str(n)] = res
        save()
        if not args.keep:
            shutil.rmtree(os.path.join(args.workdir, tag), ignore_errors=True)
    return out


# -- single scenarios ---------------------------------------------------------------------------

def scenario_big(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """One stage reads a big file; touch it (no content change) and watch what gets read."""
    print(f"[bench] big input: generating 2 x {args.big_gib} GiB ...", file=sys.stderr, flush=True)
    ceng, deng, _ = make_pair(args.workdir, "big", env, args.jobs, stages=1, big_input_gib=args.big_gib)
    size = os.path.getsize(os.path.join(ceng.ws, "in", "big.bin"))
    res: dict = {"size": size}
    dbg = {"CERTUS_DEBUG_READS": "1"}
    for eng in (ceng, deng):
        r: dict = {}
        extra = dbg if eng.name == "certus" else None
        r["full"] = eng.run("repro", io=True, timeout=args.dvc_timeout)
        r["noop_status"] = eng.run("status", io=True, extra_env=extra)
        big = os.path.join(eng.ws, "in", "big.bin")
        touch(big)
        r["touch_status"] = eng.run("status", io=True, extra_env=extra)
        r["touch_status2"] = eng.run("status", io=True, extra_env=extra)
        touch(big)
        r["touch_repro"] = eng.run("repro", io=True, timeout=args.dvc_timeout)
        r["after_repro_status"] = eng.run("status", io=True, extra_env=extra)
        base = r["noop_status"].get("rchar", 0)
        for k in ("touch_status", "touch_status2", "after_repro_status"):
            if "rchar" in r[k]:
                r[k]["rchar_minus_noop"] = r[k]["rchar"] - base
        res[eng.name] = r
    print(f"\nBig input: one stage depends on a {size / 2**30:.2f} GiB file; touched (os.utime) without "
          "a content change")
    print("rchar = bytes the process read() (kernel counter), minus the same command's no-op run; "
          "certus counter = CERTUS_DEBUG_READS")
    print(f"{'step':<28}{'certus s':>10}{'certus rchar-noop':>20}{'certus counter':>16}"
          f"{'dvc s':>10}{'dvc rchar-noop':>18}")
    for k, label in (("full", "full repro"), ("noop_status", "no-op status"),
                     ("touch_status", "touch, then status"), ("touch_status2", "next status"),
                     ("touch_repro", "touch, then repro"), ("after_repro_status", "status after that repro")):
        c, d = res["certus"][k], res["dvc"][k]
        cdelta = c.get("rchar_minus_noop", "")
        ddelta = d.get("rchar_minus_noop", "")
        if k in ("full", "touch_repro"):
            cdelta = f"rchar {c.get('rchar', '?')}"
            ddelta = f"rchar {d.get('rchar', '?')}"
        print(f"{label:<28}{fmt_s(c['wall']):>10}{str(cdelta):>20}{str(c.get('bytes_read', '')):>16}"
              f"{fmt_s(d['wall']):>10}{str(ddelta):>18}")
    print("(touch, then repro: " + f"certus {counts(res['certus']['touch_repro'])}; "
          f"dvc {counts(res['dvc']['touch_repro'])})")
    if not args.keep:
        shutil.rmtree(os.path.join(args.workdir, "big"), ignore_errors=True)
    return res


def scenario_many(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """One stage depends on a directory of many small files: cold hash, then no-op status."""
    print(f"[bench] many files: generating {args.many} files ...", file=sys.stderr, flush=True)
    ceng, deng, _ = make_pair(args.workdir, "many", env, args.jobs, stages=1, many_files=args.many)
    res: dict = {"files": args.many}
    dbg = {"CERTUS_DEBUG_READS": "1"}
    for eng in (ceng, deng):
        r: dict = {}
        extra = dbg if eng.name == "certus" else None
        r["full"] = eng.run("repro", timeout=args.dvc_timeout)
        # cold: drop the engine's stat cache (Certus .certus/state.db*, DVC's site cache dir)
        if eng.name == "certus":
            for f in os.listdir(os.path.join(eng.ws, ".certus")):
                if f.startswith("state.db"):
                    os.unlink(os.path.join(eng.ws, ".certus", f))
        else:
            shutil.rmtree(eng.env["DVC_SITE_CACHE_DIR"], ignore_errors=True)
        r["cold_status"] = eng.run("status", extra_env=extra)
        r["noop_status"] = eng.repeat("status", args.repeat, extra_env=extra)
        res[eng.name] = r
    print(f"\nMany files: one stage depends on a directory of {args.many} files of 256 B")
    print(f"{'step':<34}{'certus s':>10}{'dvc s':>10}{'dvc/certus':>12}   certus bytes/files read")
    for k, label in (("full", "full repro (incl. stage cmd)"), ("cold_status", "status, stat cache dropped"),
                     ("noop_status", "no-op status (warm)")):
        c, d = res["certus"][k], res["dvc"][k]
        note = f"{c.get('bytes_read', '')}/{c.get('files_read', '')}" if "bytes_read" in c else ""
        print(f"{label:<34}{fmt_s(c['wall']):>10}{fmt_s(d['wall']):>10}{fmt_ratio(c['wall'], d['wall']):>12}   {note}")
    if not args.keep:
        shutil.rmtree(os.path.join(args.workdir, "many"), ignore_errors=True)
    return res


def scenario_parallel(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Fan-out of sleeping stages: certus -j 1 vs -j 2, each on a fresh workspace."""
    n, sleep = args.par_stages, args.par_sleep
    res: dict = {"stages": n, "sleep": sleep}
    for j in (1, 2):
        ws = os.path.join(args.workdir, f"par-j{j}")
        generate(ws, stages=n, shape="fanout", stage_sleep=sleep, formats=("certus",), git=True)
        eng = Engine("certus", ws, env, j)
        res[f"j{j}"] = eng.run("repro")
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    # critical path with 2 workers: source, ceil(middle/2) waves, join
    ideal1 = n * sleep
    ideal2 = (2 + -(-(n - 2) // 2)) * sleep
    w1, w2 = res["j1"]["wall"], res["j2"]["wall"]
    res.update({"ideal_j1": ideal1, "ideal_j2": ideal2, "ratio": w2 / w1, "ideal_ratio": ideal2 / ideal1})
    print(f"\nParallel: fan-out of {n} stages (source, {n - 2} independent, join), each sleeping {sleep} s; "
          "fresh workspace each")
    print(f"{'':<12}{'wall s':>10}{'sleep-only s':>14}{'overhead s':>12}")
    print(f"{'-j 1':<12}{w1:>10.3f}{ideal1:>14.3f}{w1 - ideal1:>12.3f}")
    print(f"{'-j 2':<12}{w2:>10.3f}{ideal2:>14.3f}{w2 - ideal2:>12.3f}")
    print(f"-j 2 / -j 1 = {w2 / w1:.3f} (ideal for this shape {ideal2 / ideal1:.3f}; 0.5 would need "
          "the serial source and join to vanish)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Certus vs DVC wall-time comparison")
    ap.add_argument("--sizes", default="10,100", help="comma-separated N (default 10,100)")
    ap.add_argument("--full", action="store_true", help="N = 10,100,500,1000")
    ap.add_argument("--shape", choices=("chain", "fanout"), default="chain")
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--jobs", type=int, default=1, help="certus repro -j (default 1: DVC is sequential)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per no-op measurement (median reported)")
    ap.add_argument("--dvc-repeat", type=int, default=None,
                    help="runs per no-op measurement for DVC (default: --repeat; DVC status at N=1000 takes minutes)")
    ap.add_argument("--scenarios", default="table,big,many,parallel")
    ap.add_argument("--big-gib", type=float, default=1.0)
    ap.add_argument("--many", type=int, default=10000)
    ap.add_argument("--par-stages", type=int, default=22)
    ap.add_argument("--par-sleep", type=float, default=0.5)
    ap.add_argument("--no-dvc", action="store_true", help="certus only in the scaling table")
    ap.add_argument("--dvc-limit", type=float, default=600.0,
                    help="skip DVC's repro (status rows only) at an N whose extrapolated full repro exceeds "
                         "this many seconds; 0: always skip it")
    ap.add_argument("--dvc-timeout", type=float, default=1800.0, help="hard limit per DVC command")
    ap.add_argument("--workdir", default="/tmp/certus-bench")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "compare_dvc.json"))
    ap.add_argument("--keep", action="store_true", help="keep the generated workspaces")
    args = ap.parse_args(argv)
    args.sizes = [10, 100, 500, 1000] if args.full else [int(x) for x in args.sizes.split(",") if x]
    if args.dvc_repeat is None:
        args.dvc_repeat = args.repeat
    scen = set(args.scenarios.split(","))
    os.makedirs(args.workdir, exist_ok=True)
    env = base_env(args.workdir)
    t0 = time.time()
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "args": {k: v for k, v in vars(args).items()}}
    ver = subprocess.run([DVC, "--version"], capture_output=True, text=True, env=env)
    results["machine"]["dvc"] = ver.stdout.strip()
    results["certus_commit"] = engine_revision()
    print(f"certus at {results['certus_commit']}", file=sys.stderr)
    print(f"certus vs dvc {results['machine']['dvc']}; {os.cpu_count()} CPUs; workdir {args.workdir}")
    print("[bench] warming up (byte-code cache) ...", file=sys.stderr, flush=True)
    warm_up(args.workdir, env)
    def save() -> None:  # after every part, so an interrupted run keeps what it measured
        results["elapsed_s"] = time.time() - t0
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True, default=str)

    if "table" in scen:
        results["sizes"] = {}
        run_sizes(args, env, results["sizes"], save)
    if "big" in scen:
        results["big"] = scenario_big(args, env)
        save()
    if "many" in scen:
        results["many"] = scenario_many(args, env)
        save()
    if "parallel" in scen:
        results["parallel"] = scenario_parallel(args, env)
    end_rev = engine_revision()
    if end_rev != results["certus_commit"]:
        results["certus_commit_at_end"] = end_rev
        print(f"WARNING: engine/ changed during the run: {results['certus_commit']} -> {end_rev}")
    save()
    print(f"\nwrote {args.out} ({results['elapsed_s']:.0f} s)")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
