"""Governed datasets with real DVC (Python API) and git in temp repos, a local-directory DVC remote."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.integration

SCHEMA = """\
    columns:
      id: {type: int, nullable: false}
      mass: {type: float, min: 0}
      species: {type: str, allowed: [adelie, gentoo]}
    unique: [id]
"""

PIPELINE = """\
    stages:
      curate:
        cmd: python step.py curate data/cur.csv data/raw/p.csv
        writable: [runs.log]
        deps: [step.py]
        datasets: [praw]
        outs: [data/cur.csv]
        register:
          pcur: data/cur.csv
      train:
        cmd: python step.py train model.txt data/cur.csv
        writable: [runs.log]
        deps: [step.py, data/cur.csv]
        outs: [model.txt]
"""


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "mass", "species"])
        w.writerows(rows)


ROWS = [[i, 3000 + i, "adelie" if i % 2 else "gentoo"] for i in range(40)]


@pytest.fixture
def gov(ws, tmp_path, monkeypatch):
    """A workspace with three people's keys, a schema, raw data (not in git) and a consuming pipeline.

    The CI key also holds ``admin``: trust changes after the ledger exists are ledger records it signs."""
    home = tmp_path / "certus-home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "correct horse")
    ws.write("conf/config.yaml", "certus:\n  pipeline: p\n")
    ws.write("conf/schema/p.yaml", SCHEMA)
    ws.write("pipelines/p.yaml", PIPELINE)
    write_rows(ws.root / "data" / "raw" / "p.csv", ROWS)
    ws.write(".gitignore", ws.read(".gitignore") + "/data/cur.csv\n/model.txt\n")
    for name, role in (("steward", "data-steward"), ("bob", "approver"), ("ci", "trainer")):
        assert ws.certus("keys", "generate", "--name", name, "--role", role) == 0
    keys = home / "keys"
    assert ws.certus("keys", "trust", str(keys / "steward.pub")) == 0
    assert ws.certus("keys", "trust", str(keys / "bob.pub")) == 0
    assert ws.certus("keys", "trust", str(keys / "ci.pub"), "--role", "trainer", "--role", "ledger",
                     "--role", "admin") == 0
    subprocess.run(["git", "init", "-q"], cwd=ws.root, check=True)
    ws.git("add", "conf", "pipelines", "step.py", ".gitignore", "trust.json")
    ws.git("commit", "-qm", "setup")
    ws.keys = keys
    return ws


def add(ws, *extra: str, path="data/raw/p.csv", name="praw") -> int:
    return ws.certus("dataset", "add", path, "--name", name, "--source", "field survey 2026",
                     "--schema", "conf/schema/p.yaml", "--sensitivity", "internal", "--retention", "365d",
                     "--license", "CC0-1.0", "--init", *extra)


def manifest_deps(ws, deps, name: str) -> list[dict]:
    """The resolvedDependencies entries naming dataset ``name``'s signed manifest file.

    Each names the manifest by its workspace path (no ``dataset:`` name, no URI) with the SHA-256
    of the file's bytes, and says which dataset it is in its annotations."""
    found = [d for d in deps if str((d.get("annotations") or {}).get("dataset", "")).startswith(f"{name}@")]
    for d in found:
        assert d["name"].startswith(f".certus/datasets/{name}/") and d["name"].endswith(".manifest.json"), d
        assert d["digest"] == {"sha256": hashlib.sha256((ws.root / d["name"]).read_bytes()).hexdigest()}
        assert d["mediaType"].startswith("application/vnd.dsse.envelope.v1+json")
        assert "uri" not in d and not d["name"].startswith("dataset:")
    return found


def events(ws) -> list[str]:
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    return [i.payload.get("kind", "run") for i in Provenance(Workspace(str(ws.root))).items()]


