"""``certus repro``: the coordinator that brings outputs up to date.

Stages are taken in topological order (ties by name) and each one is decided when all
its upstream stages have finished: up to date (skip), key seen before (restore from the
run cache without running), or run. Because the decision uses the digests the upstream
outputs actually have, a re-run whose outputs come out identical stops the cascade there
(early cutoff). Independent stages run concurrently on the executor (``-j N``).

The coordinator is the one writer: executors only run commands; this module hashes
outputs, stores them in the cache, records the run cache and rewrites ``certus.lock``
(atomically, after each finished stage). An interrupted or failed stage never reaches
the cache or the lock, so the next ``repro`` re-runs exactly what did not finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, TextIO

from engine.core.digest import Digest
from engine.core.paths import safe_target
from engine.errors import EngineError, InterruptedRunError, StageFailedError
from engine.gates.runner import gate_runner
from engine.pipeline.lockfile import LockFile
from engine.pipeline.plan import lock_entry
from engine.pipeline.spec import StageSpec
from engine.pipeline.status import evaluate
from engine.run.datasets import DatasetChecks
from engine.run.executor import Executor, JobResult, StageJob, executor_settings
from engine.run.load import load as load_pipeline
from engine.run.outcome import (  # noqa: F401  (re-exported)
    OK_STATES,
    Progress,
    ReproOptions,
    ReproResult,
    StageOutcome,
    nested_params,
    new_run_id,
)
from engine.store.cache import ObjectCache, RunCache, link_types_from, remove_path
from engine.store.fsutil import write_if_changed
from engine.store.hashing import Entry, Hasher
from engine.store.state import StatCache
from engine.store.workspace import Workspace, WorkspaceLock

__all__ = ["ReproOptions", "ReproResult", "StageOutcome", "Repro", "new_run_id", "nested_params"]

# the only CERTUS_* variables a stage sees: keys, passphrases and $CERTUS_HOME stay with the coordinator
STAGE_CERTUS_VARS = ("CERTUS_PARAMS", "CERTUS_STAGE", "CERTUS_RUN_ID", "CERTUS_WORKSPACE")
# what Certus sets for reproducibility (see _job): the same on every machine a stage runs on
_ENGINE_VARS = ("PYTHONHASHSEED", "TZ", "LC_ALL", "SOURCE_DATE_EPOCH")


class Repro(DatasetChecks):
    """One ``repro`` invocation over a loaded workspace."""

    def __init__(self, ws: Workspace, opts: ReproOptions, *, out: TextIO | None = None,
                 err: TextIO | None = None, executor_factory: Callable[..., Executor] | None = None) -> None:
        self.ws = ws
        self.opts = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.executor_factory = executor_factory
        self.config, self.spec, self.dag = load_pipeline(ws, opts.overrides, opts.pipeline)
        self.state = StatCache(os.path.join(ws.dot, "state.db"))
        self.cache = ObjectCache(os.path.join(ws.dot, "cache"), link_types=link_types_from(self.config),
                                 state=self.state)
        self.runs = RunCache(os.path.join(ws.dot, "runs"))
        self.jobs = max(1, opts.jobs or os.cpu_count() or 1)
        self.hasher = Hasher(ws.root, state=self.state, jobs=self.jobs)
        self.run_id = new_run_id()
        self.lock = LockFile.load(ws.lock_path, lenient=True)  # a malformed entry: that stage runs again
        for note in self.lock.problems:
            self.err.write(f"[certus] note: ignoring a malformed entry: {note}\n")
        self.lock.pipeline = self.spec.path
        self._last_save = 0.0
        self._save_every = 0.25
        self._dirty = False
        self._executor: Executor | None = None
        self.dataset_uses: dict[str, list[Any]] = {}
        self.executor_settings = executor_settings(self.config, opts.executor)  # a bad one fails before any stage

    # -- helpers ---------------------------------------------------------------------------

    def _save_lock(self, force: bool = False) -> None:
        """Write certus.lock now and then during a run, so a crash loses little.

        Writing it costs more as the pipeline grows (a 1,000-stage lock is ~30 ms), so the
        interval grows with it: lock writes stay under 5 % of the run. Whatever a crash
        loses is in the run cache and comes back without re-running.
        """
        if not self._dirty:
            return
        now = time.monotonic()
        if force or now - self._last_save > self._save_every:
            self.lock.save()
            done = time.monotonic()
            self._save_every = max(0.25, 20 * (done - now))
            self._last_save = done
            self._dirty = False

    def _source_date_epoch(self) -> str:
        try:
            out = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=self.ws.root, capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        return "0"

    def _job(self, st: StageSpec, sde: str, kinds: dict[str, str] | None = None, key: Digest | None = None,
             deps: dict[str, Entry | None] | None = None) -> StageJob:
        params_path = os.path.join(self.ws.dot, "tmp", "params", f"{st.name}.json")
        os.makedirs(os.path.dirname(params_path), exist_ok=True)
        write_if_changed(params_path, json.dumps(nested_params(st.params), sort_keys=True, indent=2).encode())
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTUS_")}
        env.update({
            "PYTHONHASHSEED": "0", "TZ": "UTC", "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": sde,
            "CERTUS_PARAMS": params_path, "CERTUS_STAGE": st.name, "CERTUS_RUN_ID": self.run_id,
            "CERTUS_WORKSPACE": self.ws.root,
        })
        env.update(st.env_dict())
        log = os.path.join(self.ws.dot, "logs", self.run_id, f"{st.name}.log")
        kinds = kinds or {}
        return StageJob(name=st.name, cmd=st.cmd, cwd=self.ws.root, env=env, log_path=log,
                        outs=tuple((self.ws.p(o), kinds.get(o, "")) for o in st.all_outs),
                        writable=st.writable, timeout=st.timeout, key=str(key or ""),
                        deps=tuple((p, e) for p, e in sorted((deps or {}).items()) if e is not None),
                        set_vars=tuple(sorted({*_ENGINE_VARS, *STAGE_CERTUS_VARS, *st.env_dict()})),
                        resources=st.resources, retries=st.retries)

    def _prepare_outs(self, st: StageSpec) -> dict[str, str]:
        """Delete declared outputs so the command writes new files, never into a cache inode
        (and never through a parent that an earlier stage turned into a link out of the workspace).

        Returns each output's kind ("file" / "dir", "" when unknown) for the sandbox, which
        pre-creates it so the stage may write exactly that path."""
        locked = self.lock.get(st.name)
        kinds: dict[str, str] = {}
        keep = getattr(st, "persist", ())  # DVC's `persist: true` outputs stay in place (engine.pipeline.dvc_pipeline)
        for o in st.all_outs:
            p = safe_target(self.ws.root, o)
            if o in keep:
                if os.path.lexists(p):
                    kinds[o] = "dir" if os.path.isdir(p) and not os.path.islink(p) else "file"
                continue
            if os.path.lexists(p):
                kinds[o] = "dir" if os.path.isdir(p) and not os.path.islink(p) else "file"
            elif locked is not None and o in locked.outs:
                kinds[o] = locked.outs[o].get("kind", "file")
            elif o in st.metrics:
                kinds[o] = "file"
            remove_path(p)
            os.makedirs(os.path.dirname(p) or self.ws.root, exist_ok=True)
        return kinds

    def _restore(self, st: StageSpec, outs_rec: dict[str, dict[str, Any]], have: dict[str, Entry | None]) -> None:
        """Restore recorded outputs; every restored byte is hashed against its digest (a damaged
        object raises :class:`~engine.errors.HashMismatchError` and is quarantined)."""
        for p, rec in outs_rec.items():
            e = have.get(p)
            if e is not None and str(e.digest) == rec["digest"]:
                continue
            self.cache.checkout(self.ws.root, p, Digest.parse(rec["digest"]), rec.get("kind", "file"))

    def _log_tail(self, path: str, n: int = 15) -> str:
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + ln for ln in lines[-n:])

    def _make_executor(self, on_groups: Callable[[list[dict[str, int]]], None]) -> Executor:
        if self.executor_factory is not None:
            return self.executor_factory(self.jobs, on_groups=on_groups)
        from engine.adapters.local import LocalExecutor
        from engine.adapters.sandbox import sandbox_mode

        def warn(msg: str) -> None:
            self.err.write(msg + "\n")

        if self.executor_settings.kind == "dask":  # Dask is imported only here, when it was chosen
            from engine.adapters.dask_executor import DaskExecutor

            return DaskExecutor(self.executor_settings, jobs=self.jobs, workspace=self.ws.root, echo=self.out,
                                warn=warn, sandbox=sandbox_mode(self.config), run_id=self.run_id,
                                all_outs=[self.ws.p(o) for s in self.spec.stages.values() for o in s.all_outs])
        return LocalExecutor(self.jobs, echo=self.out, on_groups=on_groups, sandbox=sandbox_mode(self.config),
                             workspace=self.ws.root, warn=warn)

    # -- finishing a stage -----------------------------------------------------------------

    def _finish(self, st: StageSpec, res: JobResult, pre_deps: dict[str, Entry | None], key: Digest,
                oc: StageOutcome) -> None:
        oc.started, oc.finished, oc.returncode, oc.log_path = res.started, res.finished, res.returncode, res.log_path
        oc.sandbox = dict(res.sandbox)
        if res.returncode != 0 or res.error:
            oc.state = "failed"
            oc.error = res.error or f"exit status {res.returncode}"
            return
        try:
            outs = self.hasher.hash_many(st.all_outs)
        except EngineError as e:  # a symbolic link inside a directory output
            oc.state, oc.error = "failed", str(e)
            return
        missing = [p for p, e in outs.items() if e is None]
        if missing:
            oc.state = "failed"
            oc.error = f"did not produce declared output(s): {', '.join(missing)}"
            return
        post = self.hasher.hash_many(st.deps)
        deleted = [p for p in st.deps if post[p] is None and pre_deps[p] is not None]
        if deleted:
            oc.state = "failed"
            oc.error = f"deleted its dependency {', '.join(deleted)}; a stage may not remove its inputs"
            return
        changed = [p for p in st.deps if (post[p] and str(post[p].digest)) != (pre_deps[p] and str(pre_deps[p].digest))]
        if changed:
            for p in changed:  # a dep hardlinked to the cache may have been written through
                e = pre_deps[p]
                if e is not None and self.cache.has(e.digest):
                    with contextlib.suppress(Exception):
                        self.cache.check(e.digest)
                        continue
                    self.cache.quarantine(e.digest)
            oc.state = "failed"
            oc.error = f"modified its dependency in place: {', '.join(changed)}; write new files instead"
            return
        real_outs = {p: e for p, e in outs.items() if e is not None}
        entry = lock_entry(st, key, pre_deps, real_outs)
        try:  # each object hashed as it is stored; a full disk or changed output fails only this stage
            for p, e in real_outs.items():
                self.cache.add(self.ws.root, p, e)
            if not _no_run_cache(st):
                self.runs.put(key, {"stage": st.name, "outs": entry.outs, "run_id": self.run_id})
        except EngineError as e:
            oc.state, oc.error = "failed", str(e)
            return
        self.lock.set(st.name, entry)
        self._dirty = True
        oc.state = "ran"
        oc.outs = entry.outs

    # -- the run ---------------------------------------------------------------------------

    def plan_names(self) -> list[str]:
        return self.dag.select(self.opts.targets, downstream=self.opts.downstream, single=self.opts.single)

    def dry_run(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(stage, verdict, reasons) without running or writing anything."""
        names = self.plan_names()
        will: set[str] = set()
        rows = []
        for n in names:
            st = self.spec[n]
            ev = evaluate(st, self.hasher, self.lock)
            ups = [u for u in self.dag.upstream(n) if u in will]
            if ups:
                rows.append((n, "may run", (f"upstream will run: {', '.join(ups)}",) + ev.reasons))
                will.add(n)
            elif self.opts.force or ev.reasons:
                rec = None if self.opts.force or st.always_changed else \
                    self.runs.lookup(Digest.parse(ev.key), st.name, st.all_outs)[0]
                if rec and all(self.cache.complete(Digest.parse(r["digest"]), r.get("kind", "file"))
                               for r in rec["outs"].values()):
                    rows.append((n, "restore", ev.reasons + ("known key: restore from run cache",)))
                else:
                    rows.append((n, "run", ev.reasons or ("forced",)))
                will.add(n)
            else:
                rows.append((n, "up to date", ()))
        return rows

    def run(self) -> ReproResult:
        names = self.plan_names()
        from engine.adapters.gitfiles import refuse_tracked_outputs

        refuse_tracked_outputs(self.spec, names, self.ws.root)  # before any output is deleted or restored
        self._gates = gate_runner(self)  # the spec's evaluation gates (engine.gates), or None
        result = ReproResult(run_id=self.run_id, config=self.config, overrides=list(self.opts.overrides),
                             spec_path=self.spec.path, outcomes={}, started=time.time())
        selected = set(names)
        progress = Progress(len(names), self.err)
        wslock = WorkspaceLock(self.ws)
        wslock.acquire(wait=self.opts.wait, command="repro")
        self._executor = None
        running: dict[Future[JobResult], tuple[StageSpec, dict[str, Entry | None], Digest, StageOutcome]] = {}
        # ready-queue scheduling: a stage becomes ready when its last selected upstream settles, and
        # ready stages are taken in topological rank, so the order is deterministic and O(N + E)
        rank = {n: i for i, n in enumerate(names)}
        ups = {n: [u for u in self.dag.graph.predecessors(n) if u in selected] for n in names}
        succ = {n: [d for d in self.dag.graph.successors(n) if d in selected] for n in names}
        waiting = {n: len(ups[n]) for n in names}
        ready = [(rank[n], n) for n in names if not waiting[n]]
        heapq.heapify(ready)

        def settle(n: str) -> None:
            self._gates and self._gates.settled(n, result)  # a gate is evaluated right after its metrics stage
            for d in succ[n]:
                waiting[d] -= 1
                if not waiting[d]:
                    heapq.heappush(ready, (rank[d], d))

        prev_handler = None
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            prev_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.dataset_uses = self._check_datasets(names)
            while ready or running:
                while ready and len(running) < self.jobs:
                    _, n = heapq.heappop(ready)
                    bad = [u for u in ups[n] if result.outcomes[u].state in ("failed", "blocked")]
                    if bad:
                        result.outcomes[n] = StageOutcome(n, "blocked", error=f"upstream failed: {', '.join(bad)}")
                        settle(n)
                        continue
                    self._decide_and_start(self.spec[n], running, result, wslock)
                    if result.outcomes[n].state != "running":
                        settle(n)
                    self._report(progress, result, running, n)
                if running:
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        st, pre, key, oc = running.pop(fut)
                        self._finish(st, fut.result(), pre, key, oc)
                        self._save_lock()
                        if oc.state == "failed":
                            self.err.write(f"[certus] stage '{st.name}' failed: {oc.error}\n")
                            tail = self._log_tail(oc.log_path)
                            if tail:
                                self.err.write(f"[certus] last lines of {os.path.relpath(oc.log_path, self.ws.root)}:"
                                               f"\n{tail}\n")
                        settle(st.name)
                        self._report(progress, result, running, f"{st.name} {oc.state}")
            result.finished = time.time()
            if any(o.state == "failed" for o in result.outcomes.values()):
                result.status = "failed"
            self._save_lock(force=True)
            self.state.flush()
            self._after(result)  # still under the workspace lock: provenance appends to the ledger
        except KeyboardInterrupt:
            if self._executor is not None:
                self._executor.terminate_all()
            for _, _, _, oc in running.values():
                oc.state = "interrupted"
            for n in names:
                if n not in result.outcomes:
                    result.outcomes[n] = StageOutcome(n, "interrupted")
            result.status = "interrupted"
            result.finished = time.time()
            self._save_lock(force=True)
            self.state.flush()
            self._after(result)
            raise InterruptedRunError(
                f"interrupted: {result.count('ran') + result.count('restored')} stage(s) finished and were kept; "
                "run 'certus repro' again to finish the rest"
            ) from None
        finally:
            if self._executor is not None:
                self._executor.shutdown()
            self._save_lock(force=True)
            self.state.flush()
            if prev_handler is not None:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, prev_handler)
            wslock.record_running([])
            wslock.release()
        failed = [o for o in result.outcomes.values() if o.state == "failed"]
        if failed:
            blocked = [o.name for o in result.outcomes.values() if o.state == "blocked"]
            extra = f"; not run because of it: {', '.join(blocked)}" if blocked else ""
            raise StageFailedError(
                f"stage(s) failed: {', '.join(f'{o.name} ({o.error})' for o in failed)}{extra}; "
                f"logs under .certus/logs/{self.run_id}/"
            )
        return result

    def _after(self, result: ReproResult) -> None:
        """Hook for what follows a run (provenance); the base run does nothing more."""
    def _ledger_index(self) -> Any:
        """Hook: the ledger index that dataset checks consult (provenance); None without a ledger."""
        return None

    def _extra_reasons(self, stage: str) -> tuple[str, ...]:
        """Hook: reasons beyond the lock's to run a stage (provenance: outputs nobody attested)."""
        return ()

    def _restorable(self, st: StageSpec, outs: dict[str, dict[str, Any]]) -> bool:
        """Hook: may these run-cache outputs be restored (provenance: only what the ledger attests)."""
        return True

    def _report(self, progress: Progress, result: ReproResult, running: dict[Any, Any], event: str) -> None:
        # every decided stage is either running or settled: O(1) here, not a pass over all outcomes
        progress.show(len(result.outcomes) - len(running), len(running), progress.total - len(result.outcomes), event)

    def _decide_and_start(self, st: StageSpec, running: dict[Any, Any], result: ReproResult,
                          wslock: WorkspaceLock) -> str:
        ev = evaluate(st, self.hasher, self.lock)
        extra = self._extra_reasons(st.name)
        if extra:
            ev = dataclasses.replace(ev, reasons=ev.reasons + extra)
        key = Digest.parse(ev.key)
        oc = StageOutcome(st.name, "pending", key=ev.key, reasons=ev.reasons,
                          deps={p: str(e.digest) for p, e in ev.deps.items() if e is not None})
        missing = [p for p, e in ev.deps.items() if e is None]
        if missing:
            oc.state, oc.error = "failed", f"dependency missing: {', '.join(missing)}"
            result.outcomes[st.name] = oc
            return "failed"
        force = self.opts.force
        if not ev.reasons and not force:
            oc.state = "skipped"
            oc.outs = dict(self.lock.get(st.name).outs) if self.lock.get(st.name) else {}
            result.outcomes[st.name] = oc
            return "skipped"
        if st.requires_gate and self._gates is not None and (why := self._gates.block(st)):
            oc.state, oc.error, result.outcomes[st.name] = "failed", why, oc  # gate neither passed nor waived
            return "failed"
        if st.datasets and not self._validate_datasets(st, oc):
            result.outcomes[st.name] = oc
            return "failed"
        if self.opts.run_cache and not force and not st.always_changed and not _no_run_cache(st):
            rec, note = self.runs.lookup(key, st.name, st.all_outs)  # a malformed record is a miss
            if note:
                self.err.write(f"[certus] note: {note}\n")
            restored = rec is not None and all(
                self.cache.complete(Digest.parse(r["digest"]), r.get("kind", "file")) for r in rec["outs"].values()
            ) and self._restorable(st, rec["outs"])
            if restored:
                try:
                    self._restore(st, rec["outs"], ev.outs)
                except EngineError as e:  # a damaged object (quarantined) or an unsafe path: run instead
                    self.err.write(f"[certus] stage '{st.name}': {e}; running it instead\n")
                    restored = False
            if restored:
                self.lock.set(st.name, lock_entry(st, key, ev.deps, {}))
                entry = self.lock.get(st.name)
                assert entry is not None
                entry.outs.update(rec["outs"])
                self._dirty = True
                self._save_lock()
                oc.state, oc.outs, oc.first_run = "restored", dict(rec["outs"]), rec.get("run_id", "")
                oc.started = oc.finished = time.time()
                result.outcomes[st.name] = oc
                return "restored"
        if self._executor is None:
            self._executor = self._make_executor(wslock.record_running)
        executor = self._executor
        try:
            kinds = self._prepare_outs(st)
        except EngineError as e:
            oc.state, oc.error = "failed", str(e)
            result.outcomes[st.name] = oc
            return "failed"
        fut = executor.submit(self._job(st, self._sde_cached(), kinds, key, ev.deps))
        oc.state = "running"
        result.outcomes[st.name] = oc
        running[fut] = (st, ev.deps, key, oc)
        return "running"

    def _sde_cached(self) -> str:
        if not hasattr(self, "_sde"):
            self._sde = self._source_date_epoch()
        return self._sde


def _no_run_cache(st: StageSpec) -> bool:
    """DVC leaves stages with persisted or uncached outputs out of the run cache; so does Certus."""
    return bool(getattr(st, "persist", ()) or getattr(st, "uncached", ()))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
