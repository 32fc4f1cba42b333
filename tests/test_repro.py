"""The engine end to end: real subprocess stages in a real git workspace."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def test_first_repro_runs_everything_then_nothing(diamond, capsys):
    assert diamond.certus("repro") == 0
    assert sorted(diamond.runs()) == ["a", "b", "c", "d", "e"]
    lock = diamond.lock()
    assert sorted(lock["stages"]) == ["a", "b", "c", "d", "e"]
    assert lock["stages"]["b"]["params"] == {"b.y": 1}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", lock["stages"]["d"]["key"])
    diamond.clear_runs()
    assert diamond.certus("repro") == 0
    assert diamond.runs() == []
    capsys.readouterr()
    assert diamond.certus("status") == 0
    assert capsys.readouterr().out.strip() == "Everything is up to date."


def test_lock_is_deterministic(diamond):
    diamond.certus("repro")
    first = (diamond.root / "certus.lock").read_bytes()
    (diamond.root / "certus.lock").unlink()
    diamond.certus("repro", "--force")
    assert (diamond.root / "certus.lock").read_bytes() == first


def test_changed_dep_reruns_it_and_downstream_only(diamond, capsys):
    diamond.certus("repro")
    diamond.clear_runs()
    diamond.write("in.txt", "input v2\n")
    capsys.readouterr()
    diamond.certus("status", "--json")
    st = json.loads(capsys.readouterr().out)
    assert st["stages"]["a"]["reasons"] == ["dep changed: in.txt"]
    assert st["stages"]["e"]["stale"] is False
    assert diamond.certus("repro") == 0
    assert sorted(diamond.runs()) == ["a", "b", "c", "d"]


def test_early_cutoff_when_rerun_output_is_identical(ws):
    # b only copies the first line of a's output; changing a's second input line leaves b's output
    # identical, so c (downstream of b) must not run.
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("head.py", "import sys\nopen(sys.argv[2],'w').write(open(sys.argv[1]).readline())\n"
                        "open('runs.log','a').write(sys.argv[3]+'\\n')\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          a: {cmd: "cp in.txt a.txt", deps: [in.txt], outs: [a.txt]}
          b: {writable: [runs.log], cmd: "python head.py a.txt b.txt b", deps: [head.py, a.txt], outs: [b.txt]}
          c: {writable: [runs.log], cmd: "python step.py c c.txt b.txt", deps: [step.py, b.txt], outs: [c.txt]}
    """)
    ws.write("in.txt", "keep\nv1\n")
    ws.certus("repro")
    ws.clear_runs()
    ws.write("in.txt", "keep\nv2\n")
    assert ws.certus("repro") == 0
    assert ws.runs() == ["b"]  # a is a cp (no log line); b re-ran; c was cut off


def test_param_override_reruns_only_stages_using_it(diamond):
    diamond.certus("repro")
    diamond.clear_runs()
    assert diamond.certus("repro", "b.y=2") == 0
    assert sorted(diamond.runs()) == ["b", "d"]
    assert diamond.lock()["stages"]["b"]["params"] == {"b.y": 2}
    assert '"b": {"y": 2}' in diamond.read("out/b.txt")


def test_editing_conf_file_reruns_exactly_stages_whose_params_changed(diamond):
    diamond.certus("repro")
    diamond.clear_runs()
    diamond.write("conf/config.yaml", "certus:\n  pipeline: p\na: {x: 1}\nb: {y: 1}\nc: {z: 5}\n")
    assert diamond.certus("repro") == 0
    assert sorted(diamond.runs()) == ["c", "d"]


def test_revert_restores_from_run_cache_without_running(diamond):
    diamond.certus("repro")
    original = diamond.read("out/b.txt")
    diamond.certus("repro", "b.y=7")
    diamond.clear_runs()
    assert diamond.certus("repro") == 0  # back to b.y=1: key seen before
    assert diamond.runs() == []  # no command ran: the side effect proves it
    assert diamond.read("out/b.txt") == original
    assert diamond.lock()["stages"]["b"]["params"] == {"b.y": 1}


def test_touch_without_change_reruns_nothing_and_reads_nothing_twice(diamond):
    from engine.cli.main import main  # noqa: F401  (in-process status with read counter below)
    from engine.pipeline.lockfile import LockFile
    from engine.pipeline.status import workspace_status
    from engine.run.load import load as load_pipeline
    from engine.store.hashing import Hasher
    from engine.store.state import StatCache
    from engine.store.workspace import Workspace

    diamond.certus("repro")
    w = Workspace(str(diamond.root))

    def status_reads() -> tuple[int, bool]:
        _, spec, dag = load_pipeline(w)
        st = StatCache(os.path.join(w.dot, "state.db"))
        h = Hasher(w.root, state=st)
        rows = workspace_status([spec[n] for n in dag.order()], h, LockFile.load(w.lock_path))
        st.flush()
        return h.bytes_read, any(r.stale for r in rows)

    time.sleep(0.02)
    status_reads()  # settle: outputs hashed within a clock tick of their write are re-read once
    assert status_reads() == (0, False)  # up to date: no byte read
    os.utime(diamond.root / "in.txt")  # touch: new mtime, same bytes
    time.sleep(0.02)
    reads, stale = status_reads()
    assert not stale and reads == len("input v1\n")  # the touched file is re-hashed once ...
    assert status_reads() == (0, False)  # ... and never again
    diamond.clear_runs()
    assert diamond.certus("repro") == 0
    assert diamond.runs() == []


