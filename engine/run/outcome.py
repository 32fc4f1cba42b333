"""What a run is and what became of each stage: options, outcomes, results, progress lines."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["ReproOptions", "ReproResult", "StageOutcome", "Progress", "new_run_id", "nested_params", "OK_STATES"]

OK_STATES = ("ran", "restored", "skipped")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def nested_params(params: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """``[("train.C", 0.5)]`` -> ``{"train": {"C": 0.5}}``: what a stage script reads."""
    out: dict[str, Any] = {}
    for key, value in params:
        cur = out
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
    return out


@dataclass
class ReproOptions:
    targets: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    pipeline: str | None = None
    downstream: bool = False
    single: bool = False
    force: bool = False
    dry: bool = False
    jobs: int = 0
    wait: bool = False
    run_cache: bool = True
    check_determinism: str | None = None
    executor: dict[str, Any] = field(default_factory=dict)  # `repro --executor/--scheduler` over certus.executor


@dataclass
class StageOutcome:
    name: str
    state: str  # ran | restored | skipped | failed | blocked | interrupted
    key: str = ""
    reasons: tuple[str, ...] = ()
    deps: dict[str, str] = field(default_factory=dict)
    outs: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    returncode: int | None = None
    log_path: str = ""
    error: str = ""
    first_run: str = ""  # for restored stages: the run that first produced these outputs
    datasets: list[dict[str, Any]] = field(default_factory=list)  # manifests consumed (resolvedDependencies)
    sandbox: dict[str, Any] = field(default_factory=dict)  # confinement that applied (engine.adapters.sandbox)


@dataclass
class ReproResult:
    run_id: str
    config: dict[str, Any]
    overrides: list[str]
    spec_path: str
    outcomes: dict[str, StageOutcome]
    started: float
    finished: float = 0.0
    status: str = "succeeded"  # succeeded | failed | interrupted

    def count(self, state: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.state == state)


class Progress:
    """One line per change: done/running/pending, on stderr."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream

    def show(self, done: int, running: int, pending: int, event: str) -> None:
        self.stream.write(f"[certus] {done}/{self.total} done, {running} running, {pending} pending — {event}\n")
        self.stream.flush()
