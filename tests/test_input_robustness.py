"""Every file Certus reads is input: parse caches, specs, overrides, state.db, schemas and CSVs.

Each test is the attack or the careless edit, on real files, through the real CLI (in-process
``main`` or a subprocess), in a real git work tree; nothing is mocked.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.datasets.schema import load_schema, validate
from engine.errors import DatasetError

STAGE = """\
    stages:
      a:
        cmd: python step.py a out/a.txt in.txt
        deps: [step.py, in.txt]
        outs: [out/a.txt]
"""


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# -- 1. parse caches are sealed (issue 8.5) ---------------------------------------------------------

def test_edited_parse_caches_are_ignored_rebuilt_and_noted(diamond, capsys):
    assert diamond.certus("status") == 0  # fills .certus/tmp/{compose,spec}
    tmp = diamond.root / ".certus" / "tmp"
    spec_entries = list((tmp / "spec").glob("*.json"))
    compose_entries = list((tmp / "compose").glob("*.json"))
    assert len(spec_entries) == 1 and len(compose_entries) == 1
    # the attacker edits the cached resolved spec: stage a's command becomes an injected one
    blob = spec_entries[0].read_bytes()
    tag, _, body = blob.partition(b"\n")
    doc = json.loads(body)
    doc["stages"][0]["cmd"] = "touch injected && python step.py a out/a.txt in.txt"
    spec_entries[0].write_bytes(tag + b"\n" + json.dumps(doc).encode())
    # ... and the cached config (a value a stage's params would show)
    blob = compose_entries[0].read_bytes()
    tag, _, body = blob.partition(b"\n")
    cfg = json.loads(body)
    cfg["a"]["x"] = 999
    compose_entries[0].write_bytes(tag + b"\n" + json.dumps(cfg).encode())
    capsys.readouterr()
    assert diamond.certus("repro") == 0
    err = _err(capsys)
    assert "failed its integrity check (edited or damaged); ignored it and rebuilt it" in err
    assert err.count("integrity check") == 2  # one note per bad entry
    assert not (diamond.root / "injected").exists()
    assert diamond.lock()["stages"]["a"]["cmd"] == "python step.py a out/a.txt in.txt"
    assert '"x": 1' in diamond.read("out/a.txt")
    # rebuilt: the next status uses the (re-sealed) caches silently
    assert diamond.certus("status") == 0
    assert "integrity" not in _err(capsys)


def test_local_key_is_private_and_created_once_under_races(ws, tmp_path):
    home = tmp_path / "certus-home"
    env = {**os.environ, "CERTUS_HOME": str(home)}
    code = "from engine.store.localseal import local_key; import sys; sys.stdout.write(local_key().hex())"

    def one(_: int) -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(one, range(8)))
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "local.key").stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir()] == ["local.key"]  # no temp files left behind


def test_cache_from_another_user_key_is_not_trusted(diamond, tmp_path, monkeypatch, capsys):
    assert diamond.certus("status") == 0
    monkeypatch.setenv("CERTUS_HOME", str(tmp_path / "other-user"))
    from engine.store import localseal

    localseal._key_cache.clear()
    capsys.readouterr()
    assert diamond.certus("status") == 0
    assert "integrity check" in _err(capsys)
    localseal._key_cache.clear()


# -- 2. resolver values are never cached stale (issue 9.4) ------------------------------------------

MSG_SPEC = """\
    stages:
      m:
        cmd: python -c "import sys; open('out/m.txt', 'w').write(sys.argv[1])" ${msg}
        outs: [out/m.txt]
