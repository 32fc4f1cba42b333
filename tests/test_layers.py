"""The architecture as a checked contract: import-linter's layer contracts hold, and no module
imports itself back through another (an import cycle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
grimp = pytest.importorskip("grimp", reason="import-linter (and grimp) are test dependencies")


def test_layer_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(graph: object) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):  # type: ignore[attr-defined]
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):  # type: ignore[attr-defined]
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles_between_modules() -> None:
    sys.path.insert(0, str(REPO))
    graph = grimp.build_graph("engine", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_no_module_grows_past_its_limit() -> None:
    """About 400 lines a module (STYLE.md); a few are allowed a little more while they are split."""
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in (REPO / "engine").rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 600} == {}


def test_version_flag() -> None:
    from engine import __version__

    out = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"certus {__version__}"
