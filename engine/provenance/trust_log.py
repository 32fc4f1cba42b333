"""The trust history the ledger records, and judging a signature by its position in the ledger.

``trust.json`` is the readable copy; the ledger is the authority. The first entry of every ledger
is a ``trust.genesis`` record holding the whole trust store it starts from (signed by a key with
the ``ledger`` role in it: whoever starts the log pins its root of trust, as TUF's first root
does). Every later change is a ``trust.changed`` record holding the whole new store, signed by a
key the *previous* state grants ``admin``. Both use their own payload type, so a record's kind —
not a field inside it — decides which role must sign it.

**The ledger's order is the clock.** A signature in ledger entry ``i`` (or in a file that entry
vouches for: attestations, manifests, approvals) is judged against the trust state in force at
``i``: the state made by the last trust record before ``i``. A key revoked by the record at ``R``
signs nothing valid after ``R``, whatever time its records claim. A revocation may also name an
earlier time (``keys revoke --at T``: "compromised since T"); that only ever makes verification
stricter: signatures claiming ``>= T`` fail even before ``R`` (the revocation record itself and the
checkpoint over it excepted: they are the old state's last act, so a key can revoke itself and a
ledger key can sign the checkpoint that retires it). Claimed times must not go backwards
along the ledger by more than :data:`CLOCK_SKEW`, so a backdated record stands out.

Pure: values in, values out; no files.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import KeyRevokedError, TrustFileError, UnknownKeyError
from engine.provenance.signing import PublicKey
from engine.provenance.trust import TrustEntry, TrustStore

__all__ = ["CLOCK_SKEW", "TRUST_TYPE", "GENESIS", "CHANGED", "TrustHistory", "trust_digest", "trust_payload",
           "describe_change"]

TRUST_TYPE = "application/vnd.certus.trust+json"
GENESIS = "trust.genesis"
CHANGED = "trust.changed"
#: How far a record's claimed time may lie before an earlier ledger entry's (clocks of two machines).
CLOCK_SKEW = timedelta(minutes=5)


def trust_digest(store: TrustStore) -> str:
    """SHA-256 of the store's canonical JSON: what a trust record commits to."""
    return hashlib.sha256(canonical_bytes(store.to_dict())).hexdigest()


def trust_payload(kind: str, store: TrustStore, time: str, summary: str) -> dict[str, Any]:
    """The payload of a trust record (same outer shape as a governance event, for ``certus log``)."""
    return {"_type": "https://certus.dev/TrustRecord/v1", "kind": kind, "time": time, "subject": "trust.json",
            "details": {"summary": summary, "trust": store.to_dict(), "trust_sha256": trust_digest(store)}}


def describe_change(old: TrustStore, new: TrustStore) -> str:
    """One line naming what differs between two stores (empty when they are the same)."""
    before = {e.keyid: e for e in old.entries}
    after = {e.keyid: e for e in new.entries}
    parts = []
    for kid, e in sorted(after.items(), key=lambda kv: kv[1].name):
        o = before.get(kid)
        if o is None:
            parts.append(f"added key '{e.name}' ({', '.join(e.roles)})")
        elif o != e:
            what = []
            if o.roles != e.roles:
                what.append(f"roles {', '.join(o.roles)} -> {', '.join(e.roles)}")
            if (o.not_before, o.not_after) != (e.not_before, e.not_after):
                what.append("validity window")
            if o.revoked != e.revoked:
                what.append("revoked" if o.revoked is None else "revocation changed")
            if o.name != e.name:
                what.append(f"renamed '{o.name}' -> '{e.name}'")
            parts.append(f"key '{e.name}': {', '.join(what) or 'changed'}")
    parts += [f"removed key '{o.name}'" for kid, o in sorted(before.items(), key=lambda kv: kv[1].name)
              if kid not in after]
    return "; ".join(parts)


def _transition_problem(old: TrustStore, new: TrustStore) -> str | None:
    """Why ``new`` may not follow ``old``: revocations are permanent and never move."""
    after = {e.keyid: e for e in new.entries}
    for e in old.entries:
        if e.revoked is None:
            continue
        n = after.get(e.keyid)
        if n is None or n.revoked != e.revoked:
            return f"{e.label}: its revocation was removed or moved (revocations are permanent)"
    return None


@dataclass(frozen=True, slots=True)
class _Epoch:
    start: int  # first ledger index judged by this state
    made_by: int  # index of the trust record that made it
    store: TrustStore


