"""engine.provenance.note against the C2SP signed-note example and the golang.org/x/mod/sumdb vectors.

Vectors: tests/vectors/signed_note.json (see tests/vectors/README.md). Signing uses PyNaCl directly
through a small test signer, since note.py takes any :class:`engine.provenance.note.NoteSigner`.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from conftest import SeedSigner

from engine.errors import LedgerError, SignatureError
from engine.provenance import merkle
from engine.provenance.note import (
    Checkpoint,
    CheckpointError,
    Note,
    NoteError,
    UnverifiedNoteError,
    Verifier,
    key_id,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "signed_note.json").read_text())
GO = VECTORS["go_note"]
C2SP = VECTORS["c2sp_example"]


def go_signer(skey: str) -> SeedSigner:
    """Parse Go's ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`` (test-only)."""
    _, _, name, _, key = skey.split("+", 4)
    raw = base64.b64decode(key)
    assert raw[0] == 1
    return SeedSigner(name, raw[1:])


PETER = go_signer(GO["skey"])
PETER_V = Verifier.from_vkey(GO["peter_vkey"])
ENOCH_V = Verifier.from_vkey(GO["enoch_vkey"])
PETER_NOTE = GO["text"] + "\n\u2014 PeterNeumann " + GO["peter_sig"] + "\n"
BOTH_NOTE = PETER_NOTE + "\u2014 EnochRoot " + GO["enoch_sig"] + "\n"


# -- known answers -----------------------------------------------------------------------------------


def test_c2sp_example_opens() -> None:
    v = Verifier.from_vkey(C2SP["vkey"])
    assert v.to_vkey() == C2SP["vkey"]
    note = Note.open(C2SP["note"], [v])
    assert note.text == "This is an example message.\n"
    assert note.to_text() == C2SP["note"]


def test_go_vkeys_and_key_ids() -> None:
    assert PETER_V.to_vkey() == GO["peter_vkey"]
    assert ENOCH_V.to_vkey() == GO["enoch_vkey"]
    assert PETER.public_key == PETER_V.public_key
    assert key_id("PeterNeumann", PETER.public_key).hex() == "c74f20a3"


def test_go_sign_byte_for_byte() -> None:
    assert Note.sign(GO["text"], PETER).to_text() == PETER_NOTE


def test_go_open_both_signatures() -> None:
    note = Note.open(BOTH_NOTE, [PETER_V, ENOCH_V])
    assert [s.name for s in note.verified_by([PETER_V, ENOCH_V])] == ["PeterNeumann", "EnochRoot"]
    assert note.to_text() == BOTH_NOTE
    # Unknown signatures are ignored: either key alone is enough.
    assert Note.open(BOTH_NOTE, [ENOCH_V]).text == GO["text"]
    assert Note.open(BOTH_NOTE.encode("utf-8"), [PETER_V]).text == GO["text"]


def test_tlog_tree_note_body() -> None:
    body = VECTORS["tlog_tree_note"]["body"]
    cp = Checkpoint.from_body(body)
    assert cp == Checkpoint("go.sum database tree", 123456789012, merkle.leaf_hash(b"hello world"))
    assert cp.to_body() == body


def test_checkpoint_sign_and_verify_round_trip() -> None:
    cp = Checkpoint("certus/ws", 5, merkle.leaf_hash(b"x"), extensions=("ext one",))
    text = cp.sign(PETER).to_text()
    assert Checkpoint.from_note(text, [PETER_V]) == cp
    assert text.startswith("certus/ws\n5\n")


# -- rejection -----------------------------------------------------------------------------------------


def test_modified_body_is_rejected() -> None:
    bad = PETER_NOTE.replace("cryptography", "Cryptography")
    message = "note: signature by 'PeterNeumann+c74f20a3' does not verify"
    with pytest.raises(UnverifiedNoteError, match=re.escape(message)):
        Note.open(bad, [PETER_V])


def test_a_failing_known_signature_rejects_the_note() -> None:
    raw = base64.b64decode(GO["enoch_sig"])
    bad = base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()
    note = BOTH_NOTE.replace(GO["enoch_sig"], bad)
    with pytest.raises(UnverifiedNoteError, match="'EnochRoot\\+af0cfe78' does not verify"):
        Note.open(note, [PETER_V, ENOCH_V])
    assert Note.open(note, [PETER_V]).text == GO["text"]  # unknown to this verifier: ignored


def test_wrong_key_name_is_unknown_so_unverified() -> None:
    other = Verifier("PeterNeumann2", PETER_V.public_key)
    with pytest.raises(UnverifiedNoteError, match="not signed by any trusted key"):
        Note.open(PETER_NOTE, [other])


def test_wrong_key_hash_is_unknown_so_unverified() -> None:
    raw = base64.b64decode(GO["peter_sig"])
    forged = base64.b64encode(b"\xde\xad\xbe\xef" + raw[4:]).decode()
    with pytest.raises(UnverifiedNoteError, match="not signed by any trusted key"):
        Note.open(PETER_NOTE.replace(GO["peter_sig"], forged), [PETER_V])


