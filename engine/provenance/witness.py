"""Comparing checkpoints with other parties: is their copy of the ledger the same history as ours?

``certus verify`` catches a rollback or rewrite of *this* machine's ledger against the checkpoint
it remembers. Another machine's copy can be rewritten and re-signed just as well; the only way to
catch that is to compare signed checkpoints across machines (the C2SP witness model). A team
member exports ``certus ledger checkpoint --export FILE``; anyone else runs
``certus ledger checkpoint --witness FILE``, which

1. verifies FILE's note under a key the trust file grants the ``ledger`` role (valid now), by its
   key name or by the log's origin (c2sp.org/tlog-checkpoint: the key name SHOULD be the origin),
2. verifies any cosignatures on it by keys with the ``witness`` role (c2sp.org/tlog-cosignature,
   judged at their timestamps); cosignatures by keys the trust file does not know are ignored,
3. compares the two trees: same origin; if their size N is at most ours, our tree's root at N
   (recomputed from our leaf hashes) must be their root — otherwise the histories forked; if N is
   larger than ours, this copy is behind (or was rolled back) and nothing more can be said.

A witness can also cosign: ``--cosign --key NAME`` checks this ledger end to end and against the
checkpoint this machine remembers, then adds a v1 cosignature, which says "as of this time, this is
the largest consistent tree head I have seen". Only the comparison (:func:`compare`) and the key
selection are here; :mod:`engine.cli.witness` does the reading and printing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import LedgerError, SignatureError
from engine.provenance import merkle
from engine.provenance.cosignature import Cosignature, Cosigner, verify_cosignatures
from engine.provenance.ledger import ForkError, RollbackError
from engine.provenance.note import Checkpoint, Note, NoteError, UnverifiedNoteError, Verifier
from engine.provenance.trust import TrustEntry, TrustStore

__all__ = [
    "BehindError",
    "Comparison",
    "DifferentLogError",
    "HistoryForkError",
    "compare",
    "compare_note",
    "describe",
    "ledger_verifiers",
    "trusted_cosignatures",
    "witness_cosigners",
]


class DifferentLogError(LedgerError):
    """Their checkpoint is for another log (origin), so there is nothing to compare."""


class BehindError(RollbackError):
    """Their checkpoint is larger than ours: this copy is behind, or was rolled back."""


class HistoryForkError(ForkError):
    """At a size both copies have, the roots differ: one history was rewritten."""


def describe(cp: Checkpoint) -> str:
    """A checkpoint on one line, as its note body reads: ``origin, size N, root <base64>``."""
    return f"'{cp.origin}' size {cp.size} root {base64.b64encode(cp.root_hash).decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Their checkpoint agrees with our ledger: what was compared and who vouched for it."""

    ours: Checkpoint
    theirs: Checkpoint
    signers: tuple[str, ...] = ()
    cosignatures: tuple[Cosignature, ...] = ()

    def summary(self) -> str:
        """One line for the CLI."""
        n, m = self.theirs.size, self.ours.size
        line = f"consistent: their size {n} {'=' if n == m else '≤'} our size {m}, same root at {n}"
        line += f"; signed by {', '.join(self.signers)}" if self.signers else ""
        if self.cosignatures:
            line += "; cosigned by " + ", ".join(f"{c.name} at {c.to_dict()['time']}" for c in self.cosignatures)
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        def cp(c: Checkpoint) -> dict[str, Any]:
            return {"origin": c.origin, "size": c.size, "root": base64.b64encode(c.root_hash).decode("ascii")}

        return {"consistent": True, "ours": cp(self.ours), "theirs": cp(self.theirs), "signers": list(self.signers),
                "cosignatures": [c.to_dict() for c in self.cosignatures]}


def _entries(lo: int, hi: int) -> str:
    return f"entry {lo}" if hi - lo == 1 else f"entries {lo}..{hi - 1}"


def compare(ours: Checkpoint, theirs: Checkpoint, root_at: Callable[[int], bytes]) -> None:
    """Raise unless ``theirs`` describes a prefix of (or the same tree as) ``ours``.

    ``root_at(n)`` is our tree's root at size ``n`` (only called with ``n <= ours.size``).
    """
    if theirs.origin != ours.origin:
        raise DifferentLogError(
            f"different log: their checkpoint is for {describe(theirs)}, ours is {describe(ours)}")
    if theirs.size > ours.size:
        raise BehindError(
            f"behind: their checkpoint {describe(theirs)} is ahead of ours {describe(ours)}: this copy lacks "
            f"{_entries(ours.size, theirs.size)}, or was rolled back; fetch their ledger and compare again")
    mine = ours.root_hash if theirs.size == ours.size else root_at(theirs.size)
    if mine != theirs.root_hash:
        at = base64.b64encode(mine).decode("ascii")
        raise HistoryForkError(
            f"fork: at size {theirs.size} their root differs from ours ({at}): the histories diverged, one copy "
            f"was rewritten; theirs: {describe(theirs)}; ours: {describe(ours)}")


