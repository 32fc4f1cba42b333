"""The evidence a release cites, gathered from the ledger and the attestation bundles it commits to.

Packaging uses it to write the release record; deploy uses it again to check that the record cites
everything the ledger says the model came from (a dataset the model's lineage consumed but the record
leaves out is a broken link, not a detail).

Lineage: the model file's attestation (an attested output of the run, with the same digest), then,
through each attestation's ``resolvedDependencies``, the attestations that produced those digests, in
any earlier run; every dataset manifest met on the way is a consumed dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.datasets.registry import MANIFEST_MEDIA_TYPE
from engine.errors import EngineError, ReleaseError
from engine.provenance.dsse import Envelope
from engine.provenance.records import EVENT_TYPE, RUN_TYPE
from engine.release.ledger_view import LedgerView, ViewEntry

__all__ = ["Attested", "attested_outputs", "run_outputs", "model_links", "consumed_manifests", "dataset_links",
           "approvals_in_registry"]



@dataclass(frozen=True)
class Attested:
    """One stage attestation that a run record in the ledger lists."""

    run: ViewEntry
    stage: str
    sha256: str  # of the envelope line
    envelope: Envelope
    statement: dict[str, Any]

    def subjects(self) -> dict[str, str]:
        out = {}
        for s in self.statement.get("subject") or ():
            d = s.get("digest") or {}
            v = d.get("sha256", d.get("dirHash"))
            if isinstance(v, str):
                out[str(s.get("name"))] = v
        return out

    def deps(self) -> list[dict[str, Any]]:
        bd = (self.statement.get("predicate") or {}).get("buildDefinition") or {}
        return [d for d in bd.get("resolvedDependencies") or () if isinstance(d, dict)]


def attested_outputs(prov: Any, view: LedgerView, before: int | None = None) -> dict[tuple[str, str], Attested]:
    """``(path, hex digest) -> the latest attestation producing it``, from run records before ``before``."""
    out: dict[tuple[str, str], Attested] = {}
    for run in view.of_type(RUN_TYPE):
        if before is not None and run.index >= before:
            continue
        listed = {str(a.get("sha256")): str(a.get("stage")) for a in run.payload.get("attestations") or ()
                  if isinstance(a, Mapping)}
        if not listed:
            continue
        try:
            with open(prov.attestation_path(str(run.payload.get("run_id"))), "rb") as f:
                lines = [ln for ln in f.read().split(b"\n") if ln]
        except OSError:
            continue
        for line in lines:
            sha = hashlib.sha256(line).hexdigest()
            if sha not in listed:
                continue
            try:
                env = Envelope.from_json_bytes(line)
                stmt = json.loads(env.payload)
            except (EngineError, ValueError):
                continue
            att = Attested(run, listed[sha], sha, env, stmt)
            for path, digest in att.subjects().items():
                out[(path, digest)] = att
    return out


def run_outputs(run: ViewEntry) -> dict[str, str]:
    """``path -> hex digest`` of every output the run record lists (run, restored or up to date)."""
    out = {}
    for st in (run.payload.get("stages") or {}).values():
        for path, digest in ((st or {}).get("outs") or {}).items() if isinstance(st, Mapping) else ():
            out[str(path)] = str(digest).split(":", 1)[-1]
    return out


def model_links(outputs: Mapping[tuple[str, str], Attested], run: ViewEntry, artifact: str, digest: str,
                files: Mapping[str, str]) -> list[dict[str, Any]]:
    """The model's link to the run: the run record lists ``artifact`` with ``digest`` (a file's sha256 or a
    directory's dirHash) and an attestation in the ledger, this run's or (up to date) an earlier one's,
    produced exactly those bytes; ``files`` are the bundle's model files it covers."""
    run_id = run.payload.get("run_id")
    if run_outputs(run).get(artifact) != digest:
        raise ReleaseError(f"model {artifact} (sha256 {digest[:16]}…): run {run_id} did not produce or use these "
                           "bytes (its record lists another digest or none); package the model the run attested")
    att = outputs.get((artifact, digest))
    if att is None or att.run.index > run.index:
        raise ReleaseError(f"model {artifact} (sha256 {digest[:16]}…): no attestation in the ledger produced it "
                           "with these bytes")
    return [{"file": f, "artifact": artifact, "sha256": sha, "stage": att.stage, "attestation": att.sha256,
             "artifact_digest": digest} for f, sha in sorted(files.items())]


