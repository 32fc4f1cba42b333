"""The signing interface: a two-method :class:`Signer` port and the :class:`PublicKey` value.

Certus signs with Ed25519 (RFC 8032, https://www.rfc-editor.org/rfc/rfc8032). The one exception is
the ``releaser`` key, which signs model bundles in the OpenSSF Model Signing format: OMS's key-based
method uses ECDSA P-256 (FIPS 186-5, SHA-256, DER signatures), so a key may also be of type
``ecdsa-p256`` (:data:`KEY_TYPES`); its :attr:`PublicKey.raw` is the 91-byte DER SubjectPublicKeyInfo
and its keyid is the hex SHA-256 of that key's PEM text, which is the ``publicKey.hint`` OMS bundles
carry (what the ``model-signing`` package writes and checks).
The core never holds private keys: it takes a :class:`Signer` (``keyid``, ``public_key``,
``sign(payload) -> bytes``), the shape of securesystemslib's ``Signer`` (``signer/_signer.py``)
cut down to what DSSE needs. The only implementation that touches key material is
:class:`engine.adapters.keys.Ed25519SigningKey`; tests may pass fakes.

**Key ids.** A keyid is the lowercase hex SHA-256 of the 32 raw Ed25519 public key bytes
(RFC 8032 section 5.1.5 encoding), so it is derived, never chosen, and the same key always has
the same id in key files, the trust file and envelopes. It is *not* TUF's keyid (which hashes
a canonical JSON key object); securesystemslib accepts any string keyid, so interop holds.

**Public key files** (``<name>.pub``, written by the keys adapter and read by ``trust add``)
are pretty JSON: ``{"algorithm": "ed25519", "keyid": hex, "name": str, "public_key": b64,
"role": str}``. :class:`PublicKeyInfo` parses them strictly and checks the keyid.

:meth:`PublicKey.verify` needs an Ed25519 implementation; it imports the PyNaCl adapter lazily,
so importing this module never imports nacl.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.errors import BadSignatureError, KeyError_, SignatureError

__all__ = [
    "ECDSA_P256",
    "ECDSA_ROLES",
    "ED25519",
    "KEY_TYPES",
    "ROLES",
    "PublicKey",
    "PublicKeyInfo",
    "Signer",
    "b64decode_strict",
    "check_key_name",
    "check_role",
]

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256"
KEY_TYPES: tuple[str, ...] = (ED25519, ECDSA_P256)
#: The roles an ECDSA P-256 key may hold: it exists for OMS bundles; everything else signs with Ed25519.
ECDSA_ROLES: tuple[str, ...] = ("releaser",)

# DER SubjectPublicKeyInfo of an uncompressed P-256 point: SEQUENCE { SEQUENCE { id-ecPublicKey,
# prime256v1 }, BIT STRING 0x00 0x04 X Y }; everything before the point is fixed (RFC 5480).
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_SPKI_LEN = len(_P256_SPKI_PREFIX) + 65

#: The roles a trusted key can hold (see :mod:`engine.provenance.trust` and the role matrix in README).
ROLES: tuple[str, ...] = ("admin", "approver", "data-steward", "deployer", "ledger", "releaser", "trainer", "witness")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PUB_FIELDS = frozenset({"algorithm", "keyid", "name", "public_key", "role"})


def check_key_name(name: object) -> str:
    """Return ``name`` if it is a usable key name (it becomes a file name), else raise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeyError_(
            f"key name {name!r} is invalid; expected 1-64 of [A-Za-z0-9._-], not starting with . - _"
        )
    return name


def check_role(role: object) -> str:
    """Return ``role`` if it is one of :data:`ROLES`, else raise."""
    if role not in ROLES:
        raise KeyError_(f"role {role!r} is unknown; expected one of {', '.join(ROLES)}")
    assert isinstance(role, str)
    return role


def spki_pem(der: bytes) -> bytes:
    """The PEM text (``PUBLIC KEY``, 64-column base64, final newline) of a DER SubjectPublicKeyInfo,
    byte for byte what OpenSSL and the ``cryptography`` package write."""
    b64 = base64.b64encode(der)
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN PUBLIC KEY-----\n" + b"\n".join(lines) + b"\n-----END PUBLIC KEY-----\n"


