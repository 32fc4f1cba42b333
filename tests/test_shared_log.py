"""The shared ledger log's two backends, against real parts: a bare git repo on disk as the remote and a
real PostgreSQL server on loopback (tests/pg_server.py; skipped with the reason where there is none).

Concurrency is tested with real writer processes running the read -> append -> retry loop a ledger
client runs; crash safety with SIGKILL at a chosen point (a git hook or a PostgreSQL trigger holds the
victim there, and the test kills its whole process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_server import pg_server  # noqa: F401  (the session fixture)

from engine.adapters.shared_log import (
    Remote,
    SharedLogError,
    Snapshot,
    Unreachable,
    load_remotes,
    open_shared_log,
    remotes_path,
    remove_remote,
    save_remote,
)
from engine.adapters.shared_log_git import LEDGER_REF, GitSharedLog

pytestmark = pytest.mark.integration

REPO = str(Path(__file__).resolve().parents[1])

# One writer process: appends K entries {"w":W,"k":k} one at a time with the retry loop. The checkpoint
# stored with each append names the size it makes, so the final checkpoint proves it moved with the head.
WRITER = r'''
import json, os, random, sys, time
sys.path.insert(0, os.environ["CERTUS_REPO"])
from engine.adapters.shared_log import Remote
spec = json.loads(sys.argv[1])
if spec["kind"] == "git":
    from engine.adapters.shared_log_git import GitSharedLog
    log = GitSharedLog(Remote("origin", "git"), spec["workspace"], chunk=spec["chunk"])
else:
    from engine.adapters.shared_log_pg import PgSharedLog
    log = PgSharedLog(Remote("team", spec["url"]), idle_timeout_s=spec.get("idle", 30))
w, known = spec["writer"], 0
for k in range(spec["k"]):
    entry = json.dumps({"w": w, "k": k}).encode()
    while True:
        snap = log.read(known)
        known = snap.size
        if log.append(snap.size, [entry], b"size %d" % (snap.size + 1)):
            break
        time.sleep(random.uniform(0, 0.02))
print("done", w)
'''


# --- backends -----------------------------------------------------------------------------------


class GitBackend:
    kind = "git"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bare = tmp / "remote.git"
        _git(tmp, "init", "-q", "--bare", str(self.bare))
        self.n = 0

    def workspace(self) -> str:
        self.n += 1
        ws = self.tmp / f"clone{self.n}"
        _git(self.tmp, "init", "-q", str(ws))
        _git(ws, "remote", "add", "origin", str(self.bare))
        return str(ws)

    def client(self, chunk: int = 3) -> GitSharedLog:
        return GitSharedLog(Remote("origin", "git"), self.workspace(), chunk=chunk)

    def spec(self, writer: int, k: int) -> dict:
        return {"kind": "git", "workspace": self.workspace(), "chunk": 3, "writer": writer, "k": k}

    def hook(self, name: str, body: str) -> None:
        p = self.bare / "hooks" / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(0o755)


class PgBackend:
    kind = "pg"

    def __init__(self, server, log: str) -> None:
        self.server = server
        self.url = f"{server.url}?log={log}"
        self.log = log

    def client(self, chunk: int = 3):
        from engine.adapters.shared_log_pg import PgSharedLog

        return PgSharedLog(Remote("team", self.url))

    def spec(self, writer: int, k: int) -> dict:
        return {"kind": "pg", "url": self.url, "writer": writer, "k": k}


def _git(cwd: Path | str, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(params=["git", "pg"])
def backend(request, tmp_path):
    if request.param == "git":
        return GitBackend(tmp_path)
    server = request.getfixturevalue("pg_server")
    return PgBackend(server, "t_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_"))


def _writer(spec: dict, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "CERTUS_REPO": REPO, **(env or {})})


def _finish(procs: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("done")


def _check_log(snap: Snapshot, writers: dict[int, int]) -> None:
    """Every writer's entries are there exactly once, in its own order; nothing else is."""
    got = [json.loads(e) for e in snap.entries]
    assert snap.start == 0 and snap.size == len(got) == sum(writers.values())
    for w, k in writers.items():
        assert [e["k"] for e in got if e["w"] == w] == list(range(k)), f"writer {w}"
    assert {e["w"] for e in got} <= set(writers)
    assert snap.checkpoint == b"size %d" % snap.size