"""


@pytest.mark.parametrize("where", ["override", "conf", "conf-escaped"])
def test_resolver_value_changes_between_real_runs(ws, where):
    ws.write("pipelines/p.yaml", MSG_SPEC)
    if where == "override":
        ws.write("conf/config.yaml", "certus: {pipeline: p}\nmsg: none\n")
        args = ["repro", "msg=${oc.env:MSGV}"]
    elif where == "conf":
        ws.write("conf/config.yaml", "certus: {pipeline: p}\nmsg: ${oc.env:MSGV}\n")
        args = ["repro"]
    else:  # a YAML escape spells the resolver: raw bytes hold no "${"
        ws.write("conf/config.yaml", 'certus: {pipeline: p}\nmsg: "$\\x7Boc.env:MSGV}"\n')
        args = ["repro"]
    ws.commit()
    for value in ("one", "two", "one"):
        r = ws.proc(*args, env={**os.environ, "MSGV": value})
        assert r.returncode == 0, r.stderr
        assert ws.read("out/m.txt") == value
        st = ws.proc("status", *args[1:], env={**os.environ, "MSGV": value})
        assert "Everything is up to date." in st.stdout, st.stdout + st.stderr


# -- 3. outputs that name sources are refused before anything is deleted (issue 9.3) -----------------

def test_output_naming_tracked_sources_is_refused_and_nothing_is_deleted(ws, capsys):
    ws.write("stages/train.py", "print('committed')\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          a:
            cmd: python step.py a out/a.txt
            outs: [out/a.txt]
          gen:
            cmd: python step.py gen stages/gen.txt
            outs: [stages]
    """)
    ws.commit("sources")
    ws.write("stages/train.py", "print('uncommitted edit')\n")
    capsys.readouterr()
    assert ws.certus("repro") == 2
    err = _err(capsys).strip()
    assert err.count("\n") == 0
    assert err.startswith("certus: error: pipelines/p.yaml:5: stage 'gen': field 'outs': 'stages' is a directory "
                          "holding files git tracks (e.g. 'stages/train.py')")
    assert ws.read("stages/train.py") == "print('uncommitted edit')\n"
    assert ws.runs() == []  # refused before any stage started, not only before 'gen'
    # status stays on its fast path (no git query) and still works
    assert ws.certus("status") == 0
    # a tracked single file too
    ws.write("pipelines/p.yaml", "stages:\n  s:\n    cmd: python step.py s step.py\n    outs: [step.py]\n")
    capsys.readouterr()
    assert ws.certus("repro") == 2
    assert "stage 's': field 'outs': 'step.py' is a file git tracks" in _err(capsys)


# -- 4. specs: duplicates, foreach keys, bombs, bytes, NUL, nesting, quoting (issue 9.5) -------------

def _spec_error(ws, capsys, spec: bytes | str, *args: str) -> str:
    p = ws.root / "pipelines" / "p.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
    capsys.readouterr()
    code = ws.certus(*(args or ("status",)))
    err = _err(capsys).strip()
    assert code == 2, err
    assert err.startswith("certus: error: ")
    return err


def test_duplicate_keys_name_both_lines(ws, capsys):
    err = _spec_error(ws, capsys, "stages:\n  a:\n    cmd: echo one\n    outs: [o]\n    cmd: touch /tmp/x\n")
    assert err == ("certus: error: pipelines/p.yaml:5: duplicate key 'cmd' (first at line 3); a key may appear "
                   "once in a mapping: remove or rename one")
    err = _spec_error(ws, capsys, "stages:\n  a:\n    cmd: echo 1\n  b:\n    cmd: echo 2\n  a:\n    cmd: echo 3\n")
    assert "pipelines/p.yaml:6: duplicate key 'a' (first at line 2)" in err


def test_yaml_merge_keys_may_still_be_overridden(ws, capsys):
    ws.write("pipelines/p.yaml", """\
        vars:
          base: &base {cmd: "python step.py a out/a.txt", outs: [out/a.txt], writable: [runs.log]}
        stages:
          a:
            <<: *base
            cmd: python step.py a2 out/a.txt
    """)
    capsys.readouterr()
    assert ws.certus("repro", "--dry") == 0, _err(capsys)
    assert ws.certus("repro") == 0
    assert ws.runs() == ["a2"]


