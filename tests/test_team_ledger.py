"""A ledger a whole team appends to (issue 16): clones of one workspace sequence their runs into one
shared log — a git ref on a bare remote on disk, or a real PostgreSQL server — with the real CLI in
real processes: concurrent runs on several clones end in one log that verifies from every clone; an
unreachable remote leaves the run recorded locally until the next sync; a rewritten shared log is
refused and named; a crash in the middle of re-sequencing loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pg_server import pg_server  # noqa: F401  (the session fixture)

PIPE = """stages:
  step:
    cmd: python step.py
    deps: [step.py]
    params: [x]
    outs: [out/step.txt]
"""
STEP = """import json, os, pathlib
p = json.load(open(os.environ["CERTUS_PARAMS"]))
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/step.txt").write_text(str(p["x"]))
"""
ENV = {"GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "T",
       "GIT_COMMITTER_EMAIL": "t@example.com", "CERTUS_KEY_PASSPHRASE": "team", "GIT_TERMINAL_PROMPT": "0"}


class Team:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {**os.environ, **ENV, "CERTUS_HOME": str(tmp / "home"), "HOME": str(tmp / "userhome"),
                    # git runs the certus.lock merge driver as `certus`, as a user's shell would find it
                    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        for k in ("CERTUS_KEY", "CERTUS_LEDGER_KEY"):
            self.env.pop(k, None)
        (tmp / "userhome").mkdir()
        self.remote = tmp / "remote.git"

    def sh(self, cwd: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=240)
        if ok:
            assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
        return p

    def certus(self, cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh(cwd, sys.executable, "-m", "engine", *args, ok=ok)

    def git(self, cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh(cwd, "git", *args, ok=ok)

    def origin(self, url: str = "git", ignore: str = "out/\n.certus/cache/\n.certus/*.sqlite\ncertus.lock\n") -> Path:
        """The first clone: pipeline, trust, keys, the shared-log remote; pushed to the bare remote."""
        self.git(self.tmp, "init", "-q", "--bare", "-b", "main", str(self.remote))
        a = self.tmp / "a"
        a.mkdir()
        self.git(a, "init", "-q", "-b", "main")
        (a / "pipelines").mkdir()
        (a / "conf").mkdir()
        (a / "pipelines/p.yaml").write_text(PIPE)
        (a / "conf/config.yaml").write_text("x: 1\n")
        (a / "step.py").write_text(STEP)
        (a / ".gitignore").write_text(ignore)
        home = Path(self.env["CERTUS_HOME"])
        self.certus(a, "keys", "generate", "--name", "alice", "--role", "trainer")
        self.certus(a, "keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger",
                    "--role", "admin")
        self.git(a, "remote", "add", "origin", str(self.remote))
        self.certus(a, "ledger", "remote", "add", "origin", url)
        self.git(a, "add", "-A")
        self.git(a, "commit", "-qm", "team workspace")
        self.git(a, "push", "-q", "origin", "main")
        return a

    def clone(self, name: str) -> Path:
        self.git(self.tmp, "clone", "-q", str(self.remote), name)
        return self.tmp / name

    def ledger(self, ws: Path) -> tuple[int, str, list[str]]:
        """(size, checkpoint root line, run ids in ledger order) of a clone's local ledger."""
        from engine.provenance.ledger import Ledger

        ldir = ws / ".certus/ledger"
        origin = (ldir / "checkpoint").read_text().splitlines()[0]
        led = Ledger.open(ldir, origin=origin, create=False)
        runs = []
        for raw in led.entries():
            env = json.loads(raw)
            if env["payloadType"] == "application/vnd.certus.run+json":
                import base64

                runs.append(json.loads(base64.b64decode(env["payload"]))["run_id"])
        return led.size, (ldir / "checkpoint").read_text().splitlines()[2], runs

    def share_provenance(self, clones: list[Path]) -> None:
        """Attestation bundles travel in git (unique names: no conflicts); every clone then has them all."""
        for c in clones:
            self.git(c, "add", ".certus/provenance")
            self.git(c, "commit", "-qm", "provenance", ok=False)
            for _ in range(5):
                self.git(c, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
                if self.git(c, "push", "-q", "origin", "main", ok=False).returncode == 0:
                    break
        for c in clones:
            self.git(c, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team(tmp_path)


def test_two_clones_one_log_no_conflict_and_verified_from_both(team: Team) -> None:
    a = team.origin()
    b = team.clone("b")
    ra = team.certus(a, "repro", "x=2")
    assert "ledger remote 'origin': sequenced" in ra.stderr, ra.stderr
    rb = team.certus(b, "repro", "x=3")  # b's own genesis is dropped, its run goes after a's
    assert "took in 2 entries from 'origin'" in rb.stderr and "re-sequenced" in rb.stderr, rb.stderr
    assert "sequenced 1 entry as entries 2..2 of 3" in rb.stderr, rb.stderr
    s = team.certus(a, "ledger", "sync", "--json")
    assert json.loads(s.stdout)[0]["fetched"] == 1
    size_a, root_a, runs_a = team.ledger(a)
    size_b, root_b, runs_b = team.ledger(b)
    assert (size_a, root_a, runs_a) == (size_b, root_b, runs_b) and size_a == 3 and len(set(runs_a)) == 2
    # nothing of the ledger is in the working tree: git has nothing to merge there
    assert team.git(a, "status", "--porcelain", ".certus/ledger").stdout == ""
    team.share_provenance([a, b])
    for ws in (a, b):
        v = team.certus(ws, "verify", "--json")
        assert json.loads(v.stdout)["ok"], v.stdout
    # the ref on the remote is the shared log; no branch carries it
    refs = team.git(team.remote, "for-each-ref", "--format=%(refname)").stdout.split()
    assert "refs/certus/ledger" in refs and all(not r.startswith("refs/heads/certus") for r in refs)


def test_eight_concurrent_runs_on_four_clones(team: Team) -> None:
    a = team.origin()
    clones = [a] + [team.clone(n) for n in ("b", "c", "d")]
    procs = []
    for i in range(8):
        ws = clones[i % 4]
        procs.append(subprocess.Popen([sys.executable, "-m", "engine", "repro", "--wait", f"x={10 + i}"], cwd=ws,
                                      env=team.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for ws in clones:
        team.certus(ws, "ledger", "sync")
    states = [team.ledger(ws) for ws in clones]
    assert all(s == states[0] for s in states), states
    size, _, runs = states[0]
    assert len(runs) == 8 and len(set(runs)) == 8  # every run, once
    assert size == 1 + 8  # one genesis, eight run records: no clone's own genesis got in
    team.share_provenance(clones)
    for ws in clones:
        v = team.certus(ws, "verify", "--json")
        assert json.loads(v.stdout)["ok"], v.stdout


def test_offline_run_is_recorded_locally_then_sequenced(team: Team) -> None:
    a = team.origin()
    team.certus(a, "repro", "x=2")
    moved = team.tmp / "remote-away.git"
    team.remote.rename(moved)  # the remote is unreachable
    r = team.certus(a, "repro", "x=3")
    assert "recorded locally: 'certus ledger sync' sequences it later" in r.stderr, r.stderr
    s = team.certus(a, "ledger", "sync", ok=False)
    assert s.returncode == 3, s.stderr
    moved.rename(team.remote)
    s = team.certus(a, "ledger", "sync", "--json")
    assert json.loads(s.stdout)[0]["pushed"] == 1
    b = team.clone("b")
    team.certus(b, "ledger", "sync")
    assert team.ledger(a) == team.ledger(b)


def test_rewritten_shared_log_is_refused_with_both_checkpoints(team: Team) -> None:
    a = team.origin()
    team.certus(a, "repro", "x=2")
    b = team.clone("b")
    team.certus(b, "ledger", "sync")
    before = team.ledger(b)
    # someone with push rights force-pushes another history (a ledger built elsewhere) onto the ledger ref
    c, fake = team.tmp / "c", team.tmp / "fake.git"
    shutil.copytree(a, c)
    shutil.rmtree(c / ".certus/ledger")
    team.git(team.tmp, "init", "-q", "--bare", str(fake))
    team.git(c, "remote", "set-url", "origin", str(fake))
    team.certus(c, "repro", "x=8", "--force")  # its own genesis and run, sequenced into the fake remote
    new_tip = team.git(fake, "rev-parse", "refs/certus/ledger").stdout.strip()
    team.git(fake, "push", "-q", "--force", str(team.remote), f"{new_tip}:refs/certus/ledger")
    s = team.certus(b, "ledger", "sync", ok=False)
    assert s.returncode != 0 and "Traceback" not in s.stderr
    line = s.stderr.strip().splitlines()[-1]
    assert "not an extension of the one this workspace saw" in line or "rolled back or rewritten" in line, line
    assert "ours: size" in line or "workspace saw (size" in line, line
    assert team.ledger(b) == before  # nothing changed


def test_crash_mid_resequencing_loses_nothing(team: Team, tmp_path: Path) -> None:
    from engine.provenance.ledger_sync import recover

    a = team.origin()
    b = team.clone("b")
    team.certus(a, "repro", "x=2")
    team.remote.rename(team.tmp / "away.git")
    team.certus(b, "repro", "x=3")  # recorded locally only
    (team.tmp / "away.git").rename(team.remote)
    mine = team.ledger(b)[2]
    # a crash after the new ledger was built and marked, before the swap: recovery finishes the swap
    ldir = b / ".certus/ledger"
    nxt = ldir.with_name("ledger.next")
    shutil.copytree(ldir, nxt)
    (ldir.with_name("ledger.swap")).write_text("swap\n")
    os.rename(ldir, ldir.with_name("ledger.old"))
    assert "finished swapping" in (recover(ldir) or "")
    assert team.ledger(b)[2] == mine
    # a crash while building: the half-built copy is dropped, the ledger is as it was
    shutil.copytree(ldir, nxt)
    assert "interrupted re-sequencing" in (recover(ldir) or "")
    team.certus(b, "ledger", "sync")
    runs = team.ledger(b)[2]
    assert runs[-1] == mine[-1] and len(runs) == 2
    team.certus(a, "ledger", "sync")
    assert team.ledger(a) == team.ledger(b)


def test_postgresql_backend_sequences_two_clones(team: Team, pg_server) -> None:  # noqa: F811
    a = team.origin(pg_server.url + "?log=team_e2e")
    b = team.clone("b")
    team.certus(a, "repro", "x=2")
    rb = team.certus(b, "repro", "x=3")
    assert "re-sequenced" in rb.stderr, rb.stderr
    team.certus(a, "ledger", "sync")
    assert team.ledger(a) == team.ledger(b) and len(team.ledger(a)[2]) == 2
    team.share_provenance([a, b])
    for ws in (a, b):
        assert json.loads(team.certus(ws, "verify", "--json").stdout)["ok"]


def test_sync_killed_during_its_push_appends_nothing_twice(team: Team) -> None:
    import signal
    import time

    a = team.origin()
    team.certus(a, "repro", "x=2")
    team.remote.rename(team.tmp / "away.git")
    team.certus(a, "repro", "x=3")  # pending locally
    (team.tmp / "away.git").rename(team.remote)
    mark = team.tmp / "push-started"
    hook = team.remote / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\ntouch {mark}\nsleep 3\n")
    hook.chmod(0o755)
    p = subprocess.Popen([sys.executable, "-m", "engine", "ledger", "sync"], cwd=a, env=team.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists()
    os.kill(p.pid, signal.SIGKILL)  # certus dies mid-push; its orphaned `git push` still lands the append
    p.wait()
    time.sleep(4)
    hook.unlink()
    team.certus(a, "ledger", "sync")
    size, _, runs = team.ledger(a)
    assert size == 3 and len(runs) == 2 == len(set(runs)), runs  # genesis + two runs, none twice
    b = team.clone("b")
    team.certus(b, "ledger", "sync")
    assert team.ledger(b) == team.ledger(a)


def test_the_issues_two_clone_scenario_merges_with_no_conflict(team: Team) -> None:
    """Issue 16's report, replayed: two clones each run one repro with a different override and commit what the
    README says to commit (here: certus.lock and the attestation bundles; the ledger lives on its own ref); `git
    pull` of one into the other conflicts nowhere, and status and verify are right afterwards."""
    a = team.origin(ignore="out/\n.certus/cache/\n.certus/*.sqlite\n.certus/runs/\n.certus/logs/\n"
                           ".certus/state.db\n.certus/tmp/\n.certus/index*\n")
    b = team.clone("b")
    for ws, x in ((a, "2"), (b, "3")):
        team.certus(ws, "repro", f"x={x}")
        team.git(ws, "add", "-A")
        team.git(ws, "commit", "-qm", f"run x={x}")
    team.git(a, "push", "-q", "origin", "main")
    pull = team.git(b, "pull", "--no-rebase", "--no-edit", "origin", "main", ok=False)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert team.git(b, "diff", "--name-only", "--diff-filter=U").stdout == ""
    assert "<<<<<<<" not in (b / "certus.lock").read_text()
    st = json.loads(team.certus(b, "status", "x=3", "--json").stdout)  # b's outputs are b's: the lock says so
    assert st["clean"] and not st["stages"]["step"]["stale"], st
    other = json.loads(team.certus(b, "status", "x=2", "--json", ok=False).stdout)  # a's override: stale here
    assert other["stages"]["step"]["stale"], other
    team.certus(b, "ledger", "sync")
    team.git(b, "push", "-q", "origin", "main")
    team.git(a, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
    team.certus(a, "ledger", "sync")
    assert team.ledger(a) == team.ledger(b)
    for ws in (a, b):
        assert json.loads(team.certus(ws, "verify", "--json").stdout)["ok"]
