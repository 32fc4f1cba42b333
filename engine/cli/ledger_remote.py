"""``certus ledger remote add|remove|list`` and ``certus ledger sync``: a ledger a whole team appends to.

See :mod:`engine.provenance.ledger_sync` for what a sync checks and :mod:`engine.adapters.shared_log`
for the backends (a git ref on the workspace's remote, or PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def _ws(args: argparse.Namespace) -> Any:
    from engine.store.workspace import Workspace

    return Workspace.discover(args.directory or ".")


def cmd_remote(args: argparse.Namespace) -> int:
    from engine.adapters.shared_log import Remote, load_remotes, remove_remote, save_remote
    from engine.run.ledger_remotes import install_git_bits

    ws = _ws(args)
    if args.remote_command == "add":
        save_remote(ws.root, Remote(args.name, args.url))
        added = install_git_bits(ws.root)
        from engine.adapters.lock_driver import install_merge_driver

        added += install_merge_driver(ws.root)  # certus.lock merges per stage: no hand-resolved conflicts
        print(f"ledger remote '{args.name}' -> {args.url} (in .certus/remotes.json: commit it)")
        if added:
            print("set up: " + "; ".join(added))
        print("run 'certus ledger sync' to sequence this ledger into it")
    elif args.remote_command == "remove":
        remove_remote(ws.root, args.name)
        print(f"ledger remote '{args.name}' removed")
    else:
        remotes = load_remotes(ws.root)
        if args.json:
            print(json.dumps({n: {"url": r.url} for n, r in sorted(remotes.items())}, indent=2))
        for n, r in sorted(remotes.items()):
            if not args.json:
                print(f"{n}\t{r.url}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from engine.provenance.recorder import Provenance
    from engine.run.ledger_remotes import sync_remotes
    from engine.store.workspace import WorkspaceLock

    ws = _ws(args)
    with WorkspaceLock(ws).held(command="ledger sync"):
        prov = Provenance(ws)
        done = sync_remotes(prov, sys.stderr, args.remote or None, quiet_if_none=False)
    if args.json:
        print(json.dumps([None if r is None else {"remote": r.remote, "fetched": r.fetched, "pushed": r.pushed,
                                                  "size": r.size, "moved": r.moved, "first": r.first,
                                                  "attempts": r.attempts} for r in done], indent=2))
    if not done:
        print("no ledger remote configured; add one with 'certus ledger remote add NAME URL'", file=sys.stderr)
        return 2
    return 3 if any(r is None for r in done) else 0


def register(lsub: Any) -> None:
    rem = lsub.add_parser("remote", help="the shared logs this ledger is sequenced into",
                          description="configure the shared logs (a git ref on a git remote, or PostgreSQL) this "
                                      "workspace's ledger is sequenced into; kept in .certus/remotes.json")
    rsub = rem.add_subparsers(dest="remote_command", metavar="ACTION")
    rsub.required = True
    a = rsub.add_parser("add", help="add a shared log: URL 'git' (the git remote NAME), 'git:OTHER' or "
                                    "postgresql://...")
    a.add_argument("name")
    a.add_argument("url")
    a.set_defaults(func=cmd_remote)
    r = rsub.add_parser("remove", help="forget a shared log")
    r.add_argument("name")
    r.set_defaults(func=cmd_remote)
    ls = rsub.add_parser("list", help="the configured shared logs")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_remote)
    s = lsub.add_parser("sync", help="fetch the shared log, check it extends what this machine saw, and "
                                     "sequence local entries into it",
                        description="fetch, verify consistency with the last checkpoint seen, re-sequence and push "
                                    "pending entries. Exit 0: in sync; 3: a remote was unreachable (nothing lost)")
    s.add_argument("remote", nargs="*", help="remote names (default: all configured)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sync)
