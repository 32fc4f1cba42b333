"""Every bad spec gives one clear line naming file, stage and field, exits non-zero, writes nothing."""

from __future__ import annotations

import os

import pytest

from engine.errors import SpecError
from engine.pipeline.spec import load_spec_text

CFG = {"train": {"C": 0.5, "seed": 1}, "data": {"n": 3}}


def _err(text: str, config=CFG) -> str:
    with pytest.raises(SpecError) as ei:
        load_spec_text(text, path="pipelines/p.yaml", config=config)
    return str(ei.value)


def test_yaml_syntax_error_names_line():
    msg = _err("stages:\n  a:\n    cmd: [unclosed\n    deps: x\n")
    assert msg.startswith("pipelines/p.yaml:4: YAML syntax error")


def test_unknown_key_suggests_close_match():
    msg = _err("stages:\n  a:\n    cmd: echo\n    depz: [x]\n")
    assert msg == "pipelines/p.yaml:4: stage 'a': field 'depz': unknown key; did you mean 'deps'?"


def test_missing_cmd():
    msg = _err("stages:\n  a:\n    deps: [x]\n")
    assert msg == "pipelines/p.yaml:2: stage 'a': field 'cmd': missing; every stage needs a command"


def test_output_declared_twice():
    msg = _err("stages:\n  a:\n    cmd: x\n    outs: [o.txt]\n  b:\n    cmd: y\n    outs: [o.txt]\n")
    assert "stage 'b': field 'outs': output 'o.txt' is also declared by stage 'a'" in msg
    assert msg.startswith("pipelines/p.yaml:5:")


@pytest.mark.parametrize("path,why", [
    ("/etc/passwd", "is absolute"),
    ("../outside.txt", "escapes the workspace"),
    ("a/../../x", "escapes the workspace"),
])
def test_path_escapes(path, why):
    msg = _err(f"stages:\n  a:\n    cmd: x\n    deps: ['{path}']\n")
    assert "stage 'a': field 'deps'" in msg and why in msg


def test_interpolation_that_does_not_resolve():
    msg = _err("stages:\n  a:\n    cmd: echo ${train.nope}\n")
    assert msg.startswith("pipelines/p.yaml:3: stage 'a': field 'cmd': interpolation 'echo ${train.nope}' "
                          "does not resolve")


def test_unknown_param_key_suggests():
    msg = _err("stages:\n  a:\n    cmd: x\n    params: [train.c]\n")
    assert msg == ("pipelines/p.yaml:4: stage 'a': field 'params': unknown param key 'train.c' "
                   "(not in the composed config); did you mean 'train.C'?")


def test_all_offenders_listed_sorted():
    msg = _err("stages:\n  a:\n    cmd: x\n    dpes: 1\n  b:\n    outz: 2\n")
    lines = msg.splitlines()
    assert len(lines) == 3  # a's dpes, b's missing cmd, b's outz: all at once, sorted by line
    assert [ln.split(":")[1] for ln in lines] == sorted([ln.split(":")[1] for ln in lines], key=int)


def test_foreach_and_matrix_expand_like_dvc():
    spec = load_spec_text(
        "stages:\n"
        "  t:\n    foreach: [x, y]\n    do:\n      cmd: echo ${item} ${data.n}\n      outs: ['o/${item}']\n"
        "  m:\n    matrix:\n      a: [1, 2]\n      b: [p, q]\n    cmd: echo ${item.a}${item.b} ${train.C}\n"
        "  d:\n    foreach:\n      k1: {v: 1}\n      k2: {v: 2}\n    do:\n      cmd: echo ${key} ${item.v}\n",
        path="p.yaml", config=CFG)
    assert list(spec.stages) == ["t@x", "t@y", "m@1-p", "m@1-q", "m@2-p", "m@2-q", "d@k1", "d@k2"]
    assert spec["t@y"].cmd == "echo y 3" and spec["t@y"].outs == ("o/y",)
    assert spec["m@2-q"].cmd == "echo 2q 0.5"
    assert spec["d@k2"].cmd == "echo k2 2"


def test_params_values_and_whole_subtree():
    spec = load_spec_text("stages:\n  a:\n    cmd: x\n    params: [train.C, data]\n", path="p", config=CFG)
    assert spec["a"].params_dict() == {"train.C": 0.5, "data": {"n": 3}}


def test_spec_is_frozen():
    spec = load_spec_text("stages:\n  a:\n    cmd: x\n", path="p", config={})
    with pytest.raises(AttributeError):
        spec["a"].cmd = "y"  # type: ignore[misc]


# -- through the CLI: exit code, one line, nothing written -------------------------------------

def _cli_error(ws, spec: str, capsys, files: dict[str, str] | None = None) -> str:
    ws.write("pipelines/p.yaml", spec)
    for k, v in (files or {}).items():
        ws.write(k, v)
    code = ws.certus("repro")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert not (ws.root / "certus.lock").exists()
    assert not (ws.root / ".certus" / "cache").exists()
    return err.strip()


