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
from datetime import date, datetime, timedelta, timezone
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import DatasetError, SignatureError
from engine.provenance.dsse import Envelope, sign_envelope, verify_envelope
from engine.store.fsutil import atomic_write

__all__ = ["DatasetManifest", "Registry", "SENSITIVITY", "MANIFEST_TYPE", "APPROVAL_TYPE", "parse_retention",
           "allowed_sensitivity", "DatasetUse"]

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


def allowed_sensitivity(config: Mapping[str, Any], stage: str) -> tuple[str, ...]:
    """``certus.policy.allowed_sensitivity`` (default public, internal) plus the stage's extras."""
    certus_cfg = config.get("certus") if isinstance(config.get("certus"), Mapping) else {}
    policy = certus_cfg.get("policy") if isinstance(certus_cfg, Mapping) else None
    policy = policy if isinstance(policy, Mapping) else {}
    base = list(policy.get("allowed_sensitivity", ["public", "internal"]))
    per_stage = policy.get("stages") if isinstance(policy.get("stages"), Mapping) else {}
    for key in (stage, stage.split("@", 1)[0]):
        extra = per_stage.get(key) if per_stage else None
        if extra:
            base += list(extra)
    return tuple(dict.fromkeys(base))


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
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def signer_role(manifest: DatasetManifest) -> str:
    """The role a manifest's signer needs: the kind of record decides, not a field the signer chose.

    A source dataset (no producing run) is published by a data steward; a derived one by the
    trainer key that signed the run producing it.
    """
    return "trainer" if manifest.produced_by is not None else "data-steward"


def structure_problem(entry: Entry, reg: Registry) -> str | None:
    """The role-matrix rules a manifest must meet before any signature or ledger record is looked at."""
    m = entry.manifest
    kinds = {e.manifest.produced_by is not None for e in reg.entries.get(m.name, [entry])}
    if len(kinds) > 1:
        return (f"dataset '{m.name}' mixes source and derived versions; a derived dataset is registered under "
                "its own name (a stage's 'register:'), a source one by a data steward")
    if m.produced_by is None:
        if m.approval != "required":
            return ("a source dataset needs an approver's approval; 'approval: inherited' is only for derived "
                    "datasets whose parents are approved")
        return None
    produced = m.produced_by
    if not isinstance(produced, Mapping) or not produced.get("run") or not produced.get("stage"):
        return "a derived dataset must name the run and stage that produced it (produced_by)"
    if m.approval == "inherited" and not m.parents:
        return "it inherits approval but names no parents"
    if m.approval not in ("inherited", "required"):
        return f"approval '{m.approval}': expected 'required' or 'inherited'"
    return None


def ledger_problem(entry: Entry, index: Any) -> str | None:
    """What the ledger must hold for a manifest (the local ledger index answers; verify re-checks)."""
    m = entry.manifest
    if _sha(entry.raw) not in index.logged.get("manifest_sha256", {}):
        return "no ledger record registers this manifest (it was changed or never registered)"
    if m.produced_by is not None:
        producer = [m.produced_by.get("run"), m.produced_by.get("stage")]
        if not any(hit[:2] == producer for hit in index.attestations_of(m.path, m.id)):
            return (f"no attestation in the ledger shows stage '{m.produced_by.get('stage')}' of run "
                    f"'{m.produced_by.get('run')}' producing {m.path} with digest {m.id[:19]}…")
    return None


def _key_for(trust: Any, ledger_index: Any, keyid: str, role: str, at: datetime, kind: str, sha: str) -> Any:
    """The public key to check a dataset record's signature with.

    With a ledger, the record must be logged there and its signer is judged by the trust state at
    that position (a key revoked before it signs nothing valid, whatever time it claims);
    without one, by ``trust.json`` at the claimed time.
    """
    if ledger_index is not None and ledger_index.trust_sha256 is not None:
        pos = ledger_index.logged.get(kind, {}).get(sha)
        if pos is None:
            raise SignatureError("no ledger record logs it")
        return ledger_index.trust_history().check(keyid, role, at, pos)
    return trust.check(keyid, role, at)


