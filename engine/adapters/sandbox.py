"""Stage confinement: Landlock on Linux, and no stage process outliving its stage.

Stage commands are untrusted code running beside the signing keys, the ledger and the
workspace's history, so each stage runs confined (``certus.sandbox``: ``auto``, the default,
confines where the kernel has Landlock and otherwise warns once per run; ``required`` refuses
to run without it; ``off``).

File system — Landlock (unprivileged, Linux >= 5.13), two layers, intersected by the kernel:

1. *read* (built once per run, it is the same for every stage): read and execute everything
   except ``$CERTUS_HOME``. Landlock can only allow, so when ``$CERTUS_HOME`` exists the
   rules are every entry along the path from ``/`` down to it except the next step (the
   directories on that path themselves cannot be listed; files created there later cannot
   be read). Renames across directories (REFER, ABI >= 2) are allowed where reading is.
2. *write* (per stage, a handful of rules): the declared outputs, a private fresh ``TMPDIR``
   outside the workspace, ``/dev`` (write and ioctl on devices; everything in ``/dev/shm``)
   and the stage's ``writable:`` paths. From ABI 6 the stage cannot signal processes outside
   its domain (the coordinator, other stages).

A file output is deleted before the stage runs; Landlock rules name existing inodes, so the
stage's outputs are pre-created as empty placeholders of the kind the previous run (or the
file on disk) had: a file output may be written in place but no other entry created next to
it. An output of unknown kind (a first run) gets create rights in its parent directory, and
that directory's subtree is listed before and after the run: any new, replaced or removed
undeclared entry fails the stage, naming the path (a file rewritten in place is left to
``status``). An unknown output directly in the workspace root is taken to be a file (create
rights there would reach ``.git`` and ``.certus``). The rules are applied by a short-lived
thread right before it forks the stage (Landlock and ``no_new_privs`` are per thread): the
coordinator stays unconfined, and no Python runs between fork and exec (``preexec_fn`` is
unsafe with threads).

Processes — chosen over cgroups v2, which unprivileged users usually cannot write: the
coordinator is a child subreaper (``PR_SET_CHILD_SUBREAPER``) while stages run, and every
stage carries a random ``CERTUS_STAGE_TOKEN`` in its environment. When the stage's shell
exits (or its ``timeout:`` expires), its process group is killed and then every child of the
coordinator whose ``/proc/PID/environ`` holds the token — a ``setsid`` daemon, re-parented to
the coordinator — is SIGKILLed and reaped, repeatedly, so its own children (re-parented in
turn) go too. Limit: a process that scrubs its environment before double-forking cannot be
attributed and survives (it is still confined by Landlock).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.adapters.landlock import (  # noqa: F401  (SandboxError and the ABI probe are re-exported)
    EXECUTE,
    IOCTL_DEV,
    MAKE_DIR,
    MAKE_REG,
    READ_DIR,
    READ_FILE,
    REFER,
    REMOVE_DIR,
    REMOVE_FILE,
    SCOPE_SIGNAL,
    TRUNCATE,
    WRITE_FILE,
    SandboxError,
    _read_rights,
    _Ruleset,
    _spawn_confined,
    _write_rights,
    landlock_abi,
    set_subreaper,
)
from engine.errors import ConfigError
from engine.store.localseal import certus_home
from engine.store.workspace import proc_stat

__all__ = ["SandboxError", "RunSandbox", "StageBox", "landlock_abi", "sandbox_mode", "kill_tagged",
           "set_subreaper", "TOKEN_VAR"]

TOKEN_VAR = "CERTUS_STAGE_TOKEN"
MODES = ("auto", "required", "off")


T = TypeVar("T")


def sandbox_mode(config: Mapping[str, Any]) -> str:
    """``certus.sandbox`` from the composed config (YAML's ``off`` arrives as False)."""
    raw = (config.get("certus") or {}).get("sandbox", "auto")
    value = {False: "off", True: "auto", None: "auto"}.get(raw, raw) if isinstance(raw, (bool, type(None))) else raw
    if value not in MODES:
        raise ConfigError(f"config 'certus.sandbox': {raw!r} is not one of {', '.join(MODES)}")
    return str(value)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _settle_group(pgid: int, deadline: float = 1.0) -> None:
    """Kill and reap the stage's own process group among this subreaper's children, so that any
    process they started (a ``setsid`` daemon) has been re-parented here before it is looked for."""
    import time

    me, end = os.getpid(), time.monotonic() + deadline
    while time.monotonic() < end:
        left = False
        for pid in _children(me):
            fields = proc_stat(pid)
            if fields is None or int(fields[2]) != pgid:
                continue
            left = True
            if fields[0] == b"Z":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, 0)
            else:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if not left:
            return
        time.sleep(0.001)


