"""The trust file: which public keys may sign what, and when.

``trust.json`` sits at the workspace root and is committed, so every change to it (adding a
key, revoking one) is reviewed and dated by the repository's history. The model follows TUF's
root metadata (https://theupdateframework.github.io/specification/latest/, "root.json": keys
and the roles they may sign for) without thresholds or self-signing: the file is trusted
because it is committed. Keys are Ed25519 (RFC 8032) unless typed (below); keyids are the hex SHA-256 of the raw
public key (:class:`engine.provenance.signing.PublicKey`). Roles are :data:`engine.provenance.signing.ROLES`.

Format (pretty JSON, sorted keys, keys sorted by name, a final newline)::

    {"version": 1,
     "keys": [{"keyid": hex, "name": str, "public_key": b64, "roles": [sorted roles],
               "not_before": "2025-01-01T00:00:00Z",   # optional
               "not_after": "2026-01-01T00:00:00Z",    # optional
               "revoked_at": "2025-06-01T12:00:00Z",   # optional, with revoked_reason
               "revoked_reason": "laptop lost",
               "type": "ecdsa-p256"}]}                 # optional; absent means Ed25519

An Ed25519 entry has no ``type`` field (entries written before key types existed stay
byte-identical); an ``ecdsa-p256`` entry (a ``releaser`` key for OMS model bundles,
:data:`engine.provenance.signing.ECDSA_ROLES`) stores its DER SubjectPublicKeyInfo in ``public_key``
and the SHA-256 of its PEM text as ``keyid``.

Times are ISO 8601 in UTC with a ``Z`` suffix. The window is inclusive: a key is usable for
signatures made at ``not_before <= t <= not_after``.

**Revocation is not retroactive.** A key revoked at ``T`` still vouches for signatures made
before ``T``; a signature made at or after ``T`` is rejected. Revocations cannot be moved or
undone through this API (moving one later would re-validate signatures). Where the signature
time comes from (a signed timestamp, the ledger) is the caller's business: :meth:`TrustStore.check`
takes it as an argument. Everything here is pure: it parses and renders text, never files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from engine.errors import (
    KeyError_,
    KeyNotValidError,
    KeyRevokedError,
    KeyRoleError,
    SignatureError,
    TrustFileError,
    UnknownKeyError,
)
from engine.provenance.dsse import _no_duplicate_keys
from engine.provenance.signing import ECDSA_P256, ECDSA_ROLES, ED25519, ROLES, PublicKey, PublicKeyInfo, check_key_name

__all__ = ["FORMAT_VERSION", "ROLES", "TRUST_FILE", "Revocation", "TrustEntry", "TrustStore"]

TRUST_FILE = "trust.json"
FORMAT_VERSION = 1

_TOP_FIELDS = frozenset({"keys", "version"})
_REQUIRED = frozenset({"keyid", "name", "public_key", "roles"})
_OPTIONAL = frozenset({"not_before", "not_after", "revoked_at", "revoked_reason", "type"})
_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z$")


@dataclass(frozen=True, slots=True)
class Revocation:
    """When a key stopped being trusted, and why."""

    at: datetime
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _utc(self.at, "revocation time"))
        if not isinstance(self.reason, str) or not self.reason.strip() or "\n" in self.reason:
            raise TrustFileError("revocation reason must be one non-empty line")


@dataclass(frozen=True, slots=True)
class TrustEntry:
    """One trusted key: its name, public key, roles, validity window and revocation."""

    name: str
    public_key: PublicKey
    roles: tuple[str, ...]
    not_before: datetime | None = None
    not_after: datetime | None = None
    revoked: Revocation | None = None

    def __post_init__(self) -> None:
        try:
            check_key_name(self.name)
        except KeyError_ as e:
            raise TrustFileError(str(e)) from e
        if not isinstance(self.public_key, PublicKey):
            raise TrustFileError(f"key '{self.name}': public_key must be a PublicKey")
        roles = (self.roles,) if isinstance(self.roles, str) else tuple(self.roles)
        unknown = sorted({r for r in roles if r not in ROLES}, key=str)
        if unknown:
            raise TrustFileError(
                f"key '{self.name}': unknown role {', '.join(map(repr, unknown))}; "
                f"expected one of {', '.join(ROLES)}"
            )
        if not roles:
            raise TrustFileError(f"key '{self.name}': no roles; expected at least one of {', '.join(ROLES)}")
        object.__setattr__(self, "roles", tuple(sorted(set(roles))))
        if self.public_key.algorithm != ED25519:
            extra = sorted(set(self.roles) - set(ECDSA_ROLES))
            if extra:
                raise TrustFileError(
                    f"key '{self.name}': an {self.public_key.algorithm} key may hold only "
                    f"{', '.join(ECDSA_ROLES)}, not {', '.join(extra)}"
                )
        for field in ("not_before", "not_after"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, _utc(value, f"key '{self.name}': {field}"))
        if self.not_before and self.not_after and self.not_before > self.not_after:
            raise TrustFileError(
                f"key '{self.name}': not_before {_fmt(self.not_before)} "
                f"is after not_after {_fmt(self.not_after)}"
            )
        if self.revoked is not None and not isinstance(self.revoked, Revocation):
            raise TrustFileError(f"key '{self.name}': revoked must be a Revocation")

    @property
    def keyid(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return self.public_key.keyid

    @property
    def label(self) -> str:
        """How messages name this key: its name and the start of its keyid."""
        return f"key '{self.name}' ({self.keyid[:16]})"

    def to_dict(self) -> dict[str, Any]:
        """The entry's JSON object; absent optional fields are omitted."""
        out: dict[str, Any] = {
            "keyid": self.keyid,
            "name": self.name,
            "public_key": self.public_key.to_b64(),
            "roles": list(self.roles),
        }
        if self.public_key.algorithm != ED25519:
            out["type"] = self.public_key.algorithm
        if self.not_before is not None:
            out["not_before"] = _fmt(self.not_before)
        if self.not_after is not None:
            out["not_after"] = _fmt(self.not_after)
        if self.revoked is not None:
            out["revoked_at"] = _fmt(self.revoked.at)
            out["revoked_reason"] = self.revoked.reason
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "key") -> TrustEntry:
        """Parse one entry strictly; ``where`` locates it in error messages."""
        if not isinstance(data, dict):
            raise TrustFileError(f"{where}: expected an object")
        missing = sorted(_REQUIRED - data.keys())
        unknown = sorted(data.keys() - _REQUIRED - _OPTIONAL)
        if missing or unknown:
            parts = [f"missing field {', '.join(map(repr, missing))}"] if missing else []
            parts += [f"unknown field {', '.join(map(repr, unknown))}"] if unknown else []
            raise TrustFileError(f"{where}: {'; '.join(parts)}")
        for field in sorted((_REQUIRED | _OPTIONAL) - {"roles"}):
            if field in data and not isinstance(data[field], str):
                raise TrustFileError(f"{where}: field '{field}': expected a string")
        roles = data["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TrustFileError(f"{where}: field 'roles': expected a list of strings")
        key_type = data.get("type", ED25519)
        if "type" in data and key_type != ECDSA_P256:
            raise TrustFileError(f"{where}: field 'type': {key_type!r}; expected {ECDSA_P256} "
                                 "(omit it for Ed25519)")
        try:
            public_key = PublicKey.from_record(data["public_key"], data["keyid"], key_type)
        except ValueError as e:
            raise TrustFileError(f"{where}: {e}") from e
        if ("revoked_at" in data) != ("revoked_reason" in data):
            raise TrustFileError(f"{where}: revoked_at and revoked_reason go together")
        times = {f: _parse_time(data[f], f"{where}: field '{f}'") for f in _OPTIONAL - {"revoked_reason", "type"}
                 if f in data}
        try:
            revoked = (
                Revocation(at=times["revoked_at"], reason=data["revoked_reason"])
                if "revoked_at" in times else None
            )
            return cls(
                name=data["name"],
                public_key=public_key,
                roles=tuple(roles),
                not_before=times.get("not_before"),
                not_after=times.get("not_after"),
                revoked=revoked,
            )
        except TrustFileError as e:
            raise TrustFileError(f"{where}: {e}") from e


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The parsed trust file: trusted keys sorted by name, names and keyids unique."""

    entries: tuple[TrustEntry, ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(e, TrustEntry) for e in self.entries):
            raise TrustFileError("trust store entries must be TrustEntry values")
        entries = tuple(sorted(self.entries, key=lambda e: (e.name, e.keyid)))
        for attr in ("name", "keyid"):
            seen: dict[str, TrustEntry] = {}
            for e in entries:
                value = getattr(e, attr)
                if value in seen:
                    raise TrustFileError(
                        f"{e.label}: {attr} {value} is already used by {seen[value].label}"
                    )
                seen[value] = e
        object.__setattr__(self, "entries", entries)

    # --- parsing and rendering ------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = TRUST_FILE) -> TrustStore:
        """Parse trust file text strictly; ``source`` names the file in errors."""
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError) as e:
            raise TrustFileError(f"{source}: not valid JSON ({e})") from e
        if not isinstance(obj, dict) or obj.keys() != _TOP_FIELDS:
            raise TrustFileError(f"{source}: expected an object with exactly the fields keys, version")
        if obj["version"] != FORMAT_VERSION or isinstance(obj["version"], bool):
            raise TrustFileError(f"{source}: field 'version': {obj['version']!r}; expected {FORMAT_VERSION}")
        if not isinstance(obj["keys"], list):
            raise TrustFileError(f"{source}: field 'keys': expected a list")
        entries = []
        for i, item in enumerate(obj["keys"]):
            name = item.get("name") if isinstance(item, dict) else None
            where = f"{source}: keys[{i}]" + (f" ('{name}')" if isinstance(name, str) else "")
            entries.append(TrustEntry.from_dict(item, where=where))
        try:
            return cls(entries=tuple(entries))
        except TrustFileError as e:
            raise TrustFileError(f"{source}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The trust file's JSON object."""
        return {"keys": [e.to_dict() for e in self.entries], "version": FORMAT_VERSION}

    def to_json(self) -> str:
        """Pretty, sorted, newline-terminated JSON: the same store always renders the same text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    # --- queries --------------------------------------------------------------------------

    def get(self, keyid_or_name: str) -> TrustEntry:
        """The entry with this keyid or name; :class:`UnknownKeyError` if none."""
        for e in self.entries:
            if keyid_or_name in (e.keyid, e.name):
                return e
        raise UnknownKeyError(f"unknown key {keyid_or_name}: not in the trust file")

    def public_keys(self) -> dict[str, PublicKey]:
        """Every trusted key by keyid (revoked ones included: :meth:`check` decides per signature)."""
        return {e.keyid: e.public_key for e in self.entries}

    def check(self, keyid: str, role: str, at: datetime) -> PublicKey:
        """The public key to verify a signature by ``keyid`` for ``role`` made at time ``at``.

        Raises :class:`UnknownKeyError`, :class:`KeyRevokedError` (signature at or after the
        revocation), :class:`KeyRoleError` or :class:`KeyNotValidError` (outside the window).
        """
        at = _utc(at, "signature time")
        entry = next((e for e in self.entries if e.keyid == keyid), None)
        if entry is None:
            raise UnknownKeyError(f"unknown key {keyid}: not in the trust file")
        if entry.revoked is not None and at >= entry.revoked.at:
            raise KeyRevokedError(
                f"{entry.label}: revoked at {_fmt(entry.revoked.at)} ({entry.revoked.reason}); "
                f"signature made at {_fmt(at)} is not before the revocation"
            )
        if role not in entry.roles:
            raise KeyRoleError(f"{entry.label}: lacks role '{role}' (has {', '.join(entry.roles)})")
        if entry.not_before is not None and at < entry.not_before:
            raise KeyNotValidError(
                f"{entry.label}: signature made at {_fmt(at)} is before not_before {_fmt(entry.not_before)}"
            )
        if entry.not_after is not None and at > entry.not_after:
            raise KeyNotValidError(
                f"{entry.label}: signature made at {_fmt(at)} is after not_after {_fmt(entry.not_after)}"
            )
        return entry.public_key

    # --- changes (each returns a new store) ------------------------------------------------

    def add_key(
        self,
        pub: PublicKeyInfo | Mapping[str, Any],
        roles: Iterable[str] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> TrustStore:
        """A store that also trusts ``pub`` (a ``.pub`` file's object) for ``roles``.

        ``roles`` defaults to the role recorded in the public key file.
        """
        if not isinstance(pub, PublicKeyInfo):
            try:
                pub = PublicKeyInfo.from_dict(pub)
            except KeyError_ as e:
                raise TrustFileError(str(e)) from e
        entry = TrustEntry(
            name=pub.name,
            public_key=pub.public_key,
            roles=tuple(roles) if roles is not None else (pub.role,),
            not_before=not_before,
            not_after=not_after,
        )
        return TrustStore(entries=(*self.entries, entry))

    def revoke(self, keyid_or_name: str, at: datetime, reason: str) -> TrustStore:
        """A store in which the key is revoked from ``at`` on; earlier signatures stay valid."""
        entry = self.get(keyid_or_name)
        if entry.revoked is not None:
            raise TrustFileError(
                f"{entry.label}: already revoked at {_fmt(entry.revoked.at)}; a revocation cannot be moved"
            )
        revoked = replace(entry, revoked=Revocation(at=at, reason=reason))
        return TrustStore(entries=tuple(revoked if e is entry else e for e in self.entries))


# --- helpers -------------------------------------------------------------------------------


def _utc(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise SignatureError(f"{what}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SignatureError(f"{what}: {value.isoformat()} has no time zone; expected an aware datetime")
    return value.astimezone(UTC)


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str, where: str) -> datetime:
    if not text.endswith("Z"):
        raise TrustFileError(f"{where}: {text!r} is not UTC; expected ISO 8601 ending in Z")
    match = _TIME.match(text)
    try:
        if match is None:
            raise ValueError(text)
        whole, fraction = match.groups()
        value = datetime.fromisoformat(f"{whole}.{(fraction or '').ljust(6, '0')}+00:00")
    except ValueError as e:
        raise TrustFileError(
            f"{where}: {text!r} is not an ISO 8601 time; expected YYYY-MM-DDTHH:MM:SS[.ffffff]Z"
        ) from e
    return value


