"""Shared fixtures: a real git workspace in a temp dir, and ways to run the real CLI in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nacl.signing
import pytest

from engine.cli.main import main

BIN = os.path.dirname(sys.executable)

# A stage script for tests: writes OUT from its deps and params, and appends its name to
# runs.log (outside every output) so a test can prove whether the command really ran. Stages
# are confined (engine.adapters.sandbox), so specs that use it declare `writable: [runs.log]`
# (and times.log where STEP_SLEEP is set): W below.
STEP = textwrap.dedent('''
    import json, os, sys, time
    name, out, *deps = sys.argv[1:]
    params = json.load(open(os.environ["CERTUS_PARAMS"])) if os.environ.get("CERTUS_PARAMS") else {}
    with open("runs.log", "a") as f:
        f.write(name + "\\n")
    sleep = float(os.environ.get("STEP_SLEEP", "0"))
    if sleep:
        with open("times.log", "a") as f:
            f.write(f"{name} start {time.time()}\\n")
        time.sleep(sleep)
    body = [f"stage={name}", f"params={json.dumps(params, sort_keys=True)}"]
    for d in deps:
        if os.path.isdir(d):
            for root, _, files in sorted(os.walk(d)):
                for fn in sorted(files):
                    body.append(open(os.path.join(root, fn)).read())
        else:
            body.append(open(d).read())
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\\n".join(body) + "\\n")
    if sleep:
        with open("times.log", "a") as f:
            f.write(f"{name} end {time.time()}\\n")
''')


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def runs(self) -> list[str]:
        p = self.root / "runs.log"
        return p.read_text().split() if p.exists() else []

    def clear_runs(self) -> None:
        (self.root / "runs.log").unlink(missing_ok=True)

    def lock(self) -> dict:
        return json.loads((self.root / "certus.lock").read_text())

    def certus(self, *args: str, capsys: pytest.CaptureFixture[str] | None = None) -> int:
        return main(["-C", str(self.root), *args])

    def proc(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine", "-C", str(self.root), *args],
                              capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, *args: str, **kw) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "engine", "-C", str(self.root), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True, text=True).stdout

    def commit(self, msg: str = "wip") -> None:
        self.git("add", "-A")
        self.git("commit", "-qm", msg, "--allow-empty")


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.com")
    monkeypatch.setenv("CERTUS_KDF_FAST", "1")
    monkeypatch.chdir(root)
    w = Workspace(root)
    w.write("step.py", STEP)
    w.write(".gitignore", ".certus/cache/\n.certus/tmp/\n.certus/logs/\n.certus/runs/\n.certus/state.db*\n"
                          ".certus/lock\n.certus/running.json\nruns.log\ntimes.log\n"
                          "/out/\n")  # outputs are Certus's, not git's (repro refuses tracked outputs)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return w


DIAMOND_CONF = """\
    certus:
      pipeline: p
    a: {x: 1}
    b: {y: 1}
    c: {z: 1}
"""

W = "writable: [runs.log, times.log]"

# a -> b, a -> c, (b, c) -> d ; e independent
DIAMOND = f"""\
    stages:
      a:
        cmd: python step.py a out/a.txt in.txt
        {W}
        deps: [step.py, in.txt]
        params: [a.x]
        outs: [out/a.txt]
      b:
        cmd: python step.py b out/b.txt out/a.txt
        {W}
        deps: [step.py, out/a.txt]
        params: [b.y]
        outs: [out/b.txt]
      c:
        cmd: python step.py c out/c.txt out/a.txt
        {W}
        deps: [step.py, out/a.txt]
        params: [c.z]
        outs: [out/c.txt]
      d:
        cmd: python step.py d out/d.txt out/b.txt out/c.txt
        {W}
        deps: [step.py, out/b.txt, out/c.txt]
        outs: [out/d.txt]
      e:
        cmd: python step.py e out/e.txt
        {W}
        deps: [step.py]
        outs: [out/e.txt]
"""


def init_diamond(root: Path, gitignore: str, conf: str = DIAMOND_CONF) -> Workspace:
    """A git-initialised (not yet committed) diamond workspace at ``root``, for module-scoped templates."""
    w = Workspace(root)
    w.root.mkdir()
    w.write("step.py", STEP)
    w.write(".gitignore", gitignore)
    w.write("conf/config.yaml", conf)
    w.write("pipelines/p.yaml", DIAMOND)
    w.write("in.txt", "input v1\n")
    subprocess.run(["git", "init", "-q"], cwd=w.root, check=True)
    return w


@pytest.fixture
def diamond(ws: Workspace) -> Workspace:
    ws.write("conf/config.yaml", DIAMOND_CONF)
    ws.write("pipelines/p.yaml", DIAMOND)
    ws.write("in.txt", "input v1\n")
    ws.commit("diamond")
    return ws


class SeedSigner:
    """A NoteSigner over a raw Ed25519 seed (tests sign with PyNaCl directly)."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg).signature
