"""C2SP signed notes and tlog checkpoints: the text format of the ledger's signed tree heads.

Specs: c2sp.org/signed-note (https://github.com/C2SP/C2SP/blob/main/signed-note.md) and
c2sp.org/tlog-checkpoint (https://github.com/C2SP/C2SP/blob/main/tlog-checkpoint.md); the
reference implementation is golang.org/x/mod/sumdb/note, whose test vectors this module
reproduces byte for byte.

A signed note is ``text`` (UTF-8, no control characters but newline, ending in a newline), a
blank line, then one line per signature: ``— <key name> <base64(key ID || signature)>``. The
signature covers ``text`` exactly. For Ed25519 (signature type 0x01) the key ID is the first
four bytes of ``SHA-256(key name || 0x0A || 0x01 || public key)``, and a verifier key is written
``<name>+<hex8 key ID>+<base64(0x01 || public key)>``.

Opening a note follows the spec's rules: signatures from unknown keys (name *and* key ID not both
known) are ignored; a known key's signature that fails rejects the whole note; a note with no
verified signature is rejected. Parsing, signing and checking are pure; the Ed25519 primitive
comes in through :class:`NoteSigner` (signing) and :attr:`Verifier.verify_fn` (verification),
whose default imports PyNaCl lazily so importing this module never imports nacl.

A :class:`Checkpoint` is the note text of a tlog checkpoint: origin, decimal tree size (no
leading zeros), base64 RFC 6962 root hash, then optional non-empty extension lines, which are
kept verbatim in :attr:`Checkpoint.extensions` (never dropped).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from engine.errors import LedgerError, SignatureError

__all__ = [
    "ED25519",
    "Checkpoint",
    "CheckpointError",
    "Note",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "UnverifiedNoteError",
    "Verifier",
    "VerifyFn",
    "key_id",
    "parse_vkey",
]

ED25519 = 0x01
"""The C2SP signature type byte for Ed25519."""

_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_SIGNATURES = 100  # golang.org/x/mod/sumdb/note's bound; C2SP requires at least 16
_SIZE = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every ASCII control character but newline


class NoteError(SignatureError):
    """A signed note or a verifier key is malformed."""


class UnverifiedNoteError(SignatureError):
    """No trusted key verified the note, or a trusted key's signature on it is bad."""


class CheckpointError(LedgerError):
    """A note's text is not a well-formed tlog checkpoint."""


VerifyFn = Callable[[bytes, bytes, bytes], bool]
"""``verify(public_key, signature, message) -> bool``: one Ed25519 check."""


def _nacl_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Default :data:`VerifyFn`: the PyNaCl adapter, imported here so the core stays importable without it."""
    from engine.adapters.ed25519 import verify_ed25519

    return verify_ed25519(public_key, signature, message)


class NoteSigner(Protocol):
    """What signs a note: a key name, its raw 32-byte Ed25519 public key, and a sign function."""

    @property
    def name(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, msg: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``msg``."""
        ...


def _check_name(name: str, what: str = "key name") -> str:
    if not isinstance(name, str) or not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"{what} {name!r} is invalid; expected non-empty, no spaces, no '+'")
    return name


