"""CLI: ``certus deploy`` (verify the whole chain, install, move an alias; ``--rollback``) and ``certus registry``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.errors import ReleaseError

__all__ = ["register"]


def _prov(args: argparse.Namespace) -> Any:
    from engine.provenance.recorder import Provenance
    from engine.store.workspace import Workspace

    return Provenance(Workspace.discover(args.directory or "."), key=getattr(args, "key", None))


def cmd_deploy(args: argparse.Namespace) -> int:
    from engine import __version__
    from engine.release.deploy import DeployRefused, deploy, rollback
    from engine.store.workspace import WorkspaceLock

    prov = _prov(args)
    if bool(args.rollback) == bool(args.bundle):
        raise ReleaseError("deploy: give a bundle directory, or --rollback NAME (not both)")
    signer = prov.signer("deployer")
    with WorkspaceLock(prov.ws).held(wait=True, command="deploy"):
        try:
            if args.rollback:
                done, rep = rollback(prov, args.rollback, args.alias, signer, registry=args.registry,
                                     version=__version__)
            else:
                done, rep = deploy(prov, args.bundle, args.alias, signer, registry=args.registry,
                                   version=__version__)
        except DeployRefused as e:
            if not args.json:
                raise
            print(json.dumps({"ok": False, "refused": str(e), "failures": e.failures}, indent=2))
            return e.exit_code
    if args.json:
        print(json.dumps({"ok": True, "name": done.name, "version": done.version, "alias": done.alias,
                          "previous": done.previous, "new_version": done.new_version, "vsa_ledger_index":
                          done.vsa_index, "verified_links": [{"what": w, "sha256": s, "ledger_index": i}
                                                              for w, s, i in rep.links], "path": done.path},
                         indent=2))
        return 0
    what = "rolled back" if args.rollback else "deployed"
    print(f"{what} {done.name} version {done.version} as '{done.alias}' (was "
          f"{done.previous if done.previous is not None else 'unset'}); {done.links} links verified, summary "
          f"(SLSA VSA) at ledger entry {done.vsa_index}; files at {done.path}")
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from engine.release.ledger_view import LedgerView
    from engine.release.registry import Registry

    prov = _prov(args)
    view = LedgerView.load(prov)
    reg = Registry.load(prov.ws.root, view, args.registry)
    for p in reg.problems:
        print(f"note: {p}", file=sys.stderr)
    return prov, reg, view


def _key_names(prov: Any) -> dict[str, str]:
    try:
        return {e.keyid: e.name for e in prov.trust().entries}
    except Exception:  # noqa: BLE001 - names are a courtesy; keyids are shown regardless
        return {}


def cmd_registry(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from engine.release.registry import parse_ref
    from engine.release.review import drift_review

    prov, reg, view = _registry(args)
    names = _key_names(prov)
    if args.registry_command == "list":
        rows = [{"name": n, "versions": sorted(m.versions), "aliases": dict(sorted(m.aliases.items()))}
                for n, m in sorted(reg.models.items())]
        if args.json:
            print(json.dumps(rows, indent=2))
        for r in rows if not args.json else ():
            aliases = ", ".join(f"{a} -> {v}" for a, v in r["aliases"].items()) or "no aliases"
            print(f"{r['name']}: versions {', '.join(map(str, r['versions']))}; {aliases}")
        if not rows and not args.json:
            print(f"registry {reg.rid}: no models deployed yet")
        return 0
    if args.registry_command == "show":
        name, at = parse_ref(args.ref)
        model = reg.model(name)
        v = model.resolve(at)
        aliases = [a for a, n in sorted(model.aliases.items()) if n == v.number]
        review = drift_review(view, v.bundle_root)  # after a FAILED drift report: held until re-evaluated or waived
        out = {**asdict(v), "name": name, "aliases": aliases, "path": reg.bundle_path(name, v.number),
               "deployer_name": names.get(v.deployer, "?"), "in_review": review.in_review,
               "drift": None if review.report is None else {
                   "result": review.result, "report_index": review.report.index,
                   "report_sha256": review.report.sha256, "failed_checks": list(review.failed_checks),
                   "waiver_index": review.waived_by.index if review.waived_by else None}}
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        state = " (in review)" if review.in_review else ""
        print(f"{name} version {v.number} ({v.bundle_version}){' = ' + ', '.join(aliases) if aliases else ''}{state}")
        if review.in_review:
            print(f"  {review.why()}")
        print(f"  bundle root sha256 {v.bundle_root}\n  run {v.run_id}; release record ledger entry "
              f"{v.release_index} (sha256 {v.release_sha256[:16]}…)\n  registered {v.time} by "
              f"{out['deployer_name']} (ledger entry {v.index}); verification summary sha256 {v.vsa_sha256[:16]}…"
              f"\n  files: {out['path']}")
        return 0
    rows = []
    for index, time, what, obj in reg.history(args.name):
        who = names.get(obj.deployer, obj.deployer[:16] + "…")
        if what == "registered":
            line = (f"registered version {obj.number} ({obj.bundle_version}, bundle {obj.bundle_root[:12]}…, run "
                    f"{obj.run_id}, release record at entry {obj.release_index})")
        else:
            line = (f"{'rolled back' if obj.rollback else 'moved'} '{obj.alias}' -> version {obj.version} (was "
                    f"{obj.previous if obj.previous is not None else 'unset'})")
        rows.append({"ledger_index": index, "time": time, "deployer": who, "event": what, "what": line,
                     "evidence_vsa_sha256": obj.vsa_sha256})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['time']}  entry {r['ledger_index']:>4}  {r['deployer']}: {r['what']}; evidence: VSA "
              f"{r['evidence_vsa_sha256'][:16]}…")
    return 0


def register(sub: Any, add: Any) -> None:
    d = sub.add_parser("deploy", help="verify a bundle and its whole provenance chain, then register and alias it",
                       description="verify a bundle's signature and its chain (release record, run, attestations, "
                                   "gates and waivers, dataset approvals) in the ledger; install a verified copy "
                                   "into the registry and move an alias; or roll an alias back")
    d.add_argument("bundle", nargs="?", metavar="DIR", help="the bundle directory (dist/NAME-VERSION)")
    d.add_argument("--alias", default="production", help="the alias to move (default: production)")
    d.add_argument("--rollback", metavar="NAME", help="move --alias back to the version it named before")
    d.add_argument("--registry", metavar="DIR", help="registry directory (default: registry/ in the workspace)")
    d.add_argument("--key", help="deployer key (name in the key directory, or a path); default: any deployer key")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_deploy)
    r = sub.add_parser("registry", help="registered models, versions, aliases and their history",
                       description="registered models, versions, aliases and their history (from the ledger)")
    rs = r.add_subparsers(dest="registry_command", metavar="COMMAND")
    rs.required = True
    for name, help_ in (("list", "every model with its versions and aliases"),
                        ("show", "one version: NAME, NAME@VERSION or NAME@ALIAS"),
                        ("history", "who deployed what, when, on which evidence")):
        p = rs.add_parser(name, help=help_, description=help_)
        if name == "show":
            p.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
        if name == "history":
            p.add_argument("name", metavar="NAME")
        p.add_argument("--registry", metavar="DIR", help="registry directory (default: registry/ in the workspace)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_registry)
