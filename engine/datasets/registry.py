"""Governed datasets: signed manifests, approvals, policy checks and derived datasets.

Layout (committed with the workspace)::

    .certus/datasets/<name>/<id12>.manifest.json   DSSE envelope of the manifest (data-steward key;
                                                   derived datasets: the run's trainer key)
    .certus/datasets/<name>/<id12>.approval.json   DSSE envelope of the approval (approver key)

A dataset's ID is the SHA-256 content digest Certus computes for its bytes (a directory's is
its manifest digest, as for outputs). DVC tracks raw data (``.dvc`` files, its cache and
remotes); the manifest records DVC's md5 beside our SHA-256, so either tool can re-check it.

Before a stage that consumes a dataset runs, :func:`check_use` demands: bytes matching the
manifest, a valid approval (not by the registering key), retention not expired, and a
sensitivity that ``certus.policy`` in the composed config allows for that stage.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import DatasetError, SignatureError
from engine.provenance.dsse import Envelope, sign_envelope
from engine.store.fsutil import atomic_write

__all__ = ["DatasetManifest", "Registry", "SENSITIVITY", "MANIFEST_TYPE", "APPROVAL_TYPE", "parse_retention",
           "DatasetUse"]

MANIFEST_TYPE = "application/vnd.certus.dataset+json"
APPROVAL_TYPE = "application/vnd.certus.dataset-approval+json"
MANIFEST_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json; payload=" + MANIFEST_TYPE
SENSITIVITY = ("public", "internal", "confidential", "pii")
DATASETS_DIR = ".certus/datasets"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def parse_retention(text: str, start: date) -> date:
    """``365d``, ``12w``, ``6m`` (30-day months), ``2y`` (365-day years), or an ISO date."""
    m = re.fullmatch(r"(\d+)([dwmy])", text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        days = n * {"d": 1, "w": 7, "m": 30, "y": 365}[unit]
        return start + timedelta(days=days)
    try:
        return date.fromisoformat(text.strip())
    except ValueError as e:
        raise DatasetError(f"retention '{text}': expected e.g. 365d, 12w, 6m, 2y or a date 2027-01-31") from e


@dataclass(frozen=True, slots=True)
class DatasetManifest:
    """What a dataset is, where it came from and the rules it lives under."""

    id: str  # sha256:<hex> of the content
    name: str
    version: int
    path: str
    source: str
    sensitivity: str
    expires: str  # ISO date
    license: str
    owner: str
    registered: str  # RFC 3339
    rows: int | None = None
    columns: int | None = None
    schema: Mapping[str, str] | None = None  # {"path", "sha256"}
    dvc: Mapping[str, Any] | None = None
    parents: tuple[str, ...] = ()  # "name@id" of the datasets it was derived from
    produced_by: Mapping[str, str] | None = None  # {"run", "stage"} for derived datasets
    approval: str = "required"  # required | inherited
    policy: tuple[str, ...] = ("conf/config.yaml#certus.policy",)

    @property
    def short(self) -> str:
        return self.id.split(":", 1)[-1][:12]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.short}"

    def to_dict(self) -> dict[str, Any]:
        return {"_type": "https://certus.dev/DatasetManifest/v1", "id": self.id, "name": self.name,
                "version": self.version, "path": self.path, "source": self.source, "sensitivity": self.sensitivity,
                "retention": {"expires": self.expires}, "license": self.license, "owner": self.owner,
                "registered": self.registered, "rows": self.rows, "columns": self.columns,
                "schema": dict(self.schema) if self.schema else None, "dvc": dict(self.dvc) if self.dvc else None,
                "parents": list(self.parents), "produced_by": dict(self.produced_by) if self.produced_by else None,
                "approval": self.approval, "policy": list(self.policy)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetManifest:
        return cls(id=d["id"], name=d["name"], version=int(d["version"]), path=d["path"], source=d["source"],
                   sensitivity=d["sensitivity"], expires=d["retention"]["expires"], license=d["license"],
                   owner=d["owner"], registered=d["registered"], rows=d.get("rows"), columns=d.get("columns"),
                   schema=d.get("schema"), dvc=d.get("dvc"), parents=tuple(d.get("parents") or ()),
                   produced_by=d.get("produced_by"), approval=d.get("approval", "required"),
                   policy=tuple(d.get("policy") or ()))


@dataclass
class Entry:
    """A manifest on disk with its envelope and (if any) approval."""

    manifest: DatasetManifest
    envelope: Envelope
    raw: bytes
    path: str
    approval: dict[str, Any] | None = None
    approval_envelope: Envelope | None = None
    approval_raw: bytes | None = None


@dataclass
class DatasetUse:
    """A dataset a stage consumes, after every check passed."""

    ref: str
    manifest: DatasetManifest
    manifest_sha256: str

    def as_dependency(self) -> dict[str, Any]:
        """The manifest as a resource descriptor: its file's path and the SHA-256 of its bytes.

        The data's own digest is the dep on ``manifest.path``; this one is unambiguously the
        manifest's (``mediaType`` says so), with the dataset it names as annotations.
        """
        return {"name": manifest_path(self.manifest), "digest": {"sha256": self.manifest_sha256},
                "mediaType": MANIFEST_MEDIA_TYPE,
                "annotations": {"dataset": self.manifest.ref, "dataId": self.manifest.id,
                                "path": self.manifest.path, "version": self.manifest.version,
                                "sensitivity": self.manifest.sensitivity}}


@dataclass
class Registry:
    """Read access to the manifests under ``.certus/datasets`` (no DVC import, no signing)."""

    root: str
    entries: dict[str, list[Entry]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str) -> Registry:
        reg = cls(root=root)
        base = os.path.join(root, DATASETS_DIR)
        if not os.path.isdir(base):
            return reg
        for name in sorted(os.listdir(base)):
            d = os.path.join(base, name)
            if not os.path.isdir(d):
                continue
            for fn in sorted(os.listdir(d)):
                if not fn.endswith(".manifest.json"):
                    continue
                p = os.path.join(d, fn)
                with open(p, "rb") as f:
                    raw = f.read()
                rel = os.path.relpath(p, root)
                try:
                    env = Envelope.from_json_bytes(raw)
                    man = DatasetManifest.from_dict(json.loads(env.payload))
                except (SignatureError, ValueError, KeyError, TypeError) as e:
                    raise DatasetError(f"{rel}: unreadable dataset manifest ({e}); restore it from git") from e
                entry = Entry(manifest=man, envelope=env, raw=raw, path=rel)
                ap = p.replace(".manifest.json", ".approval.json")
                if os.path.exists(ap):
                    with open(ap, "rb") as f:
                        entry.approval_raw = f.read()
                    try:
                        entry.approval_envelope = Envelope.from_json_bytes(entry.approval_raw)
                        entry.approval = json.loads(entry.approval_envelope.payload)
                    except (SignatureError, ValueError) as e:
                        raise DatasetError(f"{os.path.relpath(ap, root)}: unreadable approval ({e})") from e
                reg.entries.setdefault(man.name, []).append(entry)
        for versions in reg.entries.values():
            versions.sort(key=lambda e: e.manifest.version)
        return reg

    def names(self) -> list[str]:
        return sorted(self.entries)

    def versions(self, name: str) -> list[Entry]:
        if name not in self.entries:
            import difflib

            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see 'certus dataset list'"
            raise DatasetError(f"dataset '{name}': unknown{hint}")
        return self.entries[name]

    def resolve(self, ref: str) -> Entry:
        """``name`` (latest version) or ``name@id`` (id prefix of at least 6 hex digits, or vN)."""
        name, _, ident = ref.partition("@")
        versions = self.versions(name)
        if not ident:
            return versions[-1]
        ident = ident.removeprefix("sha256:")
        if re.fullmatch(r"v\d+", ident):
            hits = [e for e in versions if e.manifest.version == int(ident[1:])]
        else:
            hits = [e for e in versions if len(ident) >= 6 and e.manifest.id.split(":")[1].startswith(ident)]
        if len(hits) != 1:
            known = ", ".join(f"{e.manifest.ref} (v{e.manifest.version})" for e in versions)
            raise DatasetError(f"dataset '{ref}': unknown ID; known versions: {known}")
        return hits[0]

    def by_path_digest(self, path: str, digest: str) -> Entry | None:
        for versions in self.entries.values():
            for e in versions:
                if e.manifest.path == path and e.manifest.id == digest:
                    return e
        return None

    def dir_for(self, name: str) -> str:
        return os.path.join(self.root, DATASETS_DIR, name)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_path(manifest: DatasetManifest) -> str:
    """Where a manifest's signed envelope lives, relative to the workspace."""
    return f"{DATASETS_DIR}/{manifest.name}/{manifest.short}.manifest.json"


