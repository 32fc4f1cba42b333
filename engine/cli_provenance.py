"""CLI commands for keys, ledger, verify and datasets (registered into the main parser)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, add: Any) -> None:
    return None