# --- both backends ------------------------------------------------------------------------------


def test_empty_log_reads_empty(backend):
    assert backend.client().read() == Snapshot(0, 0, (), None)
    assert backend.client().read(5) == Snapshot(0, 0, (), None)


def test_appends_and_reads_from_every_offset(backend):
    log, other = backend.client(chunk=3), backend.client(chunk=3)
    model: list[bytes] = []
    for n, batch in enumerate([1, 2, 3, 1, 5, 7, 1]):  # crosses chunk boundaries (chunk=3) in every way
        new = [b'{"e":%d,"i":%d}' % (n, i) for i in range(batch)]
        writer = log if n % 2 == 0 else other  # two clients, each building on what the other pushed
        assert writer.read().size == len(model)
        assert writer.append(len(model), new, b"cp %d" % n) is True
        model += new
    reader = backend.client()
    for start in range(len(model) + 2):
        snap = reader.read(start)
        s = min(start, len(model))
        assert snap == Snapshot(len(model), s, tuple(model[s:]), b"cp 6")


def test_cas_conflict_returns_false_and_changes_nothing(backend):
    a, b = backend.client(), backend.client()
    assert a.read().size == 0 and b.read().size == 0
    assert a.append(0, [b"a0", b"a1"], b"cp a") is True
    assert b.append(0, [b"b0"], b"cp b") is False  # b's view is stale: another writer got there first
    assert b.append(1, [b"b0"], b"cp b") is False  # a size that never was
    assert b.append(7, [b"b0"], b"cp b") is False  # larger than the log: False, not an error
    assert b.read() == Snapshot(2, 0, (b"a0", b"a1"), b"cp a")
    assert b.append(2, [b"b0"], b"cp b") is True
    assert a.read() == Snapshot(3, 0, (b"a0", b"a1", b"b0"), b"cp b")


@pytest.mark.parametrize("bad", [[b"a\nb"], [b""], ["text"], [b"ok", b"x\n"]])
def test_bad_entries_refused_and_nothing_appended(backend, bad):
    log = backend.client()
    log.append(0, [b"first"], b"cp")
    with pytest.raises(SharedLogError, match=r"entry \d of the append is not non-empty bytes without a newline"):
        log.append(1, bad, b"cp2")
    with pytest.raises(SharedLogError, match="checkpoint"):
        log.append(1, [b"ok"], b"")
    assert backend.client().read() == Snapshot(1, 0, (b"first",), b"cp")


def test_eight_concurrent_writers_one_order(backend):
    k = 4 if backend.kind == "git" else 20
    _finish([_writer(backend.spec(w, k)) for w in range(8)], timeout=240)
    _check_log(backend.client().read(), {w: k for w in range(8)})


def test_sigkill_mid_append_leaves_a_usable_log(backend, tmp_path):
    """The victim is held inside its first append (git: in the remote's pre-receive hook, objects sent but
    the ref not yet locked; PostgreSQL: inside the transaction, its entry inserted but not committed)
    and killed with its whole process group; the other writers finish and the log is consistent."""
    mark = tmp_path / "victim-waiting"
    if backend.kind == "git":
        backend.hook("pre-receive", 'cat >/dev/null\nif [ -n "$CERTUS_TEST_MARK" ]; then touch "$CERTUS_TEST_MARK";'
                     ' sleep 60; fi\n')
        env = {"CERTUS_TEST_MARK": str(mark)}
    else:
        admin = _hold_victim(backend, "INSERT ON certus_ledger_entries", 3)
        env = {"PGOPTIONS": "-c certus.test_victim=1"}
    victim = _writer(backend.spec(99, 3), env)
    deadline = time.monotonic() + 60
    while not _victim_waiting(backend, mark):
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the victim never reached the append"
        time.sleep(0.05)
    others = [_writer(backend.spec(w, 3)) for w in range(4)]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    _finish(others, timeout=180)
    snap = backend.client().read()
    _check_log(snap, {w: 3 for w in range(4)})  # the victim's in-flight entry never landed, nothing torn
    log = backend.client()
    assert log.append(snap.size, [b"after"], b"size %d" % (snap.size + 1)) is True
    assert backend.client().read(snap.size).entries == (b"after",)
    if backend.kind == "pg":
        admin._conn.execute("DROP TRIGGER certus_test_hold ON certus_ledger_entries")
        admin._conn.commit()


