"""The Dask executor on a real cluster: a LocalCluster scheduler on loopback with two worker
processes, started once for this module.

The workers run as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (``setpriv``), so a
workspace whose mode is 000 is unreadable to them while the coordinator (this process) still
works in it: that is how staged mode is shown not to need the workspace. They are also
started with ``cpus``/``mem`` Dask resources, and this directory on PYTHONPATH so a test can
make a worker misbehave (``client.run``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

distributed = pytest.importorskip("distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
ISOLATED = os.geteuid() == 0  # dropping the DAC capabilities needs root

# a stage that records its pid, then waits while HOLD-<name> exists
SLOW = """\
import os, sys, time
name, out = sys.argv[1:]
os.makedirs("pids", exist_ok=True)
with open(f"pids/{name}", "w") as f:
    f.write(f"{os.getpid()}\\n")
with open("runs.log", "a") as f:
    f.write(name + "\\n")
deadline = time.time() + 60
while os.path.exists(f"HOLD-{name}") and time.time() < deadline:
    time.sleep(0.05)
open(out, "w").write(name + "\\n")
"""


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A LocalCluster scheduler (loopback) and two worker processes, for the whole module."""
    local = distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=":0")
    scratch = tempfile.mkdtemp(prefix="certus-dask-workers-")
    env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if ISOLATED else []
    procs = [subprocess.Popen(prefix + [sys.executable, "-m", "distributed.cli.dask_worker", local.scheduler_address,
                                        "--nthreads", "2", "--no-dashboard", "--name", f"w{i}",
                                        "--local-directory", scratch, "--resources", "cpus=2 mem=2e9"],
                              cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(2)]
    client = distributed.Client(local.scheduler_address, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield client
    client.close()
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    local.close()
    subprocess.run(["rm", "-rf", scratch])


@pytest.fixture
def addr(cluster: Any) -> str:
    cluster.wait_for_workers(2, timeout=60)  # a test that killed a worker leaves the nanny restarting it
    return cluster.scheduler.address


def _configure(ws: Any, **executor: Any) -> None:
    conf = ws.read("conf/config.yaml")
    assert conf.startswith("certus:\n  pipeline: p\n")
    ws.write("conf/config.yaml", conf.replace("pipeline: p\n", f"pipeline: p\n  executor: {json.dumps(executor)}\n", 1))
    ws.commit("executor")


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


# -- pipelines in both modes ---------------------------------------------------------------

def test_shared_mode_fan_out_and_chain_give_the_local_lock(diamond: Any, addr: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert diamond.certus("repro", "--executor", "dask", "--scheduler", addr) == 0, _err(capsys)
    out = capsys.readouterr()
    assert sorted(diamond.runs()) == ["a", "b", "c", "d", "e"]
    assert "ran 5, restored 0" in out.err
    assert diamond.read("out/d.txt").count("input v1") == 2  # d saw b and c, each built on a
    dask_lock = (diamond.root / "certus.lock").read_bytes()
    diamond.clear_runs()
    assert diamond.certus("repro", "--executor", "dask", "--scheduler", addr) == 0
    assert diamond.runs() == []  # a no-op repro submits nothing
    assert diamond.certus("repro", "-f", "--no-run-cache", "--executor", "local") == 0
    assert sorted(diamond.runs()) == ["a", "b", "c", "d", "e"]
    assert (diamond.root / "certus.lock").read_bytes() == dask_lock


def test_staged_mode_workers_never_read_the_workspace(diamond: Any, addr: str, cluster: Any, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    _configure(diamond, kind="dask", mode="staged", store=str(store), scheduler=addr)
    root = str(diamond.root)

    def probe(path: str) -> str:
        try:
            os.listdir(path)
            return "read"
        except PermissionError:
            return "denied"

    os.chmod(root, 0)
    try:
        if ISOLATED:
            assert set(cluster.run(probe, root).values()) == {"denied"}
        cwds = cluster.run(os.getcwd).values()
        assert not any(c == root or c.startswith(root + os.sep) for c in cwds)
        assert diamond.certus("repro") == 0, _err(capsys)
    finally:
        os.chmod(root, 0o755)
    err = _err(capsys)
    assert "ran 5, restored 0" in err
    assert diamond.runs() == []  # runs.log was written in each worker's scratch directory, not here
    assert diamond.read("out/d.txt").count("input v1") == 2
    assert list((store / "incoming").iterdir()) == []  # uploads are removed once ingested
    assert len([p for p in store.rglob("*") if p.is_file()]) == 7  # step.py, in.txt and the five outputs
    staged_lock = (diamond.root / "certus.lock").read_bytes()
    assert diamond.certus("repro", "-f", "--no-run-cache", "--executor", "local") == 0
    assert (diamond.root / "certus.lock").read_bytes() == staged_lock


def test_staged_mode_refuses_a_tampered_upload(diamond: Any, addr: str, cluster: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _configure(diamond, kind="dask", mode="staged", store=str(tmp_path / "store"), scheduler=addr)
    cluster.run(tamper, "out/b.txt")
    try:
        assert diamond.certus("repro") == 1
    finally:
        cluster.run(tamper, "")
    err = _err(capsys)
    assert "stage 'b' failed: the upload of output 'out/b.txt' by worker tcp://127.0.0.1:" in err
    assert "does not match the digest it claimed (sha256:" in err
    assert "b" not in diamond.lock()["stages"] and "c" in diamond.lock()["stages"]
    assert not (diamond.root / "out/b.txt").exists()
    assert diamond.certus("repro") == 0  # an honest worker: the next repro re-runs b and then d
    assert "ran 2, restored 0, up to date 3" in _err(capsys)


def tamper(rel: str) -> None:
    """Inside a worker: after each upload, overwrite the object of ``rel`` ('' undoes it)."""
    import engine.adapters.dask_runner as runner
    from engine.core.digest import Digest
    from engine.store.cache import ObjectCache

    honest = getattr(runner, "_honest_upload", runner._upload)
    runner._honest_upload = honest
    if not rel:
        runner._upload = honest
        return

    def lying(job: Any, scratch: str, inbox: str) -> dict[str, Any]:
        manifest = honest(job, scratch, inbox)
        if rel in manifest:
            path = ObjectCache(inbox).path(Digest.parse(manifest[rel]["digest"]))
            os.chmod(path, 0o644)
            with open(path, "wb") as f:
                f.write(b"not what the stage wrote\n")
        return manifest

    runner._upload = lying


# -- failures, cancellation ----------------------------------------------------------------

def _slow_pipeline(ws: Any) -> None:
    ws.write("slow.py", SLOW)
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          slow:
            cmd: python slow.py slow out/slow.txt
            writable: [runs.log, pids]
            deps: [slow.py]
            outs: [out/slow.txt]
          quick:
            cmd: python slow.py quick out/quick.txt
            writable: [runs.log, pids]
            deps: [slow.py]
            outs: [out/quick.txt]
    """)
    ws.write(".gitignore", ws.read(".gitignore") + "pids/\nHOLD-*\n")
    ws.commit("slow")


def _wait_for(path: Path, timeout: float = 30) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            text = path.read_text()
            assert len(text.split()) == 1, text
            return [int(x) for x in text.split()]
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_a_worker_lost_mid_stage_fails_that_stage_and_only_it_runs_again(ws: Any, addr: str, cluster: Any,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _slow_pipeline(ws)
    (ws.root / "HOLD-slow").write_text("")
    import threading

    pids: list[int] = []

    def kill_worker() -> None:
        try:
            pids.extend(_wait_for(ws.root / "pids/slow"))
            deadline = time.time() + 20
            while time.time() < deadline:
                running = [a for a, keys in cluster.processing().items() if any("-slow-" in str(k) for k in keys)]
                if running:
                    break
                time.sleep(0.05)
            [worker] = running
            os.kill(cluster.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)  # the worker running 'slow'
        except BaseException as e:
            pids.append(-1)
            (ws.root / "HOLD-slow").unlink()
            raise AssertionError("could not kill the worker") from e

    killer = threading.Thread(target=kill_worker)
    killer.start()
    rc = ws.certus("repro", "--scheduler", addr)
    killer.join()
    err = _err(capsys)
    assert -1 not in pids, err
    assert rc == 1, err
    assert "stage 'slow' failed: its Dask worker was lost mid-stage" in err
    assert "quick" in ws.lock()["stages"] and "slow" not in ws.lock()["stages"]
    deadline = time.time() + 60  # the orphaned stage process is swept by the next runner on this host
    while _alive(pids[0]) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pids[0]), "the lost stage's process outlived its worker"
    (ws.root / "HOLD-slow").unlink()
    ws.clear_runs()
    assert ws.certus("repro", "--scheduler", addr) == 0
    assert ws.runs() == ["slow"]


def test_ctrl_c_of_the_coordinator_kills_the_remote_process_group(ws: Any, addr: str) -> None:
    _slow_pipeline(ws)
    (ws.root / "HOLD-slow").write_text("")
    # a terminal's Ctrl-C reaches a foreground process whose SIGINT is the default; a test run started in the
    # background of a non-interactive shell inherits SIGINT ignored, so restore it as a terminal would have it
    coord = ws.popen("repro", "--scheduler", addr, "slow",
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        [shell] = _wait_for(ws.root / "pids/slow")
        assert _alive(shell) and shell not in _children(coord.pid)
        coord.send_signal(signal.SIGINT)
        _, err = coord.communicate(timeout=150)
    finally:
        if coord.poll() is None:
            coord.kill()
    assert coord.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.time() + 10
    while _alive(shell) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(shell), "the remote stage kept running after Ctrl-C"
    assert not (ws.root / "out/slow.txt").exists()


def test_a_task_runs_its_command_once_and_never_after_a_cancel_or_its_run(cluster: Any, tmp_path: Path) -> None:
    """The runner's own guards, on a real worker, without a scheduler round trip: the same task started
    again (as the scheduler does after its worker died), a task started after the coordinator's cancel
    mark, and one started after its run ended (its mark directory gone) never run the command; the
    result left beside the mark (shared mode) is always the latest attempt's."""
    from engine.adapters.dask_runner import mark_name, run_stage
    from engine.run.executor import StageJob

    marks, ran = tmp_path / "marks", tmp_path / "ran.log"
    marks.mkdir()
    job = StageJob(name="s", cmd=f"echo x >> {ran}", cwd=str(tmp_path), env={}, log_path=str(tmp_path / "s.log"),
                   outs=((str(ran), "file"),))

    def start(task: str, where: Path, attempt: str) -> dict[str, Any]:
        payload = {"job": job, "task": task, "run_id": "guards", "mode": "shared", "sandbox": "auto",
                   "marks": str(where), "cancel": "certus-cancel-test-guards"}
        return cluster.submit(run_stage, payload, key=f"guards-{attempt}", pure=False).result(timeout=60)

    left = marks / (mark_name("t1") + ".json")  # the result, left where the coordinator reads it first
    first = start("t1", marks, "a")
    assert first["returncode"] == 0 and not first["error"], first
    assert json.loads(left.read_text())["started"] == first["started"]
    again = start("t1", marks, "b")
    assert again["lost"] and again["returncode"] == -1 and "started it again" in again["error"]
    assert json.loads(left.read_text())["lost"], "a re-started task's 'lost' must replace the first attempt's result"
    (marks / "cancel").write_text("")
    cancelled = start("t2", marks, "c")
    assert (cancelled["returncode"], cancelled["error"]) == (-signal.SIGTERM, "cancelled before it started")
    ended = start("t3", tmp_path / "gone", "d")
    assert (ended["returncode"], ended["error"]) == (-signal.SIGTERM, "its run has ended")
    assert ran.read_text() == "x\n"


@pytest.mark.parametrize("executor", ["dask", "local"])
def test_declared_retries_rerun_a_failed_stage_and_undeclared_do_not(ws: Any, addr: str, executor: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    where = ("--scheduler", addr) if executor == "dask" else ("--executor", "local")
    ws.write("flaky.py", """\
        import os, sys
        n = len(open("tries.log").read()) if os.path.exists("tries.log") else 0
        open("tries.log", "a").write("x")
        if n < 1:
            sys.exit(3)
        open(sys.argv[1], "w").write("ok\\n")
    """)
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          once:
            cmd: python flaky.py out/once.txt
            writable: [tries.log]
            deps: [flaky.py]
            outs: [out/once.txt]
    """)
    ws.write(".gitignore", ws.read(".gitignore") + "tries.log\n")
    ws.commit("flaky")
    assert ws.certus("repro", *where) == 1
    assert "stage 'once' failed: exit status 3" in _err(capsys)
    assert ws.read("tries.log") == "x"  # run once, not retried
    (ws.root / "tries.log").unlink()
    ws.write("pipelines/p.yaml", ws.read("pipelines/p.yaml").replace("outs: [out/once.txt]",
                                                                     "outs: [out/once.txt]\n    retries: 1"))
    ws.commit("retries")
    assert ws.certus("repro", *where) == 0, _err(capsys)
    assert ws.read("tries.log") == "xx" and ws.read("out/once.txt") == "ok\n"


# -- resources, configuration, errors -----------------------------------------------------

def test_resources_map_to_worker_resources(ws: Any, addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          fits:
            cmd: echo fits > out/fits.txt
            outs: [out/fits.txt]
            resources: {cpus: 2, mem: 1GiB}
          gpu:
            cmd: echo gpu > out/gpu.txt
            outs: [out/gpu.txt]
            resources: {gpu: 1}
    """)
    ws.commit("resources")
    assert ws.certus("repro", "--scheduler", addr) == 1
    err = _err(capsys)
    assert "stage 'gpu' failed: needs resources gpu=1, which no worker of the cluster offers (2 worker(s))" in err
    assert ws.read("out/fits.txt") == "fits\n"
    lock = ws.lock()["stages"]["fits"]
    assert "resources" not in json.dumps(lock)  # scheduling, not part of the key


def test_spec_and_config_errors_are_one_line(ws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          a:
            cmd: echo a > a.txt
            outs: [a.txt]
            resources: {mem: lots, cpus: -1}
            retries: maybe
    """)
    ws.commit("bad")
    assert ws.certus("repro", "--executor", "dask") == 2
    err = _err(capsys)
    assert "stage 'a': field 'resources': mem: 'lots' is not a size like 4GiB or 512MB" in err
    assert "cpus: -1 is not a positive number" in err and "'retries': 'maybe' is not a whole number" in err
    ws.write("pipelines/p.yaml", "stages:\n  a:\n    cmd: echo a > a.txt\n    outs: [a.txt]\n")
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  executor: {kind: dask, mode: copied}\n")
    ws.commit("bad mode")
    assert ws.certus("repro") == 2
    assert "config 'certus.executor.mode': 'copied' is not one of shared, staged" in _err(capsys)
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  executor: {kind: dask, mode: staged}\n")
    ws.commit("no store")
    assert ws.certus("repro") == 2
    assert "config 'certus.executor.store': staged mode needs a store" in _err(capsys)


def test_unreachable_scheduler_is_one_line(ws: Any) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  executor: {kind: dask, connect_timeout: 1}\n")
    ws.write("pipelines/p.yaml", "stages:\n  a:\n    cmd: echo a > a.txt\n    outs: [a.txt]\n")
    ws.commit("unreachable")
    res = ws.proc("repro", "--scheduler", f"tcp://127.0.0.1:{port}", timeout=60)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("certus: error:")]
    assert lines and lines[0].startswith(f"certus: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert "Traceback" not in res.stderr


def test_no_op_repro_and_status_do_not_import_dask(diamond: Any, addr: str) -> None:
    _configure(diamond, kind="dask", scheduler=addr)
    assert diamond.certus("repro") == 0
    code = ("import sys; from engine.cli.main import main; rc = main(['repro']) or main(['status']);"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')];"
            "print('BAD', bad); sys.exit(rc or (1 if bad else 0))")
    out = subprocess.run([sys.executable, "-c", code], cwd=diamond.root, capture_output=True, text=True)
    assert "BAD []" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0


def test_a_local_cluster_started_for_the_run(diamond: Any) -> None:
    # its own process: the LocalCluster's worker processes (and multiprocessing's helper) end with it
    res = diamond.proc("repro", "--executor", "dask", "-j", "2", timeout=180)
    assert res.returncode == 0, res.stderr
    assert "ran 5, restored 0" in res.stderr
    assert sorted(diamond.runs()) == ["a", "b", "c", "d", "e"]


# -- provenance ----------------------------------------------------------------------------

def test_provenance_verifies_after_a_distributed_run(diamond: Any, addr: str, tmp_path: Path, monkeypatch: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "certus_home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "correct horse")
    monkeypatch.delenv("CERTUS_KEY", raising=False)
    monkeypatch.delenv("CERTUS_LEDGER_KEY", raising=False)
    assert diamond.certus("keys", "generate", "--name", "alice", "--role", "trainer") == 0
    assert diamond.certus("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger") == 0
    _configure(diamond, kind="dask", mode="staged", store=str(tmp_path / "store"), scheduler=addr)
    assert diamond.certus("repro") == 0, _err(capsys)
    assert diamond.certus("verify", "--artifacts") == 0, _err(capsys)
    import base64

    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    run_id = next(p.name for p in (diamond.root / ".certus/logs").iterdir())
    env = json.loads(Provenance(Workspace.discover(str(diamond.root))).read_attestations(run_id)["d"])
    stmt = json.loads(base64.b64decode(env["payload"]))
    ex = stmt["predicate"]["buildDefinition"]["internalParameters"]["sandbox"]["executor"]
    assert ex["mode"] == "staged" and ex["task"].startswith(f"certus-{run_id}-d-")  # run, stage, stage key
    claim = ex["workerClaim"]
    assert claim["worker"].startswith("tcp://127.0.0.1:") and claim["python"] and claim["host"]
    subject = {s["name"]: "sha256:" + s["digest"]["sha256"] for s in stmt["subject"]}
    assert claim["outs"] == subject == {"out/d.txt": diamond.lock()["stages"]["d"]["outs"]["out/d.txt"]["digest"]}


def test_dir_watch_reports_files_renamed_in_and_only_those(tmp_path: Path) -> None:
    """The executor settles a stage when its runner renames the result file into the mark directory."""
    import threading

    from engine.adapters.dir_watch import watch

    seen: list[str] = []
    arrived = threading.Event()

    def on_name(name: str) -> None:
        seen.append(name)
        arrived.set()

    w = watch(str(tmp_path), on_name)
    if w is None:
        pytest.skip("no inotify here: the executor waits for Dask's 'finished' instead")
    try:
        (tmp_path / "written-in-place.json").write_text("{}")  # not a rename: a reader could see it half written
        (tmp_path / "r.json.tmp").write_text("{}")
        os.replace(tmp_path / "r.json.tmp", tmp_path / "r.json")
        assert arrived.wait(5)
        time.sleep(0.1)
        assert seen == ["r.json"]
    finally:
        w.close()
    assert not any(t.name == "certus-dir-watch" and t.is_alive() for t in threading.enumerate())


def test_staged_mode_moves_directory_outputs_and_a_dep_inside_one(ws: Any, addr: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A directory output travels through the store file by file (each verified) and a downstream stage that
    depends on one file inside it fetches just that; the lock is the local executor's."""
    ws.write("mk.py", "import os,sys\nos.makedirs(sys.argv[1],exist_ok=True)\n"
                      "[open(f'{sys.argv[1]}/f{i}.txt','w').write(str(i)) for i in range(3)]\n")
    ws.write("use.py", "import sys\nopen(sys.argv[2],'w').write('got ' + open(sys.argv[1]).read())\n")
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          mk: {cmd: python mk.py d, deps: [mk.py], outs: [d]}
          use: {cmd: python use.py d/f1.txt u.txt, deps: [use.py, d/f1.txt], outs: [u.txt]}
    """)
    ws.commit("dirs")
    _configure(ws, kind="dask", mode="staged", store=str(tmp_path / "store"), scheduler=addr)
    assert ws.certus("repro") == 0, _err(capsys)
    assert ws.read("u.txt") == "got 1"
    assert sorted(p.name for p in (ws.root / "d").iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]
    lock = ws.lock()
    assert lock["stages"]["mk"]["outs"]["d"]["kind"] == "dir" and lock["stages"]["mk"]["outs"]["d"]["nfiles"] == 3
    staged_lock = (ws.root / "certus.lock").read_bytes()
    assert ws.certus("repro", "-f", "--no-run-cache", "--executor", "local") == 0
    assert (ws.root / "certus.lock").read_bytes() == staged_lock