@dataclass
class TrustHistory:
    """The trust states a ledger went through, in order, and the problems seen building them."""

    epochs: list[_Epoch] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    revoked_by: dict[str, int] = field(default_factory=dict)  # keyid -> index of the record revoking it
    # (keyid, role, epoch, is the revoking entry) -> (key, earliest, latest, before): the times a signature
    # may claim, so verify's tens of thousands of checks skip the lookups; anything outside gets the full check
    _windows: dict[tuple[str, str, int, bool], Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_records(cls, records: Iterable[tuple[int, Mapping[str, Any]]]) -> TrustHistory:
        """Replay trust records ``(ledger index, payload)`` in ledger order (signatures are the caller's)."""
        h = cls()
        for index, payload in records:
            where = f"ledger entry {index} ({payload.get('kind', '?')})"
            details = payload.get("details")
            try:
                if not isinstance(details, Mapping):
                    raise TrustFileError("no details")
                store = TrustStore.from_json(_json(details.get("trust")), source="trust state")
            except (TrustFileError, TypeError, ValueError) as e:
                h.problems.append(f"{where}: unreadable trust state: {e}")
                continue
            if details.get("trust_sha256") != trust_digest(store):
                h.problems.append(f"{where}: trust_sha256 does not match the trust state it carries")
            kind = payload.get("kind")
            if kind == GENESIS:
                if index != 0 or h.epochs:
                    h.problems.append(f"{where}: a trust genesis must be the ledger's first entry, and only once")
                    continue
            elif kind == CHANGED:
                if not h.epochs:
                    h.problems.append(f"{where}: a trust change before any trust genesis")
                    continue
                why = _transition_problem(h.epochs[-1].store, store)
                if why:
                    h.problems.append(f"{where}: {why}")
                    continue
            else:
                h.problems.append(f"{where}: unknown trust record kind '{kind}'")
                continue
            for e in store.entries:
                if e.revoked is not None:
                    h.revoked_by.setdefault(e.keyid, index)
            h.epochs.append(_Epoch(start=0 if kind == GENESIS else index + 1, made_by=index, store=store))
        return h

    @property
    def pinned(self) -> bool:
        """True when the ledger records a trust genesis."""
        return bool(self.epochs)

    @property
    def latest(self) -> TrustStore:
        return self.epochs[-1].store if self.epochs else TrustStore()

    def state_at(self, index: int) -> TrustStore:
        """The trust state that judges ledger entry ``index``."""
        if not self.epochs:
            return TrustStore()
        starts = [e.start for e in self.epochs]
        return self.epochs[max(0, bisect.bisect_right(starts, index) - 1)].store

    def made_by(self, index: int) -> int:
        starts = [e.start for e in self.epochs]
        return self.epochs[max(0, bisect.bisect_right(starts, index) - 1)].made_by

    def ever(self, role: str) -> list[TrustEntry]:
        """Every key that held ``role`` in any state (e.g. the ledger keys a checkpoint may carry)."""
        seen: dict[str, TrustEntry] = {}
        for ep in self.epochs:
            for e in ep.store.entries:
                if role in e.roles:
                    seen.setdefault(e.keyid, e)
        return list(seen.values())

    def check(self, keyid: str, role: str, at: datetime, index: int) -> PublicKey:
        """The key to verify a signature by ``keyid`` for ``role``, made at ``at``, vouched for by entry ``index``."""
        epoch = bisect.bisect_right([e.start for e in self.epochs], index) if self.epochs else 0
        memo = (keyid, role, epoch, index == self.revoked_by.get(keyid))
        window = self._windows.get(memo)
        if window is None:
            window = self._windows[memo] = self._window(keyid, role, index)
        pub, earliest, latest, before = window
        if (pub is not None and isinstance(at, datetime) and at.tzinfo is not None
                and (earliest is None or at >= earliest) and (latest is None or at <= latest)
                and (before is None or at < before)):
            return pub
        return self._check(keyid, role, at, index)

    def _window(self, keyid: str, role: str, index: int) -> tuple[PublicKey | None, Any, Any, Any]:
        """When a signature by ``keyid`` for ``role`` vouched for at ``index`` may have been made."""
        entry = next((e for e in self.state_at(index).entries if e.keyid == keyid), None)
        if entry is None or entry.revoked is not None or role not in entry.roles:
            return None, None, None, None
        final = next((e for e in self.latest.entries if e.keyid == keyid), None)
        before = None
        if final is not None and final.revoked is not None and index != self.revoked_by.get(keyid):
            before = final.revoked.at
        return entry.public_key, entry.not_before, entry.not_after, before

    def _check(self, keyid: str, role: str, at: datetime, index: int) -> PublicKey:
        store = self.state_at(index)
        try:
            entry = store.get(keyid)
        except UnknownKeyError:
            raise UnknownKeyError(f"unknown key {keyid}: not in the trust state at ledger entry {index} "
                                  "(not in the trust file)") from None
        if entry.revoked is not None:
            raise KeyRevokedError(
                f"{entry.label}: revoked at {_fmt(entry.revoked.at)} ({entry.revoked.reason}) by ledger entry "
                f"{self.revoked_by.get(keyid, '?')}; ledger entry {index} comes after the revocation"
            )
        pub = store.check(keyid, role, at)
        final = next((e for e in self.latest.entries if e.keyid == keyid), None)
        # the revocation record itself (and the checkpoint over it) is the old state's last act
        if (final is not None and final.revoked is not None and at >= final.revoked.at
                and index != self.revoked_by.get(keyid)):
            raise KeyRevokedError(
                f"{final.label}: revoked at {_fmt(final.revoked.at)} ({final.revoked.reason}) by ledger entry "
                f"{self.revoked_by.get(keyid, '?')}; signature made at {_fmt(at)} is not before the revocation"
            )
        return pub

    def diff_file(self, current: TrustStore) -> str | None:
        """Why ``trust.json`` is not the trust state the ledger records (None when it is)."""
        if not self.pinned or trust_digest(current) == trust_digest(self.latest):
            return None
        what = describe_change(self.latest, current) or "formatting of the same keys"
        return (f"trust.json differs from the trust state the ledger records (ledger entry "
                f"{self.epochs[-1].made_by}): {what}; trust changes must be signed ledger records "
                "('certus keys trust' / 'certus keys revoke' with an admin key); "
                "'certus keys sync' rewrites trust.json from the ledger")


def _json(obj: Any) -> str:
    import json

    if not isinstance(obj, Mapping):
        raise TrustFileError("expected an object")
    return json.dumps(obj)


def _fmt(value: datetime) -> str:

    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")

