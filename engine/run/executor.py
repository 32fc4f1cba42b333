"""The seam between the coordinator and whatever runs stage commands.

The coordinator alone hashes outputs and writes the cache, lock and ledger; an executor
only runs a command and reports how it ended. The local process pool is the default; a
distributed executor (Dask, say) implements the same two-method protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["StageJob", "JobResult", "Executor"]


@dataclass(frozen=True, slots=True)
class StageJob:
    """Everything needed to run one stage command, and nothing about the cache."""

    name: str
    cmd: str
    cwd: str
    env: Mapping[str, str]
    log_path: str
    outs: tuple[tuple[str, str], ...] = ()  # (absolute path, "file" | "dir" | "" unknown): what it may write
    writable: tuple[str, ...] = ()  # the stage's `writable:` paths, as written in the spec
    timeout: float | None = None  # seconds; on expiry the whole process tree is killed


@dataclass(frozen=True, slots=True)
class JobResult:
    name: str
    returncode: int
    started: float  # unix time
    finished: float
    log_path: str
    error: str = ""  # why the run failed beyond its exit status (timeout, undeclared writes)
    sandbox: Mapping[str, Any] = field(default_factory=dict)  # the confinement that applied


class Executor(Protocol):
    """Runs stage commands; must be able to stop all of them on demand."""

    def submit(self, job: StageJob) -> Future[JobResult]: ...

    def terminate_all(self) -> None: ...

    def shutdown(self) -> None: ...
