"""Rotating keys through the ledger: the revoked key's own last acts stay valid, later ones do not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PIPELINE = """\
    stages:
      a:
        cmd: echo ${p} > out/a.txt
        params: [p]
        outs: [out/a.txt]
"""


@pytest.fixture
def rotated(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    home = tmp_path / "certus_home"
    monkeypatch.setenv("CERTUS_HOME", str(home))
    monkeypatch.setenv("CERTUS_KEY_PASSPHRASE", "rotation")
    monkeypatch.delenv("CERTUS_KEY", raising=False)
    monkeypatch.delenv("CERTUS_LEDGER_KEY", raising=False)
    ws.write("conf/config.yaml", "p: 1\n")
    ws.write("pipelines/p.yaml", PIPELINE)
    for name in ("alice", "bob"):
        assert ws.certus("keys", "generate", "--name", name, "--role", "trainer") == 0
    assert ws.certus("keys", "trust", str(home / "keys/alice.pub"), "--role", "trainer", "--role", "ledger",
                     "--role", "admin") == 0
    ws.commit("alice")
    assert ws.certus("repro") == 0
    assert ws.certus("keys", "trust", str(home / "keys/bob.pub"), "--role", "trainer", "--role", "ledger",
                     "--role", "admin") == 0
    return ws


def test_the_only_ledger_key_rotated_out_still_verifies(rotated: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # alice signs the checkpoint over her own revocation (default ledger key): that is her last act
    assert rotated.certus("keys", "revoke", "alice", "--reason", "rotated", "--admin-key", "bob") == 0
    assert rotated.certus("verify") == 0, capsys.readouterr()
    assert rotated.certus("repro", "p=2") == 0  # now signed by bob: alice is revoked
    capsys.readouterr()
    assert rotated.certus("verify") == 0, capsys.readouterr()
    capsys.readouterr()
    assert rotated.certus("log") == 0
    log = capsys.readouterr().out
    assert "trust.changed" in log and log.count(" run ") == 2


def test_a_key_can_revoke_itself_and_signs_nothing_after(rotated: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert rotated.certus("keys", "revoke", "alice", "--reason", "lost", "--admin-key", "alice") == 0
    assert rotated.certus("verify") == 0, capsys.readouterr()
    rotated.proc("repro", "p=3")  # (CERTUS_KEY is not set: the first usable trainer key, bob, signs)
    as_alice = rotated.proc("repro", "p=4", env={**os.environ, "CERTUS_KEY": "alice"})
    assert as_alice.returncode != 0 and "revoked" in as_alice.stderr


def test_an_edited_ledger_index_is_ignored_and_rebuilt(rotated: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The index repro consults is a sealed cache: a forged one (claiming another trust state) is not believed."""
    index = rotated.root / ".certus/tmp/ledger-index.json"
    blob = index.read_bytes()
    forged = blob.replace(b'"trust_sha256":"', b'"trust_sha256":"0', 1)
    assert forged != blob
    index.write_bytes(forged)
    capsys.readouterr()
    assert rotated.certus("repro", "p=5") == 0
    err = capsys.readouterr().err
    assert "ledger-index.json: failed its integrity check" in err
    assert index.read_bytes() != forged  # rebuilt from the ledger and sealed again
    assert rotated.certus("verify") == 0
