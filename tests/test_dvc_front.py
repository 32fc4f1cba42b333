"""A DVC project run unchanged: resolution compared with DVC's own, dvc.lock adoption, -S, errors.

One real DVC project (git + `dvc init` + `dvc add`) is generated once per module and copied per
test: several dvc.yaml files, wdir, vars files, foreach over ${ref}, matrix, cmd lists, persist
and `cache: false` outs, a `.dvc` source. DVC itself (the installed library and CLI) is the
reference for stage names, commands, paths and what is stale.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli.main import main

BIN = os.path.dirname(sys.executable)

PARAMS = """\
prepare:
  split: 0.2
  seed: 7
train:
  lr: 0.1
  flag: true
  layers: [1, 2]
models: [a, b]
switch: on
"""

PREP = """\
import os, sys, yaml
p = yaml.safe_load(open(os.path.join(os.environ["DVC_ROOT"], "params.yaml")))
os.makedirs("prepared", exist_ok=True)
with open("prepared/out.txt", "w") as f:
    f.write(open(sys.argv[1]).read() + "split=%s stage=%s\\n" % (p["prepare"]["split"], os.environ["DVC_STAGE"]))
"""

DVC_YAML = """\
vars:
  - vars.yaml
stages:
  prepare:
    cmd: python src/prep.py data/raw.txt
    deps: [data/raw.txt, src/prep.py]
    params: [prepare.split, prepare.seed]
    outs: [prepared]
  train:
    foreach: ${models}
    do:
      cmd:
        - echo ${item} ${train} > "model-${item}.txt"
        - cat prepared/out.txt >> "model-${item}.txt"
      deps: [prepared]
      params: [train]
      outs: ["model-${item}.txt"]
  report:
    cmd: >-
      echo '{"n": ${cfg.n}, "switch": "${switch}"}' > metrics.json
    deps: [model-a.txt]
    metrics:
      - metrics.json: {cache: false}
"""

SUB_YAML = """\
stages:
  sweep:
    matrix:
      n: [1, 2]
      mode: [x, y]
    wdir: work
    cmd: echo ${item.n} ${item.mode} ${k} > "o-${item.n}-${item.mode}.txt"
    deps: [../../prepared]
    params:
      - ../params.yaml: [k]
    outs: ["o-${item.n}-${item.mode}.txt"]
  grow:
    cmd: echo more >> log.txt
    outs:
      - log.txt: {persist: true}
"""


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), HOME=str(home),
               CERTUS_HOME=str(home / "certus"), GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@e",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@e", DVC_NO_ANALYTICS="1")
    env.pop("DVC_ROOT", None)
    return env


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dvcproj")
    root, home = base / "p", base / "home"
    root.mkdir()
    (home / "certus").mkdir(parents=True)
    files = {"params.yaml": PARAMS, "vars.yaml": "cfg:\n  n: 3\n", "src/prep.py": PREP, "dvc.yaml": DVC_YAML,
             "data/raw.txt": "raw data\n", "sub/dvc.yaml": SUB_YAML, "sub/params.yaml": "k: 5\n",
             "sub/work/.keep": ""}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    env = _env(home)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data/raw.txt"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "dvc project"]):
        r = _run(cmd, root, env=env)
        assert r.returncode == 0, r.stderr
    return base


@pytest.fixture
def proj(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(template, tmp_path / "t", symlinks=True)
    for k, v in _env(tmp_path / "t" / "home").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path / "t" / "p")  # DVC addresses stages relative to the working directory
    return tmp_path / "t" / "p"


def certus(root: Path, *args: str) -> tuple[int, str, str]:
    r = _run([sys.executable, "-m", "engine", "-C", str(root), *args], root)
    return r.returncode, r.stdout, r.stderr


def dvc(root: Path, *args: str) -> str:
    r = _run(["dvc", *args], root)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _dvc_stages(root: Path) -> dict[str, dict]:
    """DVC's own resolution of every stage (the installed library)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            if st.is_data_source:
                continue
            rel = lambda p: os.path.relpath(p, root).replace(os.sep, "/")  # noqa: E731
            out[st.addressing] = {
                "cmd": st.cmd, "wdir": "" if rel(st.wdir) == "." else rel(st.wdir),
                "deps": sorted(rel(d.fs_path) for d in st.deps if not isinstance(d, ParamsDependency)),
                "params": sorted((rel(d.fs_path), k) for d in st.deps if isinstance(d, ParamsDependency)
                                 for k in d.params),
                "outs": sorted((rel(o.fs_path), o.use_cache, o.persist) for o in st.outs),
            }
    return out


