"""CLI commands for keys, the ledger, run history, lineage and verification."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from engine.errors import EngineError, KeyError_, LedgerError, VerificationError
from engine.provenance.signing import ROLES

__all__ = ["register"]


def _ws(args: argparse.Namespace) -> Any:
    from engine.store.workspace import Workspace

    return Workspace.discover(args.directory or ".")


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise EngineError(f"time '{text}': expected ISO 8601, e.g. 2026-01-31T00:00:00Z") from e
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# -- keys ----------------------------------------------------------------------------------------

def cmd_keys_generate(args: argparse.Namespace) -> int:
    from engine.adapters.keys import generate_key, make_private_dir, save_key
    from engine.provenance.recorder import keys_dir

    directory = args.dir or keys_dir()
    make_private_dir(directory)
    if args.type == "ecdsa-p256":
        from engine.adapters.release_keys import generate_ecdsa_key, save_ecdsa_key

        key = generate_ecdsa_key(args.name, args.role)
        priv, pub, pem = save_ecdsa_key(key, directory, unencrypted=args.unencrypted)
        sealing = "PKCS#8 PEM, PBES2 AES-256"
    else:
        key = generate_key(args.name, args.role)
        priv, pub = save_key(key, directory, unencrypted=args.unencrypted)
        pem, sealing = None, "Argon2id + SecretBox"
    print(f"generated {args.type} {args.role} key '{args.name}' (keyid {key.keyid})")
    print(f"  private: {priv}  ({'UNENCRYPTED' if args.unencrypted else 'encrypted, ' + sealing})")
    print(f"  public:  {pub}" + (f"  (PEM: {pem})" if pem else ""))
    print(f"trust it in a workspace with: certus keys trust {pub} --role {args.role}")
    return 0


def cmd_keys_trust(args: argparse.Namespace) -> int:
    from engine.adapters.keys import load_public_key
    from engine.provenance.recorder import Provenance
    from engine.provenance.trust import TrustStore

    prov = Provenance(_ws(args), key=getattr(args, "key_file", None))
    info = load_public_key(args.pubfile)
    store = prov.trust() if prov.enabled else TrustStore()
    existing = [e for e in store.entries if e.keyid == info.public_key.keyid]
    if existing:  # trusting a known key again updates its roles and validity
        import dataclasses

        old = existing[0]
        roles = tuple(sorted(set(old.roles) | set(args.role or [info.role])))
        new = dataclasses.replace(old, roles=roles, not_before=_when(args.not_before) or old.not_before,
                                  not_after=_when(args.not_after) or old.not_after)
        store = TrustStore(entries=tuple(new if e is old else e for e in store.entries))
    else:
        store = store.add_key(info, roles=args.role or None, not_before=_when(args.not_before),
                              not_after=_when(args.not_after))
    index = _change_trust(args, prov, store)
    entry = store.get(info.public_key.keyid)
    print(f"trust.json: '{entry.name}' ({entry.keyid[:16]}…) trusted as {', '.join(entry.roles)}{index}; "
          "commit trust.json")
    return 0


def _change_trust(args: argparse.Namespace, prov: Any, store: Any) -> str:
    """Apply a trust change (a signed ledger record once the ledger exists); say where it went."""
    from engine.store.workspace import WorkspaceLock

    with WorkspaceLock(prov.ws).held(wait=True, command="keys"):
        index = prov.change_trust(store)
    return "" if index is None else f" (signed ledger record {index})"


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance

    prov = Provenance(_ws(args), key=getattr(args, "key_file", None))
    at = _when(args.at) or datetime.now(UTC)
    store = prov.trust().revoke(args.key, at, args.reason)
    index = _change_trust(args, prov, store)
    print(f"trust.json: '{args.key}' revoked as of {at.isoformat()}{index}; it signs nothing valid from here "
          "on, nor anything claiming a later time; commit trust.json")
    return 0


def cmd_keys_sync(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import WorkspaceLock

    prov = Provenance(_ws(args))
    with WorkspaceLock(prov.ws).held(wait=True, command="keys sync"):
        history = prov.index(prov.open_ledger(create=False)).trust_history() if os.path.isdir(
            os.path.join(prov.ws.root, ".certus", "ledger")) else prov.trust_history()
        if history.problems:
            raise LedgerError(f"the ledger's trust records are damaged: {history.problems[0]}; run 'certus verify'")
        if not history.pinned:
            print("the ledger records no trust state yet: trust.json is the root of trust until the first append")
            return 0
        current = prov.trust() if prov.enabled else None
        if current is not None and history.diff_file(current) is None:
            print("trust.json matches the trust state the ledger records")
            return 0
        prov.save_trust(history.latest)
    print(f"trust.json: rewritten from ledger entry {history.epochs[-1].made_by}; commit trust.json")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance, keys_dir

    prov = Provenance(_ws(args))
    if prov.enabled:
        for e in prov.trust().entries:
            state = f" REVOKED {e.revoked.at.isoformat()}" if e.revoked else ""
            print(f"trusted  {e.name:16} {e.keyid[:16]}…  {','.join(e.roles)}{state}")
    d = keys_dir()
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            if f.endswith(".key"):
                print(f"private  {os.path.join(d, f)}")
    return 0


# -- history -------------------------------------------------------------------------------------

def cmd_log(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance
    from engine.provenance.records import RUN_TYPE

    rows = []
    for item in Provenance(_ws(args)).items():
        p = item.payload or {}
        if item.envelope is None:
            rows.append({"index": item.index, "kind": "unreadable", "error": item.error})
        elif item.envelope.payload_type == RUN_TYPE:
            counts: dict[str, int] = {}
            for s in p.get("stages", {}).values():
                counts[s["state"]] = counts.get(s["state"], 0) + 1
            rows.append({"index": item.index, "kind": "run", "run_id": p.get("run_id"), "time": p.get("started"),
                         "status": p.get("status"), "overrides": p.get("overrides"), "stages": counts,
                         "commit": (p.get("git") or {}).get("commit")})
        else:
            rows.append({"index": item.index, "kind": p.get("kind"), "time": p.get("time"),
                         "subject": p.get("subject")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("The ledger is empty.")
    for r in rows:
        if r["kind"] == "run":
            st = ", ".join(f"{k} {v}" for k, v in sorted(r["stages"].items()))
            ov = " ".join(r["overrides"] or []) or "-"
            print(f"#{r['index']:<4} {r['time']}  run {r['run_id']}  {r['status']:<11} [{st}]  overrides: {ov}")
        else:
            print(f"#{r['index']:<4} {r.get('time')}  {r['kind']}  {r.get('subject', r.get('error', ''))}")
    return 0


def _find_run(prov: Any, run: str) -> dict[str, Any]:
    from engine.provenance.records import RUN_TYPE

    matches = [i.payload for i in prov.items() if i.envelope is not None and i.envelope.payload_type == RUN_TYPE
               and i.payload and (i.payload.get("run_id") == run or str(i.payload.get("run_id", "")).startswith(run)
                                  or run == "latest")]
    if not matches:
        raise LedgerError(f"run '{run}': not in the ledger; see 'certus log'")
    return matches[-1]


def cmd_show(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance

    rec = _find_run(Provenance(_ws(args)), args.run)
    if args.json:
        print(json.dumps(rec, indent=2, sort_keys=True))
        return 0
    git = rec.get("git") or {}
    print(f"run {rec['run_id']}  {rec['status']}  {rec['started']} .. {rec['finished']}")
    print(f"commit {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}  pipeline {rec['pipeline']}")
    print(f"overrides: {' '.join(rec.get('overrides') or []) or '(none)'}")
    print(f"attestations merkle root: {rec['merkle_root']}")
    print("stages:")
    for name, s in rec.get("stages", {}).items():
        print(f"  {name}: {s['state']}" + (f" ({s['error']})" if s.get("error") else ""))
        for p, d in s.get("outs", {}).items():
            print(f"      {p}  {d}")
    from engine.cli.gates import print_gate_table

    print_gate_table(Provenance(_ws(args)), rec["run_id"])
    print("config:")
    import yaml

    sys.stdout.write("".join("  " + ln + "\n" for ln in yaml.safe_dump(rec.get("config", {}),
                                                                      sort_keys=True).splitlines()))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from engine.provenance.lineage import lineage

    text = lineage(_ws(args), args.path, mermaid=args.format == "mermaid", as_json=args.json)
    sys.stdout.write(text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.provenance.verify import verify_workspace

    def progress(msg: str) -> None:
        sys.stderr.write(f"[certus] verify: {msg}\n")
        sys.stderr.flush()

    witnesses = {k: v for k, v in (("require", args.require_witnesses), ("names", args.witness_names),
                                   ("require_all", args.require_all_witnessed)) if v is not None}
    report = verify_workspace(_ws(args), run=args.run, artifacts=args.artifacts, progress=progress,
                              every_signature=args.every_signature, witnesses=witnesses)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        checked = ", ".join(f"{n} {k}" for k, n in sorted(report.checked.items()))
        print(f"checked: {checked}")
        for n in report.notes:
            print(f"note: {n}")
        if report.witnessed:
            print(report.witnessed["line"])
        for f in report.failures:
            print(f"FAIL: {f}")
        print("verification OK" if report.ok else f"verification FAILED: {len(report.failures)} problem(s)")
    if not report.ok:
        if args.json:
            return 1
        raise VerificationError(f"{len(report.failures)} problem(s); first: {report.failures[0]}")
    return 0


def cmd_ledger_repair(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import WorkspaceLock

    ws = _ws(args)
    with WorkspaceLock(ws).held(command="ledger repair"):
        done = Provenance(ws).open_ledger(create=False).repair()
    for d in done:
        print(d)
    if not done:
        print("nothing to repair")
    return 0


def cmd_ledger_proof(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance

    ledger = Provenance(_ws(args)).open_ledger(create=False)
    if args.consistency:
        proof = ledger.consistency_proof(args.index, args.size)
    else:
        proof = ledger.inclusion_proof(args.index, args.size)
    print(json.dumps(proof.to_dict(), indent=2))
    return 0


def register(sub: Any, add: Any) -> None:
    k = sub.add_parser("keys", help="signing keys and the workspace trust file",
                       description="signing keys (Ed25519; ECDSA P-256 for releasers) and the workspace trust file")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    g = ks.add_parser("generate", help="create a key pair (private part encrypted with CERTUS_KEY_PASSPHRASE)")
    g.add_argument("--name", required=True)
    g.add_argument("--role", required=True, choices=ROLES)
    g.add_argument("--dir", help="where to write NAME.key/NAME.pub (default: $CERTUS_HOME/keys)")
    g.add_argument("--unencrypted", action="store_true", help="store the private key unencrypted (CI keys only)")
    g.add_argument("--type", choices=("ed25519", "ecdsa-p256"), default="ed25519",
                   help="key type: ed25519 (default), or ecdsa-p256 for releaser keys (OMS model bundles)")
    g.set_defaults(func=cmd_keys_generate)
    t = ks.add_parser("trust", help="add a public key with roles to trust.json")
    t.add_argument("pubfile")
    t.add_argument("--role", action="append", help="role to grant (repeatable; default: the key's own role)")
    t.add_argument("--not-before")
    t.add_argument("--not-after")
    t.add_argument("--key", dest="key_file", help="admin key that signs the change (default: the first usable)")
    t.set_defaults(func=cmd_keys_trust)
    r = ks.add_parser("revoke", help="revoke a key: a ledger record signed by an admin key, then trust.json")
    r.add_argument("key", help="key name or keyid")
    r.add_argument("--reason", required=True)
    r.add_argument("--at", help="compromised since (default: now); signatures claiming a later time fail too")
    r.add_argument("--admin-key", dest="key_file", help="admin key that signs the revocation")
    r.set_defaults(func=cmd_keys_revoke)
    sy = ks.add_parser("sync", help="rewrite trust.json from the trust state the ledger records")
    sy.set_defaults(func=cmd_keys_sync)
    ls = ks.add_parser("list", help="trusted keys and local private keys")
    ls.set_defaults(func=cmd_keys_list)

    lg = add("log", "history of runs and governance events in the ledger", cmd_log)
    lg.add_argument("--json", action="store_true")
    sh = add("show", "one run: config, overrides, commit, stages, outputs", cmd_show)
    sh.add_argument("run", help="run id (a prefix works; 'latest' for the newest)")
    sh.add_argument("--json", action="store_true")
    li = add("lineage", "which runs, stages, deps, params and datasets produced a file", cmd_lineage)
    li.add_argument("path")
    li.add_argument("--format", choices=("text", "mermaid"), default="text")
    li.add_argument("--json", action="store_true")
    v = add("verify", "re-check signatures, Merkle roots, the ledger and (optionally) artifacts", cmd_verify)
    v.add_argument("run", nargs="?", help="verify one run (default: everything)")
    v.add_argument("--all", action="store_true", help="every run (the default)")
    v.add_argument("--artifacts", action="store_true", help="also re-hash workspace outputs and cache objects")
    v.add_argument("--every-signature", action="store_true",
                   help="also re-check each gate result's own signature where its run record's signature covers "
                        "its bytes (for a consumer that takes a gate result alone)")
    v.add_argument("--json", action="store_true")
    from engine.cli.witness import add_verify_arguments

    add_verify_arguments(v)  # the witness policy's overrides
    led = sub.add_parser("ledger", help="ledger maintenance and proofs", description="ledger maintenance and proofs")
    lsub = led.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True
    rp = lsub.add_parser("repair", help="cut a torn tail left by a crash back to the last checkpoint")
    rp.set_defaults(func=cmd_ledger_repair)
    pr = lsub.add_parser("proof", help="print an inclusion (or --consistency) proof as JSON")
    pr.add_argument("index", type=int, help="entry index (or the smaller size, with --consistency)")
    pr.add_argument("--size", type=int, help="tree size (default: the current one)")
    pr.add_argument("--consistency", action="store_true")
    pr.set_defaults(func=cmd_ledger_proof)
    from engine.cli.witness import register as register_witness

    register_witness(lsub)
    from engine.cli.ledger_remote import register as register_remote

    register_remote(lsub)
    _ = KeyError_
    from engine.cli.datasets import register as register_datasets

    register_datasets(sub)
