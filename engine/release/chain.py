"""Verification before deploy: the bundle, then every link of its chain back to approved data.

Order (the first broken link is named in one line; the rest is still listed in the report):

1. the ledger itself: its signed checkpoint verifies under the ledger keys its trust records name and
   commits to exactly the entries on disk;
2. the bundle's release record: in the ledger, naming this bundle's root digest and ``model.sig``;
   signed by the bundle's own key, which holds ``releaser`` at the record's ledger position (a key
   revoked before it was logged, or never a releaser, fails here whatever time it claims);
3. the bundle (OMS v1.0): signature under that key, every file's digest, no unsigned extra file;
4. the run record, the attestation that produced each model file with exactly the bundle's bytes,
   each gate result of the run standing now (passed, or every needs-review rule covered by a waiver
   that is still valid), and every dataset on the model's lineage with its manifest and approval —
   all in the ledger at the positions cited, validly signed for their roles, before the release,
   each with an inclusion proof against the signed checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import BundleFormatError, ReleaseError
from engine.provenance.records import EVENT_ROLES, RUN_TYPE
from engine.provenance.release_records import RELEASE_TYPE, ReleaseRecord
from engine.release.evidence import approvals_in_registry, attested_outputs, consumed_manifests, run_outputs
from engine.release.ledger_view import LedgerView, ViewEntry
from engine.release.oms import SIGNATURE_FILE, parse_bundle, parse_statement
from engine.release.verify import BundleReport, verify_bundle

__all__ = ["ChainReport", "verify_chain"]


@dataclass
class ChainReport:
    bundle: str
    failures: list[str] = field(default_factory=list)
    links: list[tuple[str, str, int]] = field(default_factory=list)  # (what, envelope sha256, ledger index)
    release: ReleaseRecord | None = None
    release_entry: ViewEntry | None = None
    bundle_report: BundleReport | None = None
    trust_at_release: Any = None  # the trust state at the release record's position (judges the bundle)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, msg: str) -> None:
        self.failures.append(msg)


def verify_chain(prov: Any, bundle: str, *, now: datetime) -> ChainReport:
    """Check ``bundle`` and its chain in ``prov``'s ledger; never raises for what it finds."""
    import hashlib

    rep = ChainReport(bundle=bundle)
    try:
        view = LedgerView.load(prov)
    except ReleaseError as e:
        rep.fail(f"ledger: {e}")
        return rep
    if view.problem:
        rep.fail(f"ledger: {view.problem}")
        return rep
    root = Path(bundle)
    try:
        sig_bytes = (root / SIGNATURE_FILE).read_bytes()
        statement = parse_statement(parse_bundle(sig_bytes).envelope.payload)
    except OSError as e:
        rep.fail(f"bundle {bundle}: {SIGNATURE_FILE}: cannot read ({e.strerror})")
        return rep
    except BundleFormatError as e:
        rep.fail(f"bundle {bundle}: {e}")
        return rep
    sig_sha = hashlib.sha256(sig_bytes).hexdigest()
    entry, record = _release_of(view, statement.subject_digest, sig_sha, rep)
    if entry is None or record is None:
        return rep
    rep.release, rep.release_entry = record, entry
    _link(view, entry, "release record", "releaser", record.time, rep)
    # the bundle: judged with the trust state at the release record's position and the time it claims
    at = view.time_of(entry) or now
    rep.trust_at_release = view.history.state_at(entry.index)
    br = verify_bundle(root, trust=rep.trust_at_release, at=at)
    rep.bundle_report = br
    rep.failures += [f"bundle {bundle}: {f}" for f in br.failures]
    if br.keyid and br.keyid not in view.signers(entry):
        rep.fail(f"release record (ledger entry {entry.index}): signed by another key than the bundle's "
                 f"({br.keyid[:16]}…)")
    if record.releaser != br.keyid:
        rep.fail(f"release record (ledger entry {entry.index}): names releaser {record.releaser[:16]}…, the "
                 f"bundle is signed by {str(br.keyid)[:16]}…")
    _check_run(view, record, entry, rep)
    outputs = attested_outputs(prov, view, before=entry.index)  # read once: every attestation bundle listed
    _check_models(view, record, statement, outputs, rep)
    _check_gates(view, record, entry, now, rep)
    _check_datasets(prov, view, record, outputs, rep)
    return rep


