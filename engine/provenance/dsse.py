"""DSSE v1 envelopes: sign a pre-authentication encoding of (type, payload), never raw JSON.

Implements the Dead Simple Signing Envelope, https://github.com/secure-systems-lab/dsse
(``protocol.md`` and ``envelope.md``, v1.0.0)::

    PAE(type, body) = "DSSEv1" + SP + LEN(type) + SP + type + SP + LEN(body) + SP + body

where ``LEN`` is the ASCII decimal byte length with no leading zeros and ``type`` is UTF-8.
Signers sign ``PAE(payloadType, payload)``; the JSON envelope only carries the pieces, so its
layout never affects what is signed. Certus still writes envelopes deterministically: standard
padded base64 and RFC 8785 canonical JSON (:func:`engine.core.canonical.canonical_bytes`), so the
same payload signed by the same Ed25519 keys gives byte-identical files.

Parsing is strict: exactly the fields ``payload``, ``payloadType`` and ``signatures`` (each
signature ``sig`` plus the optional ``keyid`` hint), strings where strings belong, canonical
standard base64, no duplicate JSON keys, at least one signature. An absent keyid is held as
``""`` and written back absent. Everything here is pure: signing goes through the
:class:`engine.provenance.signing.Signer` port and verification through :class:`engine.provenance.signing.PublicKey`.

Verification (:func:`verify_envelope`) is deliberately stricter than DSSE's threshold model:
the payloadType must be the expected one, and *every* signature must name a given key and
verify under it (a signature without a keyid must verify under one of the given keys).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import (
    BadSignatureError,
    EnvelopeFormatError,
    PayloadTypeError,
    SignatureError,
    UnknownKeyError,
)
from engine.provenance.signing import PublicKey, Signer, b64decode_strict

__all__ = ["Envelope", "Signature", "pae", "sign_envelope", "verify_envelope"]

_WHERE = "DSSE envelope"
_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})
_JSON_TYPES: dict[type, str] = {
    dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
    type(None): "null",
}


# The canonical layout Certus writes, strings needing no JSON escapes: bytes that match are
# exactly what json.loads + from_dict would accept, so they are read without the JSON parser.
_STR = rb'"([\x20\x21\x23-\x5b\x5d-\x7e]*)"'
_SIG = rb'\{"keyid":' + _STR + rb',"sig":' + _STR + rb'\}'
_CANONICAL = re.compile(rb'\{"payload":' + _STR + rb',"payloadType":' + _STR
                        + rb',"signatures":\[(' + _SIG + rb'(?:,' + _SIG + rb')*)\]\}')
_CANONICAL_SIG = re.compile(_SIG)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload_type`` (UTF-8) and ``payload``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Signature:
    """One DSSE signature: raw signature bytes and the keyid hint (``""`` when absent)."""

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str):
            raise EnvelopeFormatError(f"{_WHERE}: signature keyid must be a string")
        if not isinstance(self.sig, bytes) or not self.sig:
            raise EnvelopeFormatError(f"{_WHERE}: signature sig must be non-empty bytes")

    def to_dict(self) -> dict[str, str]:
        """The envelope JSON form; an empty keyid is omitted, as DSSE makes it optional."""
        out = {"sig": base64.b64encode(self.sig).decode("ascii")}
        if self.keyid:
            out["keyid"] = self.keyid
        return out


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope: the payload, its type, and at least one signature over their PAE."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload_type, str):
            raise EnvelopeFormatError(f"{_WHERE}: payload_type must be a string")
        if not isinstance(self.payload, bytes):
            raise EnvelopeFormatError(f"{_WHERE}: payload must be bytes")
        if not isinstance(self.signatures, tuple) or not all(
            isinstance(s, Signature) for s in self.signatures
        ):
            raise EnvelopeFormatError(f"{_WHERE}: signatures must be a tuple of Signature")
        if not self.signatures:
            raise EnvelopeFormatError(f"{_WHERE}: no signatures; expected at least one")
        keyids = [s.keyid for s in self.signatures if s.keyid]
        dups = sorted({k for k in keyids if keyids.count(k) > 1})
        if dups:
            raise EnvelopeFormatError(f"{_WHERE}: more than one signature by key {', '.join(dups)}")

    def pae(self) -> bytes:
        """The bytes every signature in this envelope signs."""
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        """The standard DSSE JSON envelope as a dict (base64 fields, signatures in order)."""
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_json_bytes(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_dict`: deterministic bytes for files."""
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        """Parse the standard JSON envelope (as a dict) strictly."""
        if not isinstance(data, dict):
            raise EnvelopeFormatError(f"{_WHERE}: expected a JSON object, got {_json_type(data)}")
        _check_fields(data, _ENVELOPE_FIELDS, required=_ENVELOPE_FIELDS, where="")
        payload = _b64_field(data, "payload", "payload")
        payload_type = data["payloadType"]
        if not isinstance(payload_type, str):
            raise EnvelopeFormatError(
                f"{_WHERE}: field 'payloadType': expected a string, got {_json_type(payload_type)}"
            )
        raw_sigs = data["signatures"]
        if not isinstance(raw_sigs, list):
            raise EnvelopeFormatError(
                f"{_WHERE}: field 'signatures': expected a list, got {_json_type(raw_sigs)}"
            )
        sigs = []
        for i, item in enumerate(raw_sigs):
            where = f"signatures[{i}]"
            if not isinstance(item, dict):
                raise EnvelopeFormatError(
                    f"{_WHERE}: field '{where}': expected an object, got {_json_type(item)}"
                )
            _check_fields(item, _SIGNATURE_FIELDS, required=frozenset({"sig"}), where=where + ".")
            keyid = item.get("keyid", "")
            if not isinstance(keyid, str):
                raise EnvelopeFormatError(
                    f"{_WHERE}: field '{where}.keyid': expected a string, got {_json_type(keyid)}"
                )
            sig = _b64_field(item, "sig", f"{where}.sig")
            if not sig:
                raise EnvelopeFormatError(f"{_WHERE}: field '{where}.sig': empty signature")
            sigs.append(Signature(keyid=keyid, sig=sig))
        return cls(payload_type=payload_type, payload=payload, signatures=tuple(sigs))

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Envelope:
        """Parse envelope JSON bytes strictly (any valid JSON layout, not only canonical)."""
        if not isinstance(data, (bytes, bytearray)):
            raise EnvelopeFormatError(f"{_WHERE}: expected bytes, got {type(data).__name__}")
        fast = _CANONICAL.fullmatch(data)
        if fast is not None:
            return cls._from_canonical_match(fast)
        try:
            obj = json.loads(
                bytes(data).decode("utf-8"),
                object_pairs_hook=_no_duplicate_keys,
                parse_constant=_reject_constant,
            )
        except UnicodeDecodeError as e:
            raise EnvelopeFormatError(f"{_WHERE}: not UTF-8 ({e.reason} at byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise EnvelopeFormatError(f"{_WHERE}: not valid JSON ({e})") from e
        except ValueError as e:
            raise EnvelopeFormatError(f"{_WHERE}: {e}") from e
        return cls.from_dict(obj)

    @classmethod
    def _from_canonical_match(cls, m: re.Match[bytes]) -> Envelope:
        payload, payload_type, sigs = m.group(1), m.group(2), m.group(3)
        pairs = [(k.decode("ascii"), v.decode("ascii")) for k, v in _CANONICAL_SIG.findall(sigs)]
        try:  # the regex fixed the layout; only the base64 fields are left to check
            sig_list = tuple(Signature(keyid=k, sig=b64decode_strict(v)) for k, v in pairs)
            if all(s.sig for s in sig_list):
                return cls(payload_type=payload_type.decode("ascii"), payload=b64decode_strict(payload.decode("ascii")),
                           signatures=sig_list)
        except ValueError:
            pass
        return cls.from_dict({  # let the strict parser name what is wrong
            "payload": payload.decode("ascii"),
            "payloadType": payload_type.decode("ascii"),
            "signatures": [{"keyid": k, "sig": v} for k, v in pairs],
        })


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[Signer]) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` with each signer; signatures are sorted by keyid."""
    ordered = sorted(signers, key=lambda s: s.keyid)
    if not ordered:
        raise SignatureError(f"{_WHERE}: no signers given; expected at least one")
    message = pae(payload_type, payload)
    sigs = tuple(Signature(keyid=s.keyid, sig=s.sign(message)) for s in ordered)
    return Envelope(payload_type=payload_type, payload=payload, signatures=sigs)


def verify_envelope(
    envelope: Envelope, keys: Mapping[str, PublicKey], expected_payload_type: str
) -> list[str]:
    """Verify every signature of ``envelope`` under ``keys`` (keyid -> key); return the keyids.

    Raises :class:`PayloadTypeError` for an unexpected payloadType, :class:`UnknownKeyError`
    for a keyid not in ``keys`` and :class:`BadSignatureError` for a signature that does not
    verify; when several signatures fail, one error lists them all (sorted) and is of the
    shared subclass, or plain :class:`SignatureError` when the reasons differ.
    """
    for kid, pk in keys.items():
        if pk.keyid != kid:
            raise SignatureError(f"verification keys: {kid} maps to the key of {pk.keyid}")
    if envelope.payload_type != expected_payload_type:
        raise PayloadTypeError(
            f"{_WHERE}: payloadType {envelope.payload_type!r} is not the expected "
            f"{expected_payload_type!r}"
        )
    message = envelope.pae()
    verified: set[str] = set()
    problems: list[tuple[str, type[SignatureError]]] = []
    for i, s in enumerate(envelope.signatures):
        if s.keyid:
            key = keys.get(s.keyid)
            if key is None:
                problems.append((f"key {s.keyid}: unknown keyid", UnknownKeyError))
            elif _verifies(key, s.sig, message):
                verified.add(s.keyid)
            else:
                problems.append((f"key {s.keyid}: signature does not verify", BadSignatureError))
            continue
        match = next((k for k, pk in sorted(keys.items()) if _verifies(pk, s.sig, message)), None)
        if match is None:
            reason = f"signature {i} (no keyid): verifies under none of the {len(keys)} given keys"
            problems.append((reason, BadSignatureError))
        else:
            verified.add(match)
    if problems:
        problems.sort(key=lambda p: p[0])
        kinds = {kind for _, kind in problems}
        kind = kinds.pop() if len(kinds) == 1 else SignatureError
        raise kind(f"{_WHERE}: {'; '.join(msg for msg, _ in problems)}")
    return sorted(verified)


def _verifies(key: PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        key.verify(sig, message)
    except SignatureError:
        return False
    return True


def _check_fields(
    data: dict[str, Any], allowed: frozenset[str], *, required: frozenset[str], where: str
) -> None:
    missing = sorted(required - data.keys())
    if missing:
        names = ", ".join(f"'{where}{m}'" for m in missing)
        raise EnvelopeFormatError(f"{_WHERE}: missing field {names}")
    unknown = sorted(data.keys() - allowed)
    if unknown:
        names = ", ".join(f"'{where}{u}'" for u in unknown)
        raise EnvelopeFormatError(
            f"{_WHERE}: unknown field {names}; expected only {', '.join(sorted(allowed))}"
        )


def _b64_field(data: dict[str, Any], key: str, where: str) -> bytes:
    value = data[key]
    if not isinstance(value, str):
        raise EnvelopeFormatError(f"{_WHERE}: field '{where}': expected a string, got {_json_type(value)}")
    try:
        return b64decode_strict(value)
    except ValueError as e:
        raise EnvelopeFormatError(f"{_WHERE}: field '{where}': {e}") from e


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
