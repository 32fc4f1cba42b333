"""DSSE v1 envelopes: the protocol's own vector, interop with securesystemslib, strict parsing."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.adapters.keys import Ed25519SigningKey
from engine.core.canonical import CanonicalError, canonical_bytes
from engine.errors import (
    BadSignatureError,
    EnvelopeFormatError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
)
from engine.provenance.dsse import Envelope, Signature, pae, sign_envelope, verify_envelope
from engine.provenance.signing import PublicKey, Signer

VECTOR = json.loads((Path(__file__).parent / "vectors" / "dsse.json").read_text())
TYPE = "application/vnd.certus.test+json"
PAYLOAD = b'{"hello":"world"}'


def _key(n: int, name: str = "alice") -> Ed25519SigningKey:
    return Ed25519SigningKey.from_seed(bytes([n]) * 32, name=name, role="trainer")


ALICE, BOB = _key(1, "alice"), _key(2, "bob")
KEYS = {ALICE.keyid: ALICE.public_key, BOB.keyid: BOB.public_key}


# --- the protocol's own vector ---------------------------------------------------------------


def test_pae_reproduces_the_dsse_vector() -> None:
    env = VECTOR["envelope"]
    got = pae(env["payloadType"], base64.b64decode(env["payload"]))
    assert got == VECTOR["expected_pae"].encode("utf-8")


def test_pae_lengths_are_utf8_byte_counts() -> None:
    assert pae("é", b"\x00\xff") == b"DSSEv1 2 \xc3\xa9 2 \x00\xff"
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_vector_envelope_parses_and_reserializes() -> None:
    raw = json.dumps(VECTOR["envelope"], indent=1).encode()
    env = Envelope.from_json_bytes(raw)
    assert env.payload == b"hello world"
    assert env.payload_type == "http://example.com/HelloWorld"
    assert env.signatures[0].keyid == ""  # keyid is optional in DSSE and absent here
    assert env.to_json_bytes() == canonical_bytes(VECTOR["envelope"])
    assert Envelope.from_json_bytes(env.to_json_bytes()) == env


def test_vector_ecdsa_signature_verifies_over_our_pae() -> None:
    """The vector's P-256 signature is over PAE; it verifying proves our PAE byte-correct."""
    pytest.importorskip("cryptography")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    numbers = ec.EllipticCurvePublicNumbers(
        int(VECTOR["public_key"]["x"]), int(VECTOR["public_key"]["y"]), ec.SECP256R1()
    )
    public = numbers.public_key()
    env = Envelope.from_json_bytes(json.dumps(VECTOR["envelope"]).encode())
    raw = env.signatures[0].sig
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, env.pae(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, env.pae() + b" ", ec.ECDSA(hashes.SHA256()))


# --- our own sign / verify -------------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [BOB, ALICE])
    assert [s.keyid for s in env.signatures] == sorted([ALICE.keyid, BOB.keyid])
    parsed = Envelope.from_json_bytes(env.to_json_bytes())
    assert parsed == env
    assert verify_envelope(parsed, KEYS, TYPE) == sorted([ALICE.keyid, BOB.keyid])


def test_signed_envelopes_are_byte_identical() -> None:
    a = sign_envelope(TYPE, PAYLOAD, [ALICE, BOB]).to_json_bytes()
    b = sign_envelope(TYPE, PAYLOAD, [BOB, ALICE]).to_json_bytes()
    assert a == b
    assert a == canonical_bytes(json.loads(a))


def test_our_key_satisfies_the_signer_protocol() -> None:
    assert isinstance(ALICE, Signer)


def test_signature_without_keyid_verifies_under_some_given_key() -> None:
    sig = ALICE.sign(pae(TYPE, PAYLOAD))
    env = Envelope(TYPE, PAYLOAD, (Signature("", sig),))
    assert verify_envelope(env, KEYS, TYPE) == [ALICE.keyid]
    with pytest.raises(
        BadSignatureError,
        match=re.escape("DSSE envelope: signature 0 (no keyid): verifies under none of the 1 given keys"),
    ):
        verify_envelope(env, {BOB.keyid: BOB.public_key}, TYPE)


