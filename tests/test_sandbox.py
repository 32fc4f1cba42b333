"""Stages are untrusted code (issue 8.7) and may misbehave (issue 9.8): each test is the attack.

Real stages under the real coordinator; where Landlock is missing the confinement tests are
skipped (the unconfined behaviour is tested through a seccomp filter that hides Landlock).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.adapters.sandbox import landlock_abi

pytestmark = pytest.mark.integration
landlock = pytest.mark.skipif(not landlock_abi(), reason="this kernel has no Landlock: stages cannot be confined here")


def pipeline(ws, spec: str, conf: str = "certus: {pipeline: p}\n") -> None:
    ws.write("conf/config.yaml", conf)
    ws.write("pipelines/p.yaml", spec)
    ws.commit()


def run(ws, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return ws.proc("repro", *args, timeout=timeout, env={**os.environ, **(env or {})})


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# -- no Certus secrets in the stage's environment (8.7) --------------------------------------------


def test_stage_env_carries_no_certus_secrets(ws):
    pipeline(ws, 'stages:\n  s: {cmd: "env > out/env.txt", outs: [out/env.txt]}\n')
    secrets = {"CERTUS_KEY_PASSPHRASE": "hunter2", "CERTUS_KEY": "/k/alice.key", "CERTUS_LEDGER_KEY": "/k/l.key",
               "CERTUS_HOME": str(ws.root.parent / "certus-home"), "CERTUS_ANYTHING": "x"}
    r = run(ws, env=secrets)
    assert r.returncode == 0, r.stderr
    env = dict(line.split("=", 1) for line in ws.read("out/env.txt").splitlines() if "=" in line)
    assert not set(secrets) & set(env)
    assert "hunter2" not in ws.read("out/env.txt")
    assert {"CERTUS_PARAMS", "CERTUS_STAGE", "CERTUS_RUN_ID", "CERTUS_WORKSPACE"} <= set(env)


# -- the key directory: 0700, and unreadable from a stage --------------------------------------------


def test_key_directory_is_private_and_a_stage_cannot_read_the_key(ws, monkeypatch):
    home = ws.root.parent / "certus-home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "pw")
    assert ws.certus("keys", "generate", "--name", "alice", "--role", "trainer") == 0
    for d in (home, home / "keys"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    if not landlock_abi():
        pytest.skip("no Landlock: the read denial cannot be tested here")
    pipeline(ws, "stages:\n  steal: {cmd: \"cat $K > out/k.txt\", outs: [out/k.txt], env: {K: '%s'}}\n"
             % (home / "keys" / "alice.key"))
    r = run(ws)
    assert r.returncode == 1
    assert "stage(s) failed: steal" in r.stderr and "alice.key" in r.stderr
    assert "seed" not in ws.read("out/k.txt") if (ws.root / "out/k.txt").exists() else True
    # the same stage, reading a workspace file, works: reading is denied only under $CERTUS_HOME
    ws.write("pub.txt", "public\n")
    pipeline(ws, 'stages:\n  ok: {cmd: "cat pub.txt > out/k.txt", deps: [pub.txt], outs: [out/k.txt]}\n')
    assert run(ws).returncode == 0
    assert ws.read("out/k.txt") == "public\n"


# -- writes outside the declared outputs (8.7) ----------------------------------------------------


@landlock
@pytest.mark.parametrize("target", [".certus/ledger/x", ".git/config", "trust.json", "notes.txt", "../outside.txt"])
def test_write_outside_declared_outputs_is_denied_and_named(ws, target):
    (ws.root / ".certus/ledger").mkdir(parents=True, exist_ok=True)
    ws.write("notes.txt", "mine\n")
    pipeline(ws, f"""\
        stages:
          evil:
            cmd: python -c "open('{target}', 'a').write('evil')" && echo ok > out/o.txt
            outs: [out/o.txt]
    """)
    before = (ws.root / target).read_bytes() if (ws.root / target).exists() else None
    r = run(ws)
    assert r.returncode == 1, r.stderr
    assert "stage(s) failed: evil" in r.stderr and f"the sandbox refused: {target}" in r.stderr
    after = (ws.root / target).read_bytes() if (ws.root / target).exists() else None
    assert after == before
    assert "evil" not in json.dumps(ws.lock() if (ws.root / "certus.lock").exists() else {})


@landlock
def test_undeclared_file_next_to_a_new_output_fails_the_stage(ws):
    # first run: the output's kind is unknown, so the stage may create entries in out/; the extra one is caught
    pipeline(ws, 'stages:\n  s: {cmd: "echo a > out/o.txt; echo b > out/extra.txt", outs: [out/o.txt]}\n')
    r = run(ws)
    assert r.returncode == 1
    assert "wrote outside its declared outputs: out/extra.txt" in r.stderr
    assert "s" not in (ws.lock()["stages"] if (ws.root / "certus.lock").exists() else {})


@landlock
def test_sibling_output_of_a_known_kind_cannot_be_replaced(ws):
    pipeline(ws, 'stages:\n  s: {cmd: "echo a > out/o.txt", outs: [out/o.txt]}\n')
    assert run(ws).returncode == 0
    ws.write("out/keep.txt", "keep\n")
    pipeline(ws, 'stages:\n  s: {cmd: "echo b > out/o.txt; rm -f out/keep.txt; echo x > out/keep.txt", '
                 'outs: [out/o.txt]}\n')
    r = run(ws)  # out/o.txt is known to be a file now: only it is writable
    assert r.returncode == 1
    assert ws.read("out/keep.txt") == "keep\n"


# -- what a stage may write -----------------------------------------------------------------------------


@landlock
def test_declared_outputs_tmpdir_and_writable_paths_work(ws, tmp_path):
    extra = tmp_path / "scratch"
    ws.write("stage.py", f"""\
        import os, tempfile, json
        tmp = tempfile.gettempdir()
        assert os.environ["TMPDIR"] == tmp and not tmp.startswith(os.getcwd()), tmp
        with tempfile.NamedTemporaryFile("w", delete=False) as f:   # write in TMPDIR, then move into place
            f.write("atomic\\n")
        os.makedirs("data/out", exist_ok=True)
        os.replace(f.name, "data/out/part.txt")
        json.dump({{"acc": 1}}, open("metrics.json", "w"))
        cache = os.path.expanduser("~/.cache/tool")
        open(os.path.join(cache, "c.bin"), "w").write("cached")
        open("{extra}/x", "w").write("x")
        open("tmp.txt", "w").write(tmp)
    """)
    pipeline(ws, f"""\
        stages:
          s:
            cmd: python stage.py
            deps: [stage.py]
            outs: [data/out, tmp.txt]
            metrics: [metrics.json]
            writable: ["~/.cache/tool", "{extra}"]
    """)
    r = run(ws)
    assert r.returncode == 0, r.stderr + r.stdout
    assert ws.read("data/out/part.txt") == "atomic\n"
    assert (Path(os.environ["HOME"]) / ".cache/tool/c.bin").read_text() == "cached"
    assert (extra / "x").read_text() == "x"
    assert not os.path.exists(ws.read("tmp.txt"))  # the private TMPDIR is gone


def test_writable_paths_are_validated(ws):
    pipeline(ws, """\
        stages:
          a: {cmd: x, outs: [o], writable: [.git/hooks]}
          b: {cmd: x, outs: [p], writable: [trust.json], timeout: 0}
          c: {cmd: x, outs: [q], writable: ["~bob/x"], timeout: "1m"}
    """)
    r = ws.proc("status")
    assert r.returncode == 2
    assert "stage 'a': field 'writable': path '.git/hooks' is inside Certus's or git's own directory" in r.stderr
    assert "stage 'b': field 'writable': path 'trust.json' is Certus's own file" in r.stderr
    assert "stage 'b': field 'timeout': 0 is not a positive number of seconds" in r.stderr
    assert "stage 'c': field 'writable': path '~bob/x': only '~/'" in r.stderr
    assert "stage 'c': field 'timeout': '1m' is not a positive number" in r.stderr


def test_writable_may_not_cover_certus_home(ws, monkeypatch):
    home = ws.root.parent / "certus-home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    for target, why in ((home / "keys", "lies in $CERTUS_HOME"), (home.parent, "contains the workspace")):
        pipeline(ws, f'stages:\n  s: {{cmd: "echo x > o.txt", outs: [o.txt], writable: ["{target}"]}}\n')
        r = run(ws)
        if landlock_abi():
            assert r.returncode == 1 and why in r.stderr, r.stderr


# -- certus.sandbox ------------------------------------------------------------------------------------


def test_sandbox_off_runs_unconfined_and_says_so(ws):
    pipeline(ws, 'stages:\n  s: {cmd: "echo x > notes.txt; echo y > o.txt", outs: [o.txt]}\n',
             conf="certus: {pipeline: p, sandbox: off}\n")
    from engine.run.repro import Repro, ReproOptions
    from engine.store.workspace import Workspace

    res = Repro(Workspace(str(ws.root)), ReproOptions()).run()
    assert res.outcomes["s"].state == "ran"
    assert res.outcomes["s"].sandbox == {"mechanism": "none", "reason": "certus.sandbox=off"}
    assert ws.read("notes.txt") == "x\n"


@landlock
def test_confined_outcome_records_the_mechanism(ws):
    pipeline(ws, 'stages:\n  s: {cmd: "echo y > out/o.txt", outs: [out/o.txt], writable: ["~/.cache/x"]}\n')
    from engine.run.repro import Repro, ReproOptions
    from engine.store.workspace import Workspace

    res = Repro(Workspace(str(ws.root)), ReproOptions()).run()
    sb = res.outcomes["s"].sandbox
    assert sb["mechanism"] == "landlock" and sb["abi"] == landlock_abi()
    assert "out/" in sb["writable"] and str(Path(os.environ["HOME"]) / ".cache/x") in sb["writable"]


def test_bad_sandbox_mode_is_one_line(ws):
    pipeline(ws, 'stages:\n  s: {cmd: "echo y > o.txt", outs: [o.txt]}\n',
             conf="certus: {pipeline: p, sandbox: maybe}\n")
    r = run(ws)
    assert r.returncode == 2 and "certus.sandbox" in r.stderr and "Traceback" not in r.stderr


_HIDE_LANDLOCK = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# seccomp: landlock_create_ruleset (444) fails with ENOSYS, as on a kernel without Landlock
code = [(0x20, 0, 0, 0), (0x15, 0, 1, 444), (0x06, 0, 0, 0x00050000 | 38), (0x06, 0, 0, 0x7FFF0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
prog = struct.pack("HxxxxxxQ", len(code), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.c_char_p(prog), 0, 0) == 0, ctypes.get_errno()
os.execv(sys.executable, [sys.executable, "-m", "engine", *sys.argv[1:]])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only")
@pytest.mark.parametrize("mode", ["required", "auto"])
def test_without_landlock_required_refuses_and_auto_warns(ws, mode):
    pipeline(ws, 'stages:\n  s: {cmd: "echo y > o.txt; echo z > notes.txt", outs: [o.txt]}\n',
             conf=f"certus: {{pipeline: p, sandbox: {mode}}}\n")
    r = subprocess.run([sys.executable, "-c", _HIDE_LANDLOCK, "-C", str(ws.root), "repro"], capture_output=True,
                       text=True, timeout=120)
    if mode == "required":
        assert r.returncode == 1
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("certus: error")]
        assert len(lines) == 1 and "certus.sandbox=required" in lines[0] and "no Landlock" in lines[0]
        assert not (ws.root / "o.txt").exists() and "Traceback" not in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("no Landlock on this system: stages run unconfined") == 1
        assert ws.read("notes.txt") == "z\n"  # unconfined, as warned


# -- misbehaving stages (9.8) ----------------------------------------------------------------------


def test_setsid_daemon_is_killed_when_its_stage_ends(ws):
    ws.write("daemon.py", """\
        import os, sys, time
        open("probe/daemon.pid", "w").write(str(os.getpid()))
        time.sleep(2)
        open("out/o.txt", "w").write("rewritten after caching\\n")
    """)
    pipeline(ws, """\
        stages:
          s:
            cmd: setsid python daemon.py & while [ ! -s probe/daemon.pid ]; do sleep 0.05; done; echo ok > out/o.txt
            deps: [daemon.py]
            outs: [out/o.txt]
            writable: [probe]
    """)
    t0 = time.monotonic()
    r = run(ws, timeout=60)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 30  # the daemon holding the stage's stdout does not hang the run
    pid = int(ws.read("probe/daemon.pid"))
    assert not alive(pid)
    time.sleep(2.5)
    assert ws.read("out/o.txt") == "ok\n"
    assert ws.proc("status").stdout.strip() == "Everything is up to date."


def test_timeout_kills_the_whole_tree_and_fails_the_stage(ws):
    pipeline(ws, """\
        stages:
          slow:
            cmd: (setsid sleep 300 & echo $! > probe/child.pid; sleep 300) ; echo done > o.txt
            outs: [o.txt]
            writable: [probe]
            timeout: 1.5
    """)
    t0 = time.monotonic()
    r = run(ws, timeout=60)
    assert r.returncode == 1
    assert time.monotonic() - t0 < 20
    assert "stage(s) failed: slow (timed out after 1.5 s)" in r.stderr
    assert not alive(int(ws.read("probe/child.pid")))
    assert not (ws.root / "o.txt").exists()


def test_a_stage_that_deletes_its_dependency_is_reported_as_such(ws):
    # unconfined (the sandbox would refuse the unlink), the engine still names what happened
    ws.write("in.txt", "input\n")
    pipeline(ws, 'stages:\n  s: {cmd: "cat in.txt > o.txt; rm in.txt", deps: [in.txt], outs: [o.txt]}\n',
             conf="certus: {pipeline: p, sandbox: off}\n")
    r = run(ws)
    assert r.returncode == 1
    assert "deleted its dependency in.txt" in r.stderr and "modified its dependency in place" not in r.stderr


@landlock
def test_confined_stage_cannot_delete_its_dependency(ws):
    ws.write("in.txt", "input\n")
    pipeline(ws, 'stages:\n  s: {cmd: "cat in.txt > o.txt; rm in.txt", deps: [in.txt], outs: [o.txt]}\n')
    r = run(ws)
    assert r.returncode == 1 and "the sandbox refused: in.txt" in r.stderr
    assert ws.read("in.txt") == "input\n"


@landlock
def test_confined_stage_cannot_signal_the_coordinator(ws):
    if landlock_abi() < 6:
        pytest.skip("signal scoping needs Landlock ABI 6")
    pipeline(ws, 'stages:\n  s: {cmd: "kill -TERM $PPID; echo y > o.txt", outs: [o.txt]}\n')
    r = run(ws)  # $PPID is the coordinator
    assert r.returncode == 0, r.stderr
    assert "interrupted" not in r.stderr and ws.read("o.txt") == "y\n"
