"""The OpenSSF Model Signing (OMS) v1.0 format, pure: statement, predicate, Sigstore bundle.

Spec: https://github.com/ossf/model-signing-spec (``spec/v1.0.md``). An OMS bundle is a Sigstore
bundle (``mediaType`` :data:`BUNDLE_MEDIA_TYPE`) whose ``dsseEnvelope`` (payloadType
``application/vnd.in-toto+json``) carries an in-toto Statement v1 with predicateType
:data:`PREDICATE_TYPE`: ``predicate.resources`` lists every file (``name`` = relative POSIX path,
``digest`` = hex SHA-256, ``algorithm`` = ``sha256``), ``predicate.serialization`` records how they
were enumerated (``method: files``, ``hash_type``, ``allow_symlinks: false``, ``ignore_paths``), and the
single subject is the model's name with the root digest: SHA-256 over the concatenated raw resource
digests in list order. The key-based method puts ``verificationMaterial.publicKey.hint`` (hex SHA-256
of the signer's PEM public key, as ``model-signing`` computes it) in the bundle.

**Ordering.** The spec sorts ``resources`` by ``name`` in Unicode code point order (section 5.2.1);
``model-signing`` 1.1 sorts by path components (``a/b`` before ``a.txt``, where the spec puts
``a.txt`` first). Certus writes the spec's order; when reading it accepts either, since both
compute the root digest over the list as written (checked here) and signature and per-file checks
do not depend on the order. A bundle in another order gets a note, not a failure.

Everything here is pure: no files, no keys; :mod:`engine.release.bundle` and
:mod:`engine.release.verify` do the I/O and the signing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.core.canonical import canonical_bytes
from engine.errors import BundleFormatError, EnvelopeFormatError
from engine.provenance.dsse import Envelope, Signature, _no_duplicate_keys, pae

__all__ = [
    "BUNDLE_MEDIA_TYPE", "DEFAULT_IGNORES", "PAYLOAD_TYPE", "PREDICATE_TYPE", "SIGNATURE_FILE",
    "OmsBundle", "Resource", "bundle_bytes", "make_statement", "name_problem", "parse_bundle",
    "parse_statement", "root_digest",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SIGNATURE_FILE = "model.sig"
#: Excluded by default as top-level components of the model root (spec section 6.2).
DEFAULT_IGNORES: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore")
_HASH = "sha256"


@dataclass(frozen=True, slots=True)
class Resource:
    """One file in the manifest: canonical relative path, hex digest, algorithm."""

    name: str
    digest: str
    algorithm: str = _HASH

    def to_dict(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "digest": self.digest, "name": self.name}


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a canonical OMS resource path (section 6.1.2), or None."""
    if not isinstance(name, str) or not name:
        return "empty or not a string"
    if "\x00" in name or "\\" in name:
        return "holds a NUL or a backslash"
    if name.startswith("/") or name.endswith("/"):
        return "absolute or with a trailing '/'"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "not normalized (an empty, '.' or '..' component)"
    return None


def root_digest(resources: Iterable[Resource]) -> str:
    """SHA-256 over the raw resource digests, concatenated in the given order (section 6.5.1)."""
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r.digest))
    return h.hexdigest()


def make_statement(model_name: str, resources: Iterable[Resource], ignore_paths: Iterable[str]) -> dict[str, Any]:
    """The in-toto Statement v1 with the OMS predicate; resources in the spec's code point order."""
    ordered = sorted(resources, key=lambda r: r.name)
    if not ordered:
        raise BundleFormatError("a model bundle needs at least one file (OMS section 6.1)")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(ordered)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": [r.to_dict() for r in ordered],
            "serialization": {"allow_symlinks": False, "hash_type": _HASH, "ignore_paths": sorted(set(ignore_paths)),
                              "method": "files"},
        },
    }


