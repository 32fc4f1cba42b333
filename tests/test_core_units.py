"""Pure-core units: canonical JSON, digests, hashing, the DAG."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from engine.core.canonical import CanonicalError, canonical_bytes, es6_number, from_canonical
from engine.core.digest import Digest
from engine.errors import GraphError
from engine.pipeline.dag import Dag
from engine.pipeline.spec import load_spec_text
from engine.run.load import load as load_pipeline
from engine.store.hashing import Hasher, dir_manifest_bytes
from engine.store.state import StatCache


@pytest.mark.parametrize("value,text", [
    (1.0, "1"), (0.5, "0.5"), (1e-7, "1e-7"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (123.456, "123.456"), (1e-6, "0.000001"), (-2.5e30, "-2.5e+30"), (5e-324, "5e-324"), (0.0, "0"),
    (-0.0, "0"), (333333333.33333329, "333333333.3333333"), (1.7976931348623157e308, "1.7976931348623157e+308"),
])
def test_es6_numbers_match_rfc8785(value, text):
    assert es6_number(value) == text


def test_canonical_bytes_sorted_compact_utf8():
    assert canonical_bytes({"b": [1, 2.0, "x\u2028"], "a": {"é": True, "z": None}}) == \
        '{"a":{"z":null,"é":true},"b":[1,2,"x\u2028"]}'.encode()
    assert canonical_bytes({"\u20ac": 1, "\r": 2}) == b'{"\\r":2,"\xe2\x82\xac":1}'


def test_canonical_rejects_non_json_and_nan():
    for bad in ({1: 2}, {"x": float("nan")}, {"x": object()}):
        with pytest.raises(CanonicalError):
            canonical_bytes(bad)


def test_from_canonical_insists_on_canonical_form():
    assert from_canonical(b'{"a":1}') == {"a": 1}
    with pytest.raises(CanonicalError):
        from_canonical(b'{"a": 1}')


def test_digest_type():
    d = Digest(hashlib.sha256(b"x").hexdigest())
    assert str(d) == "sha256:" + d.hex and Digest.parse(str(d)) == d
    with pytest.raises(ValueError):
        Digest("abc")


def test_file_and_directory_hashing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "f.bin").write_bytes(b"hello")
    (tmp_path / "d" / "b.txt").write_bytes(b"B")
    (tmp_path / "d" / "sub" / "a.txt").write_bytes(b"A")
    h = Hasher(str(tmp_path), jobs=2)
    res = h.hash_many(["f.bin", "d", "missing"])
    assert res["f.bin"].digest.hex == hashlib.sha256(b"hello").hexdigest()
    assert res["missing"] is None
    listing = (f"{hashlib.sha256(b'B').hexdigest()}  b.txt\n"  # `sha256sum` of the sorted files: in-toto dirHash
               f"{hashlib.sha256(b'A').hexdigest()}  sub/a.txt\n").encode()
    assert res["d"].digest.hex == hashlib.sha256(listing).hexdigest() and res["d"].kind == "dir"
    assert dir_manifest_bytes(res["d"].files) == listing
    # renaming a file inside changes the directory digest; timestamps do not
    os.utime(tmp_path / "d" / "b.txt", ns=(1, 1))
    assert Hasher(str(tmp_path)).hash_path("d").digest == res["d"].digest
    os.rename(tmp_path / "d" / "b.txt", tmp_path / "d" / "c.txt")
    assert Hasher(str(tmp_path)).hash_path("d").digest != res["d"].digest


def test_stat_cache_skips_unchanged_files_and_catches_changes(tmp_path):
    (tmp_path / "a").write_bytes(b"1" * 1000)
    old = 1_600_000_000_000_000_000
    os.utime(tmp_path / "a", ns=(old, old))
    db = str(tmp_path / "state.db")
    h1 = Hasher(str(tmp_path), state=StatCache(db))
    first = h1.hash_path("a")
    h1.state.flush()
    h2 = Hasher(str(tmp_path), state=StatCache(db))
    assert h2.hash_path("a") == first and h2.bytes_read == 0
    (tmp_path / "a").write_bytes(b"2" * 1000)  # same size, new mtime
    os.utime(tmp_path / "a", ns=(old + 10**9, old + 10**9))
    h3 = Hasher(str(tmp_path), state=StatCache(db))
    assert h3.hash_path("a") != first and h3.bytes_read == 1000


def _dag(text: str) -> Dag:
    return Dag(load_spec_text(text, path="p.yaml", config={}))


def test_dag_edges_include_directory_containment_and_order_is_stable():
    d = _dag("stages:\n"
             "  z: {cmd: x, outs: [data]}\n"
             "  y: {cmd: x, deps: [data/part.csv], outs: [y.txt]}\n"
             "  w: {cmd: x, outs: [other/f.txt]}\n"
             "  v: {cmd: x, deps: [other], outs: [v.txt]}\n")
    assert sorted(d.graph.edges) == [("w", "v"), ("z", "y")]
    assert d.order() == ["w", "v", "z", "y"]
    assert d.select(["y"]) == ["z", "y"]
    assert d.select(["z"], downstream=True) == ["z", "y"]
    assert d.select(["y"], single=True) == ["y"]
    assert 's0["w"]' in d.to_mermaid() and '"w" -> "v";' in d.to_dot()


def test_dag_cycle_names_the_cycle():
    cycles = r"(a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    with pytest.raises(GraphError, match=r"cycle in the stage graph: " + cycles):
        _dag("stages:\n  a: {cmd: x, deps: [c.txt], outs: [a.txt]}\n  b: {cmd: x, deps: [a.txt], outs: [b.txt]}\n"
             "  c: {cmd: x, deps: [b.txt], outs: [c.txt]}\n")


def test_foreach_family_is_a_target():
    d = _dag("stages:\n  t:\n    foreach: [a, b]\n    do: {cmd: 'echo ${item}', outs: ['${item}.txt']}\n")
    assert d.resolve_targets(["t"]) == ["t@a", "t@b"]


def test_parse_caches_follow_file_contents(tmp_path):
    """Composition and spec results are cached by content: an edit is seen at once, env resolvers never cached."""
    from engine.store.workspace import Workspace

    (tmp_path / "pipelines").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("certus: {pipeline: p}\na: {x: 1}\n")
    (tmp_path / "pipelines" / "p.yaml").write_text("stages:\n  s: {cmd: 'echo ${a.x}', params: [a.x]}\n")
    ws = Workspace(str(tmp_path))
    for expected in (1, 1):  # second time from the caches
        cfg, spec, _ = load_pipeline(ws)
        assert cfg["a"]["x"] == expected and spec["s"].cmd == f"echo {expected}"
    assert list((tmp_path / ".certus" / "tmp" / "compose").iterdir())
    (tmp_path / "conf" / "config.yaml").write_text("certus: {pipeline: p}\na: {x: 2}\n")
    cfg, spec, _ = load_pipeline(ws)
    assert cfg["a"]["x"] == 2 and spec["s"].cmd == "echo 2" and spec["s"].params == (("a.x", 2),)
    (tmp_path / "conf" / "config.yaml").write_text("certus: {pipeline: p}\na: {x: '${oc.env:CERTUS_T_X}'}\n")
    import os

    for v in ("3", "4"):
        os.environ["CERTUS_T_X"] = v
        cfg, spec, _ = load_pipeline(ws)
        assert cfg["a"]["x"] == v and spec["s"].cmd == f"echo {v}"
    del os.environ["CERTUS_T_X"]


@pytest.mark.parametrize("value, message", [
    ({"a": [1, {"b": object()}]}, "$.a[1].b: object is not JSON"),
    ({"a": {1: 2}}, "$.a: key 1 is not a string"),
    ([{"\U0001f600": 1}], "$[0]: key '\U0001f600' would sort differently under RFC 8785"),
    ({"x": [float("nan")]}, "nan is not representable in JSON"),
])
def test_canonical_errors_name_the_place(value, message):
    with pytest.raises(CanonicalError, match="^" + re.escape(message) + "$"):
        canonical_bytes(value)


def test_canonical_bytes_without_floats_match_the_token_path():
    value = {"z": [1, True, None, "é", (2, 3)], "a": {"k": "v"}}
    with_float = {**value, "f": 0.5}
    assert canonical_bytes(value) == b'{"a":{"k":"v"},"z":[1,true,null,"\xc3\xa9",[2,3]]}'
    assert canonical_bytes(with_float) == b'{"a":{"k":"v"},"f":0.5,"z":[1,true,null,"\xc3\xa9",[2,3]]}'


def test_overwrite_small_keeps_json_readable_when_it_shrinks(tmp_path):

    from engine.store.fsutil import overwrite_small

    p = tmp_path / "running.json"
    overwrite_small(str(p), json.dumps({"groups": [{"pgid": 123456, "start": 987654321}] * 3}).encode())
    inode = p.stat().st_ino
    overwrite_small(str(p), json.dumps({"groups": []}).encode())
    assert json.loads(p.read_bytes()) == {"groups": []}
    assert p.read_bytes() == b'{"groups": []}'  # trimmed after the padded write
    assert p.stat().st_ino == inode  # rewritten in place, no rename


def test_write_if_changed_skips_identical_bytes(tmp_path):
    from engine.store.fsutil import write_if_changed

    p = tmp_path / "params.json"
    write_if_changed(str(p), b'{"a": 1}')
    before = p.stat()
    write_if_changed(str(p), b'{"a": 1}')
    assert p.stat().st_ino == before.st_ino and p.stat().st_mtime_ns == before.st_mtime_ns
    write_if_changed(str(p), b'{"a": 2}')
    assert p.read_bytes() == b'{"a": 2}'
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_lock_bytes_equal_the_plain_encoder_while_entries_change():
    import random

    from engine.pipeline.lockfile import LOCK_VERSION, LockFile, StageLock

    def reference(lf: LockFile) -> bytes:
        doc = {"version": LOCK_VERSION, "pipeline": lf.pipeline,
               "stages": {n: s.to_dict() for n, s in sorted(lf.stages.items())}}
        return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    rng = random.Random(7)
    lf = LockFile("unused", pipeline="pipelines/é.yaml")
    assert lf.to_bytes() == reference(lf)  # no stages: "stages": {}
    for i in range(200):
        name = rng.choice(["a", "b@1", "ü", 's"q', "z-9"]) + str(rng.randint(0, 5))
        if rng.random() < 0.2:
            lf.drop(name)
        else:
            lf.set(name, StageLock(key=f"k{i}", cmd="echo 'a\nb'", deps={"d/ü": "sha256:1"},
                                   params={"p": [1, 2.5, {"x": None}]}, env={"E": "1"},
                                   outs={"o": {"digest": "sha256:2", "size": i}}))
        assert lf.to_bytes() == reference(lf)