def _valid(trust: TrustStore, entry: TrustEntry, role: str, at: datetime) -> bool:
    try:
        trust.check(entry.keyid, role, at)
    except SignatureError:
        return False
    return True


def ledger_verifiers(trust: TrustStore, origin: str | None = None, *, at: datetime | None = None) -> list[Verifier]:
    """Note verifiers for every key with the ``ledger`` role (valid at ``at``, when given).

    Each key is accepted under its trust-file name and, when given, under the log's ``origin``
    (the C2SP tlog-checkpoint convention), since a checkpoint's key ID commits to the name.
    Without ``at`` only the role counts: the ledger's own history is judged entry by entry by
    ``certus verify``; a checkpoint handed over by another party is judged now.
    """
    out = []
    for entry in trust.entries:
        if "ledger" not in entry.roles or (at is not None and not _valid(trust, entry, "ledger", at)):
            continue
        raw = entry.public_key.raw
        out.append(Verifier(name=entry.name, public_key=raw))
        if origin is not None and origin != entry.name:
            try:
                out.append(Verifier(name=origin, public_key=raw))
            except NoteError:
                pass  # an origin with spaces or '+' cannot be a key name
    return out


def witness_cosigners(trust: TrustStore) -> dict[tuple[str, bytes], tuple[Cosigner, TrustEntry]]:
    """Every key with the ``witness`` role as a v1 cosigner, by (name, cosignature key ID)."""
    out: dict[tuple[str, bytes], tuple[Cosigner, TrustEntry]] = {}
    for entry in trust.entries:
        if "witness" in entry.roles:
            c = Cosigner(name=entry.name, public_key=entry.public_key.raw)
            out[(c.name, c.key_id)] = (c, entry)
    return out


def trusted_cosignatures(note: Note, trust: TrustStore, *, now: datetime | None = None) -> tuple[Cosignature, ...]:
    """The note's cosignatures by trusted witnesses, each checked against the trust file at its time.

    A witness key's line that fails, is timestamped in the future, or was made while the key was
    not valid (revoked, outside its window) rejects the note; unknown cosigners are ignored.
    """
    now = now or datetime.now(UTC)
    cosigners = witness_cosigners(trust)
    cosigs = verify_cosignatures(note, [c for c, _ in cosigners.values()], not_after=int(now.timestamp()) + 60)
    for cs in cosigs:
        entry = cosigners[(cs.name, cs.key_id)][1]
        try:
            trust.check(entry.keyid, "witness", cs.time)
        except SignatureError as e:
            raise UnverifiedNoteError(f"note: cosignature by '{cs.name}' at {cs.to_dict()['time']}: {e}") from e
    return cosigs


def _signer_names(note: Note, verifiers: Iterable[Verifier]) -> tuple[str, ...]:
    good = note.verified_by(verifiers)
    return tuple(dict.fromkeys(s.name for s in good))


def compare_note(note_text: str | bytes, ours: Checkpoint, leaves: Callable[[], list[bytes]], trust: TrustStore,
                 *, now: datetime | None = None) -> Comparison:
    """Verify another party's signed checkpoint note and compare it with our checkpoint.

    ``leaves()`` returns our ledger's leaf hashes up to ``ours.size`` (called only when their
    size is smaller than ours). Raises :class:`~engine.provenance.note.UnverifiedNoteError` for a note no
    trusted ledger key signed, else :func:`compare`'s errors.
    """
    note = Note.from_text(note_text)
    theirs = Checkpoint.from_body(note.text)
    try:
        signers = _signer_names(note, ledger_verifiers(trust, theirs.origin, at=now or datetime.now(UTC)))
    except UnverifiedNoteError as e:
        try:  # say so when the signer is a ledger key, just not a valid one now
            stale = _signer_names(note, ledger_verifiers(trust, theirs.origin))
        except UnverifiedNoteError:
            stale = ()
        why = f"signed only by ledger key(s) {', '.join(stale)}, not valid now (revoked or expired)" if stale else e
        raise UnverifiedNoteError(f"their checkpoint {describe(theirs)}: refused: {why}") from e
    cosigs = trusted_cosignatures(note, trust, now=now)

    def root_at(n: int) -> bytes:
        hashes = leaves()
        if len(hashes) != ours.size or merkle.root(hashes) != ours.root_hash:
            raise LedgerError(f"our ledger's leaf hashes do not match its checkpoint {describe(ours)}; run verify")
        return merkle.root(hashes[:n])

    compare(ours, theirs, root_at)
    return Comparison(ours=ours, theirs=theirs, signers=signers, cosignatures=cosigs)
