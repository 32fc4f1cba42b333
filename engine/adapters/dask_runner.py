"""The worker side of the Dask executor: run one stage command, report, never write the cache.

A Dask task cannot be stopped once it runs, so the stage's process group belongs to this
runner: the command runs as it does locally (:class:`~engine.adapters.local.LocalExecutor`:
its own session, Landlock, a stage token for daemons, ``timeout:``), and the worker
process's watcher thread polls each run's cancel :class:`distributed.Event` (4 times a
second, off the command's path: a fast command's start and end never wait for it); when the
coordinator sets it (Ctrl-C, SIGTERM) the group gets SIGTERM, then SIGKILL.

Commands are not idempotent, so a task runs its command once: the scheduler re-schedules a
task whose worker died, and the runner of that second attempt finds its start mark (a file
created with ``O_EXCL`` in the run's mark directory, see :func:`_may_start`) and reports the
stage lost instead of running it again. The same directory carries the coordinator's cancel
mark, so a task that starts after a Ctrl-C never starts its command. Neither costs a
scheduler round trip: a stage costs Dask's own submit and result, nothing more. Stage
processes of a worker that died (``SIGKILL`` leaves them orphaned) are found through a small
per-host registry and killed by the next runner on that host.

Modes: ``shared`` runs in the workspace path (a shared file system); ``staged`` runs in a
scratch directory outside any workspace, fetches each dep by digest from the store (every
byte hashed on the way), hashes the outputs, uploads them to the store's ``incoming/`` and
returns a manifest. What it returns is a claim: the coordinator verifies before it uses it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import platform
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from engine.run.executor import JobResult, StageJob

__all__ = ["run_stage", "LOST"]

LOST = "its Dask worker was lost mid-stage"
_REGISTRY = os.path.join(tempfile.gettempdir(), f"certus-dask-{os.getuid()}")
_subreaper_once = threading.Lock()
_subreaper_set = False
_boxes: dict[tuple[str, str, str], list[Any]] = {}  # (run, sandbox mode, workspace) -> [RunSandbox, notes, users]
_boxes_lock = threading.Lock()
_watched: dict[object, tuple[Any, Any]] = {}  # the running stages' (cancel Event, LocalExecutor)
_watch_lock = threading.Lock()
_watcher_on = False
_trash: queue.SimpleQueue[str] = queue.SimpleQueue()  # staged scratch directories to remove
_janitor_on = False
_failed_links: dict[tuple[str, str], set[str]] = {}  # (direction, store) -> link types that fail there


def _alive(pid: int, start: int | None) -> bool:
    from engine.store.workspace import proc_start_time

    return os.path.exists(f"/proc/{pid}") and (start is None or proc_start_time(pid) == start)


def _sweep_orphans() -> None:
    """Kill the stage processes of workers on this host that died mid-stage."""
    from engine.adapters.sandbox import kill_tagged

    with contextlib.suppress(FileNotFoundError):
        for fn in os.listdir(_REGISTRY):
            pid, _, rest = fn.partition("-")
            if not pid.isdigit() or not rest.endswith(".json") or os.path.exists(f"/proc/{pid}"):
                continue  # a record being written, or its worker is alive (a reused pid is checked below)
            path = os.path.join(_REGISTRY, fn)
            try:
                with open(path) as f:
                    rec = json.load(f)
                if _alive(rec["worker_pid"], rec.get("worker_start")):
                    continue
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if _alive(rec["pgid"], rec.get("start")):
                        os.killpg(rec["pgid"], signal.SIGKILL)
                if rec.get("token"):
                    kill_tagged(rec["token"], everywhere=True)
            except (OSError, ValueError, KeyError, TypeError):
                pass
            with contextlib.suppress(OSError):
                os.unlink(path)


def _register(path: str, local: Any, groups: list[dict[str, int]]) -> None:
    from engine.store.workspace import proc_start_time

    if not groups:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    tokens = list(local._tokens.values())  # the sandbox's tag on every process of the stage
    rec = {"worker_pid": os.getpid(), "worker_start": proc_start_time(os.getpid()), "pgid": groups[0]["pgid"],
           "start": groups[0]["start"], "token": tokens[0] if tokens else ""}
    try:
        os.makedirs(_REGISTRY, mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f)
        os.replace(path + ".tmp", path)
    except OSError:  # no registry: a worker killed outright may leave this stage's processes behind
        pass


def _may_start(key: str, marks: str) -> str:
    """'' the first time this task starts in its run; else why its command must not run.

    ``marks`` is the run's directory of start marks, made by the coordinator where every worker
    reaches it (shared: the workspace; staged: the store). Creating a task's mark is atomic
    (``O_EXCL``, on NFS too), so a task the scheduler starts again after its worker died finds
    its mark; a missing directory means the run is over; ``cancel`` in it, that it was stopped.
    No scheduler round trip: a fast stage's latency is the submit and its result.
    """
    try:
        os.close(os.open(os.path.join(marks, mark_name(key)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return "lost"
    except FileNotFoundError:
        return "its run has ended"
    except OSError as e:
        return f"cannot mark its start in {marks}: {e.strerror}"
    return "cancelled before it started" if os.path.exists(os.path.join(marks, "cancel")) else ""


def _stage_env(job: StageJob, rebase: dict[str, str]) -> dict[str, str]:
    """This worker's environment (PATH, HOME: its own) under every variable Certus set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERTUS_", "DASK_"))}
    env.update({k: job.env[k] for k in job.set_vars if k in job.env})
    env.update(rebase)
    return env


