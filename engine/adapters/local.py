"""The default executor: stage commands as local subprocesses, each in its own process group.

Each command runs through ``/bin/sh -c`` in a new session, confined as
:mod:`engine.adapters.sandbox` describes (Landlock; a private ``TMPDIR``; a per-stage token
that lets the coordinator find and kill every descendant, ``setsid`` daemons included, when
the stage ends or its ``timeout:`` expires). On Ctrl-C, SIGTERM or a failure elsewhere every
stage's processes are terminated, so no orphan keeps writing outputs. Output goes to the
stage's log and, line by line with a ``stage |`` prefix, to the console.
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
from typing import IO, TextIO

from engine.adapters.sandbox import RunSandbox, SandboxError, denied_paths, kill_tagged, set_subreaper
from engine.run.executor import JobResult, StageJob
from engine.store.cache import remove_path
from engine.store.workspace import proc_start_time

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Thread pool of ``jobs`` workers, each waiting on one (confined) subprocess."""

    def __init__(self, jobs: int, *, echo: TextIO | None = None,
                 on_groups: Callable[[list[dict[str, int]]], None] | None = None,
                 sandbox: str | RunSandbox = "auto", workspace: str | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        # a RunSandbox given is the caller's to close (a Dask worker keeps one per run, for all its stages)
        self._own_sandbox = not isinstance(sandbox, RunSandbox)
        self.sandbox = sandbox if isinstance(sandbox, RunSandbox) else RunSandbox(
            sandbox, workspace or os.getcwd(), warn=warn or (lambda m: print(m, file=sys.stderr)))
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="certus-stage")
        self.echo = echo if echo is not None else sys.stdout
        self.warn = warn or (lambda m: print(m, file=sys.stderr))
        self.on_groups = on_groups
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._groups: dict[str, dict[str, int]] = {}
        self._tokens: dict[str, str] = {}
        self._all_outs: set[str] = set()  # every job's declared outputs (concurrent writers are not violations)
        self._stopping = False
        self._was_subreaper = set_subreaper(True)  # orphans of a stage come to us, to be killed

    def submit(self, job: StageJob) -> Future[JobResult]:
        with self._lock:
            self._all_outs.update(p for p, _ in job.outs)
        return self.pool.submit(self._attempts, job)

    def _attempts(self, job: StageJob) -> JobResult:
        """The stage's ``retries:``: after a failure its outputs go and it runs again (as on Dask)."""
        res = self._run(job)
        for attempt in range(1, job.retries + 1):
            if (res.returncode == 0 and not res.error) or self._stopping:
                break
            self.warn(f"[certus] stage '{job.name}' failed ({res.error or f'exit status {res.returncode}'}); "
                      f"retry {attempt} of {job.retries} (its 'retries:')")
            for path, _ in job.outs:
                with contextlib.suppress(OSError):
                    remove_path(path)
            res = self._run(job)
        return res

    def run(self, job: StageJob) -> JobResult:
        """Run one job in the calling thread (one that may block, e.g. a Dask task's)."""
        with self._lock:
            self._all_outs.update(p for p, _ in job.outs)
        return self._run(job)

    def _publish(self) -> None:
        if self.on_groups is not None:
            self.on_groups(list(self._groups.values()))

    def _pump(self, out: IO[bytes], log: IO[bytes], prefix: str) -> None:
        for line in iter(out.readline, b""):
            with contextlib.suppress(ValueError, OSError):
                log.write(line)
            with self._lock, contextlib.suppress(ValueError, OSError):
                self.echo.write(prefix + line.decode("utf-8", "replace").rstrip("\n") + "\n")
                self.echo.flush()

    def _run(self, job: StageJob) -> JobResult:
        os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
        started = time.time()
        try:
            box = self.sandbox.stage(job.outs, job.writable)
        except (SandboxError, OSError) as e:
            return JobResult(job.name, -1, started, time.time(), job.log_path, error=f"sandbox: {e}")
        env = {**job.env, **box.env()}
        timed_out = False
        with open(job.log_path, "wb") as log:
            with self._lock:
                if self._stopping:
                    box.finish()
                    return JobResult(job.name, -signal.SIGTERM, started, time.time(), job.log_path)
                proc = box.spawn(lambda: subprocess.Popen(
                    ["/bin/sh", "-c", job.cmd], cwd=job.cwd, env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))
                self._procs[job.name] = proc
                self._tokens[job.name] = box.token
                self._groups[job.name] = {"pgid": proc.pid, "start": proc_start_time(proc.pid) or 0}
                self._publish()
            assert proc.stdout is not None
            reader = threading.Thread(target=self._pump, args=(proc.stdout, log, f"{job.name} | "), daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=job.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            # the shell is gone: end its group and every descendant that left it (setsid daemons)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            kill_tagged(box.token, pgid=proc.pid)
            reader.join(timeout=10)
            with contextlib.suppress(ValueError, OSError):
                log.flush()
                os.fsync(log.fileno())
        with self._lock:
            self._procs.pop(job.name, None)
            self._tokens.pop(job.name, None)
            self._groups.pop(job.name, None)
            self._publish()
            others = self._all_outs - box.declared
        wrote = box.finish(ignore=others)
        error = ""
        if timed_out:
            error = f"timed out after {job.timeout:g} s"
        elif wrote:
            error = ("wrote outside its declared outputs: "
                     + ", ".join(os.path.relpath(p, job.cwd) for p in wrote[:5]) + ("…" if len(wrote) > 5 else ""))
        elif rc != 0 and box.layers:
            refused = denied_paths(job.log_path)
            if refused:
                error = f"exit status {rc}; the sandbox refused: {', '.join(refused)} (declare outputs or writable:)"
            if box.guessed:
                error = (error or f"exit status {rc}") + (
                    f"; new output(s) in the workspace root were pre-created by their name's look: "
                    f"{', '.join(box.guessed)}; move them into a subdirectory if that guess is wrong")
        return JobResult(job.name, rc, started, time.time(), job.log_path, error=error, sandbox=dict(box.info))

    def terminate_all(self, grace: float = 3.0) -> None:
        """SIGTERM every running group, then SIGKILL whatever is left after ``grace``."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
            tokens = list(self._tokens.values())
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
        for t in tokens:
            kill_tagged(t)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._own_sandbox:
            self.sandbox.close()
        set_subreaper(self._was_subreaper)
