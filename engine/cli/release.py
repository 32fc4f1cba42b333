"""CLI commands for model bundles: ``certus package`` and ``certus bundle verify``."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from engine.errors import BundleVerificationError, EngineError, KeyError_, ReleaseError

__all__ = ["register"]


def _signer(name: str) -> Any:
    from engine.adapters.release_keys import is_pem_private_key, load_ecdsa_signer
    from engine.provenance.recorder import keys_dir

    path = name if (os.sep in name or name.endswith(".key")) else os.path.join(keys_dir(), f"{name}.key")
    if not os.path.exists(path):
        raise KeyError_(f"key file {path}: not found (certus keys generate --name {name} --role releaser "
                        "--type ecdsa-p256)")
    if not is_pem_private_key(path):
        raise ReleaseError(f"key file {path}: an Ed25519 key; OMS bundles need an ECDSA P-256 releaser key "
                           "(certus keys generate --type ecdsa-p256 --role releaser)")
    return load_ecdsa_signer(path)


def _training(args: argparse.Namespace) -> dict[str, Any] | None:
    """The run record (from the ledger) and its stage statements, for the model card."""
    if not args.run:
        return None
    from engine.provenance.dsse import Envelope
    from engine.provenance.recorder import Provenance
    from engine.provenance.records import RUN_TYPE
    from engine.release.card import run_section
    from engine.store.workspace import Workspace

    prov = Provenance(Workspace.discover(args.directory or "."))
    hits = [i for i in prov.items() if i.envelope is not None and i.envelope.payload_type == RUN_TYPE and i.payload
            and (args.run == "latest" or str(i.payload.get("run_id", "")).startswith(args.run))]
    if not hits:
        raise ReleaseError(f"run '{args.run}': not in the ledger; see 'certus log'")
    item = hits[-1]
    statements = []
    try:
        with open(prov.attestation_path(item.payload["run_id"]), "rb") as f:
            for line in f:
                if line.strip():
                    statements.append(json.loads(Envelope.from_json_bytes(line.strip()).payload))
    except (OSError, ValueError, EngineError):
        pass  # the card then says less; `certus verify` is where a broken attestation bundle is named
    return run_section(item.payload, ledger_index=item.index,
                       record_sha256=hashlib.sha256(item.envelope.to_json_bytes()).hexdigest(),
                       attestations=statements)


def _gates(args: argparse.Namespace, training: dict[str, Any] | None) -> tuple[dict[str, Any], ...]:
    """The run's gate results, each passed or validly waived; packaging is refused otherwise.

    Packaging is gated: a model from a run whose gate failed, or needs review with no valid
    waiver, is not released. Each result and waiver is cited by the digest of its signed record.
    """
    if not training or not training.get("run_id"):
        return ()
    from datetime import datetime

    from engine.gates.book import GateBook
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    run_id = str(training["run_id"])
    book = GateBook.load(Provenance(Workspace.discover(args.directory or ".")))
    latest: dict[str, Any] = {}
    for rec in book.for_run(run_id):
        latest[str(rec.detail.get("gate"))] = rec  # the newest result of each gate
    out = []
    now = datetime.now(UTC)
    for gate, rec in sorted(latest.items()):
        ok, why = book.standing(rec, now)
        if not ok:
            raise ReleaseError(f"run {run_id}: not packaged: {why}")
        covered, _ = book.coverage(rec, now)
        out.append({"gate": gate, "result": rec.result, "sha256": rec.sha256, "ledger_index": rec.index,
                    "metrics": [{k: m.get(k) for k in ("name", "metric", "value", "comparator", "threshold",
                                                       "hard_limit", "outcome")}
                                for m in rec.detail.get("metrics", [])],
                    "waivers": [{"metric": name, "sha256": w.sha256, "ledger_index": w.index,
                                 "approver": w.payload.get("approver"), "reason": w.payload.get("reason"),
                                 "expires": w.payload.get("expires")} for name, w in sorted(covered.items())]})
    return tuple(out)


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
    from engine.release.bundle import PackageRequest, build_bundle, write_tar

    signer = _signer(args.key)
    _check_releaser(args, signer)
    training = _training(args)
    gates = _gates(args, training)
    evidence = prov = None
    if training:  # the ledger links a release needs, checked before anything is built
        from engine.provenance.recorder import Provenance
        from engine.release.publish import gather
        from engine.store.workspace import Workspace

        prov = Provenance(Workspace.discover(args.directory or "."))
        evidence = gather(prov, training, args.model)
    req = PackageRequest(model=args.model, name=args.name, version=args.version, out=args.out,
                         license=args.license, serving=args.serving, intended_use=args.intended_use,
                         metrics=_metrics(args.metrics), training=training, gates=gates,
                         approvals=tuple(evidence.datasets) if evidence else (), extra=_reference(args))
    built = build_bundle(req, signer)
    print(f"packaged {built.path} ({len(built.resources)} files, root sha256 {built.root_digest}); "
          f"signed by releaser '{signer.name}' ({signer.keyid[:16]}…)")
    if evidence is not None:
        import time

        from engine.provenance.statement import rfc3339
        from engine.release.publish import publish, release_record

        record = release_record(evidence, built, args.name, args.version, signer.keyid, rfc3339(time.time()), gates)
        try:
            index = publish(prov, record, signer)
        except BaseException:
            import shutil

            shutil.rmtree(built.path, ignore_errors=True)  # never leave a bundle no release record vouches for
            raise
        print(f"release record appended as ledger entry {index}: {args.name} {args.version} -> run "
              f"{evidence.run['run_id']} (ledger entry {evidence.run['ledger_index']}), "
              f"{len(record.gates)} gate result(s), {len(record.datasets)} dataset(s)")
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
