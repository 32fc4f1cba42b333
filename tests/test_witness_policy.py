"""``verify`` requiring witness cosignatures: adding them to the ledger, the policy, its overrides.

One real signed workspace per module (keys generated and trusted through the CLI, two real
``repro`` runs), copied per test. Witnesses cosign through the CLI (``ledger checkpoint
--cosign``); what a witness must not be able to do (cosign with a key lacking the role, forge
or edit a line) is built with the real keys and the real cosignature code.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import init_diamond
from test_witness import GITIGNORE, _env, _ok, flip_base64

from engine.adapters.keys import load_signer
from engine.provenance import merkle
from engine.provenance.cosignature import cosign
from engine.provenance.cosignature_store import COSIGNATURES, append_cosigned, read_cosigned
from engine.provenance.ledger_format import _encode_note_line
from engine.provenance.note import Note
from engine.provenance.recorder import NoteSignerAdapter
from engine.provenance.witness_policy import roots_at

CONF = """\
certus:
  pipeline: p
{policy}a: {{x: 1}}
b: {{y: 1}}
c: {{z: 1}}
"""
POLICY = "  ledger:\n    witnesses:\n      require: 2\n      names: [w1, w2]\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/ws: 2 signed runs; alice: trainer + ledger + admin; w1, w2: witness; mallory: never trusted."""
    base = tmp_path_factory.mktemp("policy")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, base)
        w = init_diamond(base / "ws", GITIGNORE, CONF.format(policy=""))
        for name, role in (("alice", "trainer"), ("w1", "witness"), ("w2", "witness"), ("mallory", "witness")):
            _ok(w.root, "keys", "generate", "--name", name, "--role", role)
        _ok(w.root, "keys", "trust", str(base / "home/keys/alice.pub"), "--role", "trainer", "--role", "ledger",
            "--role", "admin")
        for name in ("w1", "w2"):
            _ok(w.root, "keys", "trust", str(base / f"home/keys/{name}.pub"), "--role", "witness")
        w.commit("diamond, trusting alice, w1, w2")
        _ok(w.root, "repro")
        _ok(w.root, "repro", "b.y=2")
    return base


