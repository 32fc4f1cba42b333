"""The ledger as packaging and deploy read it: every entry decoded once, addressable by envelope digest.

Nothing here comes from a cache: entries are read from the ledger files (each frame checked against
its leaf hash), the checkpoint's signature is checked under the ledger keys the ledger's own trust
records name, and each cited record's signature is judged by the trust state at its position
(:class:`engine.provenance.trust_log.TrustHistory`). Inclusion proofs are computed from the leaves
and checked against the signed checkpoint root.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.errors import EngineError, SignatureError
from engine.provenance import merkle
from engine.provenance.dsse import Envelope, verify_envelope
from engine.provenance.verify_runs import parse_time

__all__ = ["LedgerView", "ViewEntry"]


@dataclass(frozen=True)
class ViewEntry:
    index: int
    sha256: str  # of the envelope bytes, as records cite each other
    envelope: Envelope
    payload: dict[str, Any]


@dataclass
class LedgerView:
    entries: list[ViewEntry]
    by_sha: dict[str, ViewEntry]
    history: Any  # TrustHistory
    checkpoint: Any  # the signed checkpoint (verified), or None with ``problem`` saying why
    leaves: list[bytes]
    raws: list[bytes]
    problem: str | None = None

    @classmethod
    def load(cls, prov: Any) -> LedgerView:
        """Read the workspace's ledger under a shared lock; raises EngineError when there is none."""
        from engine.provenance.note import Checkpoint
        from engine.provenance.verify import checkpoint_verifiers, trust_history_of

        with prov.ledger_lock(exclusive=False):
            ledger = prov.open_ledger(create=False)
            raws = list(ledger.entries())
            leaves = [merkle.leaf_hash(r) for r in raws]
            note = ledger.checkpoint_note()
        history = trust_history_of(raws)
        entries: list[ViewEntry] = []
        for i, raw in enumerate(raws):
            try:
                env = Envelope.from_json_bytes(raw)
                payload = json.loads(env.payload)
            except (SignatureError, ValueError):
                continue  # not citable; `certus verify` names it
            if isinstance(payload, dict):
                entries.append(ViewEntry(i, hashlib.sha256(raw).hexdigest(), env, payload))
        view = cls(entries, {e.sha256: e for e in entries}, history, None, leaves, raws)
        if not history.pinned:
            view.problem = "the ledger does not start with a trust genesis record"
        elif note is None:
            view.problem = "the ledger has no checkpoint"
        else:
            try:
                view.checkpoint = Checkpoint.from_note(note, checkpoint_verifiers(history, history.latest,
                                                                                  ledger.origin))
            except EngineError as e:
                view.problem = f"its checkpoint does not verify: {e}"
            else:
                if view.checkpoint.size != len(raws) or merkle.root(leaves) != view.checkpoint.root_hash:
                    view.problem = "its entries are not those the signed checkpoint commits to"
        return view

    def of_type(self, payload_type: str) -> Iterator[ViewEntry]:
        return (e for e in self.entries if e.envelope.payload_type == payload_type)

    def signature_problem(self, entry: ViewEntry, role: str, at_text: str) -> str | None:
        """Why ``entry`` is not validly signed by a ``role`` key at its ledger position (None: it is)."""
        try:
            at = parse_time(at_text)
        except ValueError:
            return f"unreadable time {at_text!r}"
        if not entry.envelope.signatures:
            return "unsigned"
        for sig in entry.envelope.signatures:
            try:
                pub = self.history.check(sig.keyid, role, at, entry.index)
                verify_envelope(Envelope(entry.envelope.payload_type, entry.envelope.payload, (sig,)),
                                {sig.keyid: pub}, entry.envelope.payload_type)
            except SignatureError as e:
                return f"signature by {sig.keyid[:16]}…: {e}"
        return None

    def inclusion_problem(self, entry: ViewEntry) -> str | None:
        """Check entry's RFC 9162 inclusion proof against the signed checkpoint (None: it holds)."""
        if self.checkpoint is None:
            return f"no verified checkpoint ({self.problem})"
        try:
            proof = merkle.inclusion_proof(entry.index, self.leaves[: self.checkpoint.size])
            merkle.verify_inclusion(self.leaves[entry.index], entry.index, self.checkpoint.size, proof.hashes,
                                    self.checkpoint.root_hash)
        except EngineError as e:
            return f"inclusion proof fails: {e}"
        return None

    def signers(self, entry: ViewEntry) -> tuple[str, ...]:
        return tuple(s.keyid for s in entry.envelope.signatures)

    @staticmethod
    def time_of(entry: ViewEntry) -> datetime | None:
        try:
            return parse_time(str(entry.payload.get("time") or entry.payload.get("finished")))
        except ValueError:
            return None
