"""C2SP tlog cosignatures (v1, Ed25519): another party's timestamped signature on a checkpoint.

Spec: c2sp.org/tlog-cosignature (https://github.com/C2SP/C2SP/blob/main/tlog-cosignature.md),
signature type 0x04 of c2sp.org/signed-note. A cosignature is an ordinary signed-note signature
line, ``— <cosigner name> base64(key ID || timestamped signature)``, where

* the key ID is ``SHA-256(name || 0x0A || 0x04 || 32-byte Ed25519 public key)[:4]`` (so it never
  collides with the same key's plain 0x01 note key ID),
* the timestamped signature is the 8-byte big-endian POSIX time (at most 2^63 - 1) followed by
  the 64-byte Ed25519 signature, and
* the signed message is ``cosignature/v1\\ntime <decimal seconds>\\n`` followed by the whole
  checkpoint body (extension lines included, signature lines not).

It states that, as of that time, this is the largest consistent tree head the cosigner has seen
for the log named by the origin line. Verification follows the note rules: cosignatures by
unknown (name, key ID) pairs are ignored; a known cosigner's line that is malformed or does not
verify rejects the note. Everything here is pure; Ed25519 comes in through the signer and the
verify function, as in :mod:`engine.provenance.note`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.provenance.note import (
    Checkpoint,
    Note,
    NoteError,
    NoteSignature,
    NoteSigner,
    UnverifiedNoteError,
    VerifyFn,
    _check_name,
    _nacl_verify,
    key_id,
    parse_vkey,
)

__all__ = [
    "COSIGNATURE_V1",
    "Cosignature",
    "Cosigner",
    "cosign",
    "cosignature_key_id",
    "cosignature_timestamp",
    "signed_message",
    "verify_cosignatures",
]

COSIGNATURE_V1 = 0x04
"""The signed-note signature type byte of an Ed25519 tlog cosignature/v1."""

_HEADER = b"cosignature/v1\n"
_MAX_TIME = 2**63 - 1
_SIG_BYTES = 8 + 64


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID of a v1 cosigner: ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``."""
    return key_id(name, public_key, COSIGNATURE_V1)


def _check_time(timestamp: int) -> int:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= _MAX_TIME:
        raise NoteError(f"cosignature: timestamp {timestamp!r} must be an integer in 0..2^63-1")
    return timestamp


def signed_message(body: str, timestamp: int) -> bytes:
    """What a v1 cosigner signs: ``cosignature/v1\\ntime <timestamp>\\n`` and the checkpoint body."""
    return _HEADER + b"time %d\n" % _check_time(timestamp) + body.encode("utf-8")


def cosignature_timestamp(sig: NoteSignature) -> int:
    """The timestamp a cosignature line carries (no verification): its first 8 bytes, big-endian."""
    if len(sig.signature) != _SIG_BYTES:
        raise NoteError(
            f"cosignature by '{sig.name}+{sig.key_id.hex()}': {len(sig.signature)} bytes after the key ID; "
            f"a v1 cosignature has {_SIG_BYTES} (8-byte time, 64-byte Ed25519 signature)"
        )
    timestamp = int.from_bytes(sig.signature[:8], "big")
    if timestamp > _MAX_TIME:
        raise NoteError(f"cosignature by '{sig.name}+{sig.key_id.hex()}': timestamp {timestamp} exceeds 2^63-1")
    return timestamp