def test_resolution_equals_dvcs_own(proj: Path) -> None:
    from engine.pipeline.dvc_pipeline import load_dvc_project, ws_path

    spec = load_dvc_project(str(proj))
    ours = {}
    for name, st in spec.dvc_stages.items():
        ours[name] = {
            "cmd": list(st.cmd) if isinstance(st.cmd, tuple) else st.cmd, "wdir": st.wdir,
            "deps": sorted(ws_path(st.wdir, d)[0] for d in st.deps),
            "params": sorted((ws_path(st.wdir, f)[0], k) for f, keys in st.params for k in keys or ()),
            "outs": sorted((ws_path(st.wdir, o.path)[0], o.cache, o.persist) for o in st.outs),
        }
    theirs = _dvc_stages(proj)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name] == theirs[name], name
    assert "sub/dvc.yaml:sweep@2-y" in ours and "train@a" in ours
    assert ours["report"]["cmd"] == """echo '{"n": 3, "switch": "on"}' > metrics.json"""  # YAML 1.2: 'on' a string
    # the pipeline model: one DAG over both files, workspace paths, params from the files the stages list
    sweep = spec.stages["sub/dvc.yaml:sweep@1-x"]
    assert sweep.deps == ("prepared",) and sweep.outs == ("sub/work/o-1-x.txt",)
    assert sweep.params == (("sub/params.yaml:k", 5),)
    assert spec.stages["sub/dvc.yaml:grow"].persist == ("sub/log.txt",)
    assert spec.stages["report"].uncached == ("metrics.json",)


def test_dvc_repro_then_certus_runs_nothing_and_reruns_what_dvc_would(proj: Path) -> None:
    dvc(proj, "repro", "-q", "-P")
    code, out, err = certus(proj, "status")
    assert (code, out.strip()) == (0, "Everything is up to date."), err
    assert not (proj / "certus.lock").exists()  # status only looked
    code, out, err = certus(proj, "repro", "--json")
    assert code == 0, err
    states = {n: s["state"] for n, s in json.loads(out)["stages"].items()}
    assert set(states.values()) == {"skipped"} and len(states) == 9
    assert "adopted from dvc.lock, not executed" in err
    assert (proj / "sub/log.txt").read_text() == "more\n"  # the persisted output was not re-run
    # a changed param: what DVC calls changed is exactly what Certus re-runs
    text = (proj / "params.yaml").read_text().replace("lr: 0.1", "lr: 0.5")
    (proj / "params.yaml").write_text(text)
    dvc_changed = set(json.loads(dvc(proj, "status", "--json")))
    code, out, err = certus(proj, "status", "--json")
    stale = {n for n, s in json.loads(out)["stages"].items() if s["stale"]}
    assert stale == dvc_changed == {"train@a", "train@b"}
    code, out, err = certus(proj, "repro", "--json")
    ran = {n for n, s in json.loads(out)["stages"].items() if s["state"] == "ran"}
    assert code == 0 and ran == {"train@a", "train@b", "report"}  # report: model-a.txt changed, as under dvc repro
    assert "--lr 0.5" in (proj / "model-a.txt").read_text()


def test_set_param_reaches_the_code_and_unknown_keys_are_refused(proj: Path) -> None:
    (proj / "params.yaml").write_text("# tuned by hand\n" + PARAMS)
    code, out, err = certus(proj, "repro", "-S", "prepare.split=0.5", "prepare")
    assert code == 0, err
    assert "split=0.5 stage=prepare" in (proj / "prepared/out.txt").read_text()  # the code saw it
    text = (proj / "params.yaml").read_text()
    assert "split: 0.5" in text and text.startswith("# tuned by hand")  # written in place, comments kept
    lock = json.loads((proj / "certus.lock").read_text())
    assert lock["stages"]["prepare"]["params"]["prepare.split"] == 0.5
    for bad, why in ((["-S", "prepare.splt=0.3"], "did you mean 'prepare.split'"),
                     (["-S", "nope.yaml:x=1"], "no stage lists params from 'nope.yaml'"),
                     (["prepare.split=0.3"], "use -S key=value")):
        code, out, err = certus(proj, "repro", *bad)
        assert code != 0 and why in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert "split: 0.5" in (proj / "params.yaml").read_text()  # nothing refused was written


def test_adoption_refuses_what_does_not_match(proj: Path) -> None:
    from engine.pipeline.dvc_pipeline import load_dvc_project
    from engine.pipeline.lockfile import LockFile
    from engine.run.dvc_adopt import adoptable, md5_of
    from engine.store.hashing import Hasher

    dvc(proj, "repro", "-q", "-P")
    (proj / "model-b.txt").write_text("tampered\n")
    (proj / "sub/params.yaml").write_text("k: 6\n")
    spec = load_dvc_project(str(proj))
    entries, refused = adoptable(spec, str(proj), Hasher(str(proj)), LockFile(str(proj / "certus.lock")))
    assert refused["train@b"] == "out modified: model-b.txt"
    assert refused["sub/dvc.yaml:sweep@1-x"] == "cmd changed"  # k is pasted into cmd too
    assert "sub/dvc.yaml:grow" in entries  # a persisted output, as DVC left it
    assert {"prepare", "train@a", "report"} <= set(entries)
    lock = (proj / "dvc.lock").read_text()
    assert md5_of(str(proj / "prepared")) in lock  # DVC 3's .dir hash, computed without DVC
    code, out, err = certus(proj, "status")
    assert "train@b:" in out and "prepare:" not in out