def spki_from_pem(pem: bytes) -> bytes:
    """The DER bytes of one ``PUBLIC KEY`` PEM block; ValueError if there is not exactly one."""
    text = pem.decode("ascii", "replace").strip()
    head, tail = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"
    if not text.startswith(head) or not text.endswith(tail) or text.count(head) != 1:
        raise ValueError("not a PEM public key (one '-----BEGIN PUBLIC KEY-----' block)")
    body = "".join(text[len(head):-len(tail)].split())
    return b64decode_strict(body)


_KEYIDS: dict[tuple[str, bytes], str] = {}


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key: raw 32-byte Ed25519 (the default) or a P-256 DER SubjectPublicKeyInfo;
    its :attr:`keyid` is derived from the bytes."""

    raw: bytes
    algorithm: str = ED25519

    def __post_init__(self) -> None:
        if self.algorithm == ECDSA_P256:
            if (not isinstance(self.raw, bytes) or len(self.raw) != _P256_SPKI_LEN
                    or not self.raw.startswith(_P256_SPKI_PREFIX) or self.raw[len(_P256_SPKI_PREFIX)] != 4):
                raise SignatureError("ECDSA P-256 public key must be a 91-byte DER SubjectPublicKeyInfo "
                                     "of an uncompressed prime256v1 point")
            return
        if self.algorithm != ED25519:
            raise SignatureError(f"key type {self.algorithm!r} is not supported; expected one of "
                                 f"{', '.join(KEY_TYPES)}")
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            size = len(self.raw) if isinstance(self.raw, bytes) else type(self.raw).__name__
            raise SignatureError(f"Ed25519 public key must be 32 bytes, got {size}")

    def __repr__(self) -> str:
        if self.algorithm != ED25519:
            return f"PublicKey(algorithm={self.algorithm!r}, keyid={self.keyid!r})"
        return f"PublicKey(keyid={self.keyid!r})"

    @property
    def keyid(self) -> str:
        """Lowercase hex SHA-256 of the raw Ed25519 key, or of an ECDSA key's PEM text (OMS's hint)."""
        hit = _KEYIDS.get((self.algorithm, self.raw))
        if hit is None:  # verify asks for the same few keys' ids once per signature: hash each once
            data = spki_pem(self.raw) if self.algorithm == ECDSA_P256 else self.raw
            hit = hashlib.sha256(data).hexdigest()
            if len(_KEYIDS) >= 4096:
                _KEYIDS.clear()
            _KEYIDS[(self.algorithm, self.raw)] = hit
        return hit

    def pem(self) -> bytes:
        """The PEM SubjectPublicKeyInfo of an ECDSA key (what OMS tools take as a public key file)."""
        if self.algorithm != ECDSA_P256:
            raise SignatureError(f"key {self.keyid}: only ECDSA keys have a PEM form here")
        return spki_pem(self.raw)

    def to_b64(self) -> str:
        """Standard padded base64 of the raw bytes, as key and trust files store it."""
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_record(cls, b64: Any, keyid: Any, algorithm: str = ED25519) -> PublicKey:
        """The key a key or trust file stores as base64 plus its keyid, which must match.

        Raises ValueError naming the field, for the caller to prefix with the file and entry.
        """
        try:
            pub = cls(b64decode_strict(b64), algorithm)
        except (ValueError, SignatureError) as e:
            raise ValueError(f"field 'public_key': {e}") from e
        if keyid != pub.keyid:
            raise ValueError(f"field 'keyid': {keyid} does not match the public key's {pub.keyid}")
        return pub

    @classmethod
    def from_b64(cls, text: str, algorithm: str = ED25519) -> PublicKey:
        """Parse standard padded base64 strictly (no stray characters, canonical padding)."""
        return cls(b64decode_strict(text), algorithm)

    def verify(self, sig: bytes, payload: bytes) -> None:
        """Check a signature over ``payload``; raise :class:`BadSignatureError` if not."""
        if self.algorithm == ECDSA_P256:
            from engine.adapters.ecdsa import verify_p256  # lazy: keeps cryptography out of the core

            ok = verify_p256(self.raw, sig, payload)
        else:
            from engine.adapters.ed25519 import verify_ed25519  # lazy: keeps nacl out of the core

            ok = verify_ed25519(self.raw, sig, payload)
        if not ok:
            raise BadSignatureError(f"key {self.keyid}: signature does not verify")


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign bytes with one key (the port the core signs through)."""

    @property
    def keyid(self) -> str:
        """The keyid of :attr:`public_key`."""
        ...

    @property
    def public_key(self) -> PublicKey:
        """The public half, for verifying what this signer signs."""
        ...

    def sign(self, payload: bytes) -> bytes:
        """Return the signature over ``payload`` (already PAE-encoded): 64 bytes Ed25519, or DER ECDSA."""
        ...


