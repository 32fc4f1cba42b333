"""``certus.lock`` merges per stage: the merge driver, and two real clones pulling each other's runs.

The integration test is the issue's scenario with real git (a bare remote and clones in
tmp_path, identities in each repo's own config), the real CLI (``repro`` with different
overrides in each clone) and git running the installed driver as a subprocess on ``pull``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, STEP, Workspace

from engine.cli.main import main
from engine.errors import WorkspaceError
from engine.pipeline.lock_merge import merge_locks
from engine.pipeline.lockfile import LockFile, StageLock

D = "sha256:" + "0" * 64


def lock_bytes(stages: dict[str, StageLock], pipeline: str = "p") -> bytes:
    return LockFile("x", dict(stages), pipeline).to_bytes()


def entry(n: int, cmd: str = "run") -> StageLock:
    return StageLock(key="sha256:" + f"{n:064x}", cmd=cmd, outs={f"out/{n}.txt": {"digest": D, "kind": "file"}})


# -- the merge itself ---------------------------------------------------------------------------------


def test_per_stage_three_way_rules() -> None:
    base = {"a": entry(1), "b": entry(2), "c": entry(3), "d": entry(4)}
    ours = {**base, "a": entry(10), "c": entry(30)}  # a: ours only; c: both; d removed by theirs
    theirs = {"a": entry(1), "b": entry(20), "c": entry(31), "e": entry(5)}
    result = merge_locks(lock_bytes(base), lock_bytes(ours), lock_bytes(theirs))
    merged = LockFile.from_bytes(result.data, "merged")  # strict: a valid lock
    assert merged.stages == {"a": entry(10), "b": entry(20), "c": entry(30), "e": entry(5)}
    assert dict(result.taken) == {"a": "ours", "b": "theirs", "c": "ours", "d": "removed", "e": "theirs"}
    assert result.data == lock_bytes(merged.stages)  # the canonical bytes a repro would write
    # the same merge from re-serialised inputs (other key order, other whitespace) gives the same bytes
    shuffled = json.dumps(json.loads(lock_bytes(theirs)), sort_keys=False).encode()
    assert merge_locks(lock_bytes(base), lock_bytes(ours), shuffled).data == result.data


def test_empty_base_and_identical_sides() -> None:
    a = lock_bytes({"a": entry(1)})
    result = merge_locks(b"", a, a)  # both added the lock independently, the same
    assert result.data == a and result.taken == ()
    both = merge_locks(b"", lock_bytes({"a": entry(1)}), lock_bytes({"a": entry(2), "b": entry(3)}))
    assert LockFile.from_bytes(both.data, "m").stages == {"a": entry(1), "b": entry(3)}


@pytest.mark.parametrize("bad", [b"<<<<<<< HEAD\n{}\n=======\n", b"[1, 2]",
                                 b'{"stages": {"a": {"key": "sha256:nothex", "cmd": "x"}}, "version": 1}',
                                 b'{"stages": {}, "version": 2}'],
                         ids=["conflict-markers", "not-an-object", "bad-digest", "other-version"])
def test_invalid_side_refused_in_one_line(bad: bytes) -> None:
    good = lock_bytes({"a": entry(1)})
    with pytest.raises(WorkspaceError) as e:
        merge_locks(good, good, bad)
    assert "(theirs)" in str(e.value) and "\n" not in str(e.value)


def test_cli_merge_writes_ours_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, ours, theirs = (tmp_path / n for n in ("O", "A", "B"))
    base.write_bytes(lock_bytes({"a": entry(1)}))
    ours.write_bytes(lock_bytes({"a": entry(1), "b": entry(2)}))
    theirs.write_bytes(b'{"stages": {"a": ')
    before = ours.read_bytes()
    assert main(["lock", "merge", str(base), str(ours), str(theirs)]) != 0
    err = capsys.readouterr().err
    assert "(theirs)" in err and "not a valid Certus lock file" in err and len(err.strip().splitlines()) == 1
    assert ours.read_bytes() == before
    theirs.write_bytes(lock_bytes({"a": entry(7)}))
    assert main(["lock", "merge", str(base), str(ours), str(theirs)]) == 0
    assert LockFile.from_bytes(ours.read_bytes(), "A").stages == {"a": entry(7), "b": entry(2)}


# -- two clones, real git, real repro ---------------------------------------------------------------

CONF = """\
    certus:
      pipeline: p
    train: {seed: 0}
"""
PIPE = """\
    stages:
      train:
        cmd: python step.py train out/model.txt in.txt
        writable: [runs.log]
        deps: [step.py, in.txt]
        params: [train.seed]
        outs: [out/model.txt]
      report:
        cmd: python step.py report out/report.txt notes.txt
        writable: [runs.log]
        deps: [step.py, notes.txt]
        outs: [out/report.txt]