def write_manifest(reg: Registry, manifest: DatasetManifest, signer: Any) -> tuple[str, bytes]:
    env = sign_envelope(MANIFEST_TYPE, canonical_bytes(manifest.to_dict()), [signer])
    raw = env.to_json_bytes()
    path = os.path.join(reg.root, manifest_path(manifest))
    atomic_write(path, raw)
    return os.path.relpath(path, reg.root), raw


def write_approval(reg: Registry, entry: Entry, signer: Any, policy_refs: Iterable[str]) -> tuple[str, bytes]:
    man = entry.manifest
    signer_keys = {s.keyid for s in entry.envelope.signatures}
    if signer.keyid in signer_keys:
        raise DatasetError(f"dataset {man.ref}: self-approval refused: key '{signer.name}' registered it; "
                           "a different person's approver key must approve")
    payload = {"_type": "https://certus.dev/DatasetApproval/v1", "dataset": man.id, "name": man.name,
               "version": man.version, "manifest_sha256": _sha(entry.raw), "approved_at": now_rfc3339(),
               "approver": signer.name, "policy_refs": list(policy_refs)}
    env = sign_envelope(APPROVAL_TYPE, canonical_bytes(payload), [signer])
    raw = env.to_json_bytes()
    path = os.path.join(reg.root, entry.path.replace(".manifest.json", ".approval.json"))
    atomic_write(path, raw)
    return os.path.relpath(path, reg.root), raw


