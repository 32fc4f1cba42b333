"""Build a model bundle directory (and its reproducible tar) and sign it in OMS v1.0 format.

Layout of ``OUT/NAME-VERSION/``::

    model/...          the model: a file, or a directory's regular files (symlinks refused)
    serving.yaml       guardrail / serving config (given, or a small default)
    reference.json     the drift reference (engine.serve.reference), when packaged with one
    LICENSE            given, or a placeholder saying none was given
    model_card.json    the model card (:mod:`engine.release.card`); MODEL_CARD.md renders it
    model.sig          the OMS bundle over every other file (excluded from its own manifest)

Every file is hashed from the bytes written into the bundle while they are copied
(:func:`engine.store.hashing.copy_hashing`), so what is signed is what is there, in one read of the
model. The bundle is built in a hidden temporary directory beside the target and renamed into place
only when signed: a killed ``package`` leaves no half bundle, and an existing version is never
overwritten. ECDSA signatures are deterministic (RFC 6979) and the card's time comes from
``SOURCE_DATE_EPOCH`` when set, so the same inputs give the same bytes; :func:`write_tar` makes the
``.tar`` reproducible too (sorted entries, mtime ``SOURCE_DATE_EPOCH`` or 0, uid/gid 0, no owner
names, modes 0644/0755).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ReleaseError
from engine.provenance.signing import ECDSA_P256, Signer
from engine.release.card import build_card, card_bytes, render_markdown
from engine.release.oms import (
    DEFAULT_IGNORES,
    SIGNATURE_FILE,
    Resource,
    bundle_bytes,
    make_statement,
    root_digest,
    signing_input,
)
from engine.store.hashing import copy_hashing

__all__ = ["BuiltBundle", "PackageRequest", "build_bundle", "release_time", "write_tar"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
DEFAULT_SERVING = """\
# Serving and guardrail configuration (edit and pass with --serving FILE).
serving:
  model: {model}
  batch_size: 32
  timeout_s: 10
guardrails:
  max_input_bytes: 1048576
  reject_unknown_features: true
  min_confidence: 0.0
  log_inputs: false