def approval_problem(entry: Entry, trust: Any, reg: Registry | None = None,
                     ledger_index: Any = None) -> str | None:
    """Why the dataset may not be used (None when its approval is valid)."""
    man = entry.manifest
    if man.approval == "inherited" and man.produced_by is not None and man.parents:
        if reg is None:
            return None
        for parent in man.parents:
            try:
                p = reg.resolve(parent)
            except DatasetError:
                return f"parent {parent} is unknown"
            why = structure_problem(p, reg) or approval_problem(p, trust, reg, ledger_index)
            if why:
                return f"parent {parent}: {why}"
        return None
    if entry.approval is None or entry.approval_envelope is None:
        return "not approved; run 'certus dataset approve " + man.ref + "' with an approver key"
    if entry.approval.get("dataset") != man.id or entry.approval.get("manifest_sha256") != _sha(entry.raw):
        return "its approval is for a different manifest (re-approve this version)"
    if trust is not None:
        try:
            at = datetime.strptime(entry.approval["approved_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            for sig in entry.approval_envelope.signatures:
                pub = _key_for(trust, ledger_index, sig.keyid, "approver", at, "approval_sha256",
                               _sha(entry.approval_raw or b""))
                verify_envelope(entry.approval_envelope, {sig.keyid: pub}, APPROVAL_TYPE)
        except (SignatureError, KeyError, ValueError) as e:
            return f"approval signature invalid: {e}"
        if {s.keyid for s in entry.approval_envelope.signatures} & {s.keyid for s in entry.envelope.signatures}:
            return "approved by the key that registered it (self-approval)"
    return None


def check_use(reg: Registry, ref: str, stage: str, config: Mapping[str, Any], digest_now: str | None,
              trust: Any, today: date | None = None, ledger_index: Any = None) -> DatasetUse:
    """Every check a consuming stage needs; raises :class:`DatasetError` naming the rule."""
    entry = reg.resolve(ref)
    man = entry.manifest
    where = f"stage '{stage}': dataset {man.ref} (v{man.version})"
    why = structure_problem(entry, reg) or (ledger_problem(entry, ledger_index) if ledger_index is not None
                                            else None)
    if why:
        raise DatasetError(f"{where}: manifest {entry.path}: {why}")
    if trust is not None:
        role = signer_role(man)
        try:
            at = datetime.strptime(man.registered, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            for sig in entry.envelope.signatures:
                pub = _key_for(trust, ledger_index, sig.keyid, role, at, "manifest_sha256", _sha(entry.raw))
                verify_envelope(entry.envelope, {sig.keyid: pub}, MANIFEST_TYPE)
        except (SignatureError, ValueError) as e:
            raise DatasetError(f"{where}: manifest {entry.path} does not verify: {e}") from e
    if digest_now is None:
        raise DatasetError(f"{where}: {man.path} is missing; run 'certus dataset checkout {man.ref}' or "
                           "'certus dataset pull'")
    if digest_now != man.id:
        raise DatasetError(f"{where}: {man.path} was modified: its bytes hash to {digest_now[:19]}…, the manifest "
                           f"says {man.id[:19]}…; restore it ('certus dataset checkout {man.ref}') or register "
                           "the new data as a new version")
    why = approval_problem(entry, trust, reg, ledger_index)
    if why:
        raise DatasetError(f"{where}: {why}")
    today = today or datetime.now(timezone.utc).date()
    if date.fromisoformat(man.expires) < today:
        raise DatasetError(f"{where}: retention expired on {man.expires}; the data may no longer be used")
    allowed = allowed_sensitivity(config, stage)
    if man.sensitivity not in allowed:
        raise DatasetError(f"{where}: sensitivity '{man.sensitivity}' is not allowed for this stage by policy "
                           f"(allowed: {', '.join(allowed)}; set certus.policy.stages.{stage.split('@')[0]} in "
                           "conf/config.yaml to allow it)")
    return DatasetUse(ref=ref, manifest=man, manifest_sha256=_sha(entry.raw))


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
        expires = parse_retention(str(spec_entry["retention"]), datetime.now(timezone.utc).date()).isoformat()
    if expires is None:
        expires = parse_retention("3650d", datetime.now(timezone.utc).date()).isoformat()
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