def test_foreach_keys_are_validated_like_stage_names(ws, capsys):
    err = _spec_error(ws, capsys, """\
stages:
  t:
    foreach:
      /../../x: 1
      ok: 2
    do:
      cmd: python step.py ${key} out/${item}.txt
      outs: ["out/${item}.txt"]
""")
    assert err == ("certus: error: pipelines/p.yaml:4: stage 't': field 'foreach': key '/../../x' cannot name a "
                   "stage; use letters, digits, '_', '-', '.' (not starting with '.' or '-')")
    assert not (ws.root / ".certus").exists() or not any((ws.root / ".certus").rglob("*x*"))


def test_alias_bomb_fails_fast(ws, capsys):
    lines = ["x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    spec = "vars:\n" + "\n".join("  " + ln for ln in lines) + "\nstages:\n  a: {cmd: 'echo ${x8}'}\n"
    t0 = time.monotonic()
    err = _spec_error(ws, capsys, spec)
    assert time.monotonic() - t0 < 5
    assert "anchors and aliases expand to more than 100,000 values" in err and "\n" not in err
    err = _spec_error(ws, capsys, "stages:\n  a: &a {cmd: x, deps: [*a]}\n")
    assert "recursive alias" in err


@pytest.mark.parametrize("spec,needle", [
    (b"stages:\n  a:\n    cmd: echo caf\xe9\n",
     "pipelines/p.yaml:3: byte 0xe9 at column 18 is not UTF-8; save the file as UTF-8"),
    (b'stages:\n  a:\n    cmd: x\n    deps: ["a\\0b"]\n', "pipelines/p.yaml:4: stage 'a': field 'deps': contains a "
                                                         "NUL byte"),
    (b"stages:\n  a:\n    cmd: x\x00\n", "pipelines/p.yaml:3: character U+0000 is not allowed in YAML"),
    (b"stages:\n  a:\n    cmd: x\n    deps: " + b"[" * 500 + b"]" * 500 + b"\n", "pipelines/p.yaml:4: nested deeper "
                                                                                "than 64 levels"),
    (b"stages:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 1200)), "YAML syntax error"),
    (b'stages:\n  a:\n    cmd: x\n    env: {"A=B": "1"}\n', "field 'env': expected a mapping of NAME: value"),
])
def test_bad_bytes_nul_and_nesting_are_one_line(ws, capsys, spec, needle):
    for args in (("status",), ("repro", "--dry")):
        err = _spec_error(ws, capsys, spec, *args)
        assert needle in err and "\n" not in err, err


QUOTE_CONF = "certus: {pipeline: p}\nmsg: hello\nfiles: [a.txt, 'b c.txt']\nopts: {k: v w}\nflags: '-n'\n"


def test_interpolated_values_are_shell_quoted(ws, capsys):
    ws.write("conf/config.yaml", QUOTE_CONF)
    ws.write("pipelines/p.yaml", """\
        stages:
          q:
            cmd: python -c "import json, sys; json.dump(sys.argv[1:], open('out/q.json', 'w'))" ${msg} ${files} ${opts}
            outs: [out/q.json]
    """)
    ws.commit()
    assert ws.certus("repro", "msg='x; touch pwned'") == 0, _err(capsys)
    assert not (ws.root / "pwned").exists()
    assert json.loads(ws.read("out/q.json")) == ["x; touch pwned", "a.txt", "b c.txt", "k=v w"]
    # safe values are pasted byte-identical: existing stage keys do not change
    assert ws.certus("repro") == 0
    assert ws.lock()["stages"]["q"]["cmd"].endswith(" hello a.txt 'b c.txt' 'k=v w'")


def test_raw_form_pastes_shell_syntax_unquoted(ws, capsys):
    ws.write("conf/config.yaml", QUOTE_CONF + "pipe: \"| tr a-z A-Z > out/r.txt\"\n")
    ws.write("pipelines/p.yaml", """\
        stages:
          r:
            cmd: mkdir -p out && echo ${msg} ${raw:${pipe}}
            outs: [out/r.txt]
          t:
            foreach: [one]
            do:
              cmd: echo ${item} ${raw:${flags}} > out/${item}.txt
              outs: ["out/${item}.txt"]
    """)
    ws.commit()
    assert ws.certus("repro") == 0, _err(capsys)
    assert ws.read("out/r.txt") == "HELLO\n"
    assert ws.lock()["stages"]["t@one"]["cmd"] == "echo one -n > out/one.txt"


# -- 5. corrupt state and bad data files (issue 9.6) -------------------------------------------------

@pytest.mark.parametrize("garbage", [b"\x00garbage" * 500, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_garbled_state_db_is_rebuilt_with_a_note(diamond, capsys, garbage):
    assert diamond.certus("repro") == 0
    db = diamond.root / ".certus" / "state.db"
    for extra in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        extra.unlink(missing_ok=True)
    db.write_bytes(garbage)
    capsys.readouterr()
    assert diamond.certus("status") == 0
    err = _err(capsys)
    assert err.count("certus: note: .certus/state.db: the stat cache was damaged") == 1
    assert diamond.certus("repro") == 0 and diamond.certus("status") == 0
    assert "damaged" not in _err(capsys)
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM files").fetchone()[0]
    assert rows > 0  # rebuilt, and serving again


def test_state_db_with_a_foreign_schema_is_rebuilt(diamond, capsys):
    db = diamond.root / ".certus" / "state.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE files (path TEXT)")
    con.commit()
    con.close()
    capsys.readouterr()
    assert diamond.certus("repro") == 0
    assert "the stat cache was damaged" in _err(capsys)
    assert sqlite3.connect(db).execute("SELECT count(*) FROM files WHERE digest IS NOT NULL").fetchone()[0] > 0


@pytest.mark.parametrize("text,needle", [
    ("columns:\n  a: [int]\n", "s.yaml:2: column 'a': rules are a list"),
    ("columns:\n  a: {type: int}\n  b:\n    nullable: 'no'\n", "s.yaml:4: column 'b': field 'nullable' is 'no'"),
    ("columns:\n  a: {min: low}\n", "s.yaml:2: column 'a': field 'min' is 'low'; expected a number"),
    ("columns:\n  a: {allowed: 5}\n", "field 'allowed' must be a list of values"),
    ("columns:\n  a: int\nunique: {a: 1}\n", "s.yaml:3: field 'unique' must be a column name or a list"),
    ("columns:\n  a: int\nextra_columns: maybe\n", "s.yaml:3: field 'extra_columns' is 'maybe'"),
    ("columns:\n  a: int\n  a: str\n", "s.yaml:3: duplicate key 'a' (first at line 2)"),
])
def test_schema_with_wrong_types_is_one_line(text, needle):
    with pytest.raises(Exception) as ei:
        load_schema("s.yaml", text)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    assert hasattr(ei.value, "diagnostics")  # an EngineError: the CLI prints it as one line


SCHEMA = "columns:\n  id: {type: int}\n  name: str\n"


def test_csv_with_a_bom_reads_correctly(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("id,name\n1,x\n2,y\n".encode("utf-8-sig"))
    stats = validate(str(p), load_schema("s.yaml", SCHEMA), label="bom.csv")
    assert stats.rows == 2 and stats.column_names == ("id", "name")


@pytest.mark.parametrize("data,needle", [
    (b"id,name\n1,x\n2,caf\xe9\n", "bad.csv: line 3: byte 0xe9 is not UTF-8; convert the file to UTF-8"),
    (b'id,name\n1,"' + b"x" * 200_000 + b'"\n', "bad.csv: data row 1: a field is longer than 131,072 characters"),
    (b'id,name\n1,"unbalanced\n', None),
])
def test_unreadable_csv_is_one_line(tmp_path, data, needle):
    p = tmp_path / "bad.csv"
    p.write_bytes(data)
    try:
        validate(str(p), load_schema("s.yaml", SCHEMA), label="bad.csv")
    except DatasetError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 400
        if needle:
            assert needle in msg, msg
    else:
        assert needle is None


def test_a_million_columns_give_bounded_messages(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text("id,name," + ",".join(f"c{i}" for i in range(1_000_000)) + "\n1,x\n")
    with pytest.raises(DatasetError) as ei:
        validate(str(p), load_schema("s.yaml", SCHEMA), label="wide.csv")
    msg = str(ei.value)
    assert len(msg) < 500, len(msg)
    assert "column(s) c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 … and 999,990 more not in s.yaml" in msg
    q = tmp_path / "wide2.csv"
    q.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n")
    wide_schema = "columns:\n" + "".join(f"  m{i}: str\n" for i in range(50))
    with pytest.raises(DatasetError) as ei:
        validate(str(q), load_schema("s.yaml", wide_schema), label="wide2.csv")
    assert len(str(ei.value)) < 500 and "… and 40 more required by s.yaml" in str(ei.value)


# -- property: hostile specs and overrides never end in a traceback, a write outside, a lost source ---

def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


HOSTILE = ["${oc.env:HOME}", "${raw:${a.x}}", "'x; touch ../pwned'", "/../..", "../../escape", "&a [*a]",
           "*nope", "\0", "\xff", "${", "}", "[[[[[[", "{a: 1, a: 2}", "foreach: {'/../..': 1}",
           "!!python/object:os.system",
           "cmd: rm -rf ~", "outs: [step.py]", "outs: [/etc/passwd]", "deps: [.certus/state.db]", "<<: *x",
           "\t", "  ", "\n", ":", "-", "- ", "'", '"', "\\", "${item}", "${key}", "matrix: {a: [1]}"]


def test_property_hostile_specs_and_overrides(tmp_path, monkeypatch):
    """Mutated specs and overrides through main(): an int exit code, no traceback, nothing written outside the
    workspace, no source file lost."""
    import contextlib
    import io
    import shutil

    from conftest import DIAMOND, DIAMOND_CONF, STEP
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from engine.cli.main import main

    base = tmp_path / "base"
    base.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CERTUS_HOME", str(home / ".certus"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("do not touch\n")
    import textwrap

    spec0 = textwrap.dedent(DIAMOND).encode()
    sources = {"step.py": STEP.encode(), "in.txt": b"input v1\n",
               "conf/config.yaml": textwrap.dedent(DIAMOND_CONF).encode()}
    mutation = st.tuples(st.integers(0, len(spec0)), st.integers(0, 40),
                         st.one_of(st.sampled_from(HOSTILE).map(lambda s: s.encode("utf-8", "surrogateescape")),
                                   st.binary(max_size=12)))
    overrides = st.lists(st.one_of(
        st.sampled_from(["a.x=2", "a.x=${oc.env:HOME}", "a.x='x; touch ../pwned'", "+z=[[[]]]", "~b",
                         "a.x=" + "[" * 300 + "]" * 300, "certus.pipeline=../../etc", "a.x=\\${b.y}", "=",
                         "hydra.searchpath=[file:///]", "a.x=shuffle(1,2)"]),
        st.text(alphabet="ab.x=+~${}:'\" ,[]()", max_size=20)), max_size=3)
    counter = iter(range(10_000))

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(muts=st.lists(mutation, min_size=1, max_size=4), ovs=overrides)
    def check(muts: list[tuple[int, int, bytes]], ovs: list[str]) -> None:
        root = base / f"w{next(counter)}"
        for rel, data in sources.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        spec = spec0
        for at, cut, insert in muts:
            spec = spec[:at] + insert + spec[at + cut:]
        (root / "pipelines").mkdir()
        (root / "pipelines" / "p.yaml").write_bytes(spec)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        before_outside = _snapshot(outside)
        before_top = sorted(p.name for p in tmp_path.iterdir())
        for args in (["status"], ["repro", "--dry"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = main(["-C", str(root), *args, *ovs])
                except SystemExit as e:  # argparse usage errors
                    code = e.code if isinstance(e.code, int) else 2
            assert isinstance(code, int)
            assert "Traceback" not in err.getvalue(), err.getvalue()
        assert _snapshot(outside) == before_outside
        assert sorted(p.name for p in tmp_path.iterdir()) == before_top
        assert not (base / "pwned").exists() and not (tmp_path / "pwned").exists()
        for rel, data in sources.items():
            assert (root / rel).read_bytes() == data
        shutil.rmtree(root)

    t0 = time.monotonic()
    check()
    assert time.monotonic() - t0 < 120
