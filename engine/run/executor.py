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

__all__ = ["StageJob", "JobResult", "Executor", "ExecutorSettings", "executor_settings"]


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
    # for executors beyond this machine (engine.adapters.dask_executor); the local one ignores them
    key: str = ""  # the stage key: a distributed task is named by run, stage and key
    deps: tuple[tuple[str, Any], ...] = ()  # (workspace path, engine.store.hashing.Entry) hashed before the run
    set_vars: tuple[str, ...] = ()  # the names in env that Certus set (the rest is the coordinator's inherited env)
    resources: tuple[tuple[str, float], ...] = ()  # the stage's `resources:` (cpus, mem in bytes, gpu, ...)
    retries: int = 0  # the stage's `retries:`: re-runs allowed after a failure or a lost worker


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


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    """``certus.executor`` from the config, with ``repro --executor/--scheduler`` on top."""

    kind: str = "local"  # local | dask
    scheduler: str = ""  # dask: an existing scheduler's address; empty: a LocalCluster started for the run
    mode: str = "shared"  # shared: workers see the workspace; staged: they fetch deps from `store`
    store: str = ""  # staged: the content-addressed store (an exported Certus cache directory)
    workers: int = 0  # the LocalCluster's worker processes (0: min(-j, cores))
    connect_timeout: float = 10.0  # seconds to reach the scheduler
    scratch: str = ""  # staged: where a worker makes each stage's scratch directory (default: its temp dir)


_KINDS = ("local", "dask")
_MODES = ("shared", "staged")


def executor_settings(config: Mapping[str, Any], override: Mapping[str, Any] | None = None) -> ExecutorSettings:
    """Validate ``certus.executor`` (a kind name or a mapping); errors name the field."""
    from engine.errors import ConfigError

    certus = config.get("certus") if isinstance(config.get("certus"), Mapping) else {}
    raw: Any = certus.get("executor", "local")
    raw = {"kind": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config 'certus.executor': expected 'local', 'dask' or a mapping, not {raw!r}")
    raw = {**raw, **{k: v for k, v in (override or {}).items() if v not in (None, "")}}
    fields = ExecutorSettings.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"config 'certus.executor.{unknown[0]}': unknown setting; known: {', '.join(fields)}")
    kind, mode = str(raw.get("kind", "local")), str(raw.get("mode", "shared"))
    if kind not in _KINDS:
        raise ConfigError(f"config 'certus.executor.kind': {kind!r} is not one of {', '.join(_KINDS)}")
    if mode not in _MODES:
        raise ConfigError(f"config 'certus.executor.mode': {mode!r} is not one of {', '.join(_MODES)}")
    out: dict[str, Any] = {"kind": kind, "mode": mode}
    for name in ("scheduler", "store", "scratch"):
        value = raw.get(name) or ""
        if not isinstance(value, str):
            raise ConfigError(f"config 'certus.executor.{name}': expected a string, not {value!r}")
        out[name] = value
    for name, cast in (("workers", int), ("connect_timeout", float)):
        value = raw.get(name, fields[name].default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or cast(value) != value:
            raise ConfigError(f"config 'certus.executor.{name}': {value!r} is not a non-negative number"
                              + (" (whole)" if cast is int else ""))
        out[name] = cast(value)
    if kind == "dask" and mode == "staged" and not out["store"]:
        raise ConfigError("config 'certus.executor.store': staged mode needs a store, a directory (an exported "
                          "Certus cache) that the coordinator and every worker can reach")
    return ExecutorSettings(**out)
