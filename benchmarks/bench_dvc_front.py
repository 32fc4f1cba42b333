"""``certus status`` on a DVC project after dvc.lock adoption vs ``dvc status``, same project, same run.

    .venv/bin/python benchmarks/bench_dvc_front.py [--stages 500] [--repeat 5] [--keep DIR]

Builds a git + DVC project of N chain stages (stage i reads stage i-1's output), writes every
output and lets ``dvc commit -f`` record dvc.lock (as if ``dvc repro`` had run, without N
process starts), adopts it with ``certus import-dvc``, then times the two status commands
(median of --repeat, each a fresh process) and checks both say up to date.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)


def run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
    return r


def build(root: str, n: int) -> None:
    os.makedirs(os.path.join(root, "out"))
    with open(os.path.join(root, "params.yaml"), "w") as f:
        f.write("chain:\n  step: 1\n")
    lines = ["stages:"]
    for i in range(n):
        dep = f"out/s{i - 1}.txt" if i else "params.yaml"
        lines += [f"  s{i}:", f"    cmd: cat {dep} > out/s{i}.txt && echo {i} >> out/s{i}.txt",
                  f"    deps: [{dep}]", "    params: [chain.step]", f"    outs: [out/s{i}.txt]"]
    with open(os.path.join(root, "dvc.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    prev = b"chain:\n  step: 1\n"
    for i in range(n):
        prev = prev + f"{i}\n".encode()
        with open(os.path.join(root, "out", f"s{i}.txt"), "wb") as f:
            f.write(prev)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "commit", "-f", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        run(cmd, root)


def timed(cmd: list[str], cwd: str, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        t = time.perf_counter()
        out = run(cmd, cwd).stdout
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", help="build in (or reuse) this directory")
    a = ap.parse_args()
    root = a.keep or tempfile.mkdtemp(prefix="certus-dvcfront-")
    os.environ.setdefault("CERTUS_HOME", os.path.join(root, ".bench-home"))
    try:
        if not os.path.exists(os.path.join(root, "dvc.yaml")):
            t = time.perf_counter()
            build(root, a.stages)
            print(f"built {a.stages} chain stages + dvc.lock (dvc commit) in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        run([sys.executable, "-m", "engine", "import-dvc"], root)
        print(f"certus import-dvc (adopt {a.stages} dvc.lock entries): {time.perf_counter() - t:.2f} s")
        c, c_out = timed([sys.executable, "-m", "engine", "status"], root, a.repeat)
        d, d_out = timed(["dvc", "status"], root, a.repeat)
        assert "up to date" in c_out, c_out
        assert "up to date" in d_out, d_out
        print(f"certus status: {c:.3f} s   dvc status: {d:.3f} s   ({d / c:.1f}x)   "
              f"[{a.stages} stages, median of {a.repeat}]")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