"""
PLACEHOLDER_LICENSE = ("No license was given when this bundle was packaged (certus package --license FILE).\n"
                       "All rights reserved by the publisher until a license is stated.\n")


@dataclass
class PackageRequest:
    """What to package and how to describe it."""

    model: str
    name: str
    version: str
    out: str = "dist"
    license: str | None = None
    serving: str | None = None
    intended_use: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] | None = None
    gates: tuple[Mapping[str, Any], ...] = ()  # the training run's gate results that stand (see cli.release)
    released_at: str | None = None
    approvals: tuple[Mapping[str, Any], ...] = ()  # consumed datasets' manifests and approvals (evidence)
    extra: Mapping[str, bytes] = field(default_factory=dict)  # more top-level files to sign (reference.json)


@dataclass(frozen=True)
class BuiltBundle:
    """The bundle written: its directory, the OMS subject (root) digest and the files signed."""

    path: Path
    root_digest: str
    resources: tuple[Resource, ...]


def release_time() -> str:
    """``SOURCE_DATE_EPOCH`` (reproducible builds) if set, else now, as RFC 3339 UTC."""
    sde = os.environ.get("SOURCE_DATE_EPOCH", "")
    t = datetime.fromtimestamp(int(sde), UTC) if sde.isdigit() else datetime.now(UTC)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_bundle(req: PackageRequest, signer: Signer) -> BuiltBundle:
    """Copy, describe, hash and sign ``req.model`` into ``OUT/NAME-VERSION/``; return what was built."""
    for what, value in (("name", req.name), ("version", req.version)):
        if not _NAME.match(value):
            raise ReleaseError(f"{what} {value!r}: expected 1-128 of [A-Za-z0-9._+-], starting with a letter or digit")
    if signer.public_key.algorithm != ECDSA_P256:
        raise ReleaseError(f"key {signer.keyid[:16]}: OMS key-based bundles need an ECDSA P-256 releaser key "
                           "(certus keys generate --type ecdsa-p256 --role releaser)")
    src = Path(req.model)
    if not src.exists() or src.is_symlink():
        raise ReleaseError(f"model {src}: not found (or a symbolic link)")
    out = Path(req.out)
    dest = out / f"{req.name}-{req.version}"
    if dest.exists() or dest.is_symlink():
        raise ReleaseError(f"bundle {dest}: already exists; a released version is never overwritten")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{dest.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        resources = _fill(tmp, src, req, signer)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuiltBundle(path=dest, root_digest=root_digest(resources), resources=tuple(resources))


def _fill(tmp: Path, src: Path, req: PackageRequest, signer: Signer) -> list[Resource]:
    files: list[dict[str, Any]] = []
    for rel, path in _model_files(src):
        target = tmp / "model" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            digest = copy_hashing(str(path), str(target))
        except OSError as e:
            raise ReleaseError(f"model file {path}: cannot copy ({e.strerror})") from e
        files.append({"path": f"model/{rel}", "sha256": digest, "size": target.stat().st_size})
    if not files:
        raise ReleaseError(f"model {src}: no regular files to package")
    files.sort(key=lambda f: f["path"])
    digests = {f["path"]: f["sha256"] for f in files}
    first = files[0]["path"] if len(files) == 1 else "model/"
    serving = _read(req.serving, "serving config") if req.serving else DEFAULT_SERVING.format(model=first).encode()
    license_bytes = _read(req.license, "license") if req.license else PLACEHOLDER_LICENSE.encode()
    license_name = Path(req.license).name if req.license else "none given"
    card = build_card(name=req.name, version=req.version, released_at=req.released_at or release_time(),
                      releaser={"name": getattr(signer, "name", ""), "keyid": signer.keyid, "type": ECDSA_P256},
                      model_files=files, license_name=license_name, intended_use=req.intended_use,
                      metrics=req.metrics, training=req.training, gates=req.gates,
                      approvals=req.approvals)
    fixed = (("serving.yaml", serving), ("LICENSE", license_bytes), ("model_card.json", card_bytes(card)),
             ("MODEL_CARD.md", render_markdown(card).encode("utf-8")))
    for rel in req.extra:
        if rel in digests or rel in dict(fixed) or rel == SIGNATURE_FILE or not _NAME.match(rel):
            raise ReleaseError(f"bundle file {rel!r}: a reserved or invalid name")
    for rel, data in (*fixed, *sorted(req.extra.items())):
        digests[rel] = _write(tmp / rel, data)
    resources = [Resource(name=n, digest=d) for n, d in digests.items()]
    statement = make_statement(f"{req.name}-{req.version}", resources, (*DEFAULT_IGNORES, SIGNATURE_FILE))
    payload, message = signing_input(statement)
    sig = signer.sign(message)
    signer.public_key.verify(sig, message)  # never write a signature that does not verify
    _write(tmp / SIGNATURE_FILE, bundle_bytes(payload, sig, signer.keyid))
    return sorted(resources, key=lambda r: r.name)


def _model_files(src: Path) -> list[tuple[str, Path]]:
    if src.is_file():
        return [(src.name, src)]
    if not src.is_dir():
        raise ReleaseError(f"model {src}: not a regular file or directory")
    out: list[tuple[str, Path]] = []

    def walk(d: Path, prefix: str) -> None:
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            rel = f"{prefix}{e.name}"
            if not prefix and e.name in DEFAULT_IGNORES:
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ReleaseError(f"model file {e.path!r}: name is not UTF-8 (OMS section 6.1.2)") from err
            if e.is_symlink():
                raise ReleaseError(f"model file {rel}: a symbolic link; bundles hold regular files only")
            if e.is_dir(follow_symlinks=False):
                walk(Path(e.path), rel + "/")
            elif e.is_file(follow_symlinks=False):
                out.append((rel, Path(e.path)))
            else:
                raise ReleaseError(f"model file {rel}: not a regular file")

    walk(src, "")
    return out


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ReleaseError(f"{what} {path}: cannot read ({e.strerror})") from e


def _write(path: Path, data: bytes) -> str:
    import hashlib

    with open(path, "xb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_tar(bundle: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None) -> Path:
    """A reproducible ``NAME-VERSION.tar`` beside the bundle (or at ``dest``): same bundle, same bytes."""
    root = Path(bundle)
    if not (root / SIGNATURE_FILE).is_file():
        raise ReleaseError(f"bundle {root}: no {SIGNATURE_FILE}; not a bundle")
    target = Path(dest) if dest else root.parent / f"{root.name}.tar"
    sde = os.environ.get("SOURCE_DATE_EPOCH", "")
    mtime = int(sde) if sde.isdigit() else 0
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        base = root.name if rel == "." else f"{root.name}/{rel}"
        entries.append((base, Path(dirpath)))
        entries += [(f"{base}/{n}", Path(dirpath) / n) for n in filenames]
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, path in sorted(entries):
                if path.is_symlink():
                    raise ReleaseError(f"bundle file {path}: a symbolic link; refused")
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                if path.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    continue
                info.mode, info.size = 0o644, path.stat().st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