def _claim(extra: dict[str, Any]) -> dict[str, Any]:
    from distributed import get_worker

    with contextlib.suppress(ValueError):
        extra["worker"] = get_worker().address
    return {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.version.split()[0],
            "platform": platform.platform(), **extra}


def _prepare_staged(job: StageJob, payload: dict[str, Any], scratch: str) -> StageJob:
    """Fetch every dep by digest into ``scratch``; the job, rebased there."""
    from engine.store.cache import ObjectCache

    store = ObjectCache(payload["store"], failed_links=_failed_links.setdefault(("fetch", payload["store"]), set()))
    for rel, entry in job.deps:
        store.checkout(scratch, rel, entry.digest, entry.kind)  # hashed while copied: a damaged object fails here
    params = os.path.join(scratch, ".certus", "tmp", "params", f"{job.name}.json")
    os.makedirs(os.path.dirname(params), exist_ok=True)
    with open(params, "wb") as f:
        f.write(payload.get("params", b""))
    outs = []
    for path, kind in job.outs:
        rel = os.path.relpath(path, job.cwd)
        target = os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        outs.append((target, kind))
    env = _stage_env(job, {"CERTUS_PARAMS": params, "CERTUS_WORKSPACE": scratch})
    return StageJob(name=job.name, cmd=job.cmd, cwd=scratch, env=env,
                    log_path=os.path.join(scratch, ".certus", "logs", f"{job.name}.log"), outs=tuple(outs),
                    writable=job.writable, timeout=job.timeout)


def _upload(job: StageJob, scratch: str, inbox: str) -> dict[str, dict[str, Any]]:
    """Hash the outputs in ``scratch`` and put their objects in ``inbox``; the manifest."""
    from engine.store.cache import ObjectCache
    from engine.store.hashing import Hasher

    rels = [os.path.relpath(p, scratch) for p, _ in job.outs]
    hashed = Hasher(scratch).hash_many(rels)
    box = ObjectCache(inbox, failed_links=_failed_links.setdefault(("upload", os.path.dirname(inbox)), set()))
    box.durable = False  # the coordinator re-hashes every byte it takes from here; a crash loses the run anyway
    manifest: dict[str, dict[str, Any]] = {}
    for rel, entry in hashed.items():
        if entry is None:
            continue  # the coordinator names what was not produced
        box.add(scratch, rel, entry)
        manifest[rel] = {"digest": str(entry.digest), "kind": entry.kind, "size": entry.size}
    return manifest