def with_dataset_deps(spec: Any, reg: Registry) -> Any:
    """The spec with each consumed dataset's path added to its stage's deps (so it is hashed and keyed)."""
    if not any(st.datasets for st in spec.stages.values()):
        return spec
    stages = {}
    for name, st in spec.stages.items():
        if st.datasets:
            paths = []
            for ref in st.datasets:
                try:
                    paths.append(reg.resolve(ref).manifest.path)
                except DatasetError as e:
                    raise DatasetError(f"{spec.path}:{st.line}: stage '{name}': field 'datasets': {e}") from e
            st = replace(st, deps=tuple(dict.fromkeys(st.deps + tuple(paths))))
        stages[name] = st
    return replace(spec, stages=stages)


def _severity(s: str) -> int:
    return SENSITIVITY.index(s) if s in SENSITIVITY else len(SENSITIVITY)


def register_derived(reg: Registry, *, name: str, path: str, digest: str, stage: str, run_id: str,
                     parents: list[Entry], signer: Any, spec_entry: Mapping[str, Any], stats: Any = None
                     ) -> tuple[DatasetManifest, bytes] | None:
    """A stage output declared as a dataset: a manifest naming its parents and producing run."""
    existing = reg.entries.get(name, [])
    if any(e.manifest.id == digest for e in existing):
        return None  # this content is already registered under this name
    sens = spec_entry.get("sensitivity") or max((p.manifest.sensitivity for p in parents), key=_severity,
                                                 default="internal")
    expires = min((p.manifest.expires for p in parents), default=None)
    if spec_entry.get("retention"):
        expires = parse_retention(str(spec_entry["retention"]), datetime.now(UTC).date()).isoformat()
    if expires is None:
        expires = parse_retention("3650d", datetime.now(UTC).date()).isoformat()
    licenses = sorted({p.manifest.license for p in parents})
    man = DatasetManifest(
        id=digest, name=name, version=(existing[-1].manifest.version + 1) if existing else 1, path=path,
        source=f"certus run {run_id} stage {stage}", sensitivity=sens, expires=expires,
        license=spec_entry.get("license") or (licenses[0] if len(licenses) == 1 else "see parents"),
        owner=spec_entry.get("owner") or (parents[0].manifest.owner if parents else "unknown"),
        registered=now_rfc3339(), rows=getattr(stats, "rows", None), columns=getattr(stats, "columns", None),
        schema=spec_entry.get("schema_ref"), dvc=None, parents=tuple(p.manifest.ref for p in parents),
        produced_by={"run": run_id, "stage": stage}, approval="inherited" if parents else "required",
    )
    _, raw = write_manifest(reg, man, signer)
    return man, raw
