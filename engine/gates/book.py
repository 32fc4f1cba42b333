"""The gate results and waivers in the ledger, as ``repro``, ``waive`` and ``gate`` ask for them.

Entries are found by their payloadType without decoding the rest of the ledger; each one's
signature is checked against the trust state at its ledger position (the ledger index's trust
history), so a record a key without the role signed is ignored here and named by ``verify``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.errors import EngineError, SignatureError
from engine.provenance.dsse import Envelope, verify_envelope
from engine.provenance.gate_records import WAIVER_TYPE, gate_detail, is_gate_result, waiver_problem
from engine.provenance.records import RUN_TYPE
from engine.provenance.statement import PAYLOAD_TYPE

__all__ = ["GateRecord", "WaiverRecord", "GateBook", "parse_time"]

_MARKERS = (PAYLOAD_TYPE.encode(), WAIVER_TYPE.encode())


def parse_time(text: str) -> datetime:
    dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass
class GateRecord:
    index: int
    sha256: str
    statement: dict[str, Any]
    detail: dict[str, Any]
    signers: tuple[str, ...]

    @property
    def result(self) -> str:
        return str(self.detail.get("result"))

    def rule(self, name: str) -> dict[str, Any] | None:
        """A rule by its name or its metric path."""
        rules = self.detail.get("metrics", [])
        return next((m for m in rules if m.get("name") == name), None) or \
            next((m for m in rules if m.get("metric") == name), None)


@dataclass
class WaiverRecord:
    index: int
    sha256: str
    payload: dict[str, Any]
    signers: tuple[str, ...]
    at: datetime


@dataclass
class GateBook:
    results: list[GateRecord] = field(default_factory=list)
    waivers: list[WaiverRecord] = field(default_factory=list)
    ledger: Any = None
    index: Any = None
    _run_signers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, prov: Any) -> GateBook:
        """Read (and signature-check) every gate result and waiver in the workspace's ledger."""
        import os

        from engine.provenance.recorder import ledger_dir

        if not os.path.isdir(ledger_dir(prov.ws)):
            return cls()
        ledger = prov.open_ledger(create=False)
        index = prov.index(ledger)
        book = cls(ledger=ledger, index=index)
        judge = index.trust_history() if index.trust_sha256 is not None else None
        for i, raw in enumerate(ledger.entries()):
            if not any(m in raw for m in _MARKERS):
                continue
            book._add(i, raw, judge)
        return book

    @classmethod
    def from_entries(cls, raws: Any, judge: Any) -> GateBook:
        """The gate results and waivers among ``raws`` (ledger entries in order), judged by ``judge``
        (a TrustHistory): for deploy, which reads the ledger itself and never the local index."""
        book = cls()
        run_marker = RUN_TYPE.encode()
        for i, raw in enumerate(raws):
            if any(m in raw for m in _MARKERS):
                book._add(i, raw, judge)
            elif run_marker in raw:
                try:
                    env = Envelope.from_json_bytes(raw)
                    if env.payload_type == RUN_TYPE:
                        run_id = str(json.loads(env.payload).get("run_id"))
                        book._run_signers[run_id] = tuple(s.keyid for s in env.signatures)
                except (EngineError, ValueError, AttributeError):
                    pass
        return book

    def _add(self, i: int, raw: bytes, judge: Any) -> None:
        try:
            env = Envelope.from_json_bytes(raw)
            payload = json.loads(env.payload)
        except (SignatureError, ValueError):
            return
        sha = hashlib.sha256(raw).hexdigest()
        if env.payload_type == PAYLOAD_TYPE and is_gate_result(payload):
            detail, _ = gate_detail(payload)
            if detail is None:
                return
            role, at_text, rec = "trainer", detail.get("time"), "result"
        elif env.payload_type == WAIVER_TYPE and isinstance(payload, dict):
            role, at_text, rec = "approver", payload.get("time"), "waiver"
        else:
            return
        try:
            at = parse_time(str(at_text))
            if judge is None:
                return
            for sig in env.signatures:
                pub = judge.check(sig.keyid, role, at, i)
                verify_envelope(Envelope(env.payload_type, env.payload, (sig,)), {sig.keyid: pub}, env.payload_type)
        except (EngineError, ValueError):
            return  # not trusted for that role at that position: verify names it
        signers = tuple(s.keyid for s in env.signatures)
        if rec == "result":
            assert detail is not None
            self.results.append(GateRecord(i, sha, payload, detail, signers))
        else:
            self.waivers.append(WaiverRecord(i, sha, payload, signers, at))

    # -- questions ---------------------------------------------------------------------------------

    def by_key(self, key: str) -> GateRecord | None:
        hits = [r for r in self.results if r.detail.get("key") == key]
        return hits[-1] if hits else None

    def for_run(self, run_id: str, gate: str | None = None) -> list[GateRecord]:
        return [r for r in self.results if r.detail.get("run_id") == run_id
                and (gate is None or r.detail.get("gate") == gate)]

    def speaking_for(self, run_id: str, artifact: str | None = None, digest: str | None = None,
                     before: int | None = None) -> dict[str, GateRecord]:
        """Per gate, the result that judges a release from ``run_id``: the run's own newest, or, for a gate
        the run reused rather than evaluated (same inputs, same key), the newest before ``before`` whose
        subjects name the model ``artifact`` with ``digest`` (hex)."""
        out: dict[str, GateRecord] = {}
        for rec in self.for_run(run_id):
            out[str(rec.detail.get("gate"))] = rec
        if artifact is None:
            return out
        for rec in self.results:
            gate = str(rec.detail.get("gate"))
            own = gate in out and out[gate].detail.get("run_id") == run_id
            if own or (before is not None and rec.index >= before):
                continue
            subj = {s.get("name"): s.get("digest") or {} for s in rec.statement.get("subject", [])
                    if isinstance(s, dict)}
            d = subj.get(artifact) or {}
            if digest in (d.get("sha256"), d.get("dirHash")):
                out[gate] = rec
        return out

    def latest(self) -> dict[str, GateRecord]:
        out: dict[str, GateRecord] = {}
        for r in self.results:
            out[str(r.detail.get("gate"))] = r
        return out

    def baseline(self, pipeline: str, gate: str, metrics: dict[str, str]) -> GateRecord | None:
        """The last passed result of ``gate`` on ``pipeline`` for other metrics than ``metrics``."""
        for r in reversed(self.results):
            d = r.detail
            if d.get("gate") == gate and d.get("pipeline") == pipeline and r.result == "PASSED" \
                    and d.get("metric_files") != metrics:
                return r
        return None

    def run_signers(self, run_id: str) -> tuple[str, ...]:
        """Keyids that signed the run record of ``run_id`` (none known: empty)."""
        if run_id not in self._run_signers:
            at = (self.index.runs if self.index is not None else {}).get(run_id)
            keyids: tuple[str, ...] = ()
            if at is not None and self.ledger is not None:
                try:
                    env = Envelope.from_json_bytes(self.ledger.entry(at))
                    if env.payload_type == RUN_TYPE:
                        keyids = tuple(s.keyid for s in env.signatures)
                except (EngineError, ValueError):
                    pass
            self._run_signers[run_id] = keyids
        return self._run_signers[run_id]

    def waivers_of(self, rec: GateRecord) -> Iterator[WaiverRecord]:
        return (w for w in self.waivers if w.payload.get("gate_result_sha256") == rec.sha256)

    def coverage(self, rec: GateRecord, now: datetime) -> tuple[dict[str, WaiverRecord], dict[str, str]]:
        """For each needs-review rule: the waiver that covers it now, or why none does."""
        own = rec.signers + self.run_signers(str(rec.detail.get("run_id")))
        covered: dict[str, WaiverRecord] = {}
        why: dict[str, str] = {}
        for m in rec.detail.get("metrics", []):
            if m.get("outcome") != "needs-review":
                continue
            name = str(m.get("name"))
            why[name] = "no waiver"
            for w in self.waivers_of(rec):
                if w.payload.get("metric") != name:
                    continue
                problem = waiver_problem(w.payload, rec.sha256, rec.detail, now, w.signers, own)
                if problem is None:
                    covered[name] = w
                    why.pop(name, None)
                else:
                    why[name] = f"waiver at ledger entry {w.index}: {problem}"
        return covered, why

    def standing(self, rec: GateRecord, now: datetime) -> tuple[bool, str]:
        """(passes, one-line why not): PASSED, or WARNED with every needs-review rule validly waived."""
        gate, run = rec.detail.get("gate"), rec.detail.get("run_id")
        if rec.result == "PASSED":
            return True, "passed"
        if rec.result == "FAILED":
            bad = next(m for m in rec.detail["metrics"] if m.get("outcome") == "fail")
            return False, f"gate '{gate}' failed: metric '{bad['name']}': {bad.get('reason')} (no waiver is accepted)"
        covered, why = self.coverage(rec, now)
        if not why:
            return True, "waived: " + ", ".join(f"{n} (ledger entry {w.index})" for n, w in sorted(covered.items()))
        name = sorted(why)[0]
        m = rec.rule(name) or {}
        return False, (f"gate '{gate}' needs review: metric '{name}' {m.get('reason')} ({why[name]}); waive it with "
                       f"'certus waive {run} --gate {gate} --metric {name} --reason \"...\" --expires YYYY-MM-DD "
                       "--key APPROVER'")