def test_cli_cycle_is_printed(ws, capsys):
    err = _cli_error(ws, """\
        stages:
          a: {cmd: "python step.py a a.txt b.txt", deps: [b.txt], outs: [a.txt]}
          b: {cmd: "python step.py b b.txt a.txt", deps: [a.txt], outs: [b.txt]}
    """, capsys)
    assert err.startswith("certus: error: pipelines/p.yaml: cycle in the stage graph:")
    assert ("a -> b -> a" in err) or ("b -> a -> b" in err)


def test_cli_missing_dep(ws, capsys):
    err = _cli_error(ws, "stages:\n  a: {cmd: x, deps: [nothere.csv], outs: [o]}\n", capsys)
    assert err == ("certus: error: pipelines/p.yaml:2: stage 'a': field 'deps': 'nothere.csv' does not exist and "
                   "no stage produces it; create it or add the stage that writes it")


def test_cli_symlink_escape(ws, capsys, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("x")
    os.symlink(outside, ws.root / "link")
    err = _cli_error(ws, "stages:\n  a: {cmd: x, deps: [link/secret.txt], outs: [o]}\n", capsys)
    assert "stage 'a': field 'deps': path 'link/secret.txt' escapes the workspace through a symlink" in err


def test_cli_unknown_param_from_hydra_config(ws, capsys):
    err = _cli_error(ws, "stages:\n  a: {cmd: x, params: [train.lr], outs: [o]}\n", capsys,
                     {"conf/config.yaml": "certus: {pipeline: p}\ntrain: {C: 1}\n"})
    assert "field 'params': unknown param key 'train.lr'" in err


def test_cli_bad_override_is_one_line(ws, capsys):
    ws.write("pipelines/p.yaml", "stages:\n  a: {cmd: x, outs: [o]}\n")
    ws.write("conf/config.yaml", "train: {C: 1}\n")
    assert ws.certus("repro", "train.nope=3") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("certus: error:") and "train.nope" in err and "\n" not in err


# -- strict YAML and shell quoting (issue 9.5) --------------------------------------------------------

QCFG = {"msg": "x; touch /tmp/p", "n": 42, "p": "data/x.csv", "lst": ["a b", 1], "d": {"k": "v w"}, "f": "-a | wc"}


@pytest.mark.parametrize("cmd,expected", [
    ("echo ${n} ${p}", "echo 42 data/x.csv"),                       # safe values: byte-identical
    ("echo ${msg}", "echo 'x; touch /tmp/p'"),
    ("'${msg}'", "'x; touch /tmp/p'"),                              # a whole-string interpolation too
    ("'echo ${lst} ${d}'", "echo 'a b' 1 'k=v w'"),                 # per element, each quoted
    ("'echo ${raw:${f}}'", "echo -a | wc"),                         # the explicit unquoted form
    (r"'echo \${msg} ${n}'", "echo ${msg} 42"),                     # OmegaConf escapes keep their meaning
    ("'echo ${oc.env:CERTUS_TEST_UNSET,a b}'", "echo 'a b'"),      # resolvers are quoted as well
])
def test_cmd_values_are_shell_quoted(cmd, expected):
    spec = load_spec_text(f"stages:\n  a:\n    cmd: {cmd}\n", path="p", config=QCFG)
    assert spec["a"].cmd == expected


def test_foreach_item_in_cmd_is_quoted_but_not_in_paths():
    spec = load_spec_text("stages:\n  t:\n    foreach: ['a b', ok]\n    do:\n      cmd: echo ${item}\n"
                          "      outs: ['o/${item}']\n", path="p", config={})
    assert spec["t@0"].cmd == "echo 'a b'" and spec["t@0"].outs == ("o/a b",)
    assert spec["t@ok"].cmd == "echo ok"


def test_raw_takes_one_value():
    msg = _err("stages:\n  a:\n    cmd: echo ${raw:a,b}\n")
    assert "raw takes exactly one value" in msg


def test_duplicate_key_names_both_lines():
    assert _err("stages:\n  a:\n    cmd: x\n    cmd: y\n") == (
        "pipelines/p.yaml:4: duplicate key 'cmd' (first at line 3); a key may appear once in a mapping: remove or "
        "rename one")


def test_env_names_and_nul_checked():
    assert "field 'env'" in _err('stages:\n  a:\n    cmd: x\n    env: {"A B": 1}\n')
    assert "contains a NUL byte" in _err('stages:\n  a:\n    cmd: "x\\0y"\n')


def test_structural_and_interpolation_problems_arrive_in_one_error():
    msg = _err("""
stages:
  a:
    cmd: python a.py ${nope.x}
  b:
    cmdd: python b.py
  c:
    cmd: python c.py ${train.missing}
  d:
    cmd: python d.py
    outz: [x]
""")
    lines = msg.splitlines()
    assert len(lines) == 5, msg  # a: interpolation; b: no cmd + unknown key; c: interpolation; d: unknown key
    assert "stage 'a': field 'cmd': interpolation 'python a.py ${nope.x}' does not resolve" in lines[0]
    assert "stage 'b': field 'cmd': missing" in lines[1] and "stage 'b': field 'cmdd'" in lines[2]
    assert "stage 'c': field 'cmd': interpolation" in lines[3] and "stage 'd': field 'outz'" in lines[4]
