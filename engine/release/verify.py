"""Verify a model bundle offline (OMS v1.0 section 8), by anyone holding a trust file or a public key.

Checks, in order: ``model.sig`` parses as an OMS Sigstore bundle; its key is the given public key
(``--pubkey``) or a key in ``trust.json`` whose keyid is the bundle's ``publicKey.hint``; the DSSE
signature verifies; with a trust file, the key holds ``releaser`` and is valid (not revoked, inside
its window) at ``at`` (default: now — offline there is no ledger position to vouch for an earlier
signing time; the deploy check of issue 12 passes the time its release record is logged at); the
statement is an OMS v1.0 statement whose root digest matches; then every file: each signed one is
present with its digest, nothing is missing, no unsigned file is there, no symlink. Each failure is
one line naming the file. Files are hashed only once the signature verified.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import BundleFormatError, SignatureError
from engine.provenance.signing import ECDSA_P256, PublicKey, spki_from_pem
from engine.provenance.trust import TrustStore
from engine.release.oms import DEFAULT_IGNORES, SIGNATURE_FILE, parse_bundle, parse_statement
from engine.store.hashing import file_digest

__all__ = ["BundleReport", "verify_bundle"]


@dataclass
class BundleReport:
    """What ``bundle verify`` found: failures (one line each, naming a file) and notes."""

    bundle: str
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key: str | None = None
    keyid: str | None = None
    subject: str | None = None
    root_digest: str | None = None
    files: int = 0
    bytes_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "failures": self.failures, "notes": self.notes,
                "key": self.key, "keyid": self.keyid, "subject": self.subject, "root_digest": self.root_digest,
                "files": self.files, "bytes_hashed": self.bytes_hashed}


def verify_bundle(bundle: str | os.PathLike[str], *, trust: TrustStore | None = None,
                  pubkey: PublicKey | None = None, at: datetime | None = None,
                  hasher: Callable[[str], str] = file_digest) -> BundleReport:
    """Check the bundle directory; never raises for what it finds (see :attr:`BundleReport.failures`)."""
    root = Path(bundle)
    rep = BundleReport(bundle=str(root))
    sig_path = root / SIGNATURE_FILE
    try:
        data = sig_path.read_bytes()
    except OSError as e:
        rep.failures.append(f"{SIGNATURE_FILE}: cannot read ({e.strerror or e})")
        return rep
    try:
        parsed = parse_bundle(data)
        key = _key(parsed, trust, pubkey, rep)
        if key is None:
            return rep
        sig = parsed.envelope.signatures[0].sig
        try:
            key.verify(sig, parsed.envelope.pae())
        except SignatureError:
            rep.failures.append(f"{SIGNATURE_FILE}: the signature does not verify under key {rep.key or key.keyid}")
            return rep
        if trust is not None:
            try:
                trust.check(key.keyid, "releaser", at or datetime.now(UTC))
            except SignatureError as e:
                rep.failures.append(f"{SIGNATURE_FILE}: {e}")
        st = parse_statement(parsed.envelope.payload)
    except BundleFormatError as e:
        rep.failures.append(str(e))
        return rep
    rep.notes += [*parsed.notes, *st.notes]
    rep.subject, rep.root_digest = st.subject_name, st.subject_digest
    _check_files(root, st, rep, hasher)
    return rep


def _key(parsed: Any, trust: TrustStore | None, pubkey: PublicKey | None, rep: BundleReport) -> PublicKey | None:
    hint = parsed.hint
    if parsed.raw_key is not None:  # older bundles: the key itself (PEM or DER)
        raw = parsed.raw_key
        try:
            der = spki_from_pem(raw) if raw.startswith(b"-----BEGIN") else raw
            hint = PublicKey(der, ECDSA_P256).keyid
        except (ValueError, SignatureError) as e:
            rep.failures.append(f"{SIGNATURE_FILE}: verificationMaterial.publicKey.rawBytes: {e}")
            return None
    rep.keyid = hint
    if pubkey is not None:
        rep.key = "--pubkey"
        if pubkey.keyid != hint:
            rep.failures.append(f"{SIGNATURE_FILE}: signed by key {hint[:16]}…, not by the given public key "
                                f"{pubkey.keyid[:16]}…")
            return None
        return pubkey
    if trust is None:
        rep.failures.append(f"{SIGNATURE_FILE}: no trust file and no public key to verify against")
        return None
    entry = next((e for e in trust.entries if e.keyid == hint), None)
    if entry is None:
        rep.failures.append(f"{SIGNATURE_FILE}: signed by key {hint[:16]}…, which is not in the trust file")
        return None
    rep.key = entry.name
    return entry.public_key


def _ignored(rel: str, ignores: tuple[str, ...]) -> bool:
    top = rel.split("/", 1)[0]
    if top in DEFAULT_IGNORES or rel == SIGNATURE_FILE:
        return True
    return any(rel == p or rel.startswith(p + "/") for p in ignores)


def _check_files(root: Path, st: Any, rep: BundleReport, hasher: Callable[[str], str]) -> None:
    found: dict[str, str] = {}

    def walk(d: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            rep.failures.append(f"{prefix or './'}: cannot list ({e.strerror})")
            return
        for e in entries:
            rel = prefix + e.name
            if _ignored(rel, st.ignore_paths):
                continue
            if e.is_symlink():
                rep.failures.append(f"{rel}: a symbolic link (never followed; a bundle holds regular files)")
            elif e.is_dir(follow_symlinks=False):
                walk(Path(e.path), rel + "/")
            elif e.is_file(follow_symlinks=False):
                found[rel] = e.path
            else:
                rep.failures.append(f"{rel}: not a regular file")

    walk(root, "")
    signed = {r.name: r.digest for r in st.resources}
    for rel in sorted(set(found) - set(signed)):
        rep.failures.append(f"{rel}: not signed (a file the bundle's manifest does not list)")
    for rel in sorted(set(signed) - set(found)):
        rep.failures.append(f"{rel}: missing (signed, but not in the bundle)")
    common = sorted(set(signed) & set(found))
    jobs = min(len(common), os.cpu_count() or 1)
    if jobs > 1:
        with ThreadPoolExecutor(jobs) as pool:
            digests = list(pool.map(lambda r: _hash(hasher, found[r]), common))
    else:
        digests = [_hash(hasher, found[r]) for r in common]
    for rel, got in zip(common, digests):
        rep.files += 1
        if isinstance(got, OSError):
            rep.failures.append(f"{rel}: cannot read ({got.strerror})")
        elif got != signed[rel]:
            rep.failures.append(f"{rel}: digest mismatch (signed sha256 {signed[rel][:16]}…, found {got[:16]}…)")
        else:
            rep.bytes_hashed += os.path.getsize(found[rel])
    rep.failures.sort(key=lambda f: f.split(":", 1)[0])


def _hash(hasher: Callable[[str], str], path: str) -> str | OSError:
    try:
        return hasher(path)
    except OSError as e:
        return e