def test_same_name_but_other_key_is_unknown() -> None:
    impostor = Verifier("PeterNeumann", ENOCH_V.public_key)
    # The key ID no longer matches, so the signature is not considered to be this key's.
    with pytest.raises(UnverifiedNoteError):
        Note.open(PETER_NOTE, [impostor])


def test_verifier_key_with_wrong_hash_is_rejected() -> None:
    vkey = GO["peter_vkey"].replace("c74f20a3", "c74f20a4")
    with pytest.raises(NoteError, match="key ID c74f20a4 does not match the key's c74f20a3"):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("PeterNeumann+c74f20a3", "expected 0x01 followed by a 32-byte Ed25519 key"),
        ("PeterNeumann+C74F20A3+AAAA", "key ID must be 8 lowercase hex digits"),
        ("PeterNeumann+c74f20a3+!!!", "key: not standard base64"),
        ("PeterNeumann+c74f20a3+AAAA", "expected 0x01 followed by a 32-byte Ed25519 key"),
        ("+c74f20a3+" + GO["peter_vkey"].split("+")[2], "key name '' is invalid"),
    ],
)
def test_malformed_verifier_keys(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=re.escape(message)):
        Verifier.from_vkey(vkey)


SIG = "\u2014 PeterNeumann " + GO["peter_sig"] + "\n"
TEXT = GO["text"]
KEY_ID_ONLY = base64.b64encode(bytes.fromhex("c74f20a3")).decode()


def sig_block(name: str, b64: str) -> str:
    return f"\n\u2014 {name} {b64}\n"


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (TEXT + SIG, "note: no blank line before the signatures"),
        (TEXT + "\n", "note: no signature lines"),
        (PETER_NOTE[:-1], "note: must end with a newline"),
        (TEXT + "\n- PeterNeumann " + GO["peter_sig"] + "\n", "line 1: must start with an em dash"),
        (TEXT + "\n\u2014 PeterNeumann\n", "line 1: expected '<key name> <base64 signature>'"),
        (TEXT + sig_block("Peter+Neumann", GO["peter_sig"]), "key name 'Peter+Neumann' is invalid"),
        (TEXT + sig_block("PeterNeumann", KEY_ID_ONLY), "signature is 4 bytes; expected a 4-byte key ID"),
        (TEXT + sig_block("PeterNeumann", "not*base64"), "line 1: signature: not standard base64"),
        (TEXT + sig_block("PeterNeumann", "x08go/Z"), "line 1: signature: not standard base64"),
        ("tab\there\n" + "\n" + SIG, "note: control character U+0009 is not allowed"),
        (TEXT + "\n" + SIG * 101, "note: 101 signatures; at most 100 are read"),
    ],
    ids=[
        "no-blank-line",
        "no-signatures",
        "no-final-newline",
        "hyphen-not-em-dash",
        "no-signature",
        "plus-in-name",
        "short-signature",
        "bad-base64",
        "bad-padding",
        "control-char",
        "too-many",
    ],
)
def test_malformed_notes(msg: str, message: str) -> None:
    with pytest.raises(NoteError, match=re.escape(message)):
        Note.open(msg, [PETER_V])


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(NoteError, match="not valid UTF-8"):
        Note.from_text(b"\xff\n\n" + SIG.encode())


def test_sign_rejects_bad_text() -> None:
    with pytest.raises(NoteError, match="text must end with a newline"):
        Note.sign("no newline", PETER)


ZERO = base64.b64encode(b"\0" * 32).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("origin\n5\n", "checkpoint: 2 lines; expected origin, size, root hash"),
        ("origin\n05\n" + ZERO + "\n", "size '05' is not a decimal"),
        ("origin\n-1\n" + ZERO + "\n", "size '-1' is not a decimal"),
        ("origin\n5\nAAAA\n", "checkpoint: root hash must be 32 bytes"),
        ("origin\n5\n!!\n", "checkpoint: root hash '!!': not standard base64"),
        ("origin\n5\n" + ZERO, "checkpoint: text must end with a newline"),
        ("origin\n5\n" + ZERO + "\n\n", "extension line '' must be one"),
        ("\n5\n" + ZERO + "\n", "checkpoint: origin '' must be one non-empty"),
    ],
)
def test_malformed_checkpoints(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        Checkpoint.from_body(body)
    assert isinstance(info.value, LedgerError)


def test_checkpoint_keeps_extension_lines() -> None:
    body = "o\n1\n" + base64.b64encode(b"\1" * 32).decode() + "\nfirst\nsecond\n"
    cp = Checkpoint.from_body(body)
    assert cp.extensions == ("first", "second")
    assert cp.to_body() == body


def test_errors_are_signature_errors() -> None:
    assert issubclass(NoteError, SignatureError)
    assert issubclass(UnverifiedNoteError, SignatureError)
