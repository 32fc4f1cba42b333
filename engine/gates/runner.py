"""Gates inside ``certus repro``: evaluated right after their metrics stage, enforced before a stage starts.

A gate's content key is the SHA-256 of the canonical JSON of its policy values (as composed), the
metrics stage's key, the digests of the metrics files and of the model artifacts, and (only when a
rule compares with a baseline) the baseline result's digest. In a signed workspace a gate whose key
the ledger already holds a result for is not evaluated again; otherwise it is evaluated (pure:
:mod:`engine.gates.policy`), and its Test Result statement is signed by the run's trainer key and
listed by digest in the run record and appended right after it. Without a trust file gates are evaluated on every
run and enforced, but nothing is signed and nothing can be waived.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from engine.core.canonical import canonical_bytes
from engine.errors import ConfigError, SpecError
from engine.gates.book import GateBook, GateRecord
from engine.gates.policy import MISSING, Rule, evaluate, lookup_metric, parse_policy
from engine.provenance.gate_records import gate_statement
from engine.provenance.statement import PAYLOAD_TYPE, rfc3339

__all__ = ["GateRunner", "GateState", "plain", "gate_runner"]


def gate_runner(rep: Any) -> GateRunner | None:
    """The gates of ``rep``'s spec (signed when ``rep`` has a ``prov``), or None when it declares none."""
    return GateRunner(rep, getattr(rep, "prov", None)) if rep.spec.gates else None