def _hold_victim(backend, event: str, seconds: float):
    """A trigger that holds the victim's session (PGOPTIONS sets certus.test_victim) inside its append."""
    admin = backend.client()
    admin.read()  # creates the tables
    admin._conn.execute(
        "CREATE OR REPLACE FUNCTION certus_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF current_setting('certus.test_victim', true) = '1' THEN PERFORM pg_sleep({seconds}); END IF; "
        "RETURN NEW; END $$")
    admin._conn.execute(f"CREATE OR REPLACE TRIGGER certus_test_hold BEFORE {event} "
                        "FOR EACH ROW EXECUTE FUNCTION certus_test_hold()")
    admin._conn.commit()
    return admin


def _victim_waiting(backend, mark: Path) -> bool:
    if backend.kind == "git":
        return mark.exists()
    conn = backend.client()._connect()
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'").fetchone()
    conn.rollback()
    return row[0] > 0


def test_unreachable_remote_is_one_line(backend, tmp_path):
    if backend.kind == "git":
        ws = backend.workspace()
        _git(ws, "remote", "set-url", "origin", str(tmp_path / "no-such-repo.git"))
        logs = [GitSharedLog(Remote("origin", "git"), ws), GitSharedLog(Remote("team", "git:nope"), ws)]
    else:
        from engine.adapters.shared_log_pg import PgSharedLog

        port = backend.server.url.rsplit(":", 1)[1].split("/")[0]
        closed = backend.server.url.replace(f":{port}/", ":1/")  # nothing listens on port 1
        logs = [PgSharedLog(Remote("team", closed + "?log=x"), connect_timeout=2)]
    for log in logs:
        for call, args in ((log.read, ()), (log.append, (0, [b"e"], b"cp"))):
            with pytest.raises(Unreachable) as e:
                call(*args)
            msg = str(e.value)
            assert "\n" not in msg and msg.startswith(f"remote '{log.remote.name}': ") and "again" in msg


# --- git only -----------------------------------------------------------------------------------


def test_git_workspace_that_is_not_a_repo_is_named(tmp_path):
    for ws in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SharedLogError, match=r"^remote 'origin': the workspace .* is not a git repository;") as e:
            open_shared_log(Remote("origin", "git"), str(ws)).read()
        assert not isinstance(e.value, Unreachable)


def _committed(be: GitBackend, name: str, text: str, message: str) -> Path:
    """The backend's workspace with one file committed on its branch."""
    ws = Path(be.workspace())
    (ws / name).write_text(text)
    _git(ws, "add", name)
    _git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return ws


def test_git_never_touches_head_index_worktree_or_branches(tmp_path):
    be = GitBackend(tmp_path)
    ws = _committed(be, "a.txt", "a\n", "one")
    (ws / "a.txt").write_text("edited\n")
    (ws / "b.txt").write_text("staged\n")
    _git(ws, "add", "b.txt")
    before = [_git(ws, "rev-parse", "HEAD"), _git(ws, "status", "--porcelain"), _git(ws, "branch", "-a"),
              _git(ws, "symbolic-ref", "HEAD"), (ws / "a.txt").read_text()]
    log = GitSharedLog(Remote("origin", "git"), str(ws), chunk=2)
    for i in range(3):
        assert log.append(log.read().size, [b"e%d" % i], b"cp") is True
    after = [_git(ws, "rev-parse", "HEAD"), _git(ws, "status", "--porcelain"), _git(ws, "branch", "-a"),
             _git(ws, "symbolic-ref", "HEAD"), (ws / "a.txt").read_text()]
    assert after == before
    assert _git(be.bare, "for-each-ref", "--format=%(refname)") == LEDGER_REF  # one ref on the remote, no branch
    assert sorted(_git(be.bare, "ls-tree", "-r", "--name-only", LEDGER_REF).split()) == [
        "checkpoint", "chunk", "entries/00000000.jsonl", "entries/00000001.jsonl", "size"]
    assert _git(be.bare, "log", "--format=%an %ae %at", LEDGER_REF).splitlines() == ["certus certus@localhost 0"] * 3