def key_id(name: str, public_key: bytes, sig_type: int = ED25519) -> bytes:
    """The 4-byte key ID: ``SHA-256(name || 0x0A || sig_type || public_key)[:4]``."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _b64decode(text: str) -> bytes:
    """Standard padded base64, strictly: it must re-encode to the same text."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as e:
        raise ValueError("not standard base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical standard base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _split_vkey(vkey: str) -> tuple[str, str, bytes]:
    """``<name>+<hex8 key ID>+<base64 key>`` split, the ID's form and the base64 checked (the rest is the caller's)."""
    name, _, rest = vkey.partition("+")
    hash_hex, _, key_b64 = rest.partition("+")
    if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
        raise NoteError(f"verifier key {vkey!r}: key ID must be 8 lowercase hex digits")
    try:
        return name, hash_hex, _b64decode(key_b64)
    except ValueError as e:
        raise NoteError(f"verifier key {vkey!r}: key: {e}") from e


def parse_vkey(vkey: str) -> tuple[str, int, bytes]:
    """Split any ``<name>+<hex8 key ID>+<base64(type || key)>`` into (name, type, key), checking the ID.

    Generic over the signature type byte, so other key kinds (tlog cosigners, type 0x04) reuse it.
    """
    name, hash_hex, key = _split_vkey(vkey)
    _check_name(name, f"verifier key {vkey!r}: name")
    if len(key) < 2:
        raise NoteError(f"verifier key {vkey!r}: expected a type byte followed by a key")
    if key_id(name, key[1:], key[0]).hex() != hash_hex:
        raise NoteError(f"verifier key {vkey!r}: key ID {hash_hex} does not match the key's")
    return name, key[0], key[1:]


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted Ed25519 note key: its name and 32-byte public key (the key ID is derived)."""

    name: str
    public_key: bytes
    verify_fn: VerifyFn = field(default=_nacl_verify, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise NoteError(f"verifier key '{self.name}': an Ed25519 public key is 32 bytes")

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID signature lines carry."""
        return key_id(self.name, self.public_key)

    @classmethod
    def from_vkey(cls, vkey: str, *, verify_fn: VerifyFn = _nacl_verify) -> Verifier:
        """Parse ``<name>+<hex8 key ID>+<base64(0x01 || public key)>``, checking the key ID."""
        name, hash_hex, key = _split_vkey(vkey)
        if len(key) != 33 or key[0] != ED25519:
            raise NoteError(f"verifier key {vkey!r}: expected 0x01 followed by a 32-byte Ed25519 key")
        verifier = cls(name=_check_name(name), public_key=key[1:], verify_fn=verify_fn)
        if verifier.key_id.hex() != hash_hex:
            raise NoteError(
                f"verifier key {vkey!r}: key ID {hash_hex} does not match the key's {verifier.key_id.hex()}"
            )
        return verifier

    def to_vkey(self) -> str:
        """The verifier key string, as :meth:`from_vkey` reads it."""
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is this key's Ed25519 signature of ``message``."""
        return self.verify_fn(self.public_key, signature, message)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID, signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def to_line(self) -> str:
        """``— <name> <base64(key ID || signature)>\\n``."""
        return f"{_SIG_PREFIX}{self.name} {_b64(self.key_id + self.signature)}\n"


def _check_text(text: str, what: str) -> None:
    if not text.endswith("\n"):
        raise NoteError(f"{what}: text must end with a newline")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise NoteError(f"{what}: control character U+{ord(bad.group()):04X} is not allowed")


@dataclass(frozen=True, slots=True)
class Note:
    """A note: its text and its signature lines, in order (parsed, not yet verified)."""

    text: str
    signatures: tuple[NoteSignature, ...] = ()

    def to_text(self) -> str:
        """The signed note as the spec writes it: text, blank line, signature lines."""
        return self.text + "\n" + "".join(s.to_line() for s in self.signatures)

    @classmethod
    def sign(cls, text: str, *signers: NoteSigner) -> Note:
        """Sign ``text`` with each signer, in order."""
        _check_text(text, "note")
        if not signers:
            raise NoteError("note: at least one signer is required")
        msg = text.encode("utf-8")
        sigs = []
        for s in signers:
            name = _check_name(s.name)
            sigs.append(NoteSignature(name=name, key_id=key_id(name, s.public_key), signature=s.sign(msg)))
        return cls(text=text, signatures=tuple(sigs))

    @classmethod
    def from_text(cls, msg: str | bytes) -> Note:
        """Parse a signed note without verifying anything (see :meth:`open` to verify)."""
        if isinstance(msg, bytes):
            try:
                msg = msg.decode("utf-8")
            except UnicodeDecodeError as e:
                raise NoteError(f"note: not valid UTF-8 ({e.reason} at byte {e.start})") from e
        if not msg.endswith("\n"):
            raise NoteError("note: must end with a newline")
        _check_text(msg, "note")
        split = msg.rfind("\n\n")
        if split < 0:
            raise NoteError("note: no blank line before the signatures")
        text, block = msg[: split + 1], msg[split + 2 :]
        lines = block.split("\n")[:-1]
        if not lines:
            raise NoteError("note: no signature lines")
        if len(lines) > _MAX_SIGNATURES:
            raise NoteError(f"note: {len(lines)} signatures; at most {_MAX_SIGNATURES} are read")
        return cls(text=text, signatures=tuple(_parse_sig(n, line) for n, line in enumerate(lines, 1)))

    @classmethod
    def open(cls, msg: str | bytes, verifiers: Iterable[Verifier]) -> Note:
        """Parse and verify: at least one known key must verify and none may fail."""
        note = cls.from_text(msg)
        note.verified_by(verifiers)
        return note

    def verified_by(self, verifiers: Iterable[Verifier]) -> tuple[NoteSignature, ...]:
        """The signatures made by ``verifiers``; raise if any of them fails, or if there are none."""
        known = {(v.name, v.key_id): v for v in verifiers}
        msg = self.text.encode("utf-8")
        good: list[NoteSignature] = []
        for sig in self.signatures:
            v = known.get((sig.name, sig.key_id))
            if v is None or sig in good:
                continue  # unknown keys are ignored; duplicates count once
            if not v.verify(msg, sig.signature):
                key = f"{sig.name}+{sig.key_id.hex()}"
                raise UnverifiedNoteError(f"note: signature by '{key}' does not verify")
            good.append(sig)
        if not good:
            names = ", ".join(sorted(f"{n}+{h.hex()}" for n, h in known)) or "none"
            raise UnverifiedNoteError(f"note: not signed by any trusted key (trusted: {names})")
        return tuple(good)


def _parse_sig(n: int, line: str) -> NoteSignature:
    where = f"note: signature line {n}"
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(f"{where}: must start with an em dash and a space")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not b64:
        raise NoteError(f"{where}: expected '<key name> <base64 signature>'")
    _check_name(name, f"{where}: key name")
    try:
        raw = _b64decode(b64)
    except ValueError as e:
        raise NoteError(f"{where}: signature: {e}") from e
    if len(raw) < 5:
        raise NoteError(f"{where}: signature is {len(raw)} bytes; expected a 4-byte key ID and more")
    return NoteSignature(name=name, key_id=raw[:4], signature=raw[4:])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed tree head's body (c2sp.org/tlog-checkpoint): origin, tree size, root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or any(c < " " for c in self.origin):
            raise CheckpointError(f"checkpoint: origin {self.origin!r} must be one non-empty line")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CheckpointError(f"checkpoint: size {self.size!r} must be a non-negative integer")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise CheckpointError("checkpoint: root hash must be 32 bytes (SHA-256)")
        for ext in self.extensions:
            if not ext or "\n" in ext or any(c < " " for c in ext):
                raise CheckpointError(f"checkpoint: extension line {ext!r} must be one non-empty line")

    def to_body(self) -> str:
        """The note text: ``origin\\nsize\\nbase64(root)\\n`` plus extension lines."""
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly; extension lines are kept."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint: text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint: {len(lines)} lines; expected origin, size, root hash")
        origin, size, root_b64, *extensions = lines
        if not _SIZE.fullmatch(size):
            raise CheckpointError(f"checkpoint: size {size!r} is not a decimal without leading zeros")
        try:
            root_hash = _b64decode(root_b64)
        except ValueError as e:
            raise CheckpointError(f"checkpoint: root hash {root_b64!r}: {e}") from e
        return cls(origin=origin, size=int(size), root_hash=root_hash, extensions=tuple(extensions))

    def sign(self, *signers: NoteSigner) -> Note:
        """This checkpoint as a signed note."""
        return Note.sign(self.to_body(), *signers)

    @classmethod
    def from_note(cls, msg: str | bytes, verifiers: Iterable[Verifier]) -> Checkpoint:
        """Verify a signed checkpoint note and parse its body."""
        return cls.from_body(Note.open(msg, verifiers).text)