_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def b64decode_strict(text: str) -> bytes:
    """Decode standard padded base64, rejecting anything that does not re-encode identically.

    The round trip is the whole check: ``b2a_base64`` only ever writes the canonical form, so
    any other character, missing padding or non-zero padding bits makes the two differ.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a base64 string, got {type(text).__name__}")
    try:
        data = text.encode("ascii")
        raw = binascii.a2b_base64(data)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise ValueError("not valid standard padded base64") from e
    if binascii.b2a_base64(raw, newline=False) != data:
        if len(data) % 4 or not _B64_ALPHABET.fullmatch(data):
            raise ValueError("not valid standard padded base64")
        raise ValueError("not canonical standard padded base64")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    """The content of a ``<name>.pub`` file: who a public key belongs to and what it is for."""

    name: str
    role: str
    public_key: PublicKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        check_role(self.role)

    @property
    def keyid(self) -> str:
        """The keyid of :attr:`public_key`."""
        return self.public_key.keyid

    def to_dict(self) -> dict[str, str]:
        """The public key file's JSON object."""
        return {
            "algorithm": self.public_key.algorithm,
            "keyid": self.keyid,
            "name": self.name,
            "public_key": self.public_key.to_b64(),
            "role": self.role,
        }

    def to_json_bytes(self) -> bytes:
        """Pretty, sorted, newline-terminated JSON (human-facing; never hashed)."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "public key") -> PublicKeyInfo:
        """Parse a public key file object strictly; ``source`` names it in errors."""
        if not isinstance(data, Mapping):
            raise KeyError_(f"{source}: expected a JSON object, got {type(data).__name__}")
        keys = set(data)
        if keys != _PUB_FIELDS:
            missing, unknown = sorted(_PUB_FIELDS - keys), sorted(keys - _PUB_FIELDS)
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"unknown {', '.join(unknown)}"] if unknown else []
            expected = ", ".join(sorted(_PUB_FIELDS))
            raise KeyError_(f"{source}: fields: {'; '.join(parts)}; expected {expected}")
        for field in sorted(_PUB_FIELDS):
            if not isinstance(data[field], str):
                raise KeyError_(f"{source}: field '{field}': expected a string")
        if data["algorithm"] not in KEY_TYPES:
            raise KeyError_(
                f"{source}: field 'algorithm': {data['algorithm']!r} is not supported; "
                f"expected one of {', '.join(KEY_TYPES)}"
            )
        try:
            pub = PublicKey.from_record(data["public_key"], data["keyid"], data["algorithm"])
        except ValueError as e:
            raise KeyError_(f"{source}: {e}") from e
        try:
            return cls(name=data["name"], role=data["role"], public_key=pub)
        except KeyError_ as e:
            raise KeyError_(f"{source}: {e}") from e

    @classmethod
    def from_json_bytes(cls, data: bytes, *, source: str = "public key") -> PublicKeyInfo:
        """Parse the bytes of a ``.pub`` file."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise KeyError_(f"{source}: not valid JSON ({e})") from e
        return cls.from_dict(obj, source=source)