class Site:
    def __init__(self, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base, self.capsys, self.ws = base, capsys, base / "ws"

    def run(self, *args: str) -> tuple[int, str]:
        from engine.cli.main import main

        self.capsys.readouterr()
        rc = main(["-C", str(self.ws), *args])
        out = self.capsys.readouterr()
        self.stdout = out.out
        return rc, out.out + out.err

    def cosigned(self, key: str) -> Path:
        """A witness cosigns the current checkpoint through the CLI and exports it."""
        path = self.base / f"{key}-{self.size()}.checkpoint"
        rc, text = self.run("ledger", "checkpoint", "--cosign", "--key", key, "--export", str(path))
        assert rc == 0, text
        return path

    def add(self, path: Path) -> tuple[int, str]:
        return self.run("ledger", "checkpoint", "--add-cosigned", str(path))

    def size(self) -> int:
        return int((self.ws / ".certus/ledger/checkpoint").read_text().splitlines()[1])

    def policy(self, text: str = POLICY) -> None:
        (self.ws / "conf/config.yaml").write_text(CONF.format(policy=text))

    def signer(self, name: str) -> NoteSignerAdapter:
        return NoteSignerAdapter(load_signer(self.base / "home/keys" / f"{name}.key"))

    def verify(self, *args: str) -> tuple[int, str]:
        return self.run("verify", *args)


@pytest.fixture
def site(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Site:
    base = tmp_path / "site"
    shutil.copytree(template, base, symlinks=True)
    _env(monkeypatch, base)
    return Site(base, capsys)


def one_line_error(text: str) -> str:
    errors = [ln for ln in text.splitlines() if ln.startswith("certus: error:")]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.integration
def test_cosign_add_and_policy_passes(site: Site) -> None:
    n = site.size()
    for key in ("w1", "w2"):
        rc, text = site.add(site.cosigned(key))
        assert rc == 0 and f"checkpoint size {n} of {n}: stored cosignature(s) by {key} at " in text, text
    rc, text = site.add(site.base / f"w1-{n}.checkpoint")  # idempotent
    assert rc == 0 and "stored already" in text
    stored = read_cosigned(site.ws / ".certus/ledger")
    assert len(stored.notes) == 2 and not stored.problems
    ledger_note = (site.ws / ".certus/ledger/checkpoint").read_text()
    assert all(t.startswith(ledger_note) for _, t in stored.notes)  # the ledger's signed bytes, then the lines
    site.policy()
    rc, text = site.verify()
    assert rc == 0 and f"witnessed up to entry {n} of {n} by w1, w2" in text.splitlines(), text
    rc, _ = site.verify("--json")
    got = json.loads(site.stdout)["witnessed"]
    assert (got["size"], got["of"], got["witnesses"], got["policy"]["require"]) == (n, n, ["w1", "w2"], 2)


@pytest.mark.integration
def test_policy_unmet_fails_naming_it(site: Site) -> None:
    site.policy()
    rc, text = site.verify()
    line = one_line_error(text)
    assert rc != 0 and "witness policy (conf/config.yaml certus.ledger.witnesses): 2 cosignature(s) from w1, w2" \
        in line and "none is stored" in line, text
    site.add(site.cosigned("w1"))  # one of two
    rc, text = site.verify()
    assert rc != 0 and "the most is 1 (w1)" in one_line_error(text)
    rc, text = site.verify("--require-witnesses", "0")  # the override turns it off: today's verify
    assert rc == 0 and "witnessed up to entry" in text  # and says what cosignatures there are


@pytest.mark.integration
def test_no_policy_no_cosignatures_is_todays_verify(site: Site) -> None:
    rc, text = site.verify()
    assert rc == 0 and "witnessed" not in text and "witness cosignatures" not in text, text
    rc, _ = site.verify("--json")
    assert "witnessed" not in json.loads(site.stdout)


@pytest.mark.integration
def test_cosignature_without_witness_role_does_not_count(site: Site) -> None:
    ledger_note = (site.ws / ".certus/ledger/checkpoint").read_text()
    path = site.base / "alice.checkpoint"
    for key in ("alice", "mallory"):  # a trusted non-witness key, and a witness-role key not in trust.json
        path.write_text(cosign(ledger_note, site.signer(key), int(time.time())).to_text())
        rc, text = site.add(path)
        assert rc != 0 and "no cosignature by a key trust.json grants the 'witness' role" in one_line_error(text)
    assert not (site.ws / ".certus/ledger" / COSIGNATURES).exists()
    # stored beside a real witness's line: only w1 counts
    both = cosign(Note.from_text(site.cosigned("w1").read_text()), site.signer("alice"), int(time.time()))
    path.write_text(both.to_text())
    assert site.add(path)[0] == 0
    stored = read_cosigned(site.ws / ".certus/ledger").notes
    assert len(stored) == 1 and "— alice " not in stored[0][1]  # only trusted witnesses' lines are stored
    rc, text = site.verify("--require-witnesses", "2")
    assert rc != 0 and "the most is 1 (w1)" in one_line_error(text)


@pytest.mark.integration
def test_forged_or_edited_cosignature_refused(site: Site) -> None:
    path = site.cosigned("w1")
    lines = path.read_text().splitlines(keepends=True)
    forged = site.base / "forged.checkpoint"
    forged.write_text("".join([*lines[:-1], flip_base64(lines[-1], 40)]))
    rc, text = site.add(forged)
    assert rc != 0 and "cosignature by 'w1+" in one_line_error(text) and "does not verify" in text
    # a valid line stored, then edited on disk: verify refuses it, even with no policy
    assert site.add(path)[0] == 0
    store = site.ws / ".certus/ledger" / COSIGNATURES
    record = json.loads(store.read_text())
    note_lines = record["note"].splitlines(keepends=True)
    record["note"] = "".join([*note_lines[:-1], flip_base64(note_lines[-1], 20)])
    store.write_bytes(_encode_note_line(record["note"]))  # a well-formed line, as the store writes them
    rc, text = site.verify()
    assert rc != 0 and "cosignatures.jsonl: line 1" in text and "does not verify" in text, text


@pytest.mark.integration
def test_runs_after_the_cosignature_are_unwitnessed(site: Site) -> None:
    s = site.size()
    w1, w2 = site.cosigned("w1"), site.cosigned("w2")
    rc, text = site.run("repro", "c.z=5")
    assert rc == 0, text
    t = site.size()
    unwitnessed = f"entry {s}" if t == s + 1 else f"entries {s}..{t - 1}"
    for path in (w1, w2):  # added after the ledger grew: matched against the checkpoints log
        rc, text = site.add(path)
        assert rc == 0 and f"checkpoint size {s} of {t}" in text, text
    site.policy()
    rc, text = site.verify()
    line = one_line_error(text)
    assert rc != 0 and f"{unwitnessed} not witnessed (witnessed up to entry {s} of {t} by w1, w2)" in line
    rc, text = site.verify("--no-require-all-witnessed")
    assert rc == 0 and f"witnessed up to entry {s} of {t} by w1, w2" in text.splitlines(), text
    site.policy(POLICY + "      require_all: false\n")
    rc, text = site.verify()
    assert rc == 0 and f"note: {unwitnessed} not witnessed" in text, text


@pytest.mark.integration
def test_override_flags(site: Site) -> None:
    site.add(site.cosigned("w2"))
    site.policy()  # config: w1 and w2
    assert site.verify()[0] != 0
    rc, text = site.verify("--require-witnesses", "1", "--witness", "w2")
    assert rc == 0 and "by w2" in text, text
    rc, text = site.verify("--witness", "w1")  # w1 alone is required now; w2's does not count
    assert rc != 0 and "from w1 " in one_line_error(text) and "and the command line" in text
    site.policy("")  # no config policy: the flags alone
    rc, text = site.verify("--require-witnesses", "1")
    assert rc == 0 and "by w2" in text
    rc, text = site.verify("--require-witnesses", "2", "--witness", "w2")
    assert rc != 0 and "names only 1 witness(es)" in one_line_error(text)
    rc, text = site.verify("--witness", "nobody")
    assert rc != 0 and "'nobody' is not a key trust.json grants the 'witness' role" in text


@pytest.mark.integration
def test_add_cosigned_refuses_other_histories_and_bad_config(site: Site) -> None:
    ledger_note = (site.ws / ".certus/ledger/checkpoint").read_text()
    body = Note.from_text(ledger_note).text
    lines = body.splitlines(keepends=True)
    other = site.base / "other.checkpoint"
    for changed, why in ((["other.example/log\n", *lines[1:]], "for another log"),
                         ([lines[0], "99\n", *lines[2:]], "never signed a checkpoint of that size"),
                         ([*lines[:2], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"], "not our history")):
        note = Note.sign("".join(changed), site.signer("alice"))
        other.write_text(cosign(note, site.signer("w1"), int(time.time())).to_text())
        rc, text = site.add(other)
        assert rc != 0 and why in one_line_error(text), (why, text)
    # the same lines stored anyway (as if the ledger was rewritten or rolled back after they were witnessed)
    for changed, why in (([*lines[:2], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"], "a fork"),
                         ([lines[0], "99\n", *lines[2:]], "past this ledger")):
        note = Note.sign("".join(changed), site.signer("alice"))
        store = site.ws / ".certus/ledger"
        (store / COSIGNATURES).unlink(missing_ok=True)
        append_cosigned(store, cosign(note, site.signer("w1"), int(time.time())).to_text())
        rc, text = site.verify()
        assert rc != 0 and "cosignatures.jsonl: line 1: cosigned checkpoint" in text and why in text, (why, text)
    site.policy("  ledger:\n    witnesses:\n      require: two\n")
    rc, text = site.verify()
    assert rc != 0 and "certus.ledger.witnesses.require: expected a whole number" in one_line_error(text)


def test_store_torn_line_is_ignored_then_cut(tmp_path: Path) -> None:
    note = "log\n1\nAAAA\n\n— log AAAA\n"
    append_cosigned(tmp_path, note)
    with open(tmp_path / COSIGNATURES, "ab") as f:
        f.write(b'{"note":"log\\n2')  # a crash mid-append
    stored = read_cosigned(tmp_path)
    assert [t for _, t in stored.notes] == [note] and stored.torn and "line 2" in stored.torn
    cut = append_cosigned(tmp_path, note)
    assert cut and "cut 15 bytes" in cut
    stored = read_cosigned(tmp_path)
    assert [t for _, t in stored.notes] == [note, note] and stored.torn is None
    (tmp_path / COSIGNATURES).write_bytes(b"not json\n")
    assert read_cosigned(tmp_path).problems


def test_roots_at_matches_the_merkle_module() -> None:
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(70)]
    sizes = [1, 2, 3, 7, 8, 33, 64, 70]
    assert roots_at(leaves, sizes) == {n: merkle.root(leaves[:n]) for n in sizes}
    assert roots_at(leaves, []) == {}