def kill_tagged(token: str, *, everywhere: bool = False, pgid: int | None = None) -> list[int]:
    """SIGKILL and reap every process carrying ``token``: children of this (subreaper) process,
    or with ``everywhere`` any process this user can see. Returns the pids killed. With ``pgid``
    (the stage's group, already sent SIGKILL) its members are reaped first: a daemon whose
    parent is still dying is not yet a child here and would be missed."""
    if pgid is not None:
        _settle_group(pgid)
    tag = f"{TOKEN_VAR}={token}".encode()
    me, killed = os.getpid(), []
    for _ in range(64):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()] if everywhere else _children(me)
        found = []
        for pid in pids:
            if pid == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if tag in env.split(b"\0"):
                found.append(pid)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in found:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        killed.extend(found)
    return killed


_Snapshot = dict[str, tuple[int, int, int, bool]]


def _snapshot(root: str, skip: set[str]) -> _Snapshot:
    """path -> (inode, 0, 0, is_dir) for a subtree, declared outputs left out.

    Names, inodes and kinds come from the directory listing itself (no stat per entry), so a
    first run of 1,000 stages writing into one directory does not stat it 2,000 times over: a new,
    removed or replaced entry is named. A file rewritten in place keeps its inode and is not named
    here; if it is another stage's output, ``status`` and ``verify --artifacts`` report it as modified.
    """
    snap: _Snapshot = {}
    stack = [root]
    while stack:
        d = stack.pop()
        with contextlib.suppress(OSError), os.scandir(d) as it:
            for e in it:
                if e.path in skip:
                    continue
                with contextlib.suppress(OSError):
                    is_dir = e.is_dir(follow_symlinks=False)
                    snap[e.path] = (e.inode(), 0, 0, is_dir)
                    if is_dir:
                        stack.append(e.path)
    return snap


_DENIED = [re.compile(p) for p in (
    r"Permission denied: '([^']+)'",                     # Python
    r"cannot [a-z ]+ '([^']+)': Permission denied",      # coreutils
    r"cannot [a-z ]+ ‘([^’]+)’: Permission denied",      # coreutils, UTF-8 quotes
    r"cannot create ([^:']+): Permission denied",        # dash
    r"([^\s:']+): Permission denied",
    r"Invalid cross-device link: '([^']+)'",
)]


def denied_paths(log_path: str, limit: int = 3) -> list[str]:
    """Paths the stage's log says it was refused (Landlock reports EACCES/EXDEV to the stage only)."""
    try:
        with open(log_path, "rb") as f:
            text = f.read()[-65536:].decode("utf-8", "replace")
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        for rx in _DENIED:
            m = rx.search(line)
            if m:
                if m.group(1) not in found:
                    found.append(m.group(1))
                break
    return found[:limit]