def test_git_old_chunks_are_shared_and_chunk_length_is_the_logs(tmp_path):
    be = GitBackend(tmp_path)
    a = be.client(chunk=2)
    for i in range(5):
        a.append(i, [b"e%d" % i], b"cp")
    first = _git(be.bare, "rev-parse", f"{LEDGER_REF}~2:entries/00000000.jsonl")
    assert _git(be.bare, "rev-parse", f"{LEDGER_REF}:entries/00000000.jsonl") == first
    b = be.client(chunk=4096)  # a client with another default follows the log's recorded chunk length
    assert b.append(b.read().size, [b"e5", b"e6"], b"cp")
    assert _git(be.bare, "show", f"{LEDGER_REF}:entries/00000003.jsonl") == "e6"
    assert be.client().read(3).entries == (b"e3", b"e4", b"e5", b"e6")


def test_git_killed_while_holding_the_ref_lock_is_reported_in_one_line(tmp_path):
    """With a local bare remote, SIGKILL of the whole pushing process group (receive-pack included) between
    locking and updating the ref leaves refs/certus/ledger.lock behind, and git never removes it. Every
    push then fails: after the patience window the client says so, once, with what to do; the lock is
    never deleted for the user. Removing it makes the log usable again with nothing lost."""
    be = GitBackend(tmp_path)
    log = be.client()
    assert log.append(0, [b"e0"], b"size 1")
    mark = tmp_path / "holding-lock"
    be.hook("reference-transaction", f'if [ "$1" = prepared ] && [ -n "$CERTUS_TEST_MARK" ]; then touch "{mark}";'
            ' sleep 60; fi\n')
    victim = _writer(be.spec(7, 1), {"CERTUS_TEST_MARK": "1"})
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    lock = be.bare / (LEDGER_REF + ".lock")
    assert lock.exists()  # the case is real: git leaves it
    other = be.client()
    other.lock_patience = 1.0
    deadline = time.monotonic() + 30
    with pytest.raises(SharedLogError) as e:
        while time.monotonic() < deadline:
            assert other.append(other.read().size, [b"e1"], b"size 2") is False
            time.sleep(0.2)
    msg = str(e.value)
    assert "\n" not in msg and f"delete {LEDGER_REF}.lock" in msg and "remote 'origin'" in msg
    assert lock.exists()  # never deleted by Certus
    lock.unlink()  # what the message tells the user to do
    assert other.append(other.read().size, [b"e1"], b"size 2") is True
    assert be.client().read() == Snapshot(2, 0, (b"e0", b"e1"), b"size 2")


def test_git_malformed_ref_is_named(tmp_path):
    be = GitBackend(tmp_path)
    ws = _committed(be, "f", "x\n", "not a ledger")
    _git(ws, "push", "-q", "origin", f"HEAD:{LEDGER_REF}")
    with pytest.raises(SharedLogError, match=r"refs/certus/ledger at [0-9a-f]{12} is malformed"):
        be.client().read()


def test_git_ledger_ref_deleted_reads_empty(tmp_path):
    be = GitBackend(tmp_path)
    log = be.client()
    log.append(0, [b"e0"], b"cp")
    _git(be.bare, "update-ref", "-d", LEDGER_REF)
    assert log.read() == Snapshot(0, 0, (), None)


# --- PostgreSQL only ----------------------------------------------------------------------------