def signing_input(statement: dict[str, Any]) -> tuple[bytes, bytes]:
    """The payload (RFC 8785 canonical JSON of the statement) and the DSSE PAE bytes to sign."""
    payload = canonical_bytes(statement)
    return payload, pae(PAYLOAD_TYPE, payload)


def bundle_bytes(payload: bytes, sig: bytes, hint: str) -> bytes:
    """The ``model.sig`` file: the Sigstore bundle, pretty JSON with sorted keys and a final newline."""
    env = Envelope(payload_type=PAYLOAD_TYPE, payload=payload, signatures=(Signature(keyid="", sig=sig),))
    bundle = {
        "dsseEnvelope": env.to_dict(),
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
    }
    return (json.dumps(bundle, indent=2, sort_keys=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class OmsBundle:
    """A parsed bundle, its signature not yet checked: the key hint (or raw key) and the envelope."""

    envelope: Envelope
    hint: str | None
    raw_key: bytes | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class OmsStatement:
    """A parsed OMS statement: subject, resources as written, ignore paths, notes."""

    subject_name: str
    subject_digest: str
    resources: tuple[Resource, ...]
    ignore_paths: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


def _loads(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleFormatError(f"{where}: not valid JSON ({e})") from e


def parse_bundle(data: bytes, where: str = SIGNATURE_FILE) -> OmsBundle:
    """Parse ``model.sig`` (section 8.1): media type, key material, one DSSE signature."""
    obj = _loads(data, where)
    if not isinstance(obj, dict):
        raise BundleFormatError(f"{where}: expected a JSON object (a Sigstore bundle)")
    for f in ("mediaType", "verificationMaterial", "dsseEnvelope"):
        if f not in obj:
            raise BundleFormatError(f"{where}: missing field '{f}'")
    if obj["mediaType"] != BUNDLE_MEDIA_TYPE:
        raise BundleFormatError(f"{where}: mediaType {obj['mediaType']!r}; expected {BUNDLE_MEDIA_TYPE}")
    vm = obj["verificationMaterial"]
    pk = vm.get("publicKey") if isinstance(vm, dict) else None
    if not isinstance(pk, dict):
        raise BundleFormatError(f"{where}: verificationMaterial has no publicKey; only OMS's key-based method "
                                "is supported (certificate and Sigstore keyless bundles are not)")
    hint, raw = pk.get("hint"), pk.get("rawBytes")
    notes = []
    if hint is not None and (not isinstance(hint, str) or not hint):
        raise BundleFormatError(f"{where}: field 'verificationMaterial.publicKey.hint': expected a hex string")
    raw_key = None
    if hint is None:
        if not isinstance(raw, str):
            raise BundleFormatError(f"{where}: verificationMaterial.publicKey has neither hint nor rawBytes")
        try:
            raw_key = base64.b64decode(raw, validate=True)
        except binascii.Error as e:
            raise BundleFormatError(f"{where}: field 'verificationMaterial.publicKey.rawBytes': not base64") from e
        notes.append("older bundle format (publicKey.rawBytes, before model-signing 1.1)")
    if isinstance(vm, dict) and vm.get("tlogEntries"):
        notes.append("transparency log entries present and not checked (key-based method: offline)")
    env = obj["dsseEnvelope"]
    if isinstance(env, dict) and isinstance(env.get("signatures"), list):
        env = dict(env, signatures=[{k: v for k, v in s.items() if not (k == "keyid" and v is None)}
                                    if isinstance(s, dict) else s for s in env["signatures"]])
    try:
        envelope = Envelope.from_dict(env)
    except EnvelopeFormatError as e:
        raise BundleFormatError(f"{where}: {e}") from e
    if len(envelope.signatures) != 1:
        raise BundleFormatError(f"{where}: {len(envelope.signatures)} signatures; expected exactly one")
    if envelope.payload_type != PAYLOAD_TYPE:
        raise BundleFormatError(f"{where}: payloadType {envelope.payload_type!r}; expected {PAYLOAD_TYPE}")
    return OmsBundle(envelope=envelope, hint=hint, raw_key=raw_key, notes=tuple(notes))


def parse_statement(payload: bytes, where: str = SIGNATURE_FILE) -> OmsStatement:
    """Validate the signed statement (section 8.3) and the manifest's own consistency."""
    st = _loads(payload, f"{where}: payload")
    if not isinstance(st, dict):
        raise BundleFormatError(f"{where}: payload is not a JSON object")
    if st.get("_type") != STATEMENT_TYPE:
        raise BundleFormatError(f"{where}: statement _type {st.get('_type')!r}; expected {STATEMENT_TYPE}")
    if st.get("predicateType") != PREDICATE_TYPE:
        raise BundleFormatError(f"{where}: predicateType {st.get('predicateType')!r}; expected {PREDICATE_TYPE}")
    subjects, pred = st.get("subject"), st.get("predicate")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise BundleFormatError(f"{where}: expected exactly one subject (the model)")
    sub_name, sub_digest = subjects[0].get("name"), subjects[0].get("digest")
    if not isinstance(sub_name, str) or not sub_name:
        raise BundleFormatError(f"{where}: subject name must be a non-empty string")
    if not isinstance(sub_digest, dict) or not isinstance(sub_digest.get("sha256"), str):
        raise BundleFormatError(f"{where}: subject has no sha256 digest")
    if not isinstance(pred, dict) or not isinstance(pred.get("resources"), list) or not pred["resources"]:
        raise BundleFormatError(f"{where}: predicate.resources must be a non-empty list")
    ser = pred.get("serialization")
    if not isinstance(ser, dict):
        raise BundleFormatError(f"{where}: predicate.serialization missing")
    if ser.get("method") != "files":
        raise BundleFormatError(f"{where}: serialization method {ser.get('method')!r} is not supported; "
                                "expected files")
    if ser.get("hash_type") != _HASH:
        raise BundleFormatError(f"{where}: hash_type {ser.get('hash_type')!r} is not supported; expected sha256")
    if not isinstance(ser.get("allow_symlinks"), bool):
        raise BundleFormatError(f"{where}: serialization.allow_symlinks must be a boolean")
    ignores = ser.get("ignore_paths", [])
    if not isinstance(ignores, list) or not all(isinstance(p, str) and not name_problem(p) for p in ignores):
        raise BundleFormatError(f"{where}: serialization.ignore_paths must be a list of relative paths")
    resources = _resources(pred["resources"], where)
    names = [r.name for r in resources]
    notes = []
    if names != sorted(names):
        notes.append("resources are not in the OMS spec's code point order (model-signing 1.x sorts by path "
                     "components); accepted: the root digest covers the order as written")
    got = root_digest(resources)
    if got != sub_digest["sha256"]:
        raise BundleFormatError(f"{where}: subject digest {sub_digest['sha256']} is not the root digest of the "
                                f"resources ({got})")
    return OmsStatement(subject_name=sub_name, subject_digest=got, resources=tuple(resources),
                        ignore_paths=tuple(ignores), notes=tuple(notes))


def _resources(items: Sequence[Any], where: str) -> list[Resource]:
    out, seen = [], set()
    for i, item in enumerate(items):
        at = f"{where}: predicate.resources[{i}]"
        if not isinstance(item, dict):
            raise BundleFormatError(f"{at}: expected an object")
        name, digest, alg = item.get("name"), item.get("digest"), item.get("algorithm")
        problem = name_problem(name)
        if problem:
            raise BundleFormatError(f"{at}: name {name!r}: {problem}")
        if alg != _HASH:
            raise BundleFormatError(f"{at} ({name}): algorithm {alg!r} is not supported; expected sha256")
        if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise BundleFormatError(f"{at} ({name}): digest is not 64 lowercase hex characters")
        if name in seen:
            raise BundleFormatError(f"{at}: {name} is listed twice")
        seen.add(name)
        out.append(Resource(name=name, digest=digest))
    return out