def test_verify_rejects_wrong_payload_type() -> None:
    env = sign_envelope("other/type", PAYLOAD, [ALICE])
    with pytest.raises(
        PayloadTypeError,
        match=re.escape(f"DSSE envelope: payloadType 'other/type' is not the expected '{TYPE}'"),
    ):
        verify_envelope(env, KEYS, TYPE)


def test_verify_rejects_unknown_keyid() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [ALICE])
    with pytest.raises(UnknownKeyError, match=re.escape(f"DSSE envelope: key {ALICE.keyid}: unknown keyid")):
        verify_envelope(env, {BOB.keyid: BOB.public_key}, TYPE)


def test_verify_lists_every_failing_signature() -> None:
    carol = _key(3, "carol")
    carol_sig = carol.sign(pae(TYPE, PAYLOAD))
    env = Envelope(TYPE, PAYLOAD, (Signature(carol.keyid, carol_sig), Signature(BOB.keyid, carol_sig)))
    problems = sorted([f"key {BOB.keyid}: signature does not verify", f"key {carol.keyid}: unknown keyid"])
    with pytest.raises(SignatureError, match=re.escape("DSSE envelope: " + "; ".join(problems))) as info:
        verify_envelope(env, {BOB.keyid: BOB.public_key}, TYPE)
    assert type(info.value) is SignatureError  # mixed reasons -> the family root


def test_verify_rejects_a_mismatched_key_mapping() -> None:
    env = sign_envelope(TYPE, PAYLOAD, [ALICE])
    with pytest.raises(SignatureError, match=re.escape(f"{ALICE.keyid} maps to the key of {BOB.keyid}")):
        verify_envelope(env, {ALICE.keyid: BOB.public_key}, TYPE)


def test_sign_needs_a_signer() -> None:
    with pytest.raises(SignatureError, match="no signers given"):
        sign_envelope(TYPE, PAYLOAD, [])


def test_sign_rejects_two_signatures_by_one_key() -> None:
    with pytest.raises(EnvelopeFormatError, match=re.escape(f"more than one signature by key {ALICE.keyid}")):
        sign_envelope(TYPE, PAYLOAD, [ALICE, ALICE])


@given(payload_type=st.text(max_size=40), payload=st.binary(max_size=200))
def test_envelope_round_trips_any_type_and_payload(payload_type: str, payload: bytes) -> None:
    env = sign_envelope(payload_type, payload, [ALICE])
    assert Envelope.from_json_bytes(env.to_json_bytes()) == env
    assert verify_envelope(env, KEYS, payload_type) == [ALICE.keyid]


