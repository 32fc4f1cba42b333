"""The workspace: where the spec, config, lock file and ``.certus/`` live, and its lock.

The workspace lock is an ``flock`` on ``.certus/lock``: the kernel drops it when the
holding process dies, however it dies, so a stale lock is detected without trusting a PID
(which can be reused). What the dead holder was running (stage process groups, each with
its start time from ``/proc``) is kept in ``.certus/running.json`` so the next holder can
terminate any orphan still writing outputs before it starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import GraphError, LockHeldError, WorkspaceError
from engine.store.fsutil import overwrite_small

__all__ = ["Workspace", "WorkspaceLock", "find_root", "proc_start_time", "proc_stat"]

SPEC_DIR = "pipelines"
CONF_DIR = "conf"
LOCK_NAME = "certus.lock"
def find_root(start: str) -> str:
    """The nearest directory at or above ``start`` holding ``pipelines/``, or a DVC project root
    (``.dvc/``: its ``dvc.yaml`` files are read by engine.pipeline.dvc_pipeline)."""
    cur = os.path.abspath(start)
    while True:
        if os.path.isdir(os.path.join(cur, SPEC_DIR)) or os.path.isdir(os.path.join(cur, ".dvc")):
            return cur
        parent = os.path.dirname(cur)
        if parent == cur:
            raise WorkspaceError(
                f"{os.path.abspath(start)}: not inside a Certus workspace (no '{SPEC_DIR}/' directory here "
                "or above, and no DVC project); create pipelines/<name>.yaml or pass -C DIR"
            )
        cur = parent


def proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, …), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of a process, or None if it is gone."""
    rest = proc_stat(pid)
    return int(rest[19]) if rest is not None else None


def _group_members(pgid: int, not_before: int) -> list[int]:
    """Live processes in process group ``pgid`` started no earlier than ``not_before``."""
    members = []
    for name in os.listdir("/proc"):
        rest = proc_stat(name) if name.isdigit() else None
        if rest is None:
            continue
        if int(rest[2]) == pgid and int(rest[19]) >= not_before and rest[0] != b"Z":
            members.append(int(name))
    return members


@dataclass
class Workspace:
    """Paths and loaders for one workspace root."""

    root: str

    @classmethod
    def discover(cls, start: str = ".") -> Workspace:
        return cls(root=find_root(start))

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def dot(self) -> str:
        return self.p(".certus")

    @property
    def lock_path(self) -> str:
        return self.p(LOCK_NAME)


class WorkspaceLock:
    """Exclusive lock for writers (``repro``, ``checkout``, ``gc``); readers never take it."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.fd: int | None = None
        self.running_path = os.path.join(ws.dot, "running.json")

    def acquire(self, *, wait: bool = False, timeout: float | None = None, command: str = "repro") -> None:
        os.makedirs(self.ws.dot, exist_ok=True)
        path = os.path.join(self.ws.dot, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() > deadline):
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LockHeldError(
                        f".certus/lock: the workspace is locked by {holder}; wait for it, "
                        "or run with --wait to queue behind it"
                    ) from None
                time.sleep(0.1)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "start": proc_start_time(os.getpid()),
                                  "command": command}).encode(), 0)
        self.reap_orphans()

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"certus {info.get('command', '?')} (pid {info.get('pid', '?')})"
        except ValueError:
            return "another certus process"

    def reap_orphans(self) -> list[int]:
        """Terminate stage process groups a dead coordinator left running."""
        killed: list[int] = []
        try:
            with open(self.running_path, "rb") as f:
                groups = json.loads(f.read()).get("groups", [])
        except (FileNotFoundError, ValueError):
            return killed
        for g in groups:
            pgid, start = int(g["pgid"]), g.get("start")
            if start is None:
                continue
            for pid in _group_members(pgid, start):  # start time rules out reused pids
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        for pid in killed:
            for _ in range(100):
                if proc_start_time(pid) is None:
                    break
                time.sleep(0.02)
        self.record_running([])
        return killed

    def record_running(self, groups: list[dict[str, Any]]) -> None:
        overwrite_small(self.running_path, json.dumps({"groups": groups}).encode())

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @contextlib.contextmanager
    def held(self, *, wait: bool = False, command: str = "repro") -> Iterator[WorkspaceLock]:
        self.acquire(wait=wait, command=command)
        try:
            yield self
        finally:
            self.release()


__all__ += ["GraphError"]
