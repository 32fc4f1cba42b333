"""Which workspace files git tracks: outputs must never be sources.

``repro`` deletes a stage's declared outputs before the command runs and overwrites them on a
restore, so an output that names a tracked file or directory (``outs: [stages]``) would
destroy sources, uncommitted edits included. As DVC does, such outputs are refused before
anything is deleted. One ``git ls-files -z`` per ``repro`` (never on ``status``'s path).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from engine.errors import SpecError
from engine.pipeline.spec import PipelineSpec

__all__ = ["tracked_files", "refuse_tracked_outputs"]


def tracked_files(root: str) -> set[str] | None:
    """Paths (relative to ``root``) that git tracks under ``root``; None if this is not a git
    work tree or git cannot be run (then there is nothing to protect against)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p}


def refuse_tracked_outputs(spec: PipelineSpec, names: Iterable[str], root: str) -> None:
    """Raise one line per output of the named stages that is, or contains, a file git tracks."""
    tracked = tracked_files(root)
    if not tracked:
        return
    dirs: dict[str, str] = {}  # directory -> one tracked file in it, for the message
    for p in tracked:
        parent = p.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs[parent] = p
            parent = parent.rpartition("/")[0]
    problems: list[tuple[int, str, str]] = []
    for name in names:
        st = spec.stages[name]
        for o in st.all_outs:
            if o in getattr(st, "uncached", ()):  # DVC's `cache: false`: git keeps it, as DVC intends
                continue
            if o in tracked:
                what = f"'{o}' is a file git tracks"
            elif o in dirs:
                what = f"'{o}' is a directory holding files git tracks (e.g. '{dirs[o]}')"
            else:
                continue
            problems.append((st.line, name, f"{spec.path}:{st.line}: stage '{name}': field 'outs': {what}; "
                            f"outputs are deleted before a stage runs, so a source cannot be one: declare it in "
                            f"'deps' instead, or untrack it (git rm -r --cached '{o}') and let Certus own it"))
    if problems:
        raise SpecError("\n".join(m for _, _, m in sorted(problems)))