def consumed_manifests(outputs: Mapping[tuple[str, str], Attested], start: Iterable[Attested]
                       ) -> dict[str, dict[str, Any]]:
    """Every dataset manifest on the lineage from ``start``: manifest sha256 -> its annotations."""
    seen: set[str] = set()
    todo = list(start)
    found: dict[str, dict[str, Any]] = {}
    while todo:
        att = todo.pop()
        if att.sha256 in seen:
            continue
        seen.add(att.sha256)
        for dep in att.deps():
            sha = (dep.get("digest") or {}).get("sha256")
            if not isinstance(sha, str):
                continue
            if dep.get("mediaType") == MANIFEST_MEDIA_TYPE:
                found[sha] = dict(dep.get("annotations") or {})
                continue
            producer = outputs.get((str(dep.get("name")), sha))
            if producer is not None and producer.run.index <= att.run.index:
                todo.append(producer)
    return found


def dataset_links(view: LedgerView, manifests: Mapping[str, Mapping[str, Any]], approvals: Mapping[str, str]
                  ) -> list[dict[str, Any]]:
    """For each consumed manifest: the ledger event logging it and (source data) the approval event.

    ``approvals``: manifest sha256 -> the sha256 of the approval file that approves it (from the
    workspace's dataset registry); derived datasets inherit their parents' approval."""
    logged: dict[tuple[str, str], ViewEntry] = {}
    for e in view.of_type(EVENT_TYPE):
        details = e.payload.get("details") or {}
        if not isinstance(details, dict):
            continue
        for k in ("manifest_sha256", "approval_sha256"):
            if details.get(k):
                logged.setdefault((k, str(details[k])), e)
    out = []
    for sha, ann in sorted(manifests.items()):
        ref = str(ann.get("dataset", "?"))
        ev = logged.get(("manifest_sha256", sha))
        if ev is None:
            raise ReleaseError(f"dataset {ref}: its manifest (sha256 {sha[:16]}…) is not registered in the ledger")
        link: dict[str, Any] = {"dataset": ref, "manifest_sha256": sha, "event": ev.payload.get("kind"),
                                "event_sha256": ev.sha256, "ledger_index": ev.index}
        if ev.payload.get("kind") == "dataset.derived":
            link["approval"] = "inherited"
        else:
            app_sha = approvals.get(sha)
            app = logged.get(("approval_sha256", app_sha or ""))
            if app is None or app.payload.get("kind") != "dataset.approved":
                raise ReleaseError(f"dataset {ref}: no approval of its manifest (sha256 {sha[:16]}…) is in the "
                                   "ledger; approve it ('certus dataset approve') before releasing")
            link["approval"] = {"sha256": app_sha, "event_sha256": app.sha256, "ledger_index": app.index}
        out.append(link)
    return out


def approvals_in_registry(ws_root: str) -> dict[str, str]:
    """manifest sha256 -> sha256 of the approval file approving it, from ``.certus/datasets``."""
    from engine.datasets.registry import Registry

    try:
        reg = Registry.load(ws_root)
    except EngineError:
        return {}
    out = {}
    for versions in reg.entries.values():
        for entry in versions:
            if entry.approval is not None and entry.approval_raw is not None:
                if entry.approval.get("manifest_sha256") == hashlib.sha256(entry.raw).hexdigest():
                    out[hashlib.sha256(entry.raw).hexdigest()] = hashlib.sha256(entry.approval_raw).hexdigest()
    return out
