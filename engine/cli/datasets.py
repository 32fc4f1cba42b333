"""``certus dataset``: register, approve, list, show, version, check out, push and pull datasets."""

from __future__ import annotations

import argparse
import json
import os
import posixpath
from typing import Any

from engine.errors import DatasetError

__all__ = ["register"]


def _ws(args: argparse.Namespace) -> Any:
    from engine.store.workspace import Workspace

    return Workspace.discover(args.directory or ".")


def _rel(ws: Any, path: str) -> str:
    full = os.path.realpath(os.path.join(os.getcwd(), path))
    root = os.path.realpath(ws.root)
    if full != root and not full.startswith(root + os.sep):
        raise DatasetError(f"{path}: outside the workspace {ws.root}; datasets must live inside it")
    if not os.path.exists(full):
        raise DatasetError(f"{path}: no such file or directory")
    return posixpath.normpath(os.path.relpath(full, root))


def cmd_add(args: argparse.Namespace) -> int:
    from engine.datasets.register import register_source
    from engine.datasets.registry import SENSITIVITY
    from engine.provenance.recorder import Provenance

    ws = _ws(args)
    rel = _rel(ws, args.path)
    if args.sensitivity not in SENSITIVITY:
        raise DatasetError(f"--sensitivity {args.sensitivity}: expected one of {', '.join(SENSITIVITY)}")
    if not args.name or not args.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise DatasetError(f"--name '{args.name}': use letters, digits, '-', '_' and '.'")
    prov = Provenance(ws)
    steward = prov.signer("data-steward", args.key)  # before any change: fail early without a key
    done = register_source(prov, rel, name=args.name, source=args.source, sensitivity=args.sensitivity,
                           retention=args.retention, license=args.license, owner=args.owner, steward=steward,
                           schema_rel=_rel(ws, args.schema) if args.schema else None, init=args.init)
    man = done.manifest
    if not done.new:
        print(f"dataset {man.ref} (v{man.version}) already registers these bytes")
        return 0
    print(f"registered dataset {man.ref} (v{man.version}): {man.path}, {man.rows} rows x {man.columns} columns")
    print(f"  id {man.id}\n  manifest {done.manifest_file} (signed by {steward.name})\n  DVC md5 {done.dvc.get('md5')}")
    print(f"next: another person approves it with 'certus dataset approve {man.ref} --key APPROVER'; "
          f"commit {done.manifest_file}, {rel}.dvc and .gitignore")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from engine.datasets.registry import Registry, write_approval
    from engine.provenance.recorder import Provenance, sha256_hex
    from engine.store.workspace import WorkspaceLock

    ws = _ws(args)
    prov = Provenance(ws)
    reg = Registry.load(ws.root)
    entry = reg.resolve(args.ref)
    approver = prov.signer("approver", args.key)
    policy = args.policy or ["conf/config.yaml#certus.policy"]
    with WorkspaceLock(ws).held(wait=True, command="dataset approve"):
        path, raw = write_approval(reg, entry, approver, policy)
        prov.append_event("dataset.approved", entry.manifest.ref, {
            "id": entry.manifest.id, "name": entry.manifest.name, "version": entry.manifest.version,
            "approval": path, "approval_sha256": sha256_hex(raw), "approver": approver.name, "policy_refs": policy})
    print(f"approved dataset {entry.manifest.ref} (v{entry.manifest.version}) as '{approver.name}'; commit {path}")
    return 0


def _state(entry: Any, trust: Any, reg: Any) -> str:
    from engine.datasets.policy import approval_problem

    why = approval_problem(entry, trust, reg)
    return "approved" if why is None else ("inherited-unapproved" if entry.manifest.approval == "inherited"
                                           else "pending")


def _trust(ws: Any) -> Any:
    from engine.provenance.recorder import Provenance

    prov = Provenance(ws)
    return prov.trust() if prov.enabled else None