def plain(obj: Any) -> Any:
    """An OmegaConf-composed value as plain JSON types (they already are, after load)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


@dataclass
class GateState:
    gate: str
    key: str
    result: str  # PASSED | WARNED | FAILED
    outcomes: list[dict[str, Any]]
    record: GateRecord | None = None  # found in the ledger (reused)
    statement: dict[str, Any] | None = None  # evaluated now, to be appended


class GateRunner:
    """The gates of one repro (``rep``: an :class:`engine.run.repro.Repro`; ``prov``: its signer or None)."""

    def __init__(self, rep: Any, prov: Any = None) -> None:
        self.rep, self.prov = rep, prov
        self.spec, self.config = rep.spec, rep.config
        self.states: dict[str, GateState] = {}
        self.pending: list[dict[str, Any]] = []
        self.seconds = 0.0
        self._book: GateBook | None = None
        self.rules: dict[str, list[Rule]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        policy_root = self.config.get("policy") or {}
        for name, g in self.spec.gates.items():
            raw = plain(policy_root.get(g.policy))
            self.rules[name] = parse_policy(g.policy, raw)
            self.policies[name] = raw
            for r in self.rules[name]:
                stage = r.stage or g.after
                if stage not in self.spec.stages:
                    raise ConfigError(f"policy.{g.policy}.{r.name}.stage: no stage '{stage}' in {self.spec.path}")
                if r.file is not None and r.file not in self.spec[stage].metrics:
                    raise ConfigError(f"policy.{g.policy}.{r.name}.file: '{r.file}' is not a metrics file of stage "
                                      f"'{stage}' ({', '.join(self.spec[stage].metrics) or 'none'})")
        self._check_order()

    def _check_order(self) -> None:
        import networkx as nx

        for st in self.spec.stages.values():
            if st.requires_gate is None:
                continue
            g = self.spec.gates[st.requires_gate]
            if g.after not in nx.ancestors(self.rep.dag.graph, st.name):
                raise SpecError(f"{self.spec.path}:{st.line}: stage '{st.name}': field 'requires_gate': gate "
                                f"'{g.name}' reads stage '{g.after}', which is not upstream of this stage; add one of "
                                f"its outputs ({', '.join(self.spec[g.after].all_outs)}) to deps")

    @property
    def book(self) -> GateBook:
        if self._book is None:
            self._book = GateBook.load(self.prov) if self.prov is not None else GateBook()
        return self._book

    # -- evaluation ----------------------------------------------------------------------------

    def settled(self, stage: str, result: Any) -> None:
        """Called as each stage settles: evaluate the gates that read it."""
        for name, g in self.spec.gates.items():
            if g.after == stage and result.outcomes[stage].state in ("ran", "restored", "skipped"):
                self.ensure(name)

    def _model(self, name: str) -> dict[str, dict[str, str]]:
        g = self.spec.gates[name]
        entry = self.rep.lock.get(g.after)
        produced = {o: s.name for s in self.spec.stages.values() for o in s.all_outs}
        paths = g.model or tuple(d for d in self.spec[g.after].deps if d in produced and d != g.after)
        out: dict[str, dict[str, str]] = {}
        for p in paths:
            digest = (entry.deps.get(p) if entry else None)
            if digest is None:
                continue
            owner = self.rep.lock.get(produced[p]) if p in produced else None
            kind = ((owner.outs.get(p) or {}).get("kind") if owner else None) or "file"
            out[p] = {"dirHash" if kind == "dir" else "sha256": digest.split(":", 1)[1]}
        return out

    def ensure(self, name: str) -> GateState | None:
        """The gate's state for the current inputs, evaluating it when nothing holds that key."""
        if name in self.states:
            return self.states[name]
        t0 = time.perf_counter()
        try:
            return self._evaluate(name)
        finally:
            self.seconds += time.perf_counter() - t0

    def _evaluate(self, name: str) -> GateState | None:
        g = self.spec.gates[name]
        rules = self.rules[name]
        files: dict[str, str] = {}
        for stage in dict.fromkeys(r.stage or g.after for r in rules):
            entry = self.rep.lock.get(stage)
            if entry is None:
                return None
            for p in self.spec[stage].metrics:
                rec = entry.outs.get(p)
                if rec is not None:
                    files[p] = rec["digest"]
        lock = self.rep.lock.get(g.after)
        if lock is None:
            return None
        model = self._model(name)
        base_key = {"gate": name, "pipeline": self.spec.path, "policy": g.policy, "rules": self.policies[name],
                    "stage": g.after, "stage_key": lock.key, "metrics": files, "model": model}
        baseline = None
        if any(r.uses_baseline for r in rules) and self.prov is not None:
            baseline = self.book.baseline(self.spec.path, name, files)
        key = "sha256:" + hashlib.sha256(canonical_bytes(
            {**base_key, "baseline": baseline.sha256 if baseline else None})).hexdigest()
        found = self.book.by_key(key) if self.prov is not None else None
        if found is not None:
            state = GateState(name, key, found.result, list(found.detail.get("metrics", [])), record=found)
            self.states[name] = state
            return state
        docs = {p: self._read(p) for p in files}

        def find(r: Rule) -> tuple[Any, str | None]:
            cands = [r.file] if r.file else list(self.spec[r.stage or g.after].metrics)
            for p in cands:
                v = lookup_metric(docs.get(p), r.metric)
                if v is not MISSING:
                    return v, p
            return MISSING, cands[0] if cands else None

        base_vals = {}
        if baseline is not None:
            base_vals = {m["name"]: m.get("value_text") for m in baseline.detail.get("metrics", [])
                         if m.get("outcome") == "pass"}
        outcomes = [o.to_dict() for o in evaluate(rules, find, base_vals,
                                                  f"ledger entry {baseline.index}" if baseline else None)]
        subjects = {p: {"sha256": d.split(":", 1)[1]} for p, d in files.items()}
        subjects.update(model)
        detail = {"run_id": self.rep.run_id, "pipeline": self.spec.path, "stage": g.after, "key": key,
                  "time": rfc3339(time.time()), "metric_files": files, "model": sorted(model),
                  "baseline": baseline.sha256 if baseline else None, "metrics": outcomes}
        stmt = gate_statement(gate=name, policy_name=g.policy, policy=self.policies[name], subjects=subjects,
                              detail=detail)
        state = GateState(name, key, stmt["predicate"]["result"], outcomes, statement=stmt)
        self.states[name] = state
        if self.prov is not None:
            self.pending.append(stmt)
        self._say(state)
        return state

    def _read(self, path: str) -> Any:
        try:
            with open(self.rep.ws.p(path), "rb") as f:
                return json.loads(f.read(), parse_float=Decimal, parse_constant=Decimal)
        except (OSError, ValueError):
            return None

    def _say(self, state: GateState) -> None:
        err: TextIO = self.rep.err
        misses = [f"{m['name']}: {m['reason']}" for m in state.outcomes if m["outcome"] != "pass"]
        err.write(f"[certus] gate '{state.gate}': {state.result}" + (f" ({'; '.join(misses)})" if misses else "")
                  + "\n")

    # -- enforcement ---------------------------------------------------------------------------

    def block(self, st: Any) -> str | None:
        """Why ``st`` (which declares ``requires_gate``) may not start now, or None."""
        name = st.requires_gate
        g = self.spec.gates[name]
        state = self.ensure(name)
        head = f"stage '{st.name}' requires gate '{name}'"
        if state is None:
            return f"{head}, which was not evaluated (stage '{g.after}' has no result); run it first"
        if state.record is not None:
            ok, why = self.book.standing(state.record, datetime.now(UTC))
            return None if ok else f"{head}: {why}"
        if state.result == "PASSED":
            return None
        bad = next(m for m in state.outcomes if m["outcome"] == ("fail" if state.result == "FAILED" else
                                                                    "needs-review"))
        if state.result == "FAILED":
            return f"{head}: gate '{name}' failed: metric '{bad['name']}': {bad['reason']} (no waiver is accepted)"
        how = (f"; after this run, waive it with 'certus waive {self.rep.run_id} --gate {name} --metric {bad['name']} "
               "--reason \"...\" --expires YYYY-MM-DD --key APPROVER' and run 'certus repro' again"
               if self.prov is not None else "; waivers need a signed workspace (trust.json)")
        return f"{head}: gate '{name}' needs review: metric '{bad['name']}': {bad['reason']}{how}"

    # -- recording -----------------------------------------------------------------------------

    def sign_pending(self, signer: Any) -> list[tuple[str, bytes]]:
        """The results evaluated in this run as signed envelopes, ``(gate, bytes)``: the run record lists
        their digests and they are appended right after it, in the same checkpoint."""
        from engine.provenance.dsse import sign_envelope

        return [(self._gate_name(stmt), sign_envelope(PAYLOAD_TYPE, canonical_bytes(stmt), [signer]).to_json_bytes())
                for stmt in self.pending]

    def committed(self, indexes: list[int], err: TextIO) -> None:
        names = sorted(self._gate_name(s) for s in self.pending)
        self.pending = []
        for index, name in zip(indexes, names):
            err.write(f"[certus] signed gate result '{name}' ({self.states[name].result}) appended as ledger "
                      f"entry {index}\n")

    @staticmethod
    def _gate_name(stmt: dict[str, Any]) -> str:
        return str(stmt["predicate"]["configuration"][1]["annotations"]["gate"])


