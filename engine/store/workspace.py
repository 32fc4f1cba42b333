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
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, GraphError, LockHeldError, SpecError, WorkspaceError
from engine.store.fsutil import atomic_write, overwrite_small

__all__ = ["Workspace", "WorkspaceLock", "find_root", "proc_start_time"]

SPEC_DIR = "pipelines"
CONF_DIR = "conf"
LOCK_NAME = "certus.lock"
_CACHE_FORMAT = "2"  # bump when what a parse cache holds changes meaning (2: sealed, cmd values quoted)
_RESOLVER = re.compile(rb"\$\{(?!\s*raw\s*:)[^}]*:")


def _may_resolve(data: bytes) -> bool:
    """Whether text may hold a resolver interpolation (``${oc.env:X}``, ``${now:...}``), whose value can
    change between runs with no file changing. Conservative: a ``$`` together with any backslash also
    counts, since YAML and Hydra escapes (``"$\\x7Boc.env:X}"``, a line continuation) can spell one."""
    if b"$" not in data:
        return False
    return bool(_RESOLVER.search(data)) or b"\\" in data


def find_root(start: str) -> str:
    """The nearest directory at or above ``start`` holding ``pipelines/``."""
    cur = os.path.abspath(start)
    while True:
        if os.path.isdir(os.path.join(cur, SPEC_DIR)):
            return cur
        parent = os.path.dirname(cur)
        if parent == cur:
            raise WorkspaceError(
                f"{os.path.abspath(start)}: not inside a Certus workspace (no '{SPEC_DIR}/' directory here "
                "or above); create pipelines/<name>.yaml or pass -C DIR"
            )
        cur = parent


def proc_start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[19])


