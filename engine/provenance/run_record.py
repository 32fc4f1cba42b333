"""Recording a run: one in-toto/SLSA statement per stage it executed or restored, the run record
over them, and its append to the ledger.

A restored stage is signed only with ``restored-from`` naming the ledger's own attestation of
exactly those outputs (:func:`restore_source`), never the run cache's say-so.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine import __version__
from engine.core.canonical import canonical_bytes
from engine.errors import LedgerError
from engine.provenance.dsse import sign_envelope
from engine.provenance.records import RUN_TYPE, RunRecord, attestation_root
from engine.provenance.statement import PAYLOAD_TYPE, rfc3339, stage_statement
from engine.store.fsutil import atomic_write

__all__ = ["record_run", "restore_source"]


def sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def restore_source(index: Any, stage: str, outs: Mapping[str, Mapping[str, Any]]) -> list[str] | None:
    """``[run id, stage, attestation sha256]`` of a ledger attestation of exactly these outputs by
    this stage, or None: a run-cache restore is signed only when the ledger already vouches for it."""
    found = None
    for path, out in sorted(outs.items()):
        hit = index.attestation_of(path, out.get("digest"))
        if hit is None or hit[1] != stage or (found is not None and hit[0] != found[0]):
            return None
        found = hit
    return found


def record_run(prov: Any, rep: Any, result: Any, git: Mapping[str, Any],
               on_commit: Callable[[RunRecord], None] | None = None,
               gate_results: Sequence[tuple[str, bytes]] = ()) -> tuple[RunRecord, list[int]]:
    """Attest every executed/restored stage, sign the run record, append it to the ledger.

    ``gate_results`` are the run's signed gate results, ``(gate, envelope bytes)``: the record lists
    their digests and they follow it in the same append (one checkpoint). Returns the record and the
    ledger indexes of the gate results.
    """
    signer = prov.signer("trainer")
    index = prov.index()
    env_common = {k: v for k, v in (("PYTHONHASHSEED", "0"), ("TZ", "UTC"), ("LC_ALL", "C.UTF-8"),
                                    ("SOURCE_DATE_EPOCH", rep._sde_cached()))}
    envelopes: list[tuple[str, bytes]] = []
    registry = None
    if os.path.isdir(prov.ws.p(".certus", "datasets")):
        from engine.datasets.registry import Registry, manifest_path

        registry = Registry.load(prov.ws.root)
    for name in sorted(result.outcomes):
        oc = result.outcomes[name]
        if oc.state not in ("ran", "restored"):
            continue
        st = rep.spec[name]
        log_digest = None
        if oc.state == "ran" and oc.log_path and os.path.exists(oc.log_path):
            with open(oc.log_path, "rb") as f:
                log_digest = sha256_hex(f.read())
        restored_from = None
        if oc.state == "restored":  # the ledger's attestation of these bytes, never the run cache's say-so
            found = restore_source(index, name, oc.outs)
            if found is None:
                raise LedgerError(f"stage '{name}': restored outputs have no attestation in the ledger; "
                                  "nothing was signed; run 'certus repro' again")
            restored_from = {"run_id": found[0], "attestation": found[2]}
        datasets = list(getattr(oc, "datasets", ()) or ())
        if registry is not None:  # deps that are registered (derived) datasets: name their manifests
            named = {d["name"] for d in datasets}
            for dep, digest in sorted(oc.deps.items()):
                hit = registry.by_path_digest(dep, digest)
                if hit is not None and manifest_path(hit.manifest) not in named:
                    from engine.datasets.registry import DatasetUse

                    datasets.append(DatasetUse(hit.manifest.ref, hit.manifest, sha256_hex(hit.raw)).as_dependency())
        stmt = stage_statement(
            stage=name, cmd=st.cmd, params=st.params_dict(), pipeline=rep.spec.path,
            overrides=result.overrides, outs=oc.outs, deps=oc.deps,
            datasets=datasets, key=oc.key, engine_version=f"certus {__version__}",
            python=platform.python_version(), platform=platform.platform(),
            env={**env_common, **st.env_dict()}, run_id=result.run_id, started=oc.started,
            finished=oc.finished, exit_status=oc.returncode, log_digest=log_digest, restored_from=restored_from,
            sandbox=getattr(oc, "sandbox", None) if oc.state == "ran" else None,
        )
        env = sign_envelope(PAYLOAD_TYPE, canonical_bytes(stmt), [signer])
        envelopes.append((name, env.to_json_bytes()))
    bundle = b"".join(e + b"\n" for _, e in envelopes)
    rel_bundle = os.path.relpath(prov.attestation_path(result.run_id), prov.ws.root)
    if envelopes:
        atomic_write(prov.attestation_path(result.run_id), bundle)
    digests = {name: sha256_hex(e) for name, e in envelopes}
    stages = {}
    for name, oc in sorted(result.outcomes.items()):
        entry: dict[str, Any] = {"state": oc.state, "key": oc.key,
                                 "outs": {p: o["digest"] for p, o in sorted(oc.outs.items())}}
        if name in digests:
            entry["attestation"] = digests[name]
        if oc.error:
            entry["error"] = oc.error
        stages[name] = entry
    try:
        with open(prov.ws.lock_path, "rb") as f:
            lock_sha = sha256_hex(f.read())
    except FileNotFoundError:
        lock_sha = None
    with open(prov.ws.p(rep.spec.path), "rb") as f:
        spec_sha = sha256_hex(f.read())
    record = RunRecord(
        run_id=result.run_id, started=rfc3339(result.started), finished=rfc3339(result.finished or result.started),
        status=result.status, git=dict(git), config=result.config, overrides=list(result.overrides),
        pipeline=rep.spec.path, spec_sha256=spec_sha, lock_sha256=lock_sha, stages=stages,
        attestations=[{"stage": n, "sha256": digests[n], "path": rel_bundle} for n, _ in envelopes],
        merkle_root=attestation_root([e for _, e in envelopes]),
        failed=sorted(n for n, o in result.outcomes.items() if o.state == "failed"),
        artifacts=_artifacts(rep.spec, result),
        gate_results=[{"gate": g, "sha256": sha256_hex(e)} for g, e in sorted(gate_results)],
    )

    def committed(done: list[tuple[int, bytes]]) -> None:
        if on_commit is not None:
            on_commit(record)

    done = prov.append_records([(RUN_TYPE, record.to_dict(), "trainer"), *(e for _, e in sorted(gate_results))],
                               on_commit=committed)
    return record, [at for at, _ in done[1:]]


def _artifacts(spec: Any, result: Any) -> dict[str, dict[str, Any]]:
    """A DVC project's declared ``artifacts:`` with the digest this run left each at (for lineage)."""
    import posixpath

    outs: dict[str, str] = {}
    for oc in result.outcomes.values():
        for path, rec in (getattr(oc, "outs", None) or {}).items():
            outs[path] = rec.get("digest") if isinstance(rec, dict) else rec
    found: dict[str, dict[str, Any]] = {}
    for f in getattr(spec, "files", ()):
        base = posixpath.dirname(f.path)
        for name, a in (f.artifacts or {}).items():
            if not isinstance(a, dict) or not a.get("path"):
                continue
            path = posixpath.normpath(posixpath.join(base, str(a["path"])))
            found[name if not base else f"{base}/dvc.yaml:{name}"] = {
                "path": path, "type": a.get("type"), "desc": a.get("desc"), "labels": list(a.get("labels") or []),
                "meta": a.get("meta"), "digest": outs.get(path)}
    return found
