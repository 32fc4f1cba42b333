"""``certus lock``: merge ``certus.lock`` per stage (git's merge driver) and install that driver."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from engine.errors import EngineError, WorkspaceError

__all__ = ["register"]


def _read(path: str, label: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise WorkspaceError(f"{path} ({label}): cannot read ({e.strerror or e})") from e


def cmd_lock_merge(args: argparse.Namespace) -> int:
    """git's ``%O %A %B``: merge into OURS (%A) in place; non-zero (nothing written) on an invalid side."""
    from engine.pipeline.lock_merge import merge_locks
    from engine.store.fsutil import atomic_write

    result = merge_locks(_read(args.base, "merge base"), _read(args.ours, "ours"), _read(args.theirs, "theirs"))
    atomic_write(args.ours, result.data)
    print(result.summary(), file=sys.stderr)
    return 0


def cmd_lock_install(args: argparse.Namespace) -> int:
    from engine.adapters.lock_driver import install_merge_driver
    from engine.store.workspace import Workspace

    directory = os.path.abspath(args.directory or ".")
    try:
        root = Workspace.discover(directory).root
    except EngineError:  # not a workspace yet (a fresh clone before its pipeline): the directory itself
        root = directory
    done = install_merge_driver(root)
    for line in done:
        print(line)
    if not done:
        print("the certus.lock merge driver is installed already")
    return 0


def register(sub: Any) -> None:
    """Add ``certus lock`` and its actions."""
    lk = sub.add_parser("lock", help="certus.lock: merge it per stage (a git merge driver)",
                        description="certus.lock tools: a three-way merge per stage for git, and its installer")
    ls = lk.add_subparsers(dest="lock_command", metavar="ACTION")
    ls.required = True
    m = ls.add_parser("merge", help="three-way merge of certus.lock (git runs it as 'certus lock merge %%O %%A %%B')",
                      description="Merge certus.lock per stage: a stage changed on one side takes that side; "
                                  "changed on both, ours (it describes this workspace's files). Writes OURS.")
    m.add_argument("base", help="the merge base's version (%%O)")
    m.add_argument("ours", help="our version, replaced by the result (%%A)")
    m.add_argument("theirs", help="their version (%%B)")
    m.set_defaults(func=cmd_lock_merge)
    i = ls.add_parser("install-merge-driver", help="make git merge certus.lock with 'certus lock merge'",
                      description="Writes 'certus.lock merge=certus-lock' to .gitattributes (commit it) and the "
                                  "driver command to this clone's .git/config (each clone runs this once).")
    i.set_defaults(func=cmd_lock_install)