def test_deleted_output_restored_by_checkout(diamond, capsys):
    diamond.certus("repro")
    before = diamond.read("out/d.txt")
    (diamond.root / "out" / "d.txt").unlink()
    capsys.readouterr()
    diamond.certus("status")
    assert "out missing: out/d.txt" in capsys.readouterr().out
    assert diamond.certus("checkout") == 0
    assert diamond.read("out/d.txt") == before
    diamond.write("out/b.txt", "hand edited\n")
    assert diamond.certus("checkout") == 1  # modified outputs are not overwritten silently
    assert diamond.read("out/b.txt") == "hand edited\n"
    assert diamond.certus("checkout", "--force") == 0
    assert diamond.read("out/b.txt") != "hand edited\n"


def test_directory_outputs_and_dep_inside_output_directory(ws):
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("mk.py", "import os,sys\nos.makedirs(sys.argv[1],exist_ok=True)\n"
                      "[open(f'{sys.argv[1]}/f{i}.txt','w').write(str(i)) for i in range(3)]\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          mk: {cmd: python mk.py d, deps: [mk.py], outs: [d]}
          use:
            writable: [runs.log]
            cmd: "python step.py use u.txt d/f1.txt"
            deps: [step.py, d/f1.txt]
            outs: [u.txt]
    """)
    assert ws.certus("repro") == 0
    lock = ws.lock()
    assert lock["stages"]["mk"]["outs"]["d"]["kind"] == "dir"
    assert lock["stages"]["mk"]["outs"]["d"]["nfiles"] == 3
    import shutil

    shutil.rmtree(ws.root / "d")
    assert ws.certus("checkout") == 0
    assert sorted(os.listdir(ws.root / "d")) == ["f0.txt", "f1.txt", "f2.txt"]


def test_targets_downstream_and_single(diamond, capsys):
    capsys.readouterr()
    diamond.certus("repro", "b", "--dry")
    out = capsys.readouterr().out
    assert [ln.split(":")[0] for ln in out.splitlines()] == ["a", "b"]
    diamond.certus("repro", "c")
    assert sorted(diamond.runs()) == ["a", "c"]
    diamond.clear_runs()
    diamond.write("in.txt", "v9\n")
    diamond.certus("repro", "-s", "a")
    assert diamond.runs() == ["a"]
    diamond.clear_runs()
    diamond.certus("repro", "--downstream", "b")
    assert sorted(diamond.runs()) == ["b", "d"]  # c is stale too, but not downstream of b
    capsys.readouterr()
    assert diamond.certus("repro", "nosuch") == 2
    assert "unknown target 'nosuch'" in capsys.readouterr().err


def test_dry_run_explains_and_writes_nothing(diamond, capsys):
    diamond.certus("repro")
    diamond.write("in.txt", "changed\n")
    lock_before = (diamond.root / "certus.lock").read_bytes()
    diamond.clear_runs()
    capsys.readouterr()
    assert diamond.certus("repro", "--dry") == 0
    out = capsys.readouterr().out
    assert "a: run (dep changed: in.txt)" in out
    assert "b: may run (upstream will run: a)" in out
    assert "e: up to date" in out
    assert diamond.runs() == []
    assert (diamond.root / "certus.lock").read_bytes() == lock_before


def test_force_reruns(diamond):
    diamond.certus("repro")
    diamond.clear_runs()
    diamond.certus("repro", "--force", "e")
    assert diamond.runs() == ["e"]


def test_parallel_stages_overlap_in_time(ws, monkeypatch):
    monkeypatch.setenv("STEP_SLEEP", "1.0")
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          x: {writable: [runs.log, times.log], cmd: python step.py x x.txt, deps: [step.py], outs: [x.txt]}
          y: {writable: [runs.log, times.log], cmd: python step.py y y.txt, deps: [step.py], outs: [y.txt]}
    """)
    t0 = time.monotonic()
    assert ws.certus("repro", "-j", "2") == 0
    elapsed = time.monotonic() - t0
    times: dict[str, dict[str, float]] = {}
    for line in ws.read("times.log").split("\n"):
        if line:
            name, what, t = line.split()
            times.setdefault(name, {})[what] = float(t)
    assert times["x"]["start"] < times["y"]["end"] and times["y"]["start"] < times["x"]["end"]
    assert elapsed < 1.9


