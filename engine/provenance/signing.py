"""The signing interface: a two-method :class:`Signer` port and the :class:`PublicKey` value.

Certus signs with Ed25519 (RFC 8032, https://www.rfc-editor.org/rfc/rfc8032) and nothing else.
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
    "ED25519",
    "ROLES",
    "PublicKey",
    "PublicKeyInfo",
    "Signer",
    "b64decode_strict",
    "check_key_name",
    "check_role",
]

ED25519 = "ed25519"

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


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A raw 32-byte Ed25519 public key; its :attr:`keyid` is derived from the bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            size = len(self.raw) if isinstance(self.raw, bytes) else type(self.raw).__name__
            raise SignatureError(f"Ed25519 public key must be 32 bytes, got {size}")

    def __repr__(self) -> str:
        return f"PublicKey(keyid={self.keyid!r})"

    @property
    def keyid(self) -> str:
        """Lowercase hex SHA-256 of the raw public key bytes."""
        return hashlib.sha256(self.raw).hexdigest()

    def to_b64(self) -> str:
        """Standard padded base64 of the raw bytes, as key and trust files store it."""
        return base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_record(cls, b64: Any, keyid: Any) -> PublicKey:
        """The key a key or trust file stores as base64 plus its keyid, which must match.

        Raises ValueError naming the field, for the caller to prefix with the file and entry.
        """
        try:
            pub = cls(b64decode_strict(b64))
        except (ValueError, SignatureError) as e:
            raise ValueError(f"field 'public_key': {e}") from e
        if keyid != pub.keyid:
            raise ValueError(f"field 'keyid': {keyid} does not match the public key's {pub.keyid}")
        return pub

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        """Parse standard padded base64 strictly (no stray characters, canonical padding)."""
        return cls(b64decode_strict(text))

    def verify(self, sig: bytes, payload: bytes) -> None:
        """Check an Ed25519 signature over ``payload``; raise :class:`BadSignatureError` if not."""
        from engine.adapters.ed25519 import verify_ed25519  # lazy: keeps nacl out of the core

        if not verify_ed25519(self.raw, sig, payload):
            raise BadSignatureError(f"key {self.keyid}: signature does not verify")


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign bytes with one Ed25519 key (the port the core signs through)."""

    @property
    def keyid(self) -> str:
        """The keyid of :attr:`public_key`."""
        ...

    @property
    def public_key(self) -> PublicKey:
        """The public half, for verifying what this signer signs."""
        ...

    def sign(self, payload: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature over ``payload`` (already PAE-encoded)."""
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
            "algorithm": ED25519,
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
        if data["algorithm"] != ED25519:
            raise KeyError_(
                f"{source}: field 'algorithm': {data['algorithm']!r} is not supported; expected ed25519"
            )
        try:
            pub = PublicKey.from_record(data["public_key"], data["keyid"])
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