def _under_any(path: str, roots: set[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one (by walking up its parents)."""
    p = path
    while True:
        if p in roots:
            return True
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def _empty(path: str) -> None:
    """Remove everything inside ``path`` (a stage's temp dir), leaving the directory."""
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)


@dataclass
class StageBox:
    """One stage's confinement: its rules, temp dir, placeholders and scans; undone by :meth:`finish`."""

    info: dict[str, Any]
    tmpdir: str = ""
    token: str = ""
    layers: list[int] = field(default_factory=list)
    placeholders: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    scans: dict[str, _Snapshot] = field(default_factory=dict)
    declared: set[str] = field(default_factory=set)
    guessed: list[str] = field(default_factory=list)  # new outputs in the workspace root, kind guessed by name
    _rulesets: list[_Ruleset] = field(default_factory=list)
    _release: Callable[[str], None] | None = None  # hands the emptied temp dir back to the run

    def env(self) -> dict[str, str]:
        e = {TOKEN_VAR: self.token}
        if self.tmpdir:
            e.update(TMPDIR=self.tmpdir, TMP=self.tmpdir, TEMP=self.tmpdir, PYTHONDONTWRITEBYTECODE="1")
        return e

    def spawn(self, start: Callable[[], T]) -> T:
        return _spawn_confined(self.layers, start) if self.layers else start()

    def finish(self, ignore: Iterable[str] = ()) -> list[str]:
        """Drop untouched placeholders, remove the temp dir; the undeclared paths that changed."""
        for r in self._rulesets:
            r.close()
        self._rulesets.clear()
        for path, (kind, ino, mtime) in self.placeholders.items():
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if kind == "dir" and st.st_ino == ino and not os.listdir(path):
                    os.rmdir(path)
                elif kind == "file" and (st.st_ino, st.st_mtime_ns, st.st_size) == (ino, mtime, 0):
                    os.unlink(path)
        if self.tmpdir:
            _empty(self.tmpdir)  # kept for the next stage: a mkdir + rmdir per stage costs ~1 ms on ext4 here
            if self._release is not None:
                self._release(self.tmpdir)
            self.tmpdir = ""
        skip = self.declared | set(ignore)
        bad: set[str] = set()
        for root, before in self.scans.items():
            after = _snapshot(root, skip)
            for p in set(before) | set(after):
                b, a = before.get(p), after.get(p)
                if b == a or _under_any(p, skip):  # the skip test walks p's parents: O(depth), not O(outputs)
                    continue
                if b != a and not (b and a and b[3] and a[3] and b[0] == a[0]):  # a dir's mtime moves with entries
                    bad.add(p)
        return sorted(bad)


class RunSandbox:
    """Per run: the mode, the shared read layer and the run's temp root."""

    def __init__(self, mode: str, workspace: str, *, warn: Callable[[str], None] | None = None) -> None:
        self.mode, self.workspace = mode, os.path.realpath(workspace)
        self.abi = landlock_abi() if mode != "off" else 0
        self.reason = "certus.sandbox=off" if mode == "off" else ("" if self.abi else "no Landlock in this kernel")
        if mode == "required" and not self.abi:
            raise SandboxError("certus.sandbox=required, but this system has no Landlock (Linux >= 5.13 with "
                               "landlock among the LSMs); stages were not run; set certus.sandbox=auto to run "
                               "them unconfined")
        if mode == "auto" and not self.abi and warn is not None:
            warn("[certus] warning: no Landlock on this system: stages run unconfined "
                 "(certus.sandbox=required refuses to)")
        self.home = os.path.realpath(certus_home())
        self.tmp_root = tempfile.mkdtemp(prefix="certus-run-") if self.abi else ""
        self._read: _Ruleset | None = None
        self._lock = threading.Lock()
        self._free_tmp: list[str] = []  # emptied private temp dirs, reused (never two stages at once)

    def _take_tmp(self) -> str:
        with self._lock:
            if self._free_tmp:
                return self._free_tmp.pop()
        return tempfile.mkdtemp(prefix="stage-", dir=self.tmp_root)

    def _give_tmp(self, path: str) -> None:
        with self._lock:
            self._free_tmp.append(path)

    def _read_layer(self) -> _Ruleset:
        with self._lock:
            if self._read is None:
                rs = _Ruleset(self.abi, _read_rights(self.abi))
                r = _read_rights(self.abi)
                deny = self.home
                if not os.path.isdir(deny) or deny == "/":
                    rs.allow("/", r)
                else:
                    cur = "/"
                    for part in deny.strip("/").split("/"):
                        with os.scandir(cur) as it:
                            for e in it:
                                if e.name == part:
                                    continue
                                real = os.path.realpath(e.path)
                                if _inside(real, deny) or _inside(deny, real):
                                    continue
                                rs.allow(e.path, r)
                        cur = os.path.join(cur, part)
                for extra in (self.workspace, self.tmp_root):
                    rs.allow(extra, r)
                self._read = rs
            return self._read

    def _writable(self, raw: str) -> str:
        path = os.path.realpath(os.path.join(self.workspace, os.path.expanduser(raw)))
        for what, root in (("the workspace", self.workspace), ("$CERTUS_HOME", self.home)):
            if _inside(root, path):
                raise SandboxError(f"writable path '{raw}' contains {what} ({root}); name a directory inside it")
        for name in (".certus", ".git", "trust.json", "certus.lock"):
            if _inside(path, os.path.join(self.workspace, name)):
                raise SandboxError(f"writable path '{raw}' is Certus's or git's own ({name}); stages may not write it")
        if _inside(path, self.home):
            raise SandboxError(f"writable path '{raw}' lies in $CERTUS_HOME ({self.home}); stages may not write it")
        return path

    def stage(self, outs: Iterable[tuple[str, str]], writable: Iterable[str]) -> StageBox:
        """Confinement for one stage: ``outs`` are (absolute path, "file" | "dir" | "") after deletion."""
        token = os.urandom(16).hex()
        if not self.abi:
            return StageBox({"mechanism": "none", "reason": self.reason}, token=token)
        wr = _write_rights(self.abi)
        rs = _Ruleset(self.abi, wr, SCOPE_SIGNAL if self.abi >= 6 else 0)
        box = StageBox({"mechanism": "landlock", "abi": self.abi}, token=token, _rulesets=[rs],
                       _release=self._give_tmp)
        try:
            box.tmpdir = self._take_tmp()
            rs.allow(box.tmpdir, wr)
            rs.allow("/dev", WRITE_FILE | TRUNCATE | IOCTL_DEV)
            rs.allow("/dev/shm", wr)
            granted: list[str] = []
            for path, kind in outs:
                box.declared.add(path)
                parent = os.path.dirname(path)
                if not kind and parent == self.workspace:
                    # create rights in the root would reach .git and .certus: guess the kind by the name
                    kind = "file" if "." in os.path.basename(path).lstrip(".") else "dir"
                    box.guessed.append(f"{os.path.basename(path)} ({kind})")
                if kind == "dir":
                    os.mkdir(path)
                elif kind == "file":
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666))
                else:
                    if not any(_inside(parent, s) for s in box.scans):
                        box.scans = {s: v for s, v in box.scans.items() if not _inside(s, parent)}
                        box.scans[parent] = {}
                    rs.allow(parent, wr)
                    granted.append(os.path.relpath(parent, self.workspace) + "/")
                    continue
                st = os.lstat(path)
                box.placeholders[path] = (kind, st.st_ino, st.st_mtime_ns)
                rs.allow(path, wr)
                granted.append(os.path.relpath(path, self.workspace))
            for raw in writable:
                path = self._writable(raw)
                if not os.path.lexists(path):  # Landlock needs an inode: create it, its kind guessed by name
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    if "." in os.path.basename(path).lstrip("."):
                        with contextlib.suppress(FileExistsError):
                            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666))
                    else:
                        os.makedirs(path, exist_ok=True)
                rs.allow(path, wr)
                granted.append(path)
            for root in box.scans:
                box.scans[root] = _snapshot(root, box.declared)
            box.layers = [self._read_layer().fd, rs.fd]
            box.info["writable"] = sorted(granted)
            if self.abi >= 6:
                box.info["scoped"] = ["signal"]
        except BaseException:
            box.finish()
            raise
        return box

    def close(self) -> None:
        if self._read is not None:
            self._read.close()
            self._read = None
        if self.tmp_root:
            shutil.rmtree(self.tmp_root, ignore_errors=True)