def test_dvc2_lock_md5_dos2unix(tmp_path: Path) -> None:
    from engine.run.dvc_adopt import md5_of

    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    import hashlib

    assert md5_of(str(tmp_path / "crlf.txt"), dos2unix=True) == hashlib.md5(b"a\nb\n").hexdigest()
    assert md5_of(str(tmp_path / "crlf.txt")) == hashlib.md5(b"a\r\nb\r\n").hexdigest()


def test_missing_dvc_source_says_dvc_pull(proj: Path) -> None:
    (proj / "data/raw.txt").unlink()
    code, out, err = certus(proj, "status")
    assert code != 0 and "tracked by data/raw.txt.dvc" in err and "run `dvc pull`" in err


def test_every_problem_in_every_file_at_once(proj: Path) -> None:
    (proj / "dvc.yaml").write_text(DVC_YAML + "  bad:\n    cmd: echo ${nope}\n    outz: [x]\n")
    (proj / "sub/dvc.yaml").write_text("stages:\n  a:\n    cmd: echo 1\n  a:\n    cmd: echo 2\n")
    code, out, err = certus(proj, "status")
    assert code != 0 and "Traceback" not in err
    assert "dvc.yaml:26: stage 'bad': field 'outz': unknown key; did you mean 'outs'?" in err
    assert "stage 'bad': field 'cmd': could not find 'nope'" in err
    assert "sub/dvc.yaml:4: duplicate key 'a' (first at line 2)" in err


def test_yaml_1_2_scalars_as_dvc_reads_them() -> None:
    from ruamel.yaml import YAML

    from engine.pipeline.dvc_yaml import load_yaml12

    y = YAML(typ="safe")
    for s in ("yes", "on", "off", "010", "0o10", "0x1F", "1_000", "1:20", "1e3", ".5", "+1", "-.inf", "~",
              "TRUE", "0b101", "1.", "0o8", "09", "2001-12-14", "+.5"):
        ours, theirs = load_yaml12(f"a: {s}\n", "x")["a"], y.load(io.StringIO(f"a: {s}\n"))["a"]
        assert (ours, type(ours)) == (theirs, type(theirs)), s


def test_signed_adoption_is_an_event_not_an_execution(proj: Path) -> None:
    dvc(proj, "repro", "-q", "-P")
    home = Path(os.environ["CERTUS_HOME"])
    os.environ["CERTUS_KEY_PASSPHRASE"] = "dvc"
    try:
        for args in (("keys", "generate", "--name", "alice", "--role", "trainer"),
                     ("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger",
                      "--role", "admin")):
            assert main(["-C", str(proj), *args]) == 0
        code, out, err = certus(proj, "repro", "--json")
        assert code == 0, err
        assert {s["state"] for s in json.loads(out)["stages"].values()} == {"skipped"}  # adopted, not re-run
        code, out, err = certus(proj, "log", "--json")
        assert code == 0, err
        assert out.count("dvc.adopted") == 9
        code, out, err = certus(proj, "verify")
        assert code == 0, out + err
        code, out, err = certus(proj, "repro", "--json")  # the ledger knows them: still nothing to run
        assert {s["state"] for s in json.loads(out)["stages"].values()} == {"skipped"}, err
    finally:
        os.environ.pop("CERTUS_KEY_PASSPHRASE", None)


def test_status_of_a_dvc_project_imports_no_dvc(proj: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from engine.cli.main import main
        main(["-C", {str(proj)!r}, "status"])
        bad = [m for m in sys.modules if m.split(".")[0] in ("dvc", "dask", "ruamel")]
        print("BAD", bad)
    """)
    r = _run([sys.executable, "-c", code], proj)
    assert "BAD []" in r.stdout, r.stdout + r.stderr


def test_import_dvc_to_hydra_lists_what_it_drops(proj: Path) -> None:
    code, out, err = certus(proj, "import-dvc", "--to-hydra")
    assert code == 0, err
    assert "wrote pipelines/dvc.yaml" in out
    assert "not carried over: stage 'sub/dvc.yaml:grow': output 'sub/log.txt' persist: true" in out
    assert "$CERTUS_PARAMS" in out
    from engine.pipeline.spec import load_spec_text

    config = __import__("yaml").safe_load((proj / "conf/config.yaml").read_text())
    spec = load_spec_text((proj / "pipelines/dvc.yaml").read_text(), path="pipelines/dvc.yaml", config=config)
    assert spec["sub-sweep-1-x"].params == (("k", 5),) and spec["train-a"].deps == ("prepared",)
