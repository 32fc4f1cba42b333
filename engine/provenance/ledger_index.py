"""A local index over the ledger: what ``repro`` asks of it on every run, without reading it all.

Before a signed run Certus must know which outputs the ledger attests (so an output that a killed
run left in ``certus.lock`` unattested is re-run, and a restore names a real attestation), which
trust state the ledger has in force, and which runs and dataset records it holds. Reading a
10,000-run ledger for that on every ``repro`` would cost a second; this index keeps the answers
in ``.certus/tmp/ledger-index.json`` with the ledger size and root it was built at. It is caught
up by decoding only the entries appended since, and rebuilt from scratch when the ledger no
longer extends what it saw.

It is a cache, never evidence: ``certus verify`` does not read it, and everything it answers is
re-checked there from the ledger itself. Like the parse caches it is sealed with this user's local key
(:mod:`engine.store.localseal`), so an edited index is ignored and rebuilt rather than believed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError, SignatureError
from engine.provenance import merkle
from engine.provenance.dsse import Envelope
from engine.provenance.records import EVENT_TYPE, RUN_TYPE
from engine.provenance.statement import subject_digests
from engine.provenance.trust_log import TRUST_TYPE
from engine.store.fsutil import atomic_write
from engine.store.localseal import seal, unseal

__all__ = ["LedgerIndex", "INDEX_PATH"]

INDEX_PATH = os.path.join(".certus", "tmp", "ledger-index.json")
_FORMAT = 3


@dataclass
class LedgerIndex:
    """What the first ``size`` ledger entries say, in the shapes repro asks for."""

    origin: str = ""
    size: int = 0
    root: str = merkle.SHA256.empty_root().hex()
    trust_sha256: str | None = None  # the trust state in force (None: no trust genesis yet)
    trust_index: int | None = None
    trust_records: list[list[Any]] = field(default_factory=list)  # [index, base64 envelope] of each trust record
    runs: dict[str, int] = field(default_factory=dict)  # run id -> ledger index of its record
    # "path\0sha256:hex" -> [[run id, stage, attestation envelope sha256], ...]: its attestations, oldest first
    subjects: dict[str, list[list[str]]] = field(default_factory=dict)
    logged: dict[str, dict[str, int]] = field(default_factory=dict)  # manifest/approval sha256 -> event index

    # -- questions -----------------------------------------------------------------------------

    def attestation_of(self, path: str, digest: str) -> list[str] | None:
        """``[run id, stage, envelope sha256]`` of the first attestation with this subject, or None."""
        hits = self.subjects.get(f"{path}\0{digest}")
        return hits[0] if hits else None

    def attestations_of(self, path: str, digest: str) -> list[list[str]]:
        """Every indexed ``[run id, stage, envelope sha256]`` with this subject (the first few)."""
        return self.subjects.get(f"{path}\0{digest}", [])

    def trust_history(self) -> Any:
        """The ledger's trust states, with every trust record's signature checked (problems listed).

        Repro and appends rely on this, so a forged trust record (a key without ``admin``, a
        revocation undone) makes the history carry a problem rather than silently move trust.
        """
        if getattr(self, "_history", None) is not None:
            return self._history
        import base64

        from engine.provenance.trust_log import GENESIS, TrustHistory
        from engine.provenance.verify_runs import Report, check_signatures, parse_time

        decoded = []
        for index, b64 in self.trust_records:
            env = Envelope.from_json_bytes(base64.b64decode(b64))
            decoded.append((index, env, json.loads(env.payload)))
        history = TrustHistory.from_records([(i, p) for i, _, p in decoded])
        report = Report()
        for index, env, payload in decoded:
            role = "ledger" if payload.get("kind") == GENESIS else "admin"
            try:
                at = parse_time(str(payload.get("time", "")))
            except ValueError:
                history.problems.append(f"ledger entry {index}: unreadable time")
                continue
            check_signatures(env, history, role, at, index, f"ledger entry {index} ({payload.get('kind')})", report)
        history.problems.extend(report.failures)
        self._history = history
        return history

    def attested(self, outs: Mapping[str, Mapping[str, Any]]) -> bool:
        """True when every ``path -> {digest}`` is a subject of some attestation in the ledger."""
        return all(f"{p}\0{o.get('digest')}" in self.subjects for p, o in outs.items())

    # -- building ------------------------------------------------------------------------------

    def _add(self, index: int, raw: bytes, prov_dir: str) -> None:
        try:
            env = Envelope.from_json_bytes(raw)
            payload = json.loads(env.payload)
        except (SignatureError, ValueError):
            return
        if not isinstance(payload, dict):
            return
        details = payload.get("details") if isinstance(payload.get("details"), dict) else {}
        if env.payload_type == TRUST_TYPE:
            import base64

            self.trust_sha256, self.trust_index = str(details.get("trust_sha256")), index
            self.trust_records.append([index, base64.b64encode(raw).decode()])
        elif env.payload_type == EVENT_TYPE:
            adopted = ("adopted_sha256",) if payload.get("kind") == "dvc.adopted" else ()  # engine.run.dvc_adopt
            for k in ("manifest_sha256", "approval_sha256", *adopted):
                if isinstance(details.get(k), str):
                    self.logged.setdefault(k, {}).setdefault(details[k], index)
        elif env.payload_type == RUN_TYPE:
            run_id = str(payload.get("run_id"))
            self.runs.setdefault(run_id, index)
            self._add_attestations(run_id, payload, prov_dir)

    def _add_attestations(self, run_id: str, record: Mapping[str, Any], prov_dir: str) -> None:
        import hashlib

        listed = {str(a.get("sha256")): str(a.get("stage")) for a in record.get("attestations") or ()
                  if isinstance(a, dict)}
        if not listed:
            return
        try:
            with open(os.path.join(prov_dir, f"{os.path.basename(run_id)}.dsse.jsonl"), "rb") as f:
                lines = f.read().split(b"\n")
        except OSError:
            return
        for line in lines:
            sha = hashlib.sha256(line).hexdigest()
            stage = listed.get(sha)
            if stage is None:
                continue  # only what the record's digests vouch for is indexed
            try:
                stmt = json.loads(Envelope.from_json_bytes(line).payload)
            except (SignatureError, ValueError):
                continue
            for path, digest in subject_digests(stmt).items():
                hits = self.subjects.setdefault(f"{path}\0{digest}", [])
                if len(hits) < 16:
                    hits.append([run_id, stage, sha])

    def to_bytes(self) -> bytes:
        return json.dumps({"format": _FORMAT, "origin": self.origin, "size": self.size, "root": self.root,
                           "trust_sha256": self.trust_sha256, "trust_index": self.trust_index,
                           "trust_records": self.trust_records, "runs": self.runs,
                           "subjects": self.subjects, "logged": self.logged}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LedgerIndex | None:
        try:
            d = json.loads(data)
            if d.get("format") != _FORMAT:
                return None
            return cls(origin=str(d["origin"]), size=int(d["size"]), root=str(d["root"]),
                       trust_sha256=d["trust_sha256"], trust_index=d["trust_index"],
                       trust_records=list(d["trust_records"]), runs=dict(d["runs"]),
                       subjects=dict(d["subjects"]), logged=dict(d["logged"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    # -- keeping it current ----------------------------------------------------------------------

    @classmethod
    def current(cls, ledger: Any, root_dir: str) -> LedgerIndex:
        """The index for ``ledger`` as it is now: loaded, caught up, or rebuilt; saved when it moved."""
        path = os.path.join(root_dir, INDEX_PATH)
        prov_dir = os.path.join(root_dir, ".certus", "provenance")
        idx = None
        try:
            with open(path, "rb") as f:
                data = unseal("ledger-index", ledger.origin, f.read(), where=INDEX_PATH)
            idx = cls.from_bytes(data) if data is not None else None
        except OSError:
            pass
        cp = ledger.checkpoint()
        root_now = cp.root_hash.hex() if cp is not None else merkle.SHA256.empty_root().hex()
        if idx is not None and (idx.size, idx.root, idx.origin) == (ledger.size, root_now, ledger.origin):
            return idx
        if idx is None or idx.origin != ledger.origin or not _extends(ledger, idx):
            idx = cls(origin=ledger.origin)
        start = idx.size
        for i, raw in enumerate(ledger.entries(start), start):
            idx._add(i, raw, prov_dir)
        idx.size, idx.root = ledger.size, root_now
        blob = seal("ledger-index", ledger.origin, idx.to_bytes())  # tamper-evident, like the parse caches
        if blob is not None:
            with contextlib.suppress(OSError):  # a cache that cannot be saved is rebuilt next time
                atomic_write(path, blob, sync=False)
        return idx


def _extends(ledger: Any, idx: LedgerIndex) -> bool:
    """True when the ledger's first ``idx.size`` entries are the ones the index was built from."""
    if idx.size > ledger.size:
        return False
    if idx.size == 0:
        return True
    try:
        return merkle.root(ledger.leaf_hashes(idx.size)).hex() == idx.root
    except EngineError:
        return False
