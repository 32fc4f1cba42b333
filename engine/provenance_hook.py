"""Builds the coordinator for a CLI run; provenance attaches itself here (issue 3)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.repro import Repro, ReproOptions
from engine.workspace import Workspace


def make_repro(ws: Workspace, opts: ReproOptions, args: argparse.Namespace | None = None) -> Repro:
    return Repro(ws, opts)


__all__ = ["make_repro", "Any"]
