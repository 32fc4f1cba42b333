"""Paths and records from files anyone can edit (certus.lock, run-cache records) and links a
stage leaves behind: each test forges the file or link and runs the real CLI."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest


def _edit_lock(ws, fn) -> None:
    doc = ws.lock()
    fn(doc)
    (ws.root / "certus.lock").write_text(json.dumps(doc, indent=2))


def _rename_out(doc: dict, stage: str, old: str, new: str) -> None:
    outs = doc["stages"][stage]["outs"]
    outs[new] = outs.pop(old)


def _one_error_line(r) -> str:
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("certus: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- 4. paths from committed files (issue 9.1) ---------------------------------------------

@pytest.mark.parametrize("evil", ["../../escaped.txt", "/ABS/escaped.txt", "out/../../escaped.txt", ".git/hooks/x"])
def test_lock_out_path_outside_the_workspace_is_refused(diamond, tmp_path, evil):
    ws = diamond
    assert ws.certus("repro") == 0
    evil = evil.replace("/ABS", str(tmp_path))
    _edit_lock(ws, lambda d: _rename_out(d, "a", "out/a.txt", evil))
    for args in (("checkout",), ("checkout", "--force"), ("status",)):
        r = ws.proc(*args)
        assert r.returncode != 0, (args, r.stdout)
        line = _one_error_line(r)
        assert "certus.lock" in line and "stage 'a'" in line and "outs" in line, line
        assert "certus repro a" in line and "restore certus.lock from git" in line
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (ws.root / ".git" / "hooks" / "x").exists()


@pytest.mark.parametrize("bad", [None, "sha256:1234", "md5:" + "0" * 32, 42, "SHA256:" + "A" * 64])
def test_lock_entry_without_or_with_malformed_digest(diamond, bad):
    ws = diamond
    assert ws.certus("repro") == 0

    def forge(d: dict) -> None:
        rec = d["stages"]["b"]["outs"]["out/b.txt"]
        if bad is None:
            del rec["digest"]
        else:
            rec["digest"] = bad

    _edit_lock(ws, forge)
    for args in (("status",), ("checkout",)):
        line = _one_error_line(ws.proc(*args))
        assert "certus.lock: stage 'b', outs 'out/b.txt'" in line and "digest" in line
        assert "run 'certus repro b' or restore certus.lock from git" in line
    ws.clear_runs()
    r = ws.proc("repro", "b")  # the way out the message names: the entry is rebuilt
    assert r.returncode == 0, r.stderr
    assert "ignoring a malformed entry" in r.stderr
    assert ws.lock()["stages"]["b"]["outs"]["out/b.txt"]["digest"].startswith("sha256:")
    assert ws.proc("status").returncode == 0


def test_checkout_does_not_write_through_a_symlinked_parent(diamond, tmp_path):
    ws = diamond
    assert ws.certus("repro") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text("precious\n")
    import shutil
    shutil.rmtree(ws.root / "out")
    os.symlink(elsewhere, ws.root / "out")  # the attack: the outputs' parent now leads outside
    for args in (("checkout",), ("checkout", "--force")):
        r = ws.proc(*args)
        assert r.returncode != 0
        line = _one_error_line(r)
        assert "symlink" in line and "outside the workspace" in line, line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["a.txt"]
    assert (elsewhere / "a.txt").read_text() == "precious\n"


# -- 5. symlinks inside directory outputs (issue 9.2) --------------------------------------

DIR_STAGE = """\
    stages:
      d:
        cmd: python make.py
        outs: [d]