def test_core_modules_do_not_import_nacl() -> None:
    code = ("import sys, engine.provenance.dsse, engine.provenance.signing, engine.provenance.trust; "
            "sys.exit('nacl' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# --- tampering: one field at a time, rejected by us and by securesystemslib ------------------


def _flip_b64(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _tamper_payload(d: dict[str, Any]) -> None:
    d["payload"] = _flip_b64(d["payload"], 0)


def _tamper_type(d: dict[str, Any]) -> None:
    d["payloadType"] += "x"


def _tamper_sig(d: dict[str, Any]) -> None:
    d["signatures"][0]["sig"] = _flip_b64(d["signatures"][0]["sig"], 5)


def _tamper_keyid(d: dict[str, Any]) -> None:
    d["signatures"][0]["keyid"] = BOB.keyid


TAMPERINGS = {
    "payload-byte": (_tamper_payload, BadSignatureError),
    "payloadType": (_tamper_type, PayloadTypeError),
    "sig-byte": (_tamper_sig, BadSignatureError),
    "keyid": (_tamper_keyid, BadSignatureError),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampering_is_rejected_by_us(name: str) -> None:
    tamper, error = TAMPERINGS[name]
    d = sign_envelope(TYPE, PAYLOAD, [ALICE]).to_dict()
    tamper(d)
    env = Envelope.from_json_bytes(json.dumps(d).encode())
    with pytest.raises(error):
        verify_envelope(env, KEYS, TYPE)
    if name == "payloadType":  # even a verifier expecting the new type rejects the signature
        with pytest.raises(BadSignatureError):
            verify_envelope(env, KEYS, TYPE + "x")
    if name == "keyid":  # and with only Alice trusted, Bob's keyid is unknown
        with pytest.raises(UnknownKeyError):
            verify_envelope(env, {ALICE.keyid: ALICE.public_key}, TYPE)


# --- interop with securesystemslib (an independent DSSE implementation) -----------------------

try:
    import securesystemslib.dsse as sslib_dsse
    import securesystemslib.exceptions as sslib_exceptions
    import securesystemslib.signer as sslib_signer
except ImportError:  # pragma: no cover - it is a test dependency
    sslib_dsse = sslib_exceptions = sslib_signer = None

needs_sslib = pytest.mark.skipif(sslib_dsse is None, reason="securesystemslib is not installed")


def _sslib_key(public: PublicKey) -> Any:
    return sslib_signer.SSlibKey(public.keyid, "ed25519", "ed25519", {"public": public.raw.hex()})


def _sslib_verify(env_dict: dict[str, Any], public: PublicKey) -> dict[str, Any]:
    env = sslib_dsse.Envelope.from_dict(copy.deepcopy(env_dict))
    return env.verify(keys=[_sslib_key(public)], threshold=1)


@needs_sslib
def test_securesystemslib_verifies_our_envelope() -> None:
    ours = sign_envelope(TYPE, PAYLOAD, [ALICE])
    accepted = _sslib_verify(json.loads(ours.to_json_bytes()), ALICE.public_key)
    assert list(accepted) == [ALICE.keyid]
    theirs = sslib_dsse.Envelope.from_dict(json.loads(ours.to_json_bytes()))
    assert theirs.pae() == ours.pae()


@needs_sslib
@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampering_is_rejected_by_securesystemslib(name: str) -> None:
    d = sign_envelope(TYPE, PAYLOAD, [ALICE]).to_dict()
    TAMPERINGS[name][0](d)
    with pytest.raises(sslib_exceptions.VerificationError):
        _sslib_verify(d, ALICE.public_key)


@needs_sslib
def test_we_verify_securesystemslib_crypto_signer() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
    public = PublicKey(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    signer = sslib_signer.CryptoSigner(private, _sslib_key(public))
    theirs = sslib_dsse.Envelope(PAYLOAD, TYPE, {})
    theirs.sign(signer)
    env = Envelope.from_json_bytes(json.dumps(theirs.to_dict()).encode())
    assert verify_envelope(env, {public.keyid: public}, TYPE) == [public.keyid]
    assert public.keyid == hashlib.sha256(public.raw).hexdigest()
    for tamper, error in TAMPERINGS.values():
        d = theirs.to_dict()
        tamper(d)
        with pytest.raises(error):
            verify_envelope(Envelope.from_json_bytes(json.dumps(d).encode()),
                            {public.keyid: public, BOB.keyid: BOB.public_key}, TYPE)


def test_we_verify_a_raw_nacl_signature() -> None:
    sk = nacl.signing.SigningKey(bytes([9]) * 32)
    public = PublicKey(bytes(sk.verify_key))
    sig = sk.sign(pae(TYPE, PAYLOAD)).signature
    env = Envelope(TYPE, PAYLOAD, (Signature(public.keyid, sig),))
    assert verify_envelope(env, {public.keyid: public}, TYPE) == [public.keyid]


# --- strict parsing: one malformation at a time -----------------------------------------------

GOOD = sign_envelope(TYPE, PAYLOAD, [ALICE]).to_dict()
SIG = GOOD["signatures"][0]["sig"]


def _with(**changes: Any) -> bytes:
    d = copy.deepcopy(GOOD)
    for k, v in changes.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d).encode()


BAD_B64 = "not valid standard padded base64"
MALFORMED = {
    "not-json": (b"{", "DSSE envelope: not valid JSON (Expecting property name enclosed in double quotes:"),
    "not-utf8": (b"\xff", "DSSE envelope: not UTF-8 (invalid start byte at byte 0)"),
    "not-object": (b"[]", "DSSE envelope: expected a JSON object, got list"),
    "duplicate-key": (b'{"payload":"","payload":""}', "DSSE envelope: duplicate JSON key 'payload'"),
    "nan": (b'{"payload":NaN}', "DSSE envelope: NaN is not valid JSON"),
    "missing-payload": (_with(payload=...), "DSSE envelope: missing field 'payload'"),
    "unknown-field": (
        _with(extra=1),
        "DSSE envelope: unknown field 'extra'; expected only payload, payloadType, signatures",
    ),
    "payload-not-string": (_with(payload=5), "DSSE envelope: field 'payload': expected a string, got number"),
    "payload-bad-b64": (_with(payload="aGk*"), f"DSSE envelope: field 'payload': {BAD_B64}"),
    "payload-unpadded": (_with(payload="aGk"), f"DSSE envelope: field 'payload': {BAD_B64}"),
    "payload-urlsafe": (_with(payload="-_8="), f"DSSE envelope: field 'payload': {BAD_B64}"),
    "payload-noncanonical": (_with(payload="aGl="), "DSSE envelope: field 'payload': not canonical standard"),
    "type-null": (_with(payloadType=None), "DSSE envelope: field 'payloadType': expected a string, got null"),
    "signatures-object": (
        _with(signatures={}),
        "DSSE envelope: field 'signatures': expected a list, got object",
    ),
    "signatures-empty": (_with(signatures=[]), "DSSE envelope: no signatures; expected at least one"),
    "signature-string": (
        _with(signatures=["x"]),
        "DSSE envelope: field 'signatures[0]': expected an object, got string",
    ),
    "sig-missing": (_with(signatures=[{"keyid": "k"}]), "DSSE envelope: missing field 'signatures[0].sig'"),
    "sig-unknown-field": (
        _with(signatures=[{"sig": SIG, "cert": ""}]),
        "DSSE envelope: unknown field 'signatures[0].cert'; expected only keyid, sig",
    ),
    "keyid-number": (
        _with(signatures=[{"sig": SIG, "keyid": 1}]),
        "DSSE envelope: field 'signatures[0].keyid': expected a string, got number",
    ),
    "sig-bad-b64": (
        _with(signatures=[{"sig": "!!!!"}]),
        f"DSSE envelope: field 'signatures[0].sig': {BAD_B64}",
    ),
    "sig-empty": (
        _with(signatures=[{"sig": ""}]),
        "DSSE envelope: field 'signatures[0].sig': empty signature",
    ),
    "duplicate-keyid": (
        _with(signatures=[{"sig": SIG, "keyid": "k"}, {"sig": SIG, "keyid": "k"}]),
        "DSSE envelope: more than one signature by key k",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_from_json_bytes_rejects(name: str) -> None:
    data, message = MALFORMED[name]
    with pytest.raises(EnvelopeFormatError, match="^" + re.escape(message)) as info:
        Envelope.from_json_bytes(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_canonical_layout_is_held_to_the_same_rules(name: str) -> None:
    # Envelopes in the exact layout Certus writes are read without the JSON parser (a fast path
    # for large ledgers); what they may contain must be judged exactly as in any other layout.
    data, message = MALFORMED[name]
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        canonical = canonical_bytes(json.loads(data, object_pairs_hook=no_duplicates))
    except (ValueError, CanonicalError):
        pytest.skip("not expressible as canonical JSON")
    with pytest.raises(EnvelopeFormatError, match="^" + re.escape(message)):
        Envelope.from_json_bytes(canonical)


@given(payload_type=st.text(max_size=40), payload=st.binary(max_size=200), n=st.integers(1, 3),
       keyid=st.sampled_from(["", "k", "a b", 'quote"d', "back\\slash", "é"]))
def test_canonical_fast_path_agrees_with_the_json_parser(payload_type: str, payload: bytes, n: int,
                                                        keyid: str) -> None:
    sigs = tuple(Signature(keyid=f"{keyid}{i}", sig=bytes([i + 1]) * 64) for i in range(n))
    env = Envelope(payload_type=payload_type, payload=payload, signatures=sigs)
    data = env.to_json_bytes()
    assert Envelope.from_json_bytes(data) == Envelope.from_dict(json.loads(data)) == env