def _release_of(view: LedgerView, root: str, sig_sha: str, rep: ChainReport
                ) -> tuple[ViewEntry | None, ReleaseRecord | None]:
    hits = []
    for e in view.of_type(RELEASE_TYPE):
        try:
            rec = ReleaseRecord.from_dict(e.payload)
        except ValueError:
            continue
        if rec.bundle_root == root:
            hits.append((e, rec))
    if not hits:
        rep.fail(f"release record: none in the ledger for bundle root sha256 {root[:16]}… (package it with "
                 "'certus package --run RUN', which logs one)")
        return None, None
    same = [(e, r) for e, r in hits if r.signature_sha256 == sig_sha]
    if not same:
        rep.fail(f"release record (ledger entry {hits[-1][0].index}): names another {SIGNATURE_FILE} "
                 f"(sha256 {hits[-1][1].signature_sha256[:16]}…) for this bundle: the signature file was replaced")
        return None, None
    return same[-1]


def _link(view: LedgerView, entry: ViewEntry, what: str, role: str, at: str, rep: ChainReport,
          before: ViewEntry | None = None) -> bool:
    """One link: signed by ``role`` at its position, included under the checkpoint, before ``before``."""
    where = f"{what} (ledger entry {entry.index})"
    problem = view.signature_problem(entry, role, at) or view.inclusion_problem(entry)
    if problem is None and before is not None and entry.index >= before.index:
        problem = f"comes after the record that cites it (ledger entry {before.index})"
    if problem:
        rep.fail(f"{where}: {problem}")
        return False
    rep.links.append((what, entry.sha256, entry.index))
    return True


def _cited(view: LedgerView, sha: Any, index: Any, what: str, rep: ChainReport) -> ViewEntry | None:
    e = view.by_sha.get(str(sha))  # the digest binds; the index is where it was when cited (it may be re-sequenced)
    if e is None:
        rep.fail(f"{what}: sha256 {str(sha)[:16]}… is not in the ledger (cited at entry {index})")
        return None
    return e


def _check_run(view: LedgerView, record: ReleaseRecord, release: ViewEntry, rep: ChainReport) -> None:
    run = record.run
    e = _cited(view, run.get("record_sha256"), run.get("ledger_index"), f"run record of {run.get('run_id')}", rep)
    if e is None:
        return
    if e.envelope.payload_type != RUN_TYPE or e.payload.get("run_id") != run.get("run_id"):
        rep.fail(f"run record (ledger entry {e.index}): not the record of run {run.get('run_id')}")
        return
    _link(view, e, f"run record of {run.get('run_id')}", "trainer",
          str(e.payload.get("finished") or e.payload.get("started")), rep, before=release)


def _check_models(view: LedgerView, record: ReleaseRecord, statement: Any, outputs: Any, rep: ChainReport) -> None:
    signed = {r.name: r.digest for r in statement.resources}
    models = [m for m in signed if m.startswith("model/")]
    cited = {str(m.get("file")): m for m in record.models}
    for f in sorted(set(models) - set(cited)):
        rep.fail(f"model file {f}: the release record does not link it to an attestation")
    for f, m in sorted(cited.items()):
        if signed.get(f) != m.get("sha256"):
            rep.fail(f"model file {f}: the release record's sha256 {str(m.get('sha256'))[:16]}… is not the bundle's")
            continue
        artifact, digest = str(m.get("artifact")), str(m.get("artifact_digest"))
        att = outputs.get((artifact, digest))
        run = view.by_sha.get(str(record.run.get("record_sha256")))
        if run is None or run_outputs(run).get(artifact) != digest:
            rep.fail(f"model file {f}: run {record.run.get('run_id')} did not produce or use {artifact} with these "
                     "bytes")
            continue
        if att is None or att.sha256 != m.get("attestation") or att.run.index > run.index:
            rep.fail(f"model file {f}: no attestation in the ledger produced {artifact} with these bytes")
            continue
        if len(files := [x for x in signed if x.startswith("model/")]) == 1 and signed[files[0]] != digest:
            rep.fail(f"model file {f}: the bundle's bytes are not the attested {artifact}")
            continue
        if _link(view, att.run, f"attestation of {m.get('artifact')} (its run record)", "trainer",
                 str(att.run.payload.get("finished")), rep):
            from engine.provenance.dsse import verify_envelope

            try:
                pub = view.history.check(att.envelope.signatures[0].keyid, "trainer",
                                         view.time_of(att.run) or datetime.now(), att.run.index)
                verify_envelope(att.envelope, {att.envelope.signatures[0].keyid: pub}, att.envelope.payload_type)
            except Exception as e:  # noqa: BLE001 - any failure is a broken link, named
                rep.fail(f"attestation of {m.get('artifact')} (stage '{att.stage}'): does not verify: {e}")