def test_add_file_signs_manifest_and_tracks_with_dvc(gov, capsys):
    assert add(gov) == 0
    out = capsys.readouterr().out
    assert "registered dataset praw@" in out and "40 rows x 3 columns" in out
    dvcfile = (gov.root / "data" / "raw" / "p.csv.dvc").read_text()
    assert "md5:" in dvcfile
    assert "p.csv" in (gov.root / "data" / "raw" / ".gitignore").read_text()
    [manifest_file] = (gov.root / ".certus" / "datasets" / "praw").glob("*.manifest.json")
    env = json.loads(manifest_file.read_text())
    assert env["payloadType"] == "application/vnd.certus.dataset+json"
    import base64
    import hashlib

    man = json.loads(base64.b64decode(env["payload"]))
    assert man["id"] == "sha256:" + hashlib.sha256((gov.root / "data/raw/p.csv").read_bytes()).hexdigest()
    assert man["dvc"]["md5"] == hashlib.md5((gov.root / "data/raw/p.csv").read_bytes()).hexdigest()
    assert (man["rows"], man["columns"], man["sensitivity"], man["license"]) == (40, 3, "internal", "CC0-1.0")
    assert man["source"] == "field survey 2026" and man["retention"]["expires"] > "2026"
    assert events(gov) == ["trust.genesis", "dataset.registered"]  # the ledger's first entry pins trust.json
    capsys.readouterr()
    gov.certus("dataset", "list")
    assert "pending" in capsys.readouterr().out


def test_add_directory_of_many_files(gov, capsys):
    for i in range(25):
        write_rows(gov.root / "data" / "shards" / f"s{i:02d}.csv", [[i * 100 + j, 1.5, "adelie"] for j in range(3)])
    assert add(gov, path="data/shards", name="shards") == 0
    from engine.datasets.registry import Registry

    m = Registry.load(str(gov.root)).resolve("shards").manifest
    assert m.rows == 75 and m.dvc["md5"].endswith(".dir") and m.dvc["nfiles"] == 25
    from engine.store.hashing import Hasher

    assert m.id == str(Hasher(str(gov.root)).hash_path("data/shards").digest)


def test_schema_violation_names_column_rule_and_rows(gov, capsys):
    write_rows(gov.root / "data/raw/p.csv", ROWS[:5] + [[5, -3, "adelie"], [6, 10, "emperor"], [6, 11, "gentoo"]])
    assert add(gov) == 1
    err = capsys.readouterr().err
    assert "column 'mass': rule min 0 violated in 1 row(s): rows 6" in err
    assert "column 'species': rule allowed ['adelie', 'gentoo'] violated in 1 row(s): rows 7" in err
    assert "unique key (id) duplicated in 1 row(s): rows 8" in err
    assert not (gov.root / ".certus" / "datasets").exists()  # nothing registered


def test_parquet_schema_checked(gov, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, None], "mass": [1.0, 2.0, 3.0], "species": ["adelie", "gentoo", "adelie"]})
    (gov.root / "data").mkdir(exist_ok=True)
    pq.write_table(table, gov.root / "data" / "p.parquet")
    assert add(gov, path="data/p.parquet", name="pq") == 1
    assert "column 'id': rule nullable: false violated in 1 row(s): rows 3" in capsys.readouterr().err


def test_approval_by_another_key_and_self_approval_refused(gov, capsys):
    add(gov)
    # the ledger exists now: the new role is a trust.changed record, signed by the admin key (ci)
    assert gov.certus("keys", "trust", str(gov.keys / "steward.pub"), "--role", "data-steward",
                      "--role", "approver") == 0
    capsys.readouterr()
    assert gov.certus("dataset", "approve", "praw", "--key", "steward") == 1
    assert "self-approval refused: key 'steward' registered it" in capsys.readouterr().err
    assert gov.certus("dataset", "approve", "praw", "--key", "bob") == 0
    capsys.readouterr()
    gov.certus("dataset", "list")
    assert "approved" in capsys.readouterr().out
    assert events(gov) == ["trust.genesis", "dataset.registered", "trust.changed", "dataset.approved"]
    assert gov.certus("verify") == 0


def _refused(gov, capsys, needle: str) -> None:
    gov.clear_runs()
    capsys.readouterr()
    assert gov.certus("repro") == 1
    err = capsys.readouterr().err
    assert needle in err, err
    assert gov.runs() == []  # nothing ran
    assert events(gov)[-1] == "dataset.refused"


def test_stage_refuses_unapproved_data(gov, capsys):
    add(gov)
    _refused(gov, capsys, "stage 'curate': dataset praw@")
    _refused(gov, capsys, "not approved; run 'certus dataset approve")


