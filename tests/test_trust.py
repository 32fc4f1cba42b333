"""The trust file: roles, validity windows, non-retroactive revocation, strict deterministic JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from engine.adapters.keys import Ed25519SigningKey
from engine.errors import (
    KeyNotValidError,
    KeyRevokedError,
    KeyRoleError,
    SignatureError,
    TrustFileError,
    UnknownKeyError,
)
from engine.provenance.dsse import sign_envelope, verify_envelope
from engine.provenance.signing import PublicKey, PublicKeyInfo
from engine.provenance.trust import Revocation, TrustEntry, TrustStore

UTC = UTC
T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T2 = datetime(2026, 1, 1, tzinfo=UTC)


def _info(n: int, name: str, role: str = "trainer") -> PublicKeyInfo:
    return PublicKeyInfo(name=name, role=role, public_key=PublicKey(bytes([n]) * 32))


ALICE, BOB = _info(1, "alice"), _info(2, "bob", "approver")
A, B = ALICE.keyid, BOB.keyid


def _store() -> TrustStore:
    return (
        TrustStore()
        .add_key(ALICE, roles=["trainer", "data-steward"], not_before=T0, not_after=T2)
        .add_key(BOB)
    )


def _label(info: PublicKeyInfo) -> str:
    return f"key '{info.name}' ({info.keyid[:16]})"


# --- check: every acceptance and rejection ----------------------------------------------------


def test_check_accepts_inside_the_window() -> None:
    store = _store()
    assert store.check(A, "trainer", T1) == ALICE.public_key
    assert store.check(A, "data-steward", T0) == ALICE.public_key  # window is inclusive
    assert store.check(A, "trainer", T2) == ALICE.public_key
    assert store.check(B, "approver", T1) == BOB.public_key  # roles default to the .pub file's


def test_unknown_key() -> None:
    message = f"unknown key {'ff' * 32}: not in the trust file"
    with pytest.raises(UnknownKeyError, match="^" + re.escape(message) + "$"):
        _store().check("ff" * 32, "trainer", T1)


def test_key_lacks_role() -> None:
    message = f"{_label(ALICE)}: lacks role 'approver' (has data-steward, trainer)"
    with pytest.raises(KeyRoleError, match="^" + re.escape(message) + "$"):
        _store().check(A, "approver", T1)


def test_signature_before_not_before() -> None:
    at = T0 - timedelta(seconds=1)
    message = (
        f"{_label(ALICE)}: signature made at 2024-12-31T23:59:59Z "
        "is before not_before 2025-01-01T00:00:00Z"
    )
    with pytest.raises(KeyNotValidError, match="^" + re.escape(message) + "$"):
        _store().check(A, "trainer", at)


def test_signature_after_not_after() -> None:
    at = T2 + timedelta(microseconds=1)
    message = (
        f"{_label(ALICE)}: signature made at 2026-01-01T00:00:00.000001Z "
        "is after not_after 2026-01-01T00:00:00Z"
    )
    with pytest.raises(KeyNotValidError, match="^" + re.escape(message) + "$"):
        _store().check(A, "trainer", at)


def test_revocation_is_honoured_only_after_the_revocation_time() -> None:
    store = _store().revoke("alice", T1, "laptop lost")
    assert store.check(A, "trainer", T1 - timedelta(seconds=1)) == ALICE.public_key
    message = (
        f"{_label(ALICE)}: revoked at 2025-06-01T12:00:00Z (laptop lost); "
        "signature made at {} is not before the revocation"
    )
    for at, text in [(T1, "2025-06-01T12:00:00Z"), (T1 + timedelta(days=1), "2025-06-02T12:00:00Z")]:
        with pytest.raises(KeyRevokedError, match="^" + re.escape(message.format(text)) + "$"):
            store.check(A, "trainer", at)
    assert store.check(B, "approver", T2) == BOB.public_key  # other keys untouched


def test_check_converts_other_time_zones_to_utc() -> None:
    store = _store().revoke(A, T1, "rotated")
    cet = timezone(timedelta(hours=1))
    assert store.check(A, "trainer", datetime(2025, 6, 1, 12, 59, tzinfo=cet)) == ALICE.public_key
    with pytest.raises(KeyRevokedError):
        store.check(A, "trainer", datetime(2025, 6, 1, 13, 0, tzinfo=cet))


def test_check_needs_an_aware_time() -> None:
    with pytest.raises(SignatureError, match="has no time zone; expected an aware datetime"):
        _store().check(A, "trainer", datetime(2025, 6, 1))


# --- changes ---------------------------------------------------------------------------------


def test_revoke_by_keyid_or_name() -> None:
    by_name = _store().revoke("alice", T1, "r")
    by_id = _store().revoke(A, T1, "r")
    assert by_name == by_id
    assert by_name.get("alice").revoked == Revocation(at=T1, reason="r")


def test_revocation_cannot_be_moved() -> None:
    store = _store().revoke("alice", T1, "lost")
    message = f"{_label(ALICE)}: already revoked at 2025-06-01T12:00:00Z; a revocation cannot be moved"
    with pytest.raises(TrustFileError, match="^" + re.escape(message) + "$"):
        store.revoke("alice", T2, "again")


def test_revoke_unknown_key() -> None:
    with pytest.raises(UnknownKeyError, match=re.escape("unknown key carol: not in the trust file")):
        _store().revoke("carol", T1, "r")


@pytest.mark.parametrize("reason", ["", "  ", "two\nlines"], ids=["empty", "blank", "multiline"])
def test_revocation_needs_a_one_line_reason(reason: str) -> None:
    with pytest.raises(TrustFileError, match="revocation reason must be one non-empty line"):
        _store().revoke("alice", T1, reason)


def test_add_duplicate_key_or_name() -> None:
    store = _store()
    with pytest.raises(TrustFileError, match=re.escape(f"keyid {A} is already used by {_label(ALICE)}")):
        store.add_key(PublicKeyInfo(name="alice2", role="trainer", public_key=ALICE.public_key))
    other = _info(3, "alice")
    with pytest.raises(TrustFileError, match=re.escape("name alice is already used by")):
        store.add_key(other)


def test_add_rejects_unknown_roles_and_bad_windows() -> None:
    with pytest.raises(TrustFileError, match=re.escape("key 'alice': unknown role 'root'; expected one of")):
        TrustStore().add_key(ALICE, roles=["root"])
    with pytest.raises(TrustFileError, match=re.escape("key 'alice': no roles; expected at least one of")):
        TrustStore().add_key(ALICE, roles=[])
    message = "key 'alice': not_before 2026-01-01T00:00:00Z is after not_after 2025-01-01T00:00:00Z"
    with pytest.raises(TrustFileError, match=re.escape(message)):
        TrustStore().add_key(ALICE, not_before=T2, not_after=T0)


def test_add_key_from_a_public_key_file_object() -> None:
    store = TrustStore().add_key(ALICE.to_dict(), roles=["trainer"])
    assert store.get(A).public_key == ALICE.public_key
    bad = ALICE.to_dict() | {"keyid": "00" * 32}
    with pytest.raises(TrustFileError, match="field 'keyid'"):
        TrustStore().add_key(bad)


# --- serialization ---------------------------------------------------------------------------


GOLDEN_TEMPLATE = """\
{
  "keys": [
    {
      "keyid": "@A@",
      "name": "alice",
      "not_after": "2026-01-01T00:00:00Z",
      "not_before": "2025-01-01T00:00:00Z",
      "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
      "revoked_at": "2025-06-01T12:00:00Z",
      "revoked_reason": "laptop lost",
      "roles": [
        "data-steward",
        "trainer"
      ]
    },
    {
      "keyid": "@B@",
      "name": "bob",
      "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
      "roles": [
        "approver"
      ]
    }
  ],
  "version": 1
}
"""
GOLDEN = GOLDEN_TEMPLATE.replace("@A@", A).replace("@B@", B)


def test_serialization_is_golden_and_deterministic() -> None:
    one = _store().revoke("alice", T1, "laptop lost")
    two = TrustStore().add_key(BOB).add_key(ALICE, ["trainer", "data-steward", "trainer"], T0, T2)
    two = two.revoke(A, T1.astimezone(timezone(timedelta(hours=-5))), "laptop lost")
    assert one.to_json() == GOLDEN
    assert two.to_json() == GOLDEN
    assert TrustStore.from_json(GOLDEN) == one
    assert TrustStore.from_json(GOLDEN.encode()).to_json() == GOLDEN


def test_fractional_seconds_round_trip() -> None:
    at = datetime(2025, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)
    store = _store().revoke("alice", at, "r")
    assert '"revoked_at": "2025-06-01T12:00:00.500000Z"' in store.to_json()
    assert TrustStore.from_json(store.to_json()) == store
    text = store.to_json().replace("12:00:00.500000Z", "12:00:00.5Z")
    assert TrustStore.from_json(text) == store


def test_empty_store() -> None:
    assert TrustStore().to_json() == '{\n  "keys": [],\n  "version": 1\n}\n'
    assert TrustStore.from_json(TrustStore().to_json()) == TrustStore()


def _golden_with(**changes: object) -> str:
    obj = json.loads(GOLDEN)
    for k, v in changes.items():
        if v is ...:
            del obj["keys"][0][k]
        else:
            obj["keys"][0][k] = v
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "trust.json: not valid JSON (Expecting property name"),
        ('{"keys": [], "version": 1, "keys": []}', "trust.json: not valid JSON (duplicate JSON key 'keys')"),
        ('{"keys": []}', "trust.json: expected an object with exactly the fields keys, version"),
        ('{"keys": [], "version": 2}', "trust.json: field 'version': 2; expected 1"),
        ('{"keys": {}, "version": 1}', "trust.json: field 'keys': expected a list"),
        (_golden_with(extra=1), "trust.json: keys[0] ('alice'): unknown field 'extra'"),
        (_golden_with(roles=...), "trust.json: keys[0] ('alice'): missing field 'roles'"),
        (
            _golden_with(roles="trainer"),
            "trust.json: keys[0] ('alice'): field 'roles': expected a list of strings",
        ),
        (_golden_with(keyid="00" * 32), "trust.json: keys[0] ('alice'): field 'keyid': " + "00" * 32),
        (
            _golden_with(public_key="AQ=="),
            "trust.json: keys[0] ('alice'): field 'public_key': Ed25519 public key must be 32 bytes, got 1",
        ),
        (
            _golden_with(not_before="2025-01-01T00:00:00+01:00"),
            "trust.json: keys[0] ('alice'): field 'not_before': '2025-01-01T00:00:00+01:00' is not UTC",
        ),
        (
            _golden_with(not_after="tomorrow Z"),
            "trust.json: keys[0] ('alice'): field 'not_after': 'tomorrow Z' is not an ISO 8601 time",
        ),
        (
            _golden_with(not_after="2025-01-01Z"),
            "trust.json: keys[0] ('alice'): field 'not_after': '2025-01-01Z' is not an ISO 8601 time",
        ),
        (
            _golden_with(revoked_reason=...),
            "trust.json: keys[0] ('alice'): revoked_at and revoked_reason go together",
        ),
        (_golden_with(name="bob"), "trust.json: key 'bob' ("),
    ],
    ids=[
        "json", "dup-key", "fields", "version", "keys-type", "unknown", "missing", "roles-type",
        "keyid", "pubkey", "tz", "time", "date-only", "revoked-half", "dup-name",
    ],
)
def test_from_json_rejects(text: str, message: str) -> None:
    with pytest.raises(TrustFileError, match="^" + re.escape(message)) as info:
        TrustStore.from_json(text)
    assert "\n" not in str(info.value)


def test_entries_are_sorted_by_name() -> None:
    store = TrustStore(entries=(TrustEntry("zed", PublicKey(b"\x09" * 32), ("ledger",)),
                                TrustEntry("amy", PublicKey(b"\x08" * 32), ("releaser",))))
    assert [e.name for e in store.entries] == ["amy", "zed"]
    assert set(store.public_keys()) == {e.keyid for e in store.entries}


# --- together with envelopes -----------------------------------------------------------------


def test_trusted_envelope_verification_end_to_end() -> None:
    signer = Ed25519SigningKey.from_seed(b"\x05" * 32, name="trainer-1", role="trainer")
    store = TrustStore().add_key(signer.info).revoke("trainer-1", T1, "rotated")
    env = sign_envelope("application/vnd.certus.run+json", b"{}", [signer])
    keys = {s.keyid: store.check(s.keyid, "trainer", T0) for s in env.signatures}
    assert verify_envelope(env, keys, "application/vnd.certus.run+json") == [signer.keyid]
    with pytest.raises(KeyRevokedError):
        store.check(signer.keyid, "trainer", T2)