def cmd_list(args: argparse.Namespace) -> int:
    from engine.datasets.registry import Registry

    ws = _ws(args)
    reg = Registry.load(ws.root)
    trust = _trust(ws)
    rows = []
    for name in reg.names():
        e = reg.entries[name][-1]
        rows.append({"name": name, "latest": e.manifest.ref, "version": e.manifest.version, "path": e.manifest.path,
                     "sensitivity": e.manifest.sensitivity, "state": _state(e, trust, reg),
                     "versions": len(reg.entries[name])})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("No datasets registered; see 'certus dataset add --help'.")
    for r in ([] if args.json else rows):
        print(f"{r['latest']:32} v{r['version']:<3} {r['state']:9} {r['sensitivity']:12} {r['path']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from engine.datasets.registry import Registry

    ws = _ws(args)
    reg = Registry.load(ws.root)
    e = reg.resolve(args.ref)
    d = e.manifest.to_dict()
    d["state"] = _state(e, _trust(ws), reg)
    d["manifest_file"] = e.path
    if e.approval:
        d["approved_by"] = e.approval.get("approver")
        d["approved_at"] = e.approval.get("approved_at")
    print(json.dumps(d, indent=2, sort_keys=True))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from engine.datasets.registry import Registry

    ws = _ws(args)
    reg = Registry.load(ws.root)
    trust = _trust(ws)
    for e in reg.versions(args.name):
        m = e.manifest
        print(f"v{m.version:<3} {m.ref:32} {_state(e, trust, reg):9} {m.registered}  {m.rows} rows  {m.path}")
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    from engine.adapters import dvc
    from engine.datasets.registry import Registry
    from engine.store.hashing import Hasher
    from engine.store.workspace import WorkspaceLock

    ws = _ws(args)
    e = Registry.load(ws.root).resolve(args.ref)
    m = e.manifest
    if not m.dvc:
        raise DatasetError(f"dataset {m.ref}: derived from run {m.produced_by and m.produced_by.get('run')}; "
                           "restore it with 'certus checkout' or re-run that stage")
    with WorkspaceLock(ws).held(wait=True, command="dataset checkout"):
        dvc.restore(ws.root, m.path, dict(m.dvc))
    got = Hasher(ws.root).hash_path(m.path)
    if got is None or str(got.digest) != m.id:
        raise DatasetError(f"dataset {m.ref}: after checkout {m.path} hashes to "
                           f"{got.digest if got else 'nothing'}, not {m.id}")
    print(f"checked out dataset {m.ref} (v{m.version}) into {m.path}; sha256 verified; commit {m.path}.dvc")
    return 0


def cmd_push_pull(args: argparse.Namespace) -> int:
    from engine.adapters import dvc
    from engine.datasets.registry import Registry

    ws = _ws(args)
    reg = Registry.load(ws.root)
    targets = [e.manifest.dvc["file"] for n in reg.names() for e in reg.entries[n][-1:]
               if e.manifest.dvc and os.path.exists(ws.p(e.manifest.dvc["file"]))]
    if args.action == "push":
        n = dvc.push(ws.root, remote=args.remote, targets=targets or None)
        print(f"pushed {n} file(s) to the DVC remote")
    else:
        n = dvc.pull(ws.root, remote=args.remote, targets=targets or None)
        from engine.store.hashing import Hasher

        bad = []
        for name in reg.names():
            m = reg.entries[name][-1].manifest
            if m.dvc:
                got = Hasher(ws.root).hash_path(m.path)
                if got is None or str(got.digest) != m.id:
                    bad.append(m.ref)
        print(f"pulled {n} file(s) from the DVC remote")
        if bad:
            raise DatasetError(f"after pull, these datasets do not match their manifests: {', '.join(bad)}")
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser("dataset", help="governed datasets: register, approve, versions, DVC remotes",
                       description="governed datasets: register, approve, versions, DVC remotes")
    ds = d.add_subparsers(dest="dataset_command", metavar="ACTION")
    ds.required = True
    a = ds.add_parser("add", help="track data with DVC and register a signed manifest (data-steward key)")
    a.add_argument("path")
    a.add_argument("--name", required=True)
    a.add_argument("--source", required=True, help="where the data came from")
    a.add_argument("--schema", help="schema YAML (columns, types, nullability, allowed values, unique keys)")
    a.add_argument("--sensitivity", required=True, help="public | internal | confidential | pii")
    a.add_argument("--retention", required=True, help="e.g. 365d, 6m, 2y, or an expiry date")
    a.add_argument("--license", required=True)
    a.add_argument("--owner")
    a.add_argument("--key", help="data-steward key (name or .key path)")
    a.add_argument("--init", action="store_true", help="run 'dvc init' if DVC is not initialised")
    a.set_defaults(func=cmd_add)
    ap = ds.add_parser("approve", help="sign an approval (approver key; not the registering key)")
    ap.add_argument("ref", help="NAME or NAME@ID")
    ap.add_argument("--key", help="approver key (name or .key path)")
    ap.add_argument("--policy", action="append", help="policy reference (repeatable)")
    ap.set_defaults(func=cmd_approve)
    ls = ds.add_parser("list", help="registered datasets (latest versions)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    sh = ds.add_parser("show", help="one dataset version's manifest and state")
    sh.add_argument("ref")
    sh.set_defaults(func=cmd_show)
    vs = ds.add_parser("versions", help="every registered version of a dataset")
    vs.add_argument("name")
    vs.set_defaults(func=cmd_versions)
    co = ds.add_parser("checkout", help="bring back a registered version through DVC")
    co.add_argument("ref")
    co.set_defaults(func=cmd_checkout)
    for action in ("push", "pull"):
        p = ds.add_parser(action, help=f"{action} dataset bytes {'to' if action == 'push' else 'from'} the DVC remote")
        p.add_argument("-r", "--remote")
        p.set_defaults(func=cmd_push_pull, action=action)