def test_pg_logs_in_one_database_are_separate(pg_server):  # noqa: F811
    from engine.adapters.shared_log_pg import PgSharedLog, split_log

    a = PgSharedLog(Remote("a", pg_server.url + "?log=sep_a"))
    b = PgSharedLog(Remote("b", pg_server.url + "?log=sep_b&application_name=x"))
    assert a.append(0, [b"a0"], b"cpa") and b.append(0, [b"b0", b"b1"], b"cpb")
    assert a.read() == Snapshot(1, 0, (b"a0",), b"cpa")
    assert b.read() == Snapshot(2, 0, (b"b0", b"b1"), b"cpb")
    assert split_log(Remote("c", "postgres://h/db?log=x&sslmode=require")) == ("postgres://h/db?sslmode=require", "x")
    assert split_log(Remote("c", "postgresql://h/db")) == ("postgresql://h/db", "certus")
    with pytest.raises(SharedLogError, match="log='a b'"):
        split_log(Remote("c", "postgresql://h/db?log=a b"))


def test_pg_writer_frozen_inside_an_append_does_not_block_the_others(pg_server, tmp_path):  # noqa: F811
    """A client stopped (SIGSTOP: its connection stays open, as with a frozen or unplugged machine) after
    its last statement but before COMMIT holds the head row's lock; the session's idle-in-transaction
    timeout ends it, the append is rolled back, and the other writers go on."""
    backend = PgBackend(pg_server, "t_frozen")
    admin = _hold_victim(backend, "UPDATE ON certus_ledger_head", 1)
    victim = _writer({**backend.spec(99, 1), "idle": 1.5}, {"PGOPTIONS": "-c certus.test_victim=1"})
    try:
        deadline = time.monotonic() + 60
        while not _victim_waiting(backend, tmp_path):
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(victim.pid, signal.SIGSTOP)  # frozen before its COMMIT, connection open
        others = [_writer(backend.spec(w, 2)) for w in range(3)]
        _finish(others, timeout=60)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        admin._conn.execute("DROP TRIGGER certus_test_hold ON certus_ledger_head")
        admin._conn.commit()
    _check_log(backend.client().read(), {w: 2 for w in range(3)})


# --- remotes.json and dispatch ------------------------------------------------------------------


def test_remotes_file_round_trip_and_errors(tmp_path):
    ws = str(tmp_path)
    assert load_remotes(ws) == {}
    save_remote(ws, Remote("team", "postgresql://db.internal/certus?log=prod"))
    save_remote(ws, Remote("origin", "git"))
    save_remote(ws, Remote("mirror", "git:upstream"))
    assert Path(remotes_path(ws)).read_bytes() == (
        b'{"remotes":{"mirror":{"url":"git:upstream"},"origin":{"url":"git"},'
        b'"team":{"url":"postgresql://db.internal/certus?log=prod"}}}\n')
    assert set(load_remotes(ws)) == {"mirror", "origin", "team"}
    remove_remote(ws, "mirror")
    assert load_remotes(ws) == {"origin": Remote("origin", "git"), "team": Remote("team",
                                                                                   "postgresql://db.internal/certus?log=prod")}
    with pytest.raises(SharedLogError, match=r"no ledger remote 'nope' .* \(configured: origin, team\)"):
        remove_remote(ws, "nope")
    for name, url, why in [("bad name", "git", "remote name"), ("x", "https://h/r", "is not 'git'"),
                           ("x", "git:", "does not name a git remote"),
                           ("x", "postgresql://u:secret@h/db", "holds a password")]:
        with pytest.raises(SharedLogError, match=why):
            save_remote(ws, Remote(name, url))
        with pytest.raises(SharedLogError, match=why):
            open_shared_log(Remote(name, url), ws)
    Path(remotes_path(ws)).write_text('{"remotes": {"x": {"url": "ftp://h"}}}')
    with pytest.raises(SharedLogError, match=r"remotes.json: remote 'x': url 'ftp://h' is not"):
        load_remotes(ws)
    Path(remotes_path(ws)).write_text("{")
    with pytest.raises(SharedLogError, match="remotes.json: not valid JSON"):
        load_remotes(ws)


def test_git_remote_does_not_import_psycopg(tmp_path):
    code = ("import sys; from engine.adapters.shared_log import Remote, open_shared_log; "
            f"log = open_shared_log(Remote('origin', 'git'), {str(tmp_path)!r}); "
            "assert type(log).__name__ == 'GitSharedLog'; assert 'psycopg' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
