"""Install git's merge driver for ``certus.lock`` (see :mod:`engine.pipeline.lock_merge`).

Two halves, as git splits them: ``.gitattributes`` (committed, shared by every clone) names
the driver for ``certus.lock``; the command that runs it lives in the clone's own
``.git/config`` (git never takes commands from a repository's files). A clone without the
config merges ``certus.lock`` with git's line merge, as before: run
``certus lock install-merge-driver`` in each clone (commands that set a workspace up call
:func:`install_merge_driver`).
"""

from __future__ import annotations

import os
import subprocess

from engine.errors import WorkspaceError
from engine.store.fsutil import atomic_write

__all__ = ["ATTRIBUTE", "DRIVER", "install_merge_driver"]

DRIVER = "certus-lock"
ATTRIBUTE = f"certus.lock merge={DRIVER}"
COMMAND = "certus lock merge %O %A %B"


def _git(root: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise WorkspaceError(f"{root}: cannot run git ({e}); install git to merge certus.lock") from e


def install_merge_driver(root: str) -> list[str]:
    """Make git merge ``root``'s ``certus.lock`` per stage; returns what changed (idempotent)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise WorkspaceError(f"{root}: not a git work tree; 'git init' first, then 'certus lock install-merge-driver'")
    done = []
    for key, value in ((f"merge.{DRIVER}.name", "Certus lock: merge per stage"),
                       (f"merge.{DRIVER}.driver", COMMAND)):
        if _git(root, "config", "--local", "--get", key).stdout.strip() != value:
            r = _git(root, "config", "--local", key, value)
            if r.returncode != 0:
                raise WorkspaceError(f"git config {key}: {r.stderr.strip() or 'failed'}")
            done.append(f".git/config: {key} = {value}")
    path = os.path.join(root, ".gitattributes")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise WorkspaceError(f"{path}: unreadable ({e})") from e
    if ATTRIBUTE not in (line.strip() for line in text.splitlines()):
        sep = "" if not text or text.endswith("\n") else "\n"
        atomic_write(path, (text + sep + ATTRIBUTE + "\n").encode("utf-8"))
        done.append(f".gitattributes: {ATTRIBUTE} (commit it)")
    return done
