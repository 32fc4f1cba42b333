"""Workspace paths and output records from files Certus reads: one validator for all of them.

A path in the spec, in ``certus.lock`` or in a run-cache record is input: it must be a
relative POSIX path that stays inside the workspace and outside ``.certus``/``.git``. The
spec parser reports problems with file and line; the lock and run-cache readers use the
same rules. Writes go through :func:`safe_target`, which refuses a parent directory that a
symlink leads out of the workspace (or into ``.git``/``.certus``), so a replaced parent
cannot redirect a restore.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any

from engine.errors import WorkspaceError

__all__ = ["UnsafePathError", "SymlinkError", "path_problem", "digest_problem", "out_record_problem", "safe_target",
           "DIGEST_RE", "RUN_ID_RE"]

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_OWN = (".certus", ".git")


class UnsafePathError(WorkspaceError):
    """A path would leave the workspace (or reach Certus's or git's own directory)."""


class SymlinkError(WorkspaceError):
    """A symbolic link where Certus reads or stores content (inside a directory output or dep)."""


def path_problem(p: Any) -> tuple[str | None, str | None]:
    """``(normalised path, None)`` or ``(None, why it is refused)``."""
    if not isinstance(p, str) or not p.strip():
        return None, f"path {p!r} is not a non-empty string"
    if "\x00" in p:
        return None, f"path {p!r} contains a NUL byte"
    if p.startswith("/") or _DRIVE.match(p):
        return None, f"path '{p}' is absolute; use a path relative to the workspace root"
    norm = posixpath.normpath(p.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return None, f"path '{p}' escapes the workspace; keep it inside the workspace root"
    if norm == ".":
        return None, "path '.' is the whole workspace; name a file or directory in it"
    if norm.split("/", 1)[0] in _OWN:
        return None, f"path '{p}' is inside Certus's or git's own directory"
    return norm, None


def digest_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        return f"digest {str(value)[:80]!r} is not sha256:<64 lowercase hex>"
    return None


def out_record_problem(path: Any, rec: Any) -> str | None:
    """Why an output record (``path -> {digest, kind?, size?, nfiles?}``) is malformed, or None."""
    norm, why = path_problem(path)
    if why:
        return why
    if norm != path:
        return f"path '{path}' is not in normal form ('{norm}')"
    if not isinstance(rec, dict):
        return f"output '{path}': expected a mapping with a digest"
    if "digest" not in rec:
        return f"output '{path}': no digest"
    why = digest_problem(rec["digest"])
    if why:
        return f"output '{path}': {why}"
    if rec.get("kind", "file") not in ("file", "dir"):
        return f"output '{path}': kind {str(rec.get('kind'))[:40]!r} is neither 'file' nor 'dir'"
    for fld in ("size", "nfiles"):
        v = rec.get(fld, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"output '{path}': {fld} {str(v)[:40]!r} is not a non-negative integer"
    return None


def safe_target(root: str, rel: str) -> str:
    """The absolute path to write ``rel`` at, after checking that no symlinked parent leads
    out of the workspace (or into ``.git``/``.certus``). ``rel`` itself may be a link: writers
    replace it, never write through it."""
    norm, why = path_problem(rel)
    if why:
        raise UnsafePathError(f"refusing to write '{rel}': {why}")
    assert norm is not None
    target = os.path.join(root, norm)
    parent = os.path.dirname(target)
    # fast path: no component of the parent is a link (the common case costs a few lstat calls)
    cur = root
    linked = False
    for part in posixpath.dirname(norm).split("/") if "/" in norm else ():
        cur = os.path.join(cur, part)
        try:
            if os.path.islink(cur):
                linked = True
                break
        except OSError:
            break
    if linked:
        real_root = os.path.realpath(root)
        real = os.path.realpath(parent)
        inside = os.path.relpath(real, real_root)
        if inside == ".." or inside.startswith("../") or os.path.isabs(inside) \
                or inside.split(os.sep, 1)[0] in _OWN:
            raise UnsafePathError(
                f"refusing to write '{rel}': its parent directory leads through a symlink to {real}, outside "
                "the workspace; remove the link (or restore the directory) and retry")
    return target