def test_failing_stage_stops_downstream_lets_others_finish(diamond, capsys):
    diamond.write("pipelines/p.yaml", diamond.read("pipelines/p.yaml").replace(
        "cmd: python step.py b out/b.txt out/a.txt", "cmd: echo boom-line; exit 3"))
    capsys.readouterr()
    assert diamond.certus("repro") == 1
    captured = capsys.readouterr()
    assert "stage(s) failed: b (exit status 3)" in captured.err
    assert "not run because of it: d" in captured.err
    assert "boom-line" in captured.err  # the failing stage's last log lines
    assert sorted(diamond.runs()) == ["a", "c", "e"]
    lock = diamond.lock()
    assert "b" not in lock["stages"] and "d" not in lock["stages"] and "c" in lock["stages"]


def test_stage_env_is_reproducible_and_params_are_handed_over(ws):
    ws.write("conf/config.yaml", "certus: {pipeline: p}\nm: {k: 0.25}\n")
    ws.write("show.py", "import os,json\nkeys=['PYTHONHASHSEED','TZ','LC_ALL','SOURCE_DATE_EPOCH','MINE']\n"
                        "d={k: os.environ.get(k) for k in keys}\n"
                        "d['params']=json.load(open(os.environ['CERTUS_PARAMS']))\n"
                        "open('env.json','w').write(json.dumps(d))\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          s:
            cmd: python show.py
            deps: [show.py]
            params: [m.k]
            env: {MINE: "yes"}
            outs: [env.json]
    """)
    ws.commit()
    assert ws.certus("repro") == 0
    env = json.loads(ws.read("env.json"))
    assert env["PYTHONHASHSEED"] == "0" and env["TZ"] == "UTC" and env["LC_ALL"] == "C.UTF-8"
    assert env["SOURCE_DATE_EPOCH"] == ws.git("log", "-1", "--format=%ct").strip()
    assert env["MINE"] == "yes"
    assert env["params"] == {"m": {"k": 0.25}}


def test_check_determinism(ws, capsys):
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          det: {writable: [runs.log, times.log], cmd: "python step.py det det.txt", deps: [step.py], outs: [det.txt]}
          rnd: {cmd: "python -c \\"import os; open('rnd.txt','wb').write(os.urandom(8))\\"", outs: [rnd.txt]}
    """)
    assert ws.certus("repro") == 0
    capsys.readouterr()
    assert ws.certus("repro", "--check-determinism", "det") == 0
    assert "is deterministic" in capsys.readouterr().out
    recorded = ws.lock()["stages"]["rnd"]["outs"]["rnd.txt"]["digest"]
    assert ws.certus("repro", "--check-determinism", "rnd") == 1
    assert "DIFFERENT" in capsys.readouterr().out
    from engine.store.hashing import file_digest

    assert "sha256:" + file_digest(str(ws.root / "rnd.txt")) == recorded  # workspace put back


def test_multirun_sweep_one_run_per_point(diamond, capsys):
    capsys.readouterr()
    assert diamond.certus("repro", "-m", "b.y=1,2,3") == 0
    out = capsys.readouterr().out
    assert "multirun: 3 point(s), 0 failed" in out
    assert diamond.runs().count("b") == 3
    for v in (1, 2, 3):
        assert f"b.y={v}:" in out


def test_gc_drops_unreferenced_objects(diamond, capsys):
    diamond.certus("repro")
    diamond.certus("repro", "b.y=5")
    capsys.readouterr()
    assert diamond.certus("gc") == 0
    assert "removed 0 cache object(s)" in capsys.readouterr().out  # run cache still refers to both
    assert diamond.certus("gc", "--workspace") == 0
    out = capsys.readouterr().out
    n = int(re.search(r"removed (\d+)", out).group(1))
    assert n >= 2  # the b.y=1 versions of b and d
    diamond.clear_runs()
    assert diamond.certus("repro") == 0  # b.y=1 must now really run again
    assert sorted(diamond.runs()) == ["b", "d"]