def test_stage_refuses_modified_data(gov, capsys):
    add(gov)
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    with open(gov.root / "data/raw/p.csv", "a") as f:
        f.write("99,1.0,adelie\n")
    _refused(gov, capsys, "data/raw/p.csv was modified")


def test_stage_refuses_expired_data(gov, capsys):
    assert gov.certus("dataset", "add", "data/raw/p.csv", "--name", "praw", "--source", "s", "--sensitivity",
                      "internal", "--retention", "2020-01-01", "--license", "CC0-1.0", "--init") == 0
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    _refused(gov, capsys, "retention expired on 2020-01-01")


def test_stage_refuses_wrong_sensitivity_unless_policy_allows(gov, capsys):
    assert gov.certus("dataset", "add", "data/raw/p.csv", "--name", "praw", "--source", "s", "--sensitivity",
                      "pii", "--retention", "30d", "--license", "proprietary", "--init") == 0
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    _refused(gov, capsys, "sensitivity 'pii' is not allowed for this stage by policy")
    gov.write("conf/config.yaml", "certus:\n  pipeline: p\n  policy:\n    stages:\n      curate: [pii]\n")
    assert gov.certus("repro") == 0
    assert sorted(gov.runs()) == ["curate", "train"]


def test_consumed_dataset_is_attested_and_lineage_reaches_raw(gov, capsys):
    add(gov)
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    assert gov.certus("repro") == 0
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    prov = Provenance(Workspace(str(gov.root)))
    run = [i.payload for i in prov.items() if i.payload.get("run_id")][-1]
    stmt_env = prov.read_attestations(run["run_id"])["curate"]
    import base64

    stmt = json.loads(base64.b64decode(json.loads(stmt_env)["payload"]))
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    [praw] = manifest_deps(gov, deps, "praw")
    assert praw["annotations"]["dataId"] == "sha256:" + hashlib.sha256((gov.root / "data/raw/p.csv").read_bytes()
                                                                      ).hexdigest()
    assert any(d["name"] == "data/raw/p.csv" for d in deps)  # the bytes too
    train = json.loads(base64.b64decode(json.loads(prov.read_attestations(run["run_id"])["train"])["payload"]))
    train_deps = train["predicate"]["buildDefinition"]["resolvedDependencies"]
    [pcur] = manifest_deps(gov, train_deps, "pcur")  # a derived dataset, by manifest
    assert pcur["annotations"]["dataId"] == "sha256:" + hashlib.sha256((gov.root / "data/cur.csv").read_bytes()
                                                                      ).hexdigest()
    capsys.readouterr()
    assert gov.certus("lineage", "model.txt") == 0
    text = capsys.readouterr().out
    assert "<- stage 'train'" in text and "dataset pcur@" in text and "parents praw@" in text
    assert "dataset praw@" in text and "approved by bob" in text and "source: field survey 2026" in text
    assert gov.certus("lineage", "model.txt", "--format", "mermaid") == 0
    assert capsys.readouterr().out.startswith("flowchart LR")
    assert gov.certus("verify") == 0


def test_tampered_manifest_caught_by_verify(gov, capsys):
    add(gov)
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    [mf] = (gov.root / ".certus" / "datasets" / "praw").glob("*.manifest.json")
    env = json.loads(mf.read_text())
    import base64

    man = json.loads(base64.b64decode(env["payload"]))
    man["sensitivity"] = "public"
    env["payload"] = base64.b64encode(json.dumps(man).encode()).decode()
    mf.write_text(json.dumps(env))
    capsys.readouterr()
    assert gov.certus("verify") == 1
    out = capsys.readouterr().out
    assert f"dataset praw@{man['id'][7:19]} (v1) manifest .certus/datasets/praw/" in out
    assert "does not verify" in out or "no ledger registration event" in out