def _check_gates(view: LedgerView, record: ReleaseRecord, release: ViewEntry, now: datetime,
                 rep: ChainReport) -> None:
    from engine.gates.book import GateBook

    book = GateBook.from_entries(view.raws, view.history)
    run_id = str(record.run.get("run_id"))
    run = view.by_sha.get(str(record.run.get("record_sha256")))
    model = next(iter(record.models), {})
    latest = {g: r for g, r in book.speaking_for(run_id, model.get("artifact"), model.get("artifact_digest"),
                                                  run.index if run else None).items() if r.index < release.index}
    cited = {str(g.get("gate")): g for g in record.gates}
    for gate, rec in sorted(latest.items()):
        g = cited.get(gate)
        if g is None or g.get("sha256") != rec.sha256:
            rep.fail(f"gate '{gate}' of run {run_id}: the release record does not cite its result at ledger entry "
                     f"{rec.index}")
            continue
        e = view.by_sha[rec.sha256]
        _link(view, e, f"gate '{gate}' result", "trainer", str(rec.detail.get("time")), rep, before=release)
        ok, why = book.standing(rec, now)
        if not ok:
            rep.fail(f"gate '{gate}' of run {run_id}: {why}")
            continue
        covered, _ = book.coverage(rec, now)
        for name, w in sorted(covered.items()):
            _link(view, view.by_sha[w.sha256], f"waiver of gate '{gate}' metric '{name}'", "approver",
                  str(w.payload.get("time")), rep)
    for gate in sorted(set(cited) - set(latest)):
        rep.fail(f"gate '{gate}': the release record cites a result the ledger does not hold for run {run_id}")


def _check_datasets(prov: Any, view: LedgerView, record: ReleaseRecord, outputs: Any, rep: ChainReport) -> None:
    cited = {str(d.get("manifest_sha256")): d for d in record.datasets}
    release = rep.release_entry
    assert release is not None
    start = [o for o in outputs.values() if any(o.sha256 == m.get("attestation") for m in record.models)]
    consumed = consumed_manifests(outputs, start)
    for sha in sorted(set(consumed) - set(cited)):
        rep.fail(f"dataset {consumed[sha].get('dataset', '?')}: the model's lineage consumed its manifest "
                 f"(sha256 {sha[:16]}…), which the release record does not cite")
    approvals = approvals_in_registry(prov.ws.root)
    for sha, d in sorted(cited.items()):
        ref = d.get("dataset")
        e = _cited(view, d.get("event_sha256"), d.get("ledger_index"), f"dataset {ref} manifest record", rep)
        if e is not None:
            kind = str(e.payload.get("kind"))
            if (e.payload.get("details") or {}).get("manifest_sha256") != sha:
                rep.fail(f"dataset {ref} (ledger entry {e.index}): does not register manifest {sha[:16]}…")
            else:
                _link(view, e, f"dataset {ref} manifest ({kind})", EVENT_ROLES.get(kind, "trainer"),
                      str(e.payload.get("time")), rep, before=release)
        app = d.get("approval")
        if app == "inherited" and e is not None and e.payload.get("kind") == "dataset.derived":
            continue
        if not isinstance(app, dict):
            rep.fail(f"dataset {ref}: no approval is cited for its manifest")
            continue
        a = _cited(view, app.get("event_sha256"), app.get("ledger_index"), f"dataset {ref} approval", rep)
        if a is None:
            continue
        if a.payload.get("kind") != "dataset.approved" or \
                (a.payload.get("details") or {}).get("approval_sha256") != app.get("sha256"):
            rep.fail(f"dataset {ref} approval (ledger entry {a.index}): not an approval record for "
                     f"{str(app.get('sha256'))[:16]}…")
            continue
        if approvals.get(sha) not in (None, app.get("sha256")):
            rep.fail(f"dataset {ref}: the approval in the workspace is not the one the release cites")
        _link(view, a, f"dataset {ref} approval", "approver", str(a.payload.get("time")), rep, before=release)
