"""Release a packaged bundle: the signed release record that links it to its evidence, in the ledger.

Before anything is built, :func:`gather` finds in the ledger (never in a cache) the run record, the
attestation that produced the model with exactly its bytes, and every consumed dataset's manifest and
approval; a missing link refuses the release. After the bundle is signed, :func:`release_record`
writes down those links with the bundle's digests, and :func:`publish` appends the record, signed by
the same releaser key that signed the bundle, after checking that the key may release now.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ReleaseError
from engine.provenance.release_records import RELEASE_TYPE, ReleaseRecord
from engine.release.evidence import (
    approvals_in_registry,
    attested_outputs,
    consumed_manifests,
    dataset_links,
    model_links,
)
from engine.release.ledger_view import LedgerView
from engine.release.oms import SIGNATURE_FILE
from engine.store.hashing import dir_manifest_bytes, file_digest

__all__ = ["Evidence", "gather", "release_record", "publish", "append_signed"]


@dataclass(frozen=True)
class Evidence:
    run: dict[str, Any]  # run_id, record_sha256, ledger_index
    artifact: str  # the model's path in the workspace, as the run attested it
    artifact_digest: str
    files: dict[str, str]  # bundle path (model/...) -> sha256
    models: list[dict[str, Any]]
    datasets: list[dict[str, Any]]


def model_files(src: Path) -> dict[str, str]:
    """``model/<rel>`` -> sha256 of each file a bundle of ``src`` will hold."""
    if src.is_file():
        return {f"model/{src.name}": file_digest(str(src))}
    out = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[f"model/{p.relative_to(src).as_posix()}"] = file_digest(str(p))
    return out


def artifact_digest(src: Path, files: Mapping[str, str]) -> str:
    """The digest the run attested for the model: a file's sha256, a directory's in-toto dirHash."""
    if src.is_file():
        return next(iter(files.values()))
    listing = [(f.removeprefix("model/"), sha, 0) for f, sha in files.items()]
    return hashlib.sha256(dir_manifest_bytes(listing)).hexdigest()


def gather(prov: Any, run: Mapping[str, Any], model: str) -> Evidence:
    """The ledger evidence for releasing ``model`` (a path in the workspace) from the run ``run``."""
    view = LedgerView.load(prov)
    if view.problem:
        raise ReleaseError(f"ledger: {view.problem}; run 'certus verify'")
    run_entry = view.by_sha.get(str(run.get("run_record_sha256")))
    if run_entry is None:
        raise ReleaseError(f"run {run.get('run_id')}: its record is not in the ledger")
    src = Path(model)
    try:
        artifact = src.resolve().relative_to(Path(prov.ws.root).resolve()).as_posix()
    except ValueError:
        raise ReleaseError(f"model {model}: not inside the workspace, so no run can have attested it") from None
    files = model_files(src)
    digest = artifact_digest(src, files)
    outputs = attested_outputs(prov, view)
    models = model_links(outputs, run_entry, artifact, digest, files)
    start = [outputs[(artifact, digest)]]
    datasets = dataset_links(view, consumed_manifests(outputs, start), approvals_in_registry(prov.ws.root))
    ref = {"run_id": run["run_id"], "record_sha256": run_entry.sha256, "ledger_index": run_entry.index}
    return Evidence(ref, artifact, digest, files, models, datasets)


def release_record(ev: Evidence, built: Any, name: str, version: str, releaser: str, time: str,
                   gates: tuple[Mapping[str, Any], ...]) -> ReleaseRecord:
    signed = {r.name: r.digest for r in built.resources}
    for f, sha in ev.files.items():
        if signed.get(f) != sha:
            raise ReleaseError(f"bundle {built.path}: {f} changed while it was packaged; package again")
    sig_sha = hashlib.sha256((Path(built.path) / SIGNATURE_FILE).read_bytes()).hexdigest()
    gate_links = [{"gate": g["gate"], "result": g["result"], "sha256": g["sha256"], "ledger_index": g["ledger_index"],
                   "waivers": [{"metric": w["metric"], "sha256": w["sha256"], "ledger_index": w["ledger_index"]}
                               for w in g.get("waivers", [])]} for g in gates]
    return ReleaseRecord(time=time, name=name, version=version, bundle_root=built.root_digest,
                         signature_sha256=sig_sha, releaser=releaser, run=ev.run, models=ev.models,
                         gates=tuple(gate_links), datasets=tuple(ev.datasets))


def publish(prov: Any, record: ReleaseRecord, signer: Any) -> int:
    """Append ``record`` signed by ``signer`` (the bundle's releaser key); returns its ledger index."""
    return append_signed(prov, [(RELEASE_TYPE, record.to_dict(), "releaser")], {"releaser": signer})[0]


def append_signed(prov: Any, records: list[tuple[str, Mapping[str, Any], str]], signers: Mapping[str, Any]
                  ) -> list[int]:
    """Append ``records`` under one checkpoint with the given signers per role (checked against the
    trust file now)."""
    for role, signer in signers.items():
        prov.use_signer(role, signer)
    done = prov.append_records(records)
    return [index for index, _ in done]
