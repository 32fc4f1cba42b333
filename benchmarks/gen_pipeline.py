#!/usr/bin/env python3
"""Generate a synthetic pipeline in both Certus and DVC form, from one description.

One directory receives, side by side:

    work.py                  the stage command (a tiny, deterministic, stdlib-only script)
    in/seed.txt              the seed input of the first stage
    in/big.bin               --big-input-gib X: an X GiB input file (stage "big" reads it)
    in/many/                 --many-files M: a directory of M small files (stage "many" reads it)
    conf/config.yaml         Certus: Hydra config, `certus: {pipeline: bench}` + one param per stage
    pipelines/bench.yaml     Certus: the spec
    dvc.yaml, params.yaml    DVC: the same stages, the same commands, the same param values

Shapes (N = --stages):

    chain   s0001 <- s0002 <- ... <- sN: each stage reads the previous stage's output
            (s0001 reads in/seed.txt). Changing the middle stage's param re-runs N/2+1 stages.
    fanout  s0001 is the source (reads in/seed.txt); s0002 .. s(N-1) each read s0001's
            output and nothing else (independent of each other); sN joins all of them.
            Changing a middle stage's param re-runs that stage and the join. Needs N >= 3.

Every stage also depends on work.py. --big-input-gib and --many-files add one extra stage
each ("big", "many"), a leaf that nothing else reads, so the main shape keeps N stages.

Stage command (identical for both engines):

    python3 -S work.py NAME OUT DEP [DEP ...]

work.py reads the stage's param (from $CERTUS_PARAMS under Certus, from params.yaml under
DVC: the values are the same), hashes every byte of its deps, optionally sleeps
(--stage-sleep), and writes OUT: one file of --size bytes when --files is 1, else a
directory of --files files of --size bytes each. Content = f(stage name, param, SHA-256 of
the input bytes, file index), so a change upstream propagates and an identical re-run
writes identical bytes (early cutoff works).

Usage:

    python benchmarks/gen_pipeline.py /tmp/ws --stages 100 --shape chain
    python benchmarks/gen_pipeline.py /tmp/ws --stages 10 --big-input-gib 1 --many-files 10000
    python benchmarks/gen_pipeline.py /tmp/ws --stages 20 --shape fanout --stage-sleep 0.5 --git --dvc-init

Library use: ``generate(dest, **options)`` (benchmarks/compare_dvc.py does this).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

__all__ = ["generate", "stage_names", "middle_stage", "set_param", "WORK_PY"]

WORK_PY = r'''#!/usr/bin/env python3
"""Synthetic benchmark stage: python3 -S work.py NAME OUT DEP [DEP ...] (generated; do not edit)."""
import hashlib
import json
import os
import sys
import time

FILES = {files}
SIZE = {size}
SLEEP = {sleep}


def param(name):
    path = os.environ.get("CERTUS_PARAMS")
    if path:  # Certus: {{"s0001": {{"p": 1}}}}
        with open(path, encoding="utf-8") as f:
            return json.load(f)[name]["p"]
    # DVC: params.yaml, one generated line per stage: "s0001: {{p: 1}}"
    with open("params.yaml", encoding="utf-8") as f:
        for line in f:
            if line.startswith(name + ":"):
                return json.loads(line.split("p:", 1)[1].strip().rstrip("}}").strip())
    raise SystemExit(f"work.py: no param for {{name}}")


def feed(h, path):
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                h.update(os.path.relpath(p, path).encode() + b"\0")
                feed(h, p)
    else:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)


def main():
    name, out, deps = sys.argv[1], sys.argv[2], sys.argv[3:]
    h = hashlib.sha256()
    for d in deps:
        if d == "work.py":
            continue
        h.update(d.encode() + b"\0")
        feed(h, d)
    p = param(name)
    base = f"{{name}}|{{p!r}}|{{h.hexdigest()}}".encode()
    if SLEEP:
        time.sleep(SLEEP)

    def body(i):
        d = hashlib.sha256(base + b"|%d" % i).digest()
        return (d * (SIZE // len(d) + 1))[:SIZE]

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if FILES == 1:
        with open(out, "wb") as f:
            f.write(body(0))
    else:
        os.makedirs(out, exist_ok=True)
        for i in range(FILES):
            with open(os.path.join(out, f"part-{{i:05d}}.bin"), "wb") as f:
                f.write(body(i))


main()
'''


def stage_names(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"s{i:0{width}d}" for i in range(1, n + 1)]


def middle_stage(n: int) -> str:
    """The stage whose param the benchmarks change: the middle of the chain/fan."""
    return stage_names(n)[max(0, (n - 1) // 2) if n > 2 else n - 1]


def _stages(n: int, shape: str, big: bool, many: bool, python: str) -> list[dict]:
    names = stage_names(n)
    out = lambda s: f"out/{s}"  # noqa: E731
    stages = []
    for i, s in enumerate(names):
        if shape == "chain":
            inputs = ["in/seed.txt"] if i == 0 else [out(names[i - 1])]
        elif shape == "fanout":
            if i == 0:
                inputs = ["in/seed.txt"]
            elif i < n - 1:
                inputs = [out(names[0])]
            else:
                inputs = [out(m) for m in names[1:-1]]
        else:
            raise ValueError(f"unknown shape {shape!r}")
        stages.append({"name": s, "inputs": inputs, "out": out(s)})
    if big:
        stages.append({"name": "big", "inputs": ["in/big.bin"], "out": "out/big"})
    if many:
        stages.append({"name": "many", "inputs": ["in/many"], "out": "out/many"})
    for st in stages:
        st["cmd"] = f"{python} -S work.py {st['name']} {st['out']} {' '.join(st['inputs'])}"
        st["deps"] = ["work.py", *st["inputs"]]
    return stages


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _spec_yaml(stages: list[dict]) -> str:
    lines = ["stages:"]
    for st in stages:
        lines += [
            f"  {st['name']}:",
            f"    cmd: {st['cmd']}",
            f"    deps: {_flow(st['deps'])}",
            f"    outs: {_flow([st['out']])}",
            f"    params: [{st['name']}.p]",
        ]
    return "\n".join(lines) + "\n"


def _params_lines(stages: list[dict], value: int = 1) -> list[str]:
    return [f"{st['name']}: {{p: {value}}}" for st in stages]


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _make_big(path: str, gib: float) -> None:
    """Pseudo-random-looking content without spending CPU: a 1 MiB block with a counter."""
    import hashlib

    total = int(gib * (1 << 30))
    block = b"".join(hashlib.sha256(b"big%d" % i).digest() for i in range(1 << 15))  # 1 MiB
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < total:
            chunk = (i.to_bytes(8, "little") + block[8:])[: total - written]
            f.write(chunk)
            written += len(chunk)
            i += 1


def _make_many(path: str, m: int, size: int = 256) -> None:
    os.makedirs(path, exist_ok=True)
    per_dir = 1000
    for i in range(m):
        sub = os.path.join(path, f"d{i // per_dir:03d}")
        if i % per_dir == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:06d}.txt"), "wb") as f:
            f.write((b"%d|" % i) * (size // 4))


def _git(dest: str, *args: str) -> None:
    subprocess.run(["git", *args], cwd=dest, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def generate(dest: str, *, stages: int = 10, shape: str = "chain", files: int = 1, size: int = 1024,
             stage_sleep: float = 0.0, big_input_gib: float = 0.0, many_files: int = 0,
             python: str = "python3", formats: tuple[str, ...] = ("certus", "dvc"), git: bool = False,
             dvc_init: bool = False, big_source: str | None = None, many_source: str | None = None) -> dict:
    """Write the workspace; return a description (stage list, middle stage, paths).

    ``big_source``/``many_source``: hardlink/copy an already generated input instead of writing a new one
    (saves disk and time when the same input is needed in two workspaces).
    """
    if shape == "fanout" and stages < 3:
        raise ValueError("fanout needs --stages >= 3 (source, >= 1 middle, join)")
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    st_list = _stages(stages, shape, big_input_gib > 0, many_files > 0, python)
    _write(os.path.join(dest, "work.py"), WORK_PY.format(files=files, size=size, sleep=float(stage_sleep)))
    _write(os.path.join(dest, "in", "seed.txt"), "seed\n")
    if big_input_gib > 0:
        big = os.path.join(dest, "in", "big.bin")
        if big_source:
            try:
                os.link(big_source, big)
            except OSError:
                shutil.copyfile(big_source, big)
        else:
            _make_big(big, big_input_gib)
    if many_files > 0:
        many = os.path.join(dest, "in", "many")
        if many_source:
            shutil.copytree(many_source, many)
        else:
            _make_many(many, many_files)
    params = _params_lines(st_list)
    ignore = [] if "dvc" in formats else ["/out/"]  # DVC writes its own out/.gitignore
    if "certus" in formats:
        _write(os.path.join(dest, "conf", "config.yaml"),
               "certus:\n  pipeline: bench\n" + "\n".join(params) + "\n")
        _write(os.path.join(dest, "pipelines", "bench.yaml"), _spec_yaml(st_list))
        ignore += ["/.certus/", "/certus.lock.tmp*"]
    if "dvc" in formats:
        _write(os.path.join(dest, "dvc.yaml"), _spec_yaml(st_list))
        _write(os.path.join(dest, "params.yaml"), "\n".join(params) + "\n")
    if big_input_gib > 0 or many_files > 0:
        ignore += ["/in/big.bin", "/in/many/"]  # data, not source: keep git fast
    _write(os.path.join(dest, ".gitignore"), "\n".join(ignore) + "\n")
    if git:
        _git(dest, "init", "-q")
        _git(dest, "config", "user.email", "bench@example.invalid")
        _git(dest, "config", "user.name", "bench")
        if dvc_init and "dvc" in formats:
            dvc = os.path.join(os.path.dirname(sys.executable), "dvc")
            subprocess.run([dvc if os.path.exists(dvc) else "dvc", "init", "-q"], cwd=dest, check=True)
            for k, v in (("core.analytics", "false"), ("core.check_update", "false")):
                subprocess.run([dvc if os.path.exists(dvc) else "dvc", "config", k, v], cwd=dest, check=True)
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", "generated benchmark pipeline")
    return {"dest": dest, "stages": [s["name"] for s in st_list], "middle": middle_stage(stages),
            "shape": shape, "n": stages, "cmds": [s["cmd"] for s in st_list]}


def set_param(dest: str, stage: str, value: int) -> None:
    """Change one stage's param in both conf/config.yaml and params.yaml (whichever exist)."""
    for rel in ("conf/config.yaml", "params.yaml"):
        path = os.path.join(dest, rel)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        hits = [i for i, ln in enumerate(lines) if ln.startswith(stage + ":")]
        if len(hits) != 1:
            raise ValueError(f"{path}: expected one line for {stage}")
        lines[hits[0]] = f"{stage}: {{p: {value}}}"
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to create (replaced if it exists)")
    ap.add_argument("--stages", "-n", type=int, default=10)
    ap.add_argument("--shape", choices=("chain", "fanout"), default="chain")
    ap.add_argument("--files", type=int, default=1, help="files per stage output (K > 1: a directory)")
    ap.add_argument("--size", type=int, default=1024, help="bytes per output file")
    ap.add_argument("--stage-sleep", type=float, default=0.0, help="seconds each stage sleeps (emulated work)")
    ap.add_argument("--big-input-gib", type=float, default=0.0, help="add stage 'big' reading an X GiB file")
    ap.add_argument("--many-files", type=int, default=0, help="add stage 'many' reading a dir of M small files")
    ap.add_argument("--python", default="python3", help="interpreter named in the stage commands")
    ap.add_argument("--format", choices=("both", "certus", "dvc"), default="both")
    ap.add_argument("--git", action="store_true", help="git init and commit the workspace")
    ap.add_argument("--dvc-init", action="store_true", help="with --git: also dvc init (analytics off)")
    a = ap.parse_args(argv)
    fmts = ("certus", "dvc") if a.format == "both" else (a.format,)
    info = generate(a.dest, stages=a.stages, shape=a.shape, files=a.files, size=a.size,
                    stage_sleep=a.stage_sleep, big_input_gib=a.big_input_gib, many_files=a.many_files,
                    python=a.python, formats=fmts, git=a.git, dvc_init=a.dvc_init)
    print(f"{info['dest']}: {len(info['stages'])} stages ({a.shape}), middle stage {info['middle']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