@contextlib.contextmanager
def _run_sandbox(staged: bool, payload: dict[str, Any], workspace: str, notes: list[str]) -> Iterator[Any]:
    """The run's :class:`~engine.adapters.sandbox.RunSandbox` on this worker (shared mode).

    The local executor builds one per run (its Landlock read layer, its temp root); so does a
    worker, for the stages of one run in one workspace, instead of one per stage. Idle ones of
    other runs are closed when a new run comes. Staged mode: a fresh one per scratch directory.
    """
    from engine.adapters.sandbox import RunSandbox

    if staged:
        box = RunSandbox(payload["sandbox"], workspace, warn=notes.append)
        try:
            yield box
        finally:
            box.close()
        return
    key = (payload["run_id"], payload["sandbox"], os.path.realpath(workspace))
    with _boxes_lock:
        entry = _boxes.get(key)
        if entry is None:
            for other, (old, _, users) in list(_boxes.items()):
                if not users:
                    old.close()
                    del _boxes[other]
            said: list[str] = []
            entry = _boxes[key] = [RunSandbox(payload["sandbox"], workspace, warn=said.append), said, 0]
        entry[2] += 1
    notes.extend(entry[1])  # e.g. "no Landlock": the coordinator shows it once per run
    try:
        yield entry[0]
    finally:
        with _boxes_lock:
            entry[2] -= 1


def _discard(scratch: str) -> None:
    """A staged stage's scratch directory goes in the background: its result does not wait for it."""
    global _janitor_on
    _trash.put(scratch)
    with _watch_lock:
        if not _janitor_on:
            _janitor_on = True
            threading.Thread(target=_janitor, name="certus-scratch-rm", daemon=True).start()


def _janitor() -> None:
    while True:
        shutil.rmtree(_trash.get(), ignore_errors=True)


@atexit.register
def _close_sandboxes() -> None:
    with _boxes_lock:
        for box, _, _ in _boxes.values():
            box.close()
        _boxes.clear()
    with contextlib.suppress(queue.Empty):
        while True:
            shutil.rmtree(_trash.get_nowait(), ignore_errors=True)


def _watch(cancel: Any, local: Any) -> object:
    """Have this process's watcher poll ``cancel`` for ``local``'s stage; a ticket for :func:`_unwatch`."""
    global _watcher_on
    ticket = object()
    with _watch_lock:
        _watched[ticket] = (cancel, local)
        if not _watcher_on:
            _watcher_on = True
            threading.Thread(target=_watcher, name="certus-cancel-watch", daemon=True).start()
    return ticket


def _unwatch(ticket: object) -> None:
    with _watch_lock:
        _watched.pop(ticket, None)


def _watcher() -> None:
    """One thread per worker process, while stages run: 4 times a second it asks the scheduler about
    each run's cancel event (a short RPC, once per run, no wait left pending there) and stops the
    stages of a cancelled run. A stage's start or end never waits for it."""
    global _watcher_on
    while True:
        time.sleep(0.25)
        with _watch_lock:
            if not _watched:
                _watcher_on = False
                return
            runs: dict[str, list[Any]] = {}
            for cancel, local in _watched.values():
                runs.setdefault(cancel.name, [cancel]).append(local)
        for cancel, *locals_ in runs.values():
            with contextlib.suppress(Exception):  # the scheduler away for a moment: ask again
                if cancel.is_set():
                    for local in locals_:
                        local.terminate_all()


_client: Any = None  # this worker's client, kept: asking Dask for it again costs ~0.4 ms a stage


def _worker_client(get: Any) -> Any:
    global _client
    if _client is None or getattr(_client, "status", "") != "running":
        _client = get()
    return _client