def _group_members(pgid: int, not_before: int) -> list[int]:
    """Live processes in process group ``pgid`` started no earlier than ``not_before``."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
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

    # -- configuration ---------------------------------------------------------------------

    def compose(self, overrides: Sequence[str]) -> dict[str, Any]:
        conf = self.p(CONF_DIR)
        if not os.path.exists(os.path.join(conf, "config.yaml")):
            if overrides:
                raise ConfigError(f"{CONF_DIR}/config.yaml: missing, so overrides {list(overrides)} have nothing "
                                  "to apply to; create conf/config.yaml")
            return {}
        key, cacheable = self._conf_key(conf, overrides)
        cached = self._cache_get("compose", key) if cacheable else None
        if cached is not None:
            return json.loads(cached)
        from engine.adapters.hydra import compose

        config = compose(conf, overrides)
        if cacheable:
            self._cache_put("compose", key, json.dumps(config).encode())
        return config

    # -- parse caches: composing 1,000 config keys with Hydra, and resolving a 1,000-stage spec, cost
    # more than everything else `status` does; both are pure functions of file contents, so their
    # results are kept under .certus/tmp keyed by a hash of those contents. A cache must never outlive
    # the values it was computed from, so nothing that may contain a resolver (oc.env, now, ...) is
    # cached, and entries are sealed (engine.store.localseal): an edited entry is ignored, never run.

    def _conf_key(self, conf: str, overrides: Sequence[str]) -> tuple[str, bool]:
        import hashlib
        import sys

        from engine import __version__

        h = hashlib.sha256(f"{_CACHE_FORMAT}\0{__version__}\0{sys.version}\0{json.dumps(list(overrides))}\0".encode())
        # an override with '$' may name a resolver; with '(' a grammar function (shuffle() is random)
        cacheable = not any("$" in o or "(" in o for o in overrides)
        for dirpath, dirnames, files in os.walk(conf):
            dirnames.sort()
            if any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
                cacheable = False  # Hydra follows a linked directory that this walk does not hash
            for fn in sorted(files):
                path = os.path.join(dirpath, fn)
                with open(path, "rb") as f:
                    data = f.read()
                if _may_resolve(data) or b"searchpath" in data:  # values or files from outside conf/
                    cacheable = False
                h.update(os.path.relpath(path, conf).encode() + b"\0" + data + b"\0")
        return h.hexdigest(), cacheable

    def _cache_get(self, kind: str, key: str) -> bytes | None:
        from engine.store.localseal import unseal

        path = os.path.join(self.dot, "tmp", kind, key + ".json")
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            return None
        data = unseal(kind, key, blob, where=os.path.relpath(path, self.root))
        if data is None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return data

    def _cache_put(self, kind: str, key: str, data: bytes) -> None:
        from engine.store.localseal import seal

        blob = seal(kind, key, data)
        if blob is None:
            return
        with contextlib.suppress(OSError):
            d = os.path.join(self.dot, "tmp", kind)
            if os.path.isdir(d) and len(os.listdir(d)) > 64:  # keep the cache small
                for old in os.listdir(d):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, old))
            atomic_write(os.path.join(d, key + ".json"), blob, sync=False)

    def pipeline_path(self, config: Mapping[str, Any], name: str | None = None) -> str:
        if name is None:
            certus_cfg = config.get("certus") if isinstance(config.get("certus"), Mapping) else {}
            name = certus_cfg.get("pipeline") if certus_cfg else None
        spec_dir = self.p(SPEC_DIR)
        if name is None:
            found = sorted(f for f in os.listdir(spec_dir) if f.endswith((".yaml", ".yml")))
            if len(found) != 1:
                raise SpecError(f"{SPEC_DIR}/: {len(found)} pipeline files; name one with certus.pipeline in "
                                "conf/config.yaml or --pipeline NAME")
            return os.path.join(SPEC_DIR, found[0])
        for ext in (".yaml", ".yml", ""):
            rel = os.path.join(SPEC_DIR, name + ext) if not name.startswith(SPEC_DIR + "/") else name
            if os.path.isfile(self.p(rel)):
                return rel
        raise SpecError(f"{SPEC_DIR}/{name}.yaml: no such pipeline; see the files in {SPEC_DIR}/")

    def load_spec(self, config: Mapping[str, Any], name: str | None = None) -> Any:
        from engine.pipeline.spec import load_spec_text
        from engine.pipeline.spec_yaml import decode_text

        rel = self.pipeline_path(config, name)
        try:
            with open(self.p(rel), "rb") as f:
                raw = f.read()
        except OSError as e:
            raise SpecError(f"{rel}: cannot read: {e.strerror}") from e
        text = decode_text(raw, rel)
        import hashlib

        from engine import __version__
        from engine.pipeline.spec import spec_from_json, spec_to_json

        key = hashlib.sha256(f"{_CACHE_FORMAT}\0{__version__}\0{rel}\0{text}\0"
                             f"{json.dumps(config, sort_keys=True)}".encode())
        cacheable = not _may_resolve(raw)  # resolvers (oc.env, ...) are re-evaluated each time
        cached = self._cache_get("spec", key.hexdigest()) if cacheable else None
        spec = None
        if cached is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                spec = spec_from_json(cached)
        if spec is None:
            spec = load_spec_text(text, path=rel, config=config)
            if cacheable:
                self._cache_put("spec", key.hexdigest(), spec_to_json(spec))
        if any(st.datasets for st in spec.stages.values()):
            from engine.datasets.registry import Registry, with_dataset_deps

            spec = with_dataset_deps(spec, Registry.load(self.root))
        self.check_paths(spec)
        return spec

    def check_paths(self, spec: Any) -> None:
        """Refuse paths that leave the workspace through a symlink."""
        real_root = os.path.realpath(self.root)
        problems = []
        for st in spec.stages.values():
            for fld, paths in (("deps", st.deps), ("outs", st.outs), ("metrics", st.metrics)):
                for p in paths:
                    full = self.p(p)
                    # only walk the symlink check when some component is a link
                    probe = full
                    has_link = False
                    while probe != self.root and len(probe) > len(self.root):
                        if os.path.islink(probe):
                            has_link = True
                            break
                        probe = os.path.dirname(probe)
                    if has_link:
                        real = os.path.realpath(full)
                        if real != real_root and not real.startswith(real_root + os.sep):
                            problems.append(f"{spec.path}:{st.line}: stage '{st.name}': field '{fld}': path '{p}' "
                                            f"escapes the workspace through a symlink (to {real}); "
                                            "keep data inside the workspace")
        if problems:
            raise SpecError("\n".join(sorted(problems)))

    def dag(self, spec: Any) -> Any:
        from engine.pipeline.dag import Dag

        return Dag(spec, exists=lambda p: os.path.lexists(self.p(p)))

    def load(self, overrides: Sequence[str] = (), pipeline: str | None = None) -> tuple[dict[str, Any], Any, Any]:
        config = self.compose(overrides)
        spec = self.load_spec(config, pipeline)
        return config, spec, self.dag(spec)


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