"""


@pytest.mark.parametrize("kind", ["outside", "dangling", "loop"])
def test_symlink_inside_a_directory_output_is_refused(ws, tmp_path, kind):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-BYTES-OUTSIDE\n")
    target = {"outside": str(secret), "dangling": str(tmp_path / "nope"), "loop": "d/loop"}[kind]
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", DIR_STAGE)
    ws.write("make.py", f"""
        import os
        os.makedirs("d", exist_ok=True)
        open("d/real.txt", "w").write("real\\n")
        os.symlink({target!r} if {kind!r} != "loop" else "loop", "d/loop" if {kind!r} == "loop" else "d/link")
    """)
    r = ws.proc("repro")
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "stage(s) failed: d" in line and "is a symbolic link inside directory 'd'" in line, line
    cache = ws.root / ".certus" / "cache"
    stored = [p.read_bytes() for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert not any(b"SECRET-BYTES-OUTSIDE" in b for b in stored)  # never read through the link
    assert "d" not in (ws.lock().get("stages", {}) if (ws.root / "certus.lock").exists() else {})
    assert ws.proc("status").returncode in (0, 1)  # status names the link too, without a traceback
    assert "Traceback" not in ws.proc("status").stderr


def test_output_file_that_is_a_symlink_is_not_stored(ws, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-BYTES-OUTSIDE\n")
    # unconfined: Landlock would refuse the link outright; this is the cache's own defence
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n  sandbox: 'off'\n")
    ws.write("pipelines/p.yaml", "stages:\n  s: {cmd: 'ln -s " + str(secret) + " o.txt', outs: [o.txt]}\n")
    r = ws.proc("repro")
    line = _one_error_line(r)
    assert "output 'o.txt'" in line and "symbolic link" in line
    cache = ws.root / ".certus" / "cache"
    assert not any(b"SECRET" in p.read_bytes() for p in cache.rglob("*") if p.is_file())


# -- 3. run-cache records are input ---------------------------------------------------------

def _record_path(ws, key: str) -> Path:
    hexd = key.split(":", 1)[1]
    return ws.root / ".certus" / "runs" / hexd[:2] / (hexd[2:] + ".json")


FORGERIES = {
    "not-json": lambda rec: "{ this is not json",
    "not-object": lambda rec: json.dumps([1, 2, 3]),
    "escaping-path": lambda rec: json.dumps({**rec, "outs": {"../../x.txt": rec["outs"]["out/a.txt"]}}),
    "extra-out": lambda rec: json.dumps({**rec, "outs": {**rec["outs"], "in.txt": rec["outs"]["out/a.txt"]}}),
    "bad-digest": lambda rec: json.dumps({**rec, "outs": {"out/a.txt": {"digest": "sha256:zz", "size": 1}}}),
    "no-digest": lambda rec: json.dumps({**rec, "outs": {"out/a.txt": {"size": 1}}}),
    "bad-kind": lambda rec: json.dumps({**rec, "outs": {"out/a.txt": {**rec["outs"]["out/a.txt"], "kind": "link"}}}),
    "other-stage": lambda rec: json.dumps({**rec, "stage": "e"}),
    "run-id-path": lambda rec: json.dumps({**rec, "run_id": "../../../../etc/passwd"}),
    "outs-list": lambda rec: json.dumps({**rec, "outs": ["out/a.txt"]}),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_malformed_run_cache_record_is_a_miss(diamond, forgery):
    ws = diamond
    assert ws.certus("repro") == 0
    key = ws.lock()["stages"]["a"]["key"]
    good = ws.read("out/a.txt")
    assert ws.certus("repro", "a.x=2") == 0
    path = _record_path(ws, key)
    rec = json.loads(path.read_text())
    os.chmod(path, 0o644)
    path.write_text(FORGERIES[forgery](rec))
    ws.clear_runs()
    r = ws.proc("repro")  # a.x=1 again: the key is known, but its record is forged
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "run-cache record" in ln]
    assert len(notes) == 1 and "ignored for stage 'a'" in notes[0], r.stderr
    assert "a" in ws.runs()  # a miss: the stage ran
    assert ws.read("out/a.txt") == good
    assert not (ws.root.parent / "x.txt").exists()
    assert ws.proc("gc").returncode == 0  # gc reads the records too


def test_dir_manifest_with_escaping_entry_is_refused(ws, tmp_path):
    """A self-consistent forged manifest object (stored under its true hash) naming '../x'."""
    import hashlib

    from engine.core.canonical import canonical_bytes
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("pipelines/p.yaml", textwrap.dedent("""\
        stages:
          d: {cmd: "mkdir -p d && echo one > d/one.txt", outs: [d]}
    """))
    assert ws.certus("repro") == 0
    one = hashlib.sha256(b"one\n").hexdigest()
    data = canonical_bytes([["../../../escaped.txt", one]])
    forged = hashlib.sha256(data).hexdigest()
    obj = ws.root / ".certus" / "cache" / forged[:2] / forged[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    _edit_lock(ws, lambda d: d["stages"]["d"]["outs"]["d"].update(digest="sha256:" + forged))
    import shutil
    shutil.rmtree(ws.root / "d")
    r = ws.proc("checkout")
    assert r.returncode == 1 and "manifest entry" in _one_error_line(r)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_repro_does_not_delete_or_write_through_a_symlinked_parent(diamond, tmp_path):
    ws = diamond
    assert ws.certus("repro") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text("precious\n")
    import shutil
    shutil.rmtree(ws.root / "out")
    os.symlink(elsewhere, ws.root / "out")
    for args in (("repro",), ("repro", "--force", "a")):
        r = ws.proc(*args)
        assert r.returncode != 0
        assert "symlink" in _one_error_line(r)
    assert (elsewhere / "a.txt").read_text() == "precious\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["a.txt"]


# -- property: mutated lock files and run-cache records ------------------------------------

def test_mutated_lock_and_run_cache_never_traceback_or_escape(diamond, tmp_path):
    """Hypothesis rewrites one field of certus.lock or of a run-cache record with hostile values;
    status, checkout --force and repro (in-process: any non-EngineError escapes and fails the
    test) must not write outside the workspace nor touch a source file."""
    import contextlib
    import io
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from engine.cli.main import main

    ws = diamond
    assert ws.certus("repro") == 0
    assert ws.certus("repro", "a.x=2") == 0
    assert ws.certus("repro") == 0
    sentinel = tmp_path / "abs"
    sentinel.mkdir()
    hostile = st.one_of(
        st.none(), st.booleans(), st.integers(-2, 2**70), st.text(max_size=12),
        st.sampled_from(["../x", "../../x", str(sentinel / "x"), ".git/x", ".certus/x", "out/../../x", "a\x00b",
                         "sha256:", "sha256:" + "0" * 64, "sha256:" + "g" * 64, "dir", "file", "link"]),
        st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )
    counter = iter(range(10**6))

    def mutate(doc, path, value, rename):
        cur = doc
        for k in path[:-1]:
            cur = cur[k]
        if rename and isinstance(cur, dict) and isinstance(value, str):
            cur[value] = cur.pop(path[-1])
        else:
            cur[path[-1]] = value

    def fields(doc, prefix=()):
        if isinstance(doc, dict):
            for k, v in doc.items():
                yield prefix + (k,)
                yield from fields(v, prefix + (k,))

    base_lock = ws.lock()
    rec_path = next((ws.root / ".certus" / "runs").rglob("*.json"))
    base_rec = json.loads(rec_path.read_text())
    targets = [("lock", f) for f in fields(base_lock)] + [("rec", f) for f in fields(base_rec)]

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(targets), hostile, st.booleans())
    def check(target, value, rename):
        where, path = target
        ex = tmp_path / f"ex{next(counter)}"
        root = ex / "ws"
        shutil.copytree(ws.root, root, symlinks=True)
        doc = json.loads(json.dumps(base_lock if where == "lock" else base_rec))
        mutate(doc, path, value, rename)
        dst = root / "certus.lock" if where == "lock" else root / rec_path.relative_to(ws.root)
        os.chmod(dst, 0o644)
        dst.write_text(json.dumps(doc))
        sources = {p: (root / p).read_bytes() for p in ("in.txt", "step.py", "pipelines/p.yaml")}
        for args in (("status",), ("checkout", "--force"), ("repro", "a.x=2"), ("repro",)):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                assert isinstance(main(["-C", str(root), *args]), int)
        assert sorted(p.name for p in ex.iterdir()) == ["ws"]
        assert not list(sentinel.iterdir()) and not (tmp_path / "x").exists()
        assert all((root / p).read_bytes() == b for p, b in sources.items())
        shutil.rmtree(ex)

    check()