"""
IGNORE = ".certus/\n/out/\nruns.log\n"  # the ledger leaves the working tree; outputs are Certus's


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def clone(bare: Path, dest: Path) -> Workspace:
    assert git(bare.parent, "clone", "-q", str(bare), str(dest)).returncode == 0
    for k, v in (("user.name", "Test"), ("user.email", "test@example.com"), ("pull.rebase", "false")):
        git(dest, "config", "--local", k, v)
    assert main(["-C", str(dest), "lock", "install-merge-driver"]) == 0
    return Workspace(dest)


def ok(w: Workspace, *args: str) -> None:
    assert main(["-C", str(w.root), *args]) == 0, args


def status(w: Workspace, capsys: pytest.CaptureFixture[str], *overrides: str) -> dict[str, list[str]]:
    capsys.readouterr()
    ok(w, "status", "--json", *overrides)
    return {n: s["reasons"] for n, s in json.loads(capsys.readouterr().out)["stages"].items()}


def outs(w: Workspace) -> dict[str, bytes | None]:
    return {p: (w.root / p).read_bytes() if (w.root / p).exists() else None
            for p in ("out/model.txt", "out/report.txt")}


@pytest.mark.integration
def test_two_clones_pull_without_conflict_and_status_is_true(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))  # no global git config, no user files
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))  # git runs `certus lock merge`
    (tmp_path / "userhome").mkdir()
    bare = tmp_path / "remote.git"
    assert git(tmp_path, "init", "-q", "--bare", str(bare)).returncode == 0
    seed = clone(bare, tmp_path / "seed")
    for rel, text in (("step.py", STEP), ("conf/config.yaml", CONF), ("pipelines/p.yaml", PIPE),
                      ("in.txt", "input\n"), ("notes.txt", "notes v1\n"), (".gitignore", IGNORE)):
        seed.write(rel, text)
    ok(seed, "repro")
    seed.commit("pipeline, first run")
    assert ".gitattributes" in seed.git("ls-files") and "certus.lock" in seed.git("ls-files")
    assert git(seed.root, "push", "-q", "origin", "HEAD").returncode == 0

    a, b = clone(bare, tmp_path / "a"), clone(bare, tmp_path / "b")
    a.write("notes.txt", "notes v2 (a)\n")  # a also changes the report's input: a stage only they change
    ok(a, "repro", "train.seed=1")
    a.commit("seed 1, new notes")
    assert git(a.root, "push", "-q", "origin", "HEAD").returncode == 0
    ok(b, "repro", "train.seed=2")
    b.commit("seed 2")
    ours_before, theirs_lock = LockFile.load(str(b.root / "certus.lock")), LockFile.load(str(a.root / "certus.lock"))

    pulled = git(b.root, "pull", "--no-edit", "-q", "origin", "HEAD")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert git(b.root, "status", "--porcelain").stdout == "" and "<<<<" not in b.read("certus.lock")
    merged = LockFile.load(str(b.root / "certus.lock"))  # strict: a valid lock
    assert merged.stages["train"] == ours_before.stages["train"]  # both ran it: ours, what b's files are
    assert merged.stages["report"] == theirs_lock.stages["report"]  # only a changed it: theirs
    assert b.read("notes.txt") == "notes v2 (a)\n"

    # From scratch: a fresh clone of the merged commit runs the same override as b.
    assert git(b.root, "push", "-q", "origin", "HEAD").returncode == 0
    c = clone(bare, tmp_path / "c")
    ok(c, "repro", "train.seed=2")
    assert all(not r for r in status(c, capsys, "train.seed=2").values())
    verdicts = status(b, capsys, "train.seed=2")
    truth = outs(c)
    for stage, out in (("train", "out/model.txt"), ("report", "out/report.txt")):
        really = outs(b)[out] == truth[out] and merged.stages[stage] == LockFile.load(str(c.root / "certus.lock")
                                                                                     ).stages[stage]
        assert (not verdicts[stage]) == really, (stage, verdicts[stage])
    assert verdicts["report"] == ["out modified: out/report.txt"]  # b still has the report of the old notes
    # default config: train's params differ from the lock, in b as in the fresh clone
    assert status(b, capsys)["train"] == status(c, capsys)["train"] == ["param changed: train.seed (2 -> 0)"]

    b.clear_runs()
    ok(b, "repro", "train.seed=2")
    assert b.runs() == ["report"]  # train really was up to date
    assert b.read("certus.lock") == c.read("certus.lock") and outs(b) == truth
    assert all(not r for r in status(b, capsys, "train.seed=2").values())

    # and the other way round: a pulls b's merge, a fast-forward; then its status reads a's files
    pulled = git(a.root, "pull", "--no-edit", "-q", "origin", "HEAD")
    assert pulled.returncode == 0, pulled.stderr
    verdicts = status(a, capsys, "train.seed=2")
    assert verdicts["train"] == ["out modified: out/model.txt"]  # a's model is seed 1's, the lock says seed 2's
    (a.root / "out/model.txt").unlink()
    assert status(a, capsys, "train.seed=2")["train"] == ["out missing: out/model.txt"]


@pytest.mark.integration
def test_invalid_side_leaves_an_ordinary_git_conflict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    repo = tmp_path / "r"
    assert git(tmp_path, "init", "-q", str(repo)).returncode == 0
    for k, v in (("user.name", "Test"), ("user.email", "test@example.com")):
        git(repo, "config", "--local", k, v)
    assert main(["-C", str(repo), "lock", "install-merge-driver"]) == 0
    assert main(["-C", str(repo), "lock", "install-merge-driver"]) == 0  # idempotent
    assert (repo / ".gitattributes").read_text() == "certus.lock merge=certus-lock\n"
    lock = repo / "certus.lock"
    lock.write_bytes(lock_bytes({"a": entry(1)}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-qb", "other")
    lock.write_text('{"stages": {"a": ')  # a broken lock committed on their side
    git(repo, "commit", "-qam", "broken")
    git(repo, "checkout", "-q", "-")
    ours = lock_bytes({"a": entry(2)})
    lock.write_bytes(ours)
    git(repo, "commit", "-qam", "ours")
    merged = git(repo, "merge", "-q", "--no-edit", "other")
    assert merged.returncode != 0 and "not a valid Certus lock file" in merged.stderr + merged.stdout
    assert git(repo, "status", "--porcelain").stdout.startswith("UU certus.lock")
    assert lock.read_bytes() == ours  # the driver wrote nothing; git marks the conflict