def mark_name(key: str) -> str:
    """A task's file name in the run's mark directory (task keys hold stage names: any length)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def run_stage(payload: dict[str, Any], others: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Run one stage on this worker; a plain dict the coordinator checks (see module doc).

    It also leaves the dict, as JSON, beside the task's start mark: the coordinator,
    told by Dask that the task finished, reads it there instead of a second round trip to fetch
    the result through the scheduler (the Dask result stays the fallback, and the authority on
    errors and lost workers). Every return path writes it, so a re-started task's "lost" replaces
    what an earlier attempt left.
    """
    out = _run_stage(payload, others)
    path = os.path.join(payload["marks"], mark_name(payload["task"]) + ".json")
    left = {**out, "log": base64.b64encode(out["log"]).decode()} if "log" in out else out  # staged: its bytes
    with contextlib.suppress(OSError, TypeError, ValueError):
        with open(f"{path}.{os.getpid()}.tmp", "w") as f:
            json.dump(left, f)
        os.replace(f"{path}.{os.getpid()}.tmp", path)  # whole, or not there
    return out


def _run_stage(payload: dict[str, Any], others: frozenset[str]) -> dict[str, Any]:
    global _subreaper_set
    from distributed import Event, get_client

    from engine.adapters.local import LocalExecutor
    from engine.adapters.sandbox import set_subreaper

    job: StageJob = payload["job"]
    started = time.time()
    _sweep_orphans()
    why = _may_start(payload["task"], payload["marks"])
    if why == "lost":
        return {"returncode": -1, "started": started, "finished": time.time(), "lost": True,
                "error": f"{LOST} and the scheduler started it again; commands are not re-run automatically "
                         "(declare 'retries:' on the stage to allow it)", "claim": _claim({})}
    if why:
        return {"returncode": -signal.SIGTERM if why.startswith(("cancelled", "its run")) else -1,
                "started": started, "finished": time.time(), "error": why, "claim": _claim({})}
    cancel = Event(payload["cancel"], client=_worker_client(get_client))  # no round trip until the watcher asks
    with _subreaper_once:
        if not _subreaper_set:  # once per worker process: orphaned stage daemons come to us, to be killed
            set_subreaper(True)
            _subreaper_set = True
    staged = payload["mode"] == "staged"
    scratch = tempfile.mkdtemp(prefix="certus-stage-", dir=payload.get("scratch") or None) if staged else ""
    notes: list[str] = []
    reg = os.path.join(_REGISTRY, f"{os.getpid()}-{payload['task'][-48:].replace('/', '_')}.json")
    try:
        try:
            run_job = _prepare_staged(job, payload, scratch) if staged else StageJob(
                name=job.name, cmd=job.cmd, cwd=job.cwd, env=_stage_env(job, {}), log_path=job.log_path,
                outs=job.outs, writable=job.writable, timeout=job.timeout)
        except Exception as e:  # a missing or damaged dep object, a full scratch disk
            return {"returncode": -1, "started": started, "finished": time.time(),
                    "error": f"could not fetch its deps from the store: {e}", "claim": _claim({})}
        with open(os.devnull, "w") as sink, _run_sandbox(staged, payload, run_job.cwd, notes) as box:
            local = LocalExecutor(1, echo=sink, sandbox=box, workspace=run_job.cwd, warn=notes.append, on_groups=None)
            local.on_groups = lambda groups: _register(reg, local, groups)
            local._all_outs.update(others)  # other stages' outputs: concurrent writers, not violations
            ticket = _watch(cancel, local)
            try:
                res: JobResult = local.run(run_job)  # in this task's thread
            finally:
                _unwatch(ticket)
                local.shutdown()
        out: dict[str, Any] = {"returncode": res.returncode, "started": res.started, "finished": res.finished,
                               "error": res.error, "sandbox": dict(res.sandbox), "notes": notes}
        claim: dict[str, Any] = {}
        if staged:
            with contextlib.suppress(OSError), open(run_job.log_path, "rb") as f:
                out["log"] = f.read()
            claim["log"] = "sha256:" + hashlib.sha256(out.get("log", b"")).hexdigest()
            if res.returncode == 0 and not res.error:
                out["outs"] = _upload(run_job, scratch, payload["inbox"])
                claim["outs"] = {rel: o["digest"] for rel, o in out["outs"].items()}
        out["claim"] = _claim(claim)
        return out
    finally:
        with contextlib.suppress(OSError):
            os.unlink(reg)
        if scratch:
            _discard(scratch)
