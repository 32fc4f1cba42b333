"""CLI commands for model bundles: ``certus package`` and ``certus bundle verify``."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from engine.errors import BundleVerificationError, KeyError_, ReleaseError

__all__ = ["register"]


def _metrics(paths: list[str]) -> dict[str, Any]:
    out = {}
    for p in paths or []:
        try:
            data = Path(p).read_bytes()
            out[p] = {"values": json.loads(data), "sha256": hashlib.sha256(data).hexdigest()}
        except (OSError, ValueError) as e:
            raise ReleaseError(f"metrics file {p}: cannot read as JSON ({e})") from e
    return out


def _check_releaser(args: argparse.Namespace, signer: Any) -> None:
    """Refuse to sign with a key the workspace's trust file does not let release (when there is one)."""
    from datetime import datetime

    from engine.provenance.trust import TrustStore

    path = Path(args.directory or ".") / "trust.json"
    if not path.is_file():
        print(f"[certus] no {path}: the releaser key is not checked against a trust file", file=sys.stderr)
        return
    TrustStore.from_json(path.read_bytes(), source=str(path)).check(signer.keyid, "releaser",
                                                                      datetime.now(UTC))


def _reference(args: argparse.Namespace) -> dict[str, bytes]:
    """``reference.json`` (the drift reference) from ``--reference CSV`` or the serving config's
    ``reference.data``, with the monitor thresholds of the composed policy; {} when neither names data."""
    if args.no_reference:
        return {}
    from engine.serve.packaging import reference_file

    return reference_file(args.directory or ".", args.model, args.serving, args.reference)


def cmd_package(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance, keys_dir
    from engine.release.bundle import write_tar
    from engine.release.package import load_releaser, package_run
    from engine.store.workspace import Workspace

    signer = load_releaser(args.key, keys_dir())
    _check_releaser(args, signer)
    prov = Provenance(Workspace.discover(args.directory or ".")) if args.run else None
    done = package_run(prov, signer, model=args.model, name=args.name, version=args.version, run=args.run,
                       out=args.out, license=args.license, serving=args.serving, intended_use=args.intended_use,
                       metrics=_metrics(args.metrics), extra=_reference(args))
    built = done.built
    print(f"packaged {built.path} ({len(built.resources)} files, root sha256 {built.root_digest}); "
          f"signed by releaser '{signer.name}' ({signer.keyid[:16]}…)")
    if done.record is not None:
        r = done.record
        print(f"release record appended as ledger entry {done.index}: {r.name} {r.version} -> run "
              f"{r.run['run_id']} (ledger entry {r.run['ledger_index']}), {len(r.gates)} gate result(s), "
              f"{len(r.datasets)} dataset(s)")
    else:
        print("note: packaged without --run: no release record links this bundle to a run, so 'certus deploy' "
              "will refuse it", file=sys.stderr)
    if args.tar:
        print(f"tar: {write_tar(built.path)}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from engine.provenance.signing import ECDSA_P256, PublicKey, PublicKeyInfo, spki_from_pem
    from engine.provenance.trust import TrustStore
    from engine.release.verify import verify_bundle

    trust = pubkey = None
    if args.pubkey:
        try:
            data = Path(args.pubkey).read_bytes()
            pubkey = (PublicKey(spki_from_pem(data), ECDSA_P256) if data.lstrip().startswith(b"-----BEGIN")
                      else PublicKeyInfo.from_json_bytes(data, source=args.pubkey).public_key)
        except (OSError, ValueError) as e:
            raise KeyError_(f"public key file {args.pubkey}: {e}") from e
    else:
        path = Path(args.trust or Path(args.directory or ".") / "trust.json")
        try:
            trust = TrustStore.from_json(path.read_bytes(), source=str(path))
        except OSError as e:
            msg = f"trust file {path}: cannot read ({e.strerror}); give --trust FILE or --pubkey FILE"
            raise KeyError_(msg) from e
    report = verify_bundle(args.bundle, trust=trust, pubkey=pubkey)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    for n in report.notes:
        print(f"note: {n}")
    for f in report.failures:
        print(f"FAIL: {f}")
    if not report.ok:
        raise BundleVerificationError(f"bundle {args.bundle}: {len(report.failures)} problem(s); "
                                      f"first: {report.failures[0]}")
    print(f"bundle OK: {report.subject} ({report.files} files, root sha256 {report.root_digest}); "
          f"signed by releaser {report.key} ({(report.keyid or '')[:16]}…)")
    return 0


def register(sub: Any, add: Any) -> None:
    p = sub.add_parser("package", help="build and sign a model bundle (OpenSSF Model Signing v1.0)",
                       description="build and sign a model bundle (OpenSSF Model Signing v1.0)")
    p.add_argument("model", metavar="DIR_OR_FILE", help="the model: a file or a directory")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--key", required=True, help="ECDSA P-256 releaser key (name in the key directory, or a path)")
    p.add_argument("--out", default="dist", help="where NAME-VERSION/ goes (default: dist)")
    p.add_argument("--run", help="the training run (id, prefix or 'latest') whose record the model card cites")
    p.add_argument("--license", help="license file (default: a placeholder saying none was given)")
    p.add_argument("--serving", help="serving / guardrail config YAML (default: a small template)")
    p.add_argument("--reference", metavar="CSV", help="training data for the drift reference (reference.json; "
                   "default: the serving config's reference.data)")
    p.add_argument("--no-reference", action="store_true", help="package without a drift reference")
    p.add_argument("--intended-use", help="the model card's intended use")
    p.add_argument("--metrics", action="append", help="metrics JSON file for the card (repeatable)")
    p.add_argument("--tar", action="store_true", help="also write a reproducible NAME-VERSION.tar")
    p.set_defaults(func=cmd_package)
    b = sub.add_parser("bundle", help="model bundles", description="model bundles")
    bs = b.add_subparsers(dest="bundle_command", metavar="ACTION")
    bs.required = True
    v = bs.add_parser("verify", help="check a bundle's signature, releaser and every file, offline")
    v.add_argument("bundle", metavar="DIR")
    v.add_argument("--trust", help="trust file (default: trust.json here)")
    v.add_argument("--pubkey", help="verify against this public key (PEM, or a Certus .pub) instead of trust")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_bundle_verify)