def test_stage_cannot_corrupt_cache_through_a_hardlink(ws, capsys):
    # unconfined (no Landlock, or certus.sandbox=off): the write goes through and must be caught;
    # confined, the write is refused outright (tests/test_sandbox.py)
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  sandbox: off\n  cache: {link_types: [hardlink, copy]}\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          a: {cmd: "echo original > a.txt", outs: [a.txt]}
          b: {cmd: "echo sneaky >> a.txt; echo done > b.txt", deps: [a.txt], outs: [b.txt]}
    """)
    capsys.readouterr()
    assert ws.certus("repro") == 1
    assert "modified its dependency in place: a.txt" in capsys.readouterr().err
    from engine.core.digest import Digest
    from engine.store.cache import ObjectCache

    digest = Digest.parse(ws.lock()["stages"]["a"]["outs"]["a.txt"]["digest"])
    cache = ObjectCache(str(ws.root / ".certus" / "cache"))
    if cache.has(digest):  # either intact, or quarantined: never served corrupted
        cache.check(digest)


def test_status_does_not_import_dvc(diamond):
    diamond.certus("repro")
    code = ("import sys; from engine.cli.main import main; rc = main(['status']);"
            "bad = [m for m in sys.modules if m == 'dvc' or m.startswith('dvc.') or m == 'subprocess'];"
            "print('BAD', bad); sys.exit(rc or (1 if bad else 0))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=diamond.root, capture_output=True, text=True)
    assert "BAD []" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0


def test_two_concurrent_repros_do_not_corrupt(diamond, monkeypatch):
    monkeypatch.setenv("STEP_SLEEP", "1.5")
    first = diamond.popen("repro", "a")
    deadline = time.time() + 20
    while not (diamond.root / "times.log").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = diamond.proc("repro")
    assert second.returncode == 3
    assert "the workspace is locked by certus repro (pid" in second.stderr
    assert "Traceback" not in second.stderr
    status = diamond.proc("status")  # read-only status still works while repro runs
    assert status.returncode == 0
    waiting = diamond.popen("repro", "--wait")
    assert first.wait(timeout=60) == 0
    assert waiting.wait(timeout=120) == 0
    final = diamond.proc("status", "--json")
    assert json.loads(final.stdout)["clean"] is True


def test_kill_9_mid_stage_leaves_consistent_state(ws, monkeypatch):
    # the stage spawns a background child that keeps writing its output: an orphan after kill -9
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("slow.py", "import sys,time,os\nopen('slow.pid','w').write(str(os.getpid()))\n"
                        "f=open(sys.argv[1],'w')\nfor i in range(200):\n  f.write('x'); f.flush(); time.sleep(0.05)\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          fast: {writable: [runs.log], cmd: "python step.py fast fast.txt", deps: [step.py], outs: [fast.txt]}
          slow:
            writable: [slow.pid]
            cmd: "python slow.py slow.txt & wait"
            deps: [slow.py, fast.txt]
            outs: [slow.txt]
          after:
            writable: [runs.log]
            cmd: "python step.py after after.txt slow.txt"
            deps: [step.py, slow.txt]
            outs: [after.txt]
    """)
    p = ws.popen("repro")
    deadline = time.time() + 30
    pid_file = ws.root / "slow.pid"  # created empty by the sandbox (writable:), then filled by the stage
    while not (pid_file.exists() and pid_file.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    orphan = int(ws.read("slow.pid"))
    lock = ws.lock()
    assert list(lock["stages"]) == ["fast"]  # only the finished stage is recorded
    assert not any(ws.root.joinpath(".certus", "cache").rglob("*.tmp-*"))
    (ws.root / "slow.pid").unlink()
    ws.clear_runs()
    r = ws.proc("repro")  # reaps the orphan, re-runs exactly what did not finish
    assert r.returncode == 0, r.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)
    assert sorted(ws.runs()) == ["after"]  # 'fast' was not re-run; 'slow' re-ran (no log line)
    assert len(ws.read("slow.txt")) == 200
    assert sorted(ws.lock()["stages"]) == ["after", "fast", "slow"]


def test_sigterm_terminates_stage_group_and_keeps_finished(ws):
    ws.write("conf/config.yaml", "certus: {pipeline: p}\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          quick: {writable: [runs.log, times.log], cmd: "python step.py quick q.txt", deps: [step.py], outs: [q.txt]}
          hang:
            writable: [hang.started]
            cmd: "touch hang.started; sleep 60; echo x > h.txt"
            deps: [q.txt]
            outs: [h.txt]
    """)
    p = ws.popen("repro")
    deadline = time.time() + 30
    while not (ws.root / "hang.started").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert list(ws.lock()["stages"]) == ["quick"]
    assert not (ws.root / "h.txt").exists()


def test_hardlink_mode_detects_output_edited_through_the_link(ws, capsys):
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  cache: {link_types: [hardlink, copy]}\n")
    ws.write("pipelines/p.yaml", 'stages:\n  a: {cmd: "echo original > a.txt", outs: [a.txt]}\n')
    assert ws.certus("repro") == 0
    with open(ws.root / "a.txt", "a") as f:  # in place: with a hardlink this writes the cache object
        f.write("edited\n")
    capsys.readouterr()
    assert ws.certus("checkout", "--force") == 1
    err = capsys.readouterr().err
    assert "was modified (written through a hardlink?) and has been removed" in err
    assert ws.certus("repro") == 0  # the stage re-runs and the cache is whole again
    assert ws.read("a.txt") == "original\n"
