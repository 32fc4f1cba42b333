"""The default executor: stage commands as local subprocesses, each in its own process group.

Each command runs through ``/bin/sh -c`` in a new session, so on Ctrl-C, SIGTERM or a
failure elsewhere the whole group (the shell and everything it started) is terminated
and no orphan keeps writing outputs. Output goes to the stage's log and, line by line
with a ``stage |`` prefix, to the console.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO

from engine.executor import JobResult, StageJob
from engine.workspace import proc_start_time

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Thread pool of ``jobs`` workers, each waiting on one subprocess."""

    def __init__(self, jobs: int, *, echo: TextIO | None = None,
                 on_groups: Callable[[list[dict[str, int]]], None] | None = None) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="certus-stage")
        self.echo = echo if echo is not None else sys.stdout
        self.on_groups = on_groups
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._groups: dict[str, dict[str, int]] = {}
        self._stopping = False

    def submit(self, job: StageJob) -> Future[JobResult]:
        return self.pool.submit(self._run, job)

    def _publish(self) -> None:
        if self.on_groups is not None:
            self.on_groups(list(self._groups.values()))

    def _run(self, job: StageJob) -> JobResult:
        os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
        started = time.time()
        with open(job.log_path, "wb") as log:
            with self._lock:
                if self._stopping:
                    return JobResult(job.name, -signal.SIGTERM, started, time.time(), job.log_path)
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", job.cmd], cwd=job.cwd, env=dict(job.env),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self._procs[job.name] = proc
                self._groups[job.name] = {"pgid": proc.pid, "start": proc_start_time(proc.pid) or 0}
                self._publish()
            assert proc.stdout is not None
            prefix = f"{job.name} | "
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                with self._lock:
                    with contextlib.suppress(ValueError, OSError):
                        self.echo.write(prefix + line.decode("utf-8", "replace").rstrip("\n") + "\n")
                        self.echo.flush()
            rc = proc.wait()
            log.flush()
            os.fsync(log.fileno())
        with self._lock:
            self._procs.pop(job.name, None)
            self._groups.pop(job.name, None)
            self._publish()
        # the shell may be gone while a background child of it lives on: end the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return JobResult(job.name, rc, started, time.time(), job.log_path)

    def terminate_all(self, grace: float = 3.0) -> None:
        """SIGTERM every running group, then SIGKILL whatever is left after ``grace``."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