def test_versions_and_checkout_of_an_old_version(gov, capsys):
    add(gov)
    v1 = (gov.root / "data/raw/p.csv").read_bytes()
    write_rows(gov.root / "data/raw/p.csv", ROWS + [[100, 1.0, "gentoo"]])
    assert add(gov) == 0
    capsys.readouterr()
    gov.certus("dataset", "versions", "praw")
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["v1", "v2"] and "40 rows" in lines[0] and "41 rows" in lines[1]
    from engine.datasets.registry import Registry

    reg = Registry.load(str(gov.root))
    old = reg.resolve("praw@v1").manifest
    assert reg.resolve("praw").manifest.version == 2 and old.id != reg.resolve("praw").manifest.id
    assert gov.certus("dataset", "checkout", old.ref) == 0
    assert (gov.root / "data/raw/p.csv").read_bytes() == v1
    # a pinned reference uses the old version; it needs its own approval
    gov.write("pipelines/p.yaml", PIPELINE.replace("datasets: [praw]", f"datasets: [{old.ref}]"))
    gov.certus("dataset", "approve", old.ref, "--key", "bob")
    assert gov.certus("repro") == 0


def test_push_clone_pull_same_hashes_and_verified_run(gov, tmp_path, capsys):
    add(gov)
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    remote = tmp_path / "dvc-remote"
    remote.mkdir()
    with open(gov.root / ".dvc" / "config", "a") as f:
        f.write(f"[core]\n    remote = local\n['remote \"local\"']\n    url = {remote}\n")
    assert gov.certus("repro") == 0
    assert gov.certus("dataset", "push") == 0
    assert any(remote.rglob("*"))
    gov.git("add", "-A")
    gov.git("commit", "-qm", "data, manifests, ledger")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(gov.root), str(clone)], check=True)
    from conftest import STEP  # noqa: F401  (the clone has step.py from git)

    from engine.cli.main import main

    assert not (clone / "data/raw/p.csv").exists()
    assert main(["-C", str(clone), "dataset", "pull"]) == 0
    assert (clone / "data/raw/p.csv").read_bytes() == (gov.root / "data/raw/p.csv").read_bytes()
    os.chdir(clone)
    assert main(["-C", str(clone), "repro"]) == 0
    assert (clone / "model.txt").read_bytes() == (gov.root / "model.txt").read_bytes()
    lock_a = json.loads((gov.root / "certus.lock").read_text())
    lock_b = json.loads((clone / "certus.lock").read_text())
    assert lock_a == lock_b
    capsys.readouterr()
    assert main(["-C", str(clone), "verify", "--artifacts"]) == 0


@pytest.mark.parametrize("case", ["outside", "not-git", "no-dvc", "unknown-dataset", "unknown-id"])
def test_bad_input_is_one_clear_error(gov, tmp_path, capsys, case):
    capsys.readouterr()
    if case == "outside":
        (tmp_path / "elsewhere.csv").write_text("id\n1\n")
        code = add(gov, path=str(tmp_path / "elsewhere.csv"))
        needle = "outside the workspace"
    elif case == "not-git":
        shutil.rmtree(gov.root / ".git")
        code = add(gov)
        needle = "not a git repository; run 'git init' first"
    elif case == "no-dvc":
        code = gov.certus("dataset", "add", "data/raw/p.csv", "--name", "praw", "--source", "s",
                          "--sensitivity", "internal", "--retention", "1y", "--license", "x")
        needle = "DVC is not initialised here; run 'dvc init' (or pass --init"
    elif case == "unknown-dataset":
        add(gov)
        capsys.readouterr()
        code = gov.certus("dataset", "show", "prow")
        needle = "dataset 'prow': unknown; did you mean 'praw'?"
    else:
        add(gov)
        capsys.readouterr()
        code = gov.certus("dataset", "approve", "praw@abcdef123456", "--key", "bob")
        needle = "dataset 'praw@abcdef123456': unknown ID; known versions: praw@"
    err = capsys.readouterr().err
    assert code != 0 and needle in err and "Traceback" not in err, err


def test_schema_checked_again_when_a_stage_consumes_the_data(gov, capsys):
    add(gov)
    gov.certus("dataset", "approve", "praw", "--key", "bob")
    gov.write("conf/schema/p.yaml", SCHEMA.replace("allowed: [adelie, gentoo]", "allowed: [adelie]"))
    _refused(gov, capsys, "column 'species': rule allowed ['adelie'] violated in 20 row(s): rows 1, 3, 5, 7, 9")