@dataclass(frozen=True, slots=True)
class Cosigner:
    """A trusted v1 cosigner (a witness): its name and 32-byte Ed25519 public key."""

    name: str
    public_key: bytes
    verify_fn: VerifyFn = field(default=_nacl_verify, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "cosigner name")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise NoteError(f"cosigner '{self.name}': an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID its cosignature lines carry."""
        return cosignature_key_id(self.name, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str, *, verify_fn: VerifyFn = _nacl_verify) -> Cosigner:
        """Parse a cosigner vkey, ``<name>+<hex8 key ID>+<base64(0x04 || public key)>``."""
        name, sig_type, key = parse_vkey(vkey)
        if sig_type != COSIGNATURE_V1 or len(key) != 32:
            raise NoteError(f"verifier key {vkey!r}: expected 0x04 followed by a 32-byte Ed25519 key")
        return cls(name=name, public_key=key, verify_fn=verify_fn)

    def to_vkey(self) -> str:
        """The vkey string, as :meth:`from_vkey` reads it."""
        raw = base64.b64encode(bytes([COSIGNATURE_V1]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{raw}"


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: who made it (name, key ID) and when (POSIX seconds)."""

    name: str
    key_id: bytes
    timestamp: int

    @property
    def time(self) -> dt.datetime:
        """The timestamp as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.timestamp, dt.UTC)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: name, hex key ID, POSIX time and its RFC 3339 form."""
        return {"name": self.name, "key_id": self.key_id.hex(), "timestamp": self.timestamp,
                "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ")}


def cosign(note: Note | str, signer: NoteSigner, timestamp: int) -> Note:
    """``note`` with a v1 cosignature by ``signer`` made at ``timestamp`` appended.

    The note's body must be a checkpoint (that is all a v1 cosignature may cover). Its existing
    signatures are kept, except an earlier cosignature by the same key, which the new one replaces
    (as golang.org/x/mod/sumdb/note does when a signer signs a note again).
    """
    if isinstance(note, str):
        note = Note.from_text(note)
    Checkpoint.from_body(note.text)
    name = _check_name(signer.name, "cosigner name")
    kid = cosignature_key_id(name, signer.public_key)
    sig = signer.sign(signed_message(note.text, timestamp))
    if len(sig) != 64:
        raise NoteError(f"cosigner '{name}': signer returned {len(sig)} bytes; an Ed25519 signature is 64")
    kept = tuple(s for s in note.signatures if (s.name, s.key_id) != (name, kid))
    line = NoteSignature(name=name, key_id=kid, signature=timestamp.to_bytes(8, "big") + sig)
    return Note(text=note.text, signatures=(*kept, line))


def verify_cosignatures(
    note: Note | str, cosigners: Iterable[Cosigner], *, not_after: int | None = None
) -> tuple[Cosignature, ...]:
    """The cosignatures on ``note`` made by ``cosigners``, verified, oldest first.

    Lines by other keys are ignored (they may be the log's own signature or other witnesses').
    A line by a known cosigner that is malformed, does not verify, or (with ``not_after``) is
    timestamped after it rejects the whole note with :class:`UnverifiedNoteError`. An empty
    result is not an error: how many cosignatures suffice is the caller's policy.
    """
    if isinstance(note, str):
        note = Note.from_text(note)
    known = {(c.name, c.key_id): c for c in cosigners}
    found: dict[tuple[str, bytes], Cosignature] = {}
    for sig in note.signatures:
        c = known.get((sig.name, sig.key_id))
        if c is None:
            continue
        who = f"'{sig.name}+{sig.key_id.hex()}'"
        try:
            timestamp = cosignature_timestamp(sig)
        except NoteError as e:
            raise UnverifiedNoteError(f"note: {e}") from e
        if not c.verify_fn(c.public_key, sig.signature[8:], signed_message(note.text, timestamp)):
            raise UnverifiedNoteError(f"note: cosignature by {who} (time {timestamp}) does not verify")
        if not_after is not None and timestamp > not_after:
            raise UnverifiedNoteError(f"note: cosignature by {who} is timestamped {timestamp}, in the future")
        seen = found.get((sig.name, sig.key_id))
        if seen is None or timestamp > seen.timestamp:  # the same cosigner twice counts once, latest
            found[(sig.name, sig.key_id)] = Cosignature(sig.name, sig.key_id, timestamp)
    return tuple(sorted(found.values(), key=lambda s: (s.timestamp, s.name)))
